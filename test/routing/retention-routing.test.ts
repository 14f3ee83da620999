// Routes that apply nothing: a null-expert-only decision and a threshold router below its threshold return
// the base output bit for bit; the threshold rule holds for any input (property test); the retention terms
// (null-expert routing, LoRAMoE localized balance) have their stated values and directions, train the null
// expert to take base-domain rows, and are refused by name where the route cannot have them.
import { fc } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import type { Transformer } from '../../src/base/transformer.js';
import { ConfigError } from '../../src/errors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { localizedBalanceLoss, nullRoutingLoss } from '../../src/routing/retention-losses.js';
import type { RoutingDecision } from '../../src/routing/router.js';
import type { RoutingTraceEntry } from '../../src/routing/trace.js';
import { Trainer } from '../../src/train/trainer.js';
import { expectNoLeak } from '../helpers/tensor-asserts.js';
import { tinyLlama } from '../helpers/tiny-models.js';
import { createRouter, FC_PARAMS, routeCase, row, runRouter } from './harness.js';

const routers = builtinRouters();
const ids = [
  [1, 5, 9, 3, 7, 2],
  [1, 6, 10, 12, 14, 3],
  [1, 20, 21, 22, 23, 24],
];
const mask = ids.map((r) => r.map(() => 1));

const experts = (n: number) =>
  Array.from({ length: n }, (_, i) => ({ kind: 'lora', name: `e${i}`, r: 2, alpha: 4, init: 'random', targets: { sites: 'all-linear' } }));

function logitsOf(model: AdaptedModel, select: 'spec' | 'base', routing = {}): Float32Array {
  return tf.tidy(() => model.forward({ ids, mask, select, routing }).dataSync() as Float32Array);
}

describe('routes that apply nothing return the base output bit for bit', () => {
  let base: Transformer;
  beforeAll(() => {
    base = tinyLlama();
  });
  afterAll(() => base.dispose());

  test('a null-expert-only route (every row decided to the null expert)', () => {
    expectNoLeak(() => {
      const model = AdaptedModel.create(
        base,
        {
          seed: 1,
          adapters: experts(2),
          composition: { kind: 'route', experts: ['e0', 'e1'], nullExpert: true, router: { kind: 'task', mapping: { '0': 2, '1': 2, '2': 2 } } },
        },
        { routers },
      );
      const adapted = logitsOf(model, 'spec', { taskIds: [0, 1, 2] });
      expect(adapted).toEqual(logitsOf(model, 'base'));
      // The same route sending the rows to an expert does change the output.
      expect(logitsOf(model, 'spec', { taskIds: [4, 4, 4] })).not.toEqual(adapted);
      model.dispose();
    });
  });

  test('a threshold router: rows below the threshold keep the base output, rows above it do not', () => {
    expectNoLeak(() => {
      const spec = (threshold: number) => ({
        seed: 1,
        adapters: experts(2),
        composition: { kind: 'route', experts: ['e0', 'e1'], granularity: 'sequence', placement: 'model', router: { kind: 'threshold', threshold } },
      });
      const closed = AdaptedModel.create(base, spec(0.999999), { routers });
      const trace: RoutingTraceEntry[] = [];
      const below = logitsOf(closed, 'spec', { trace });
      expect(below).toEqual(logitsOf(closed, 'base'));
      expect(trace.every((e) => e.weights.every((w) => w === 0))).toBe(true);
      closed.dispose();
      const open = AdaptedModel.create(base, spec(0.000001), { routers });
      expect(logitsOf(open, 'spec')).not.toEqual(logitsOf(open, 'base'));
      open.dispose();
    });
  });
});

