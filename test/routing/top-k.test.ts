// Top-k router: exactly k distinct experts per real row, the k largest logits, weights = softmax over the
// chosen logits (host computation from decision.logits), and config validation.
import { fc } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { topKRouterKind } from '../../routers/top-k.js';
import { ConfigError } from '../../src/errors.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { FC_PARAMS, createRouter, routeCase, row, runRouter, softmax } from './harness.js';

describe('top-k router', () => {
  it('picks exactly k distinct experts per real row: the k largest logits, weighted by a softmax over them', () => {
    fc.assert(
      fc.property(
        routeCase({ minChoices: 1 }).chain((c) => fc.tuple(fc.constant(c), fc.integer({ min: 1, max: c.choices }), fc.constantFrom(1, 0.5, 3))),
        ([c, k, temperature]) => {
          const router = createRouter({ kind: 'top-k', k, temperature }, c);
          const d = runRouter(router, c);
          router.dispose();
          expect(d.slots).toBe(k);
          for (let r = 0; r < c.rows; r++) {
            if (c.mask[r] === 0) continue;
            const ids = Array.from(row(d.expertIds, r, k));
            const logits = Array.from(row(d.logits, r, c.choices));
            expect(new Set(ids).size).toBe(k);
            const minChosen = Math.min(...ids.map((i) => logits[i] as number));
            const unchosen = logits.filter((_, i) => !ids.includes(i));
            if (unchosen.length > 0) expect(minChosen).toBeGreaterThanOrEqual(Math.max(...unchosen));
            expectClose(row(d.weights, r, k), softmax(ids.map((i) => logits[i] as number)), { rtol: 1e-5, atol: 1e-6, label: `row ${r}` });
          }
        },
      ),
      FC_PARAMS,
    );
  });

  it('divides the logits by the temperature (the choice does not change)', () => {
    const c = { rows: 3, dim: 2, choices: 4, features: [1, -2, 0.5, 3, -1, -1], mask: [1, 1, 1], taskIds: [0, 0, 0], tokenIds: [0, 0, 0], seed: 5, gateStd: 1 };
    const plain = createRouter({ kind: 'top-k' }, c);
    const hot = createRouter({ kind: 'top-k', temperature: 4 }, c);
    const a = runRouter(plain, c);
    const b = runRouter(hot, c);
    plain.dispose();
    hot.dispose();
    expectClose(
      b.logits,
      Array.from(a.logits, (v) => v / 4),
      { label: 'logits / τ' },
    );
    expect(Array.from(b.expertIds)).toEqual(Array.from(a.expertIds));
  });

  it('rejects k > E at create, naming router.k and E', () => {
    expect(() => topKRouterKind.create({ kind: 'top-k', k: 5, temperature: 1 }, { choices: 4, inputDim: 3, seed: 0 })).toThrow(ConfigError);
    expect(() => topKRouterKind.create({ kind: 'top-k', k: 5, temperature: 1 }, { choices: 4, inputDim: 3, seed: 0 })).toThrow(/router\.k = 5.*E = 4/);
  });

  it('validates the config through the registry (k ≥ 1 integer, τ > 0, no unknown keys)', () => {
    const shape = { choices: 4, dim: 3, seed: 0, gateStd: 0 };
    expect(() => createRouter({ kind: 'top-k', k: 0 }, shape)).toThrow(/router\.k/);
    expect(() => createRouter({ kind: 'top-k', k: 1.5 }, shape)).toThrow(ConfigError);
    expect(() => createRouter({ kind: 'top-k', temperature: 0 }, shape)).toThrow(/router\.temperature/);
    expect(() => createRouter({ kind: 'top-k', topk: 2 }, shape)).toThrow(ConfigError);
    expect(() => createRouter({ kind: 'top-k' }, shape).dispose()).not.toThrow();
  });

  it('rejects features of the wrong width with a ShapeError', () => {
    const c = { rows: 2, dim: 3, choices: 4, features: [1, 2, 3, 4, 5, 6], mask: [1, 1], taskIds: [0, 0], tokenIds: [0, 0], seed: 0, gateStd: 0 };
    const router = createRouter({ kind: 'top-k' }, { ...c, dim: 2 });
    expect(() => runRouter(router, c)).toThrow(/features \[R, 2\]/);
    router.dispose();
  });
});
