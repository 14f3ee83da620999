// Top-p router: the chosen set is the smallest prefix of the descending probabilities whose sum reaches p
// (capped by maxExperts), compared with a float64 host computation; weights are the kept probabilities
// renormalised. Rows whose prefix sums come within 1e-5 of p are ambiguous in float32 and skipped.
import { fc } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { expectClose } from '../helpers/tensor-asserts.js';
import { FC_PARAMS, createRouter, routeCase, row, runRouter, type RouteCase } from './harness.js';

/** Host reference: choices of the smallest descending prefix with sum ≥ p, at most maxExperts; undefined if ambiguous. */
function hostTopP(probabilities: readonly number[], p: number, maxExperts: number): number[] | undefined {
  const order = probabilities.map((q, i) => [q, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  const kept: number[] = [];
  let mass = 0;
  for (const [q, i] of order) {
    if (kept.length >= maxExperts) break;
    if (Math.abs(mass - p) < 1e-5) return undefined;
    if (mass >= p) break;
    kept.push(i);
    mass += q;
  }
  return kept;
}

describe('top-p router', () => {
  it('keeps the smallest prefix reaching p (host computation), renormalised, in descending order', () => {
    fc.assert(
      fc.property(
        routeCase().chain((c) =>
          fc.tuple(fc.constant(c), fc.constantFrom(0.3, 0.5, 0.8, 0.95, 1), fc.option(fc.integer({ min: 1, max: 4 }), { nil: undefined })),
        ),
        ([c, p, maxExperts]) => {
          const spec = maxExperts === undefined ? { kind: 'top-p', p } : { kind: 'top-p', p, maxExperts };
          const router = createRouter(spec, c);
          const d = runRouter(router, c);
          router.dispose();
          const E = c.choices;
          expect(d.slots).toBe(E);
          for (let r = 0; r < c.rows; r++) {
            if (c.mask[r] === 0) continue;
            const probabilities = Array.from(row(d.probabilities, r, E));
            const expected = hostTopP(probabilities, p, maxExperts ?? E);
            if (expected === undefined) continue;
            const ids = Array.from(row(d.expertIds, r, E));
            const weights = Array.from(row(d.weights, r, E));
            const used = ids.filter((_, k) => (weights[k] as number) > 0);
            expect(new Set(used), `row ${r}: probabilities ${probabilities.join(', ')}`).toEqual(new Set(expected));
            // Slots are in descending probability order, used slots first.
            for (let k = 1; k < E; k++) expect(probabilities[ids[k] as number]).toBeLessThanOrEqual(probabilities[ids[k - 1] as number] as number);
            const mass = expected.reduce((s, i) => s + (probabilities[i] as number), 0);
            expectClose(
              used.map((i) => weights[ids.indexOf(i)] as number),
              used.map((i) => (probabilities[i] as number) / mass),
              { rtol: 1e-4, atol: 1e-6, label: `row ${r} weights` },
            );
          }
        },
      ),
      FC_PARAMS,
    );
  });

  it('a tiny p keeps only the most probable expert; p = 1 keeps them all', () => {
    const c: RouteCase = {
      rows: 4,
      dim: 3,
      choices: 5,
      features: [1, 0, -1, 2, 2, 2, -1, 0.5, 0, 0, 0, 3],
      mask: [1, 1, 1, 1],
      taskIds: [],
      tokenIds: [],
      seed: 2,
      gateStd: 0.3,
    };
    const tiny = createRouter({ kind: 'top-p', p: 1e-6 }, c);
    const all = createRouter({ kind: 'top-p', p: 1 }, c);
    const a = runRouter(tiny, c);
    const b = runRouter(all, c);
    tiny.dispose();
    all.dispose();
    for (let r = 0; r < c.rows; r++) {
      expect(Array.from(row(a.weights, r, 5))).toEqual([1, 0, 0, 0, 0]);
      expect(Array.from(row(b.weights, r, 5)).every((w) => w > 0)).toBe(true);
    }
  });

  it('rejects p outside (0, 1]', () => {
    const shape = { choices: 3, dim: 2, seed: 0, gateStd: 0 };
    expect(() => createRouter({ kind: 'top-p', p: 0 }, shape)).toThrow(/router\.p/);
    expect(() => createRouter({ kind: 'top-p', p: 1.5 }, shape)).toThrow(/router\.p/);
  });
});