describe('threshold router (property)', () => {
  test('a row applies nothing exactly when its top score σ(max logit) is below θ, else its top-k with weights summing to 1', () => {
    const cases = routeCase({ minChoices: 2 }).chain((c) =>
      fc.record({ c: fc.constant(c), threshold: fc.double({ min: 0.05, max: 0.95, noNaN: true }), k: fc.integer({ min: 1, max: 2 }) }),
    );
    fc.assert(
      fc.property(cases, ({ c, threshold, k }) => {
        const router = createRouter({ kind: 'threshold', threshold, k }, c);
        try {
          for (const training of [false, true]) {
            const d = runRouter(router, c, { training });
            for (let r = 0; r < c.rows; r++) {
              const logits = Array.from(row(d.logits, r, d.choices));
              const top = 1 / (1 + Math.exp(-Math.max(...logits)));
              const total = Array.from(row(d.weights, r, d.slots)).reduce((a, b) => a + b, 0);
              if (c.mask[r] === 0 || top < threshold - 1e-6) expect(total, `row ${r}: σ(top) ${top} < θ ${threshold}`).toBe(0);
              else if (top >= threshold + 1e-6) expect(Math.abs(total - 1), `row ${r}: σ(top) ${top} ≥ θ ${threshold}`).toBeLessThan(1e-5);
            }
          }
        } finally {
          router.dispose();
        }
      }),
      FC_PARAMS,
    );
  });

  test('the learned threshold receives a gradient (straight-through) and the decision stays the hard rule', () => {
    expectNoLeak(() => {
      const router = createRouter({ kind: 'threshold', learnThreshold: true, threshold: 0.5 }, { choices: 3, dim: 4, seed: 5, gateStd: 1 });
      const cut = router.variables()[1] as tf.Variable;
      const { grads, value } = tf.variableGrads(
        () =>
          tf.tidy(() => {
            const features = tf.tensor2d([1, -1, 0.5, 2, -2, 1, 0, 0.3, 0.1, 0.2, -0.4, 1], [3, 4]); // [R, D]
            return tf.sum(router.route({ features, mask: tf.ones([3]), training: true }).weights) as tf.Scalar;
          }),
        [cut],
      );
      expect(Math.abs(grads[cut.name]?.dataSync()[0] ?? 0)).toBeGreaterThan(0);
      tf.dispose([value, ...Object.values(grads)]);
      router.dispose();
    });
  });
});

function decision(probabilities: number[][]): RoutingDecision {
  const p = tf.tensor2d(probabilities); // [R, E]
  return {
    expertIds: tf.zeros([p.shape[0], 1], 'int32'),
    weights: tf.zeros([p.shape[0], 1]),
    dropped: tf.zeros([p.shape[0]]),
    logits: tf.log(p),
    probabilities: p,
  };
}

