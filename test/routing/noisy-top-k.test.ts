// Noisy top-k (Shazeer et al. 2017): noise only while training, scaled by setAnnealing({ noise }), fresh at
// every call, and trainable through W_noise.
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { createRouter, routerInput, row, runRouter, softmax, type RouteCase } from './harness.js';

const c: RouteCase = {
  rows: 6,
  dim: 3,
  choices: 5,
  features: [0.3, -1, 2, 1, 1, -0.5, -2, 0.1, 0.7, 0.4, 0.4, 0.4, -1, -1, 2, 3, 0, -0.2],
  mask: [1, 1, 1, 1, 0, 1],
  taskIds: [0, 0, 0, 0, 0, 0],
  tokenIds: [0, 0, 0, 0, 0, 0],
  seed: 3,
  gateStd: 0.5,
};

function probabilitiesMatchLogits(d: ReturnType<typeof runRouter>): boolean {
  for (let r = 0; r < d.rows; r++) {
    const expected = softmax(row(d.logits, r, d.choices));
    if (expected.some((p, i) => Math.abs(p - (row(d.probabilities, r, d.choices)[i] as number)) > 1e-5)) return false;
  }
  return true;
}

describe('noisy top-k router', () => {
  it('adds no noise outside training: repeated calls agree and probabilities = softmax(logits)', () => {
    const router = createRouter({ kind: 'noisy-top-k' }, c);
    const a = runRouter(router, c, { training: false });
    const b = runRouter(router, c, { training: false });
    router.dispose();
    expect(Array.from(b.weights)).toEqual(Array.from(a.weights));
    expect(Array.from(b.expertIds)).toEqual(Array.from(a.expertIds));
    expect(probabilitiesMatchLogits(a)).toBe(true);
  });

  it('adds fresh noise at every training call; logits stay the clean ones', () => {
    const router = createRouter({ kind: 'noisy-top-k' }, c);
    const clean = runRouter(router, c, { training: false });
    const a = runRouter(router, c, { training: true });
    const b = runRouter(router, c, { training: true });
    router.dispose();
    expect(Array.from(a.logits)).toEqual(Array.from(clean.logits));
    expect(probabilitiesMatchLogits(a)).toBe(false);
    expect(Array.from(b.probabilities)).not.toEqual(Array.from(a.probabilities));
  });

  it('setAnnealing({ noise: 0 }) turns the noise off; negative scales are rejected', () => {
    const router = createRouter({ kind: 'noisy-top-k' }, c);
    const clean = runRouter(router, c, { training: false });
    router.setAnnealing?.({ noise: 0 });
    const quiet = runRouter(router, c, { training: true });
    expect(() => router.setAnnealing?.({ noise: -1 })).toThrow(ConfigError);
    router.dispose();
    expect(Array.from(quiet.weights)).toEqual(Array.from(clean.weights));
    expectClose(quiet.probabilities, clean.probabilities);
  });

  it('the same seed draws the same noise sequence (reproducible training)', () => {
    const first = createRouter({ kind: 'noisy-top-k' }, c);
    const second = createRouter({ kind: 'noisy-top-k' }, c);
    const a = runRouter(first, c, { training: true });
    const b = runRouter(second, c, { training: true });
    first.dispose();
    second.dispose();
    expect(Array.from(b.probabilities)).toEqual(Array.from(a.probabilities));
  });

  it('training weights are differentiable in both W_g and W_noise', () => {
    const router = createRouter({ kind: 'noisy-top-k' }, c);
    const [gate, noise] = router.variables();
    const coefficients = tf.randomNormal([c.rows, 2], 0, 1, 'float32', 9);
    const { value, grads } = tf.variableGrads(
      () => tf.tidy(() => tf.sum(tf.mul(router.route(routerInput(c, { training: true })).weights, coefficients))),
      [...router.variables()],
    );
    for (const v of [gate, noise]) {
      const g = grads[v?.name ?? ''];
      expect(g, `gradient of ${v?.name}`).toBeDefined();
      const values = Array.from(g?.dataSync() ?? []);
      expect(values.every(Number.isFinite)).toBe(true);
      expect(
        values.some((x) => x !== 0),
        `gradient of ${v?.name} is all zero`,
      ).toBe(true);
    }
    tf.dispose([value, coefficients, ...Object.values(grads)]);
    router.dispose();
  });
});
