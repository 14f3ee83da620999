// Expert-choice router (Zhou et al. 2022): each expert takes its top-C real rows by score,
// C = ceil(realRows · factor / E). No expert exceeds C; padding is never picked and takes no capacity.
import { fc } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { FC_PARAMS, createRouter, routeCase, runRouter, withPadding } from './harness.js';

const FACTORS = [0.5, 1, 2, 3] as const;

describe('expert-choice router', () => {
  it('each expert picks min(C, realRows) real rows, the highest-scoring ones; weights are their scores', () => {
    fc.assert(
      fc.property(
        routeCase().chain((c) => fc.tuple(fc.constant(c), fc.constantFrom(...FACTORS))),
        ([c, capacityFactor]) => {
          const router = createRouter({ kind: 'expert-choice', capacityFactor }, c);
          const d = runRouter(router, c);
          router.dispose();
          const E = c.choices;
          expect(d.slots).toBe(E);
          const real = c.mask.reduce((a, b) => a + b, 0);
          const capacity = Math.ceil((real * capacityFactor) / E);
          for (let e = 0; e < E; e++) {
            const picked: number[] = [];
            const passed: number[] = [];
            for (let r = 0; r < c.rows; r++) {
              expect(d.expertIds[r * E + e]).toBe(e);
              const w = d.weights[r * E + e] as number;
              const score = d.probabilities[r * E + e] as number;
              const isPicked = w > 0; // a score that underflowed to 0 would read as not picked; gate std ≤ 2 keeps scores > 0
              if (c.mask[r] === 0) {
                expect(w, `padding row ${r} picked by expert ${e}`).toBe(0);
                continue;
              }
              (isPicked ? picked : passed).push(score);
              if (isPicked) expect(w).toBe(score);
            }
            expect(picked.length, `expert ${e}`).toBeLessThanOrEqual(capacity);
            if (passed.length > 0 && picked.length > 0) expect(Math.min(...picked)).toBeGreaterThanOrEqual(Math.max(...passed));
          }
          for (let r = 0; r < c.rows; r++) {
            const chosen = Array.from(d.weights.subarray(r * E, (r + 1) * E)).some((w) => w > 0);
            expect(d.dropped[r], `row ${r}`).toBe(c.mask[r] === 1 && !chosen ? 1 : 0);
          }
        },
      ),
      FC_PARAMS,
    );
  });

  it('fills every expert to exactly min(C, realRows) when scores are positive', () => {
    fc.assert(
      fc.property(
        routeCase().chain((c) => fc.tuple(fc.constant({ ...c, gateStd: 0 }), fc.constantFrom(...FACTORS))),
        ([c, capacityFactor]) => {
          const router = createRouter({ kind: 'expert-choice', capacityFactor }, c);
          const d = runRouter(router, c);
          router.dispose();
          const real = c.mask.reduce((a, b) => a + b, 0);
          const capacity = Math.min(real, Math.ceil((real * capacityFactor) / c.choices));
          for (let e = 0; e < c.choices; e++) {
            let n = 0;
            for (let r = 0; r < c.rows; r++) if ((d.weights[r * c.choices + e] as number) > 0) n++;
            expect(n, `expert ${e}`).toBe(capacity);
          }
        },
      ),
      FC_PARAMS,
    );
  });

  it('padding rows take no capacity: inserting them leaves the real rows’ decision unchanged', () => {
    fc.assert(
      fc.property(
        routeCase({ paddingOneIn: 1000 }).chain((c) =>
          fc.tuple(fc.constant(c), fc.uniqueArray(fc.integer({ min: 0, max: c.rows }), { maxLength: 6 }), fc.constantFrom(...FACTORS)),
        ),
        ([c, before, capacityFactor]) => {
          const { padded, realIndex } = withPadding(c, new Set(before));
          const router = createRouter({ kind: 'expert-choice', capacityFactor }, c);
          const plain = runRouter(router, c);
          const withPad = runRouter(router, padded);
          router.dispose();
          const E = c.choices;
          realIndex.forEach((p, r) => {
            expect(Array.from(withPad.weights.subarray(p * E, (p + 1) * E))).toEqual(Array.from(plain.weights.subarray(r * E, (r + 1) * E)));
            expect(withPad.dropped[p]).toBe(plain.dropped[r]);
          });
        },
      ),
      FC_PARAMS,
    );
  });
});