describe('retention terms', () => {
  test('null routing: the cross-entropy of p_null against the row kind, averaged over real rows', () => {
    const value = tf.tidy(
      () =>
        nullRoutingLoss(
          decision([
            [0.5, 0.5],
            [0.2, 0.8],
            [0.9, 0.1],
          ]),
          tf.tensor1d([1, 1, 0]),
          tf.tensor1d([0, 1, 1]),
          1,
        ).dataSync()[0],
    );
    // Row 0 (task): −log(1 − 0.5); row 1 (base-domain): −log 0.8; row 2 is padding.
    expect(value).toBeCloseTo((-Math.log(0.5) - Math.log(0.8)) / 2, 6);
  });

  test('localized balance: the matched group is pushed up (the gradient moves probability onto it) and is 0 at its optimum', () => {
    // Two choices, the second serving base-domain rows; one base-domain row and one task row.
    const delta = 0.5;
    const loss = (q: number): number =>
      tf.tidy(
        () =>
          localizedBalanceLoss(
            decision([
              [1 - q, q],
              [1 - q, q],
            ]),
            tf.tensor1d([1, 1]),
            tf.tensor1d([1, 0]),
            tf.tensor1d([0, 1]),
            delta,
          ).dataSync()[0] as number,
      );
    // Optimum: the matched choice holds (1 + δ)/(1 − δ) = 3 times the other's probability, in both rows.
    const atOptimum = tf.tidy(
      () =>
        localizedBalanceLoss(
          decision([
            [0.25, 0.75],
            [0.75, 0.25],
          ]),
          tf.tensor1d([1, 1]),
          tf.tensor1d([1, 0]),
          tf.tensor1d([0, 1]),
          delta,
        ).dataSync()[0] as number,
    );
    expect(atOptimum).toBeLessThan(1e-10);
    // From uniform, moving the base-domain row towards its group lowers the loss.
    const uniform = tf.tidy(
      () =>
        localizedBalanceLoss(
          decision([
            [0.5, 0.5],
            [0.5, 0.5],
          ]),
          tf.tensor1d([1, 1]),
          tf.tensor1d([1, 0]),
          tf.tensor1d([0, 1]),
          delta,
        ).dataSync()[0] as number,
    );
    const towards = tf.tidy(
      () =>
        localizedBalanceLoss(
          decision([
            [0.4, 0.6],
            [0.5, 0.5],
          ]),
          tf.tensor1d([1, 1]),
          tf.tensor1d([1, 0]),
          tf.tensor1d([0, 1]),
          delta,
        ).dataSync()[0] as number,
    );
    expect(towards).toBeLessThan(uniform);
    expect(loss(0.5)).toBeCloseTo(uniform, 10);
  });

  test('nullRouting trains the router to send base-domain rows to the null expert, and task rows elsewhere', () => {
    const base = tinyLlama();
    try {
      expectNoLeak(() => {
        const model = AdaptedModel.create(
          base,
          {
            seed: 4,
            adapters: experts(2),
            composition: {
              kind: 'route',
              experts: ['e0', 'e1'],
              nullExpert: true,
              granularity: 'sequence',
              placement: 'model',
              router: { kind: 'top-k', k: 1 },
              retention: { nullRouting: 1 },
            },
          },
          { routers },
        );
        const trainer = new Trainer(model, { optimizer: { lr: 1e-2, routerLr: 0.1 }, schedule: { totalSteps: 30 } });
        const taskRows = { ids: ids.slice(0, 2), mask: mask.slice(0, 2), lossMask: ids.slice(0, 2).map((r) => r.map((_, t) => (t >= 3 ? 1 : 0))) };
        const retention = { ids: [ids[2] as number[]], mask: [mask[2] as number[]] };
        for (let i = 0; i < 30; i++) trainer.step({ ...taskRows, retention });
        trainer.dispose();
        const trace: RoutingTraceEntry[] = [];
        tf.tidy(() => {
          model.forward({ ids, mask, routing: { trace } });
        });
        const first = (b: number) => trace.find((e) => e.batch === b)?.experts[0];
        expect(first(2)).toBe('null');
        expect([first(0), first(1)]).not.toContain('null');
        model.dispose();
      });
    } finally {
      base.dispose();
    }
  });

  test('refused by name: nullRouting without a null expert, a group naming no choice, a group of every choice', () => {
    const base = tinyLlama();
    try {
      const route = (extra: Record<string, unknown>) => ({
        seed: 1,
        adapters: experts(2),
        composition: { kind: 'route', experts: ['e0', 'e1'], router: { kind: 'top-k', k: 1 }, ...extra },
      });
      expect(() => AdaptedModel.create(base, route({ retention: { nullRouting: 1 } }), { routers })).toThrow(ConfigError);
      expect(() => AdaptedModel.create(base, route({ retention: { nullRouting: 1 } }), { routers })).toThrow(/retention\.nullRouting/);
      expect(() => AdaptedModel.create(base, route({ retention: { localBalance: 1, group: ['e7'] } }), { routers })).toThrow(/group\[0\]/);
      expect(() => AdaptedModel.create(base, route({ retention: { localBalance: 1, group: ['e0', 'e1'] } }), { routers })).toThrow(/every choice/);
      expect(() => AdaptedModel.create(base, route({ retention: { localBalance: 1 } }), { routers })).toThrow(/retention\.group/);
    } finally {
      base.dispose();
    }
  });
});
