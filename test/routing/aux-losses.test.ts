// Auxiliary router losses: the balance loss is k at uniform routing, larger when routing collapses, and
// blind to padding; z-loss, entropy and importance match host computations; every loss (and the decision
// weights) sends finite, non-zero gradients to the router variables. Plus the host routing statistics.
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { BUILTIN_ROUTER_KINDS } from '../../routers/index.js';
import { auxLossTotal, importanceLoss, loadBalancingLoss, routerZLoss, routingEntropy } from '../../src/routing/aux-losses.js';
import type { Router, RoutingDecision } from '../../src/routing/router.js';
import { routingStats } from '../../src/routing/routing-stats.js';
import { expectClose, expectNoLeak } from '../helpers/tensor-asserts.js';
import { createRouter, routerInput, row, withPadding, type RouteCase } from './harness.js';

const R = 12;
const D = 5;
const E = 4;

function makeCase(mask: readonly number[] = Array.from({ length: R }, (_, r) => (r % 5 === 4 ? 0 : 1))): RouteCase {
  const features = Array.from({ length: mask.length * D }, (_, i) => Math.sin(i * 1.7) * 2);
  return { rows: mask.length, dim: D, choices: E, features, mask, taskIds: mask.map((_, r) => r), tokenIds: mask.map((_, r) => r * 7), seed: 11, gateStd: 0.7 };
}

/** Evaluates a scalar loss of the router's decision on a case, in a tidy. */
function lossValue(router: Router, c: RouteCase, loss: (d: RoutingDecision, mask: tf.Tensor1D) => tf.Scalar, training = false): number {
  return tf.tidy(() => {
    const input = routerInput(c, { training, taskIds: true, tokenIds: true });
    return loss(router.route(input), input.mask).dataSync()[0] as number;
  });
}

function setGate(router: Router, values: number[]): void {
  router.variables()[0]?.assign(tf.tensor2d(values, [D, E]));
}

describe('load-balancing loss', () => {
  it('equals k at uniform routing (equal logits), for top-k with k = 1, 2, 3 and switch', () => {
    const c = makeCase();
    for (const spec of [
      { kind: 'top-k', k: 1 },
      { kind: 'top-k', k: 2 },
      { kind: 'top-k', k: 3 },
      { kind: 'switch', capacityFactor: 4 },
    ]) {
      const router = createRouter(spec, { ...c, gateStd: 0 });
      setGate(router, new Array<number>(D * E).fill(0));
      const k = 'k' in spec ? spec.k : 1;
      expect(lossValue(router, c, (d, m) => loadBalancingLoss(d, m, E))).toBeCloseTo(k, 5);
      router.dispose();
    }
  });

  it('grows to E when routing collapses onto one expert', () => {
    const c = { ...makeCase(), features: Array.from({ length: R * D }, (_, i) => 1 + (i % 3)) };
    const router = createRouter({ kind: 'top-k', k: 1 }, c);
    setGate(
      router,
      Array.from({ length: D * E }, (_, i) => (i % E === 1 ? 3 : 0)),
    );
    const collapsed = lossValue(router, c, (d, m) => loadBalancingLoss(d, m, E));
    router.dispose();
    expect(collapsed).toBeGreaterThan(3.9);
    expect(collapsed).toBeLessThanOrEqual(E + 1e-5);
  });

  it('does not change when padding rows are added', () => {
    const c = makeCase();
    const { padded } = withPadding(c, new Set([0, 3, 7, R]));
    for (const spec of [{ kind: 'top-k' }, { kind: 'switch' }, { kind: 'top-p' }]) {
      const router = createRouter(spec, c);
      const plain = lossValue(router, c, (d, m) => loadBalancingLoss(d, m, E));
      const withPad = lossValue(router, padded, (d, m) => loadBalancingLoss(d, m, E));
      router.dispose();
      expect(withPad, spec.kind).toBeCloseTo(plain, 5);
    }
  });
});

