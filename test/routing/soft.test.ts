// Soft router: dense mixture over all choices, weights = softmax(x·W_g / τ); τ from the config or annealing.
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { createRouter, row, runRouter, softmax, type RouteCase } from './harness.js';

const c: RouteCase = {
  rows: 4,
  dim: 3,
  choices: 4,
  features: [1, 0, -1, 2, 2, 2, -1, 0.5, 0, 0, 0, 3],
  mask: [1, 0, 1, 1],
  taskIds: [],
  tokenIds: [],
  seed: 4,
  gateStd: 0.5,
};

describe('soft router', () => {
  it('mixes every choice with softmax(logits): ids 0..E−1 on every row, zero on padding', () => {
    const router = createRouter({ kind: 'soft' }, c);
    const d = runRouter(router, c);
    router.dispose();
    for (let r = 0; r < c.rows; r++) {
      expect(Array.from(row(d.expertIds, r, 4))).toEqual([0, 1, 2, 3]);
      const expected = c.mask[r] === 1 ? softmax(row(d.logits, r, 4)) : [0, 0, 0, 0];
      expectClose(row(d.weights, r, 4), expected, { label: `row ${r}` });
    }
  });

  it('setAnnealing({ temperature }) overrides the configured temperature', () => {
    const router = createRouter({ kind: 'soft', temperature: 2 }, c);
    const warm = runRouter(router, c);
    router.setAnnealing?.({ temperature: 0.5 });
    const cold = runRouter(router, c);
    expect(() => router.setAnnealing?.({ temperature: 0 })).toThrow(ConfigError);
    router.setAnnealing?.({ noise: 3 }); // ignored: soft routing has no noise
    router.dispose();
    expectClose(
      cold.logits,
      Array.from(warm.logits, (v) => v * 4),
      { label: 'logits ∝ 1/τ' },
    );
  });
});