describe('z-loss, entropy, importance against host computations', () => {
  it('match on a top-k decision with padding', () => {
    const c = makeCase();
    const router = createRouter({ kind: 'top-k' }, c);
    const host = tf.tidy(() => {
      const input = routerInput(c);
      const d = router.route(input);
      return {
        logits: d.logits.dataSync() as Float32Array,
        probabilities: d.probabilities.dataSync() as Float32Array,
        ids: d.expertIds.dataSync() as Int32Array,
        weights: d.weights.dataSync() as Float32Array,
        z: routerZLoss(d, input.mask).dataSync()[0] as number,
        entropy: routingEntropy(d, input.mask).dataSync()[0] as number,
        importance: importanceLoss(d, input.mask).dataSync()[0] as number,
      };
    });
    router.dispose();
    const real = c.mask
      .map((m, r) => [m, r] as const)
      .filter(([m]) => m === 1)
      .map(([, r]) => r);
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    const z = mean(
      real.map((r) => {
        const l = Array.from(row(host.logits, r, E));
        const max = Math.max(...l);
        return (max + Math.log(l.reduce((s, x) => s + Math.exp(x - max), 0))) ** 2;
      }),
    );
    const entropy = mean(real.map((r) => -Array.from(row(host.probabilities, r, E)).reduce((s, p) => s + (p > 0 ? p * Math.log(p) : 0), 0)));
    const importance = new Array<number>(E).fill(0);
    for (const r of real) for (let k = 0; k < 2; k++) importance[host.ids[r * 2 + k] as number]! += host.weights[r * 2 + k] as number;
    const m = mean(importance);
    const cv2 = mean(importance.map((x) => (x - m) ** 2)) / (m * m);
    expectClose([host.z, host.entropy, host.importance], [z, entropy, cv2], { rtol: 1e-4, atol: 1e-6, label: 'z, entropy, importance' });
  });

  it('auxLossTotal is the weighted sum, skips zero weights, and is 0 with all weights 0', () => {
    const c = makeCase();
    const router = createRouter({ kind: 'top-k' }, c);
    const [total, parts, zero] = tf.tidy(() => {
      const input = routerInput(c);
      const d = router.route(input);
      const weights = { balance: 0.5, zLoss: 0.1, importance: 2, entropy: -0.3 };
      const expected =
        0.5 * (loadBalancingLoss(d, input.mask, E).dataSync()[0] as number) +
        0.1 * (routerZLoss(d, input.mask).dataSync()[0] as number) +
        2 * (importanceLoss(d, input.mask).dataSync()[0] as number) -
        0.3 * (routingEntropy(d, input.mask).dataSync()[0] as number);
      return [
        auxLossTotal(d, input.mask, weights).dataSync()[0] as number,
        expected,
        auxLossTotal(d, input.mask, { balance: 0, zLoss: 0, importance: 0, entropy: 0 }).dataSync()[0] as number,
      ];
    });
    router.dispose();
    expect(total).toBeCloseTo(parts, 5);
    expect(zero).toBe(0);
  });

  it('is 0, not NaN, when every row is padding', () => {
    const c = makeCase(new Array<number>(R).fill(0));
    const router = createRouter({ kind: 'top-k' }, c);
    const value = lossValue(router, c, (d, m) => auxLossTotal(d, m, { balance: 1, zLoss: 1, importance: 0, entropy: 1 }));
    router.dispose();
    expect(value).toBe(0);
  });
});

describe('gradients reach the router variables', () => {
  const LOSSES: readonly [string, (d: RoutingDecision, mask: tf.Tensor1D) => tf.Scalar][] = [
    ['balance', (d, m) => loadBalancingLoss(d, m, E)],
    ['z-loss', routerZLoss],
    ['importance', importanceLoss],
    ['entropy', routingEntropy],
    ['weights', (d) => tf.sum(tf.mul(d.weights, tf.linspace(0.5, 2, d.weights.size).reshape(d.weights.shape)))],
  ];
  // The balance loss is constant where f is uniform by construction: soft (every slot used) and expert choice
  // (every expert takes exactly C rows), so E·Σ fᵢPᵢ = Σ Pᵢ·const has no gradient there.
  const BALANCED_BY_CONSTRUCTION = new Set(['soft', 'expert-choice']);
  const trainable = BUILTIN_ROUTER_KINDS.filter((kind) => !['task', 'hash'].includes(kind.kind));

  it.each(trainable.map((k) => [k.kind] as const))('%s: every aux loss and the weights give finite, non-zero gradients', (kind) => {
    const c = makeCase();
    expectNoLeak(() => {
      const router = createRouter({ kind }, c);
      const variables = [...router.variables()];
      for (const [name, loss] of LOSSES) {
        // Gradients are a training-time contract: with training: false routers may take a faster,
        // non-differentiable path (top-k does).
        const training = true;
        const { value, grads } = tf.variableGrads(
          () =>
            tf.tidy(() => {
              const input = routerInput(c, { training });
              return loss(router.route(input), input.mask);
            }),
          variables,
        );
        variables.forEach((v, i) => {
          const values = Array.from(grads[v.name]?.dataSync() ?? new Float32Array(v.size)); // absent: v is not on the path
          expect(values.every(Number.isFinite), `${name}: finite gradient of ${v.name}`).toBe(true);
          // W_noise (variable 1 of noisy-top-k) only sees losses of the noisy decision, not the clean z-loss.
          const expectsSignal = !(name === 'balance' && BALANCED_BY_CONSTRUCTION.has(kind)) && !(i === 1 && name === 'z-loss');
          if (expectsSignal)
            expect(
              values.some((x) => x !== 0),
              `${name}: gradient of ${v.name} is all zero`,
            ).toBe(true);
        });
        tf.dispose([value, ...Object.values(grads)]);
      }
      router.dispose();
    });
  });
});

describe('routing stats', () => {
  it('counts load over real rows and used slots, its entropy, and the dropped rate', () => {
    const stats = routingStats({
      expertIds: [0, 1, 0, 2, 1, 1, 3, 0],
      weights: [0.6, 0.4, 1, 0, 0.5, 0.5, 0, 0],
      dropped: [0, 0, 0, 1],
      mask: [1, 1, 0, 1],
      choices: 4,
    });
    expect(stats.rows).toBe(3);
    expect(stats.load).toEqual([2, 1, 0, 0]);
    expect(stats.loadFraction).toEqual([2 / 3, 1 / 3, 0, 0]);
    expect(stats.loadEntropy).toBeCloseTo(-(2 / 3) * Math.log(2 / 3) - (1 / 3) * Math.log(1 / 3), 10);
    expect(stats.normalizedLoadEntropy).toBeCloseTo(stats.loadEntropy / Math.log(4), 10);
    expect(stats.meanExpertsPerRow).toBe(1);
    expect(stats.droppedRate).toBeCloseTo(1 / 3, 10);
  });

  it('is all zeros for an empty batch and rejects mismatched lengths', () => {
    expect(routingStats({ expertIds: [], weights: [], dropped: [], mask: [], choices: 3 }).droppedRate).toBe(0);
    expect(() => routingStats({ expertIds: [0, 1], weights: [1], dropped: [0], mask: [1], choices: 2 })).toThrow(/routing stats/);
  });
});
