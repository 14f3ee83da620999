// Switch router (Fedus et al. 2021): top-1 with capacity C = ceil(realRows / E · factor). No expert ever
// receives more than C rows; over-capacity rows are dropped in row order; padding never consumes capacity.
import { fc } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { FC_PARAMS, createRouter, routeCase, row, runRouter, withPadding, type RouteCase } from './harness.js';

const FACTORS = [0.5, 1, 1.25, 2] as const;

describe('switch router', () => {
  it('keeps exactly the first C rows (in row order) assigned to each expert, and drops the rest', () => {
    fc.assert(
      fc.property(
        routeCase().chain((c) => fc.tuple(fc.constant(c), fc.constantFrom(...FACTORS))),
        ([c, capacityFactor]) => {
          const router = createRouter({ kind: 'switch', capacityFactor }, c);
          const d = runRouter(router, c);
          router.dispose();
          const real = c.mask.reduce((a, b) => a + b, 0);
          const capacity = Math.ceil((real / c.choices) * capacityFactor);
          const queue = new Array<number>(c.choices).fill(0);
          for (let r = 0; r < c.rows; r++) {
            if (c.mask[r] === 0) continue;
            const expert = d.expertIds[r] as number;
            queue[expert]! += 1;
            const keep = (queue[expert] as number) <= capacity;
            expect(d.dropped[r], `row ${r} (place ${queue[expert]} of expert ${expert}, C = ${capacity})`).toBe(keep ? 0 : 1);
            if (keep) expect(d.weights[r]).toBe(Math.max(...row(d.probabilities, r, c.choices)));
          }
          const kept = new Array<number>(c.choices).fill(0);
          d.weights.forEach((w, r) => {
            if (w > 0) kept[d.expertIds[r] as number]! += 1;
          });
          for (const n of kept) expect(n).toBeLessThanOrEqual(capacity);
        },
      ),
      FC_PARAMS,
    );
  });

  it('padding rows never consume capacity: inserting them leaves the real rows’ decision unchanged', () => {
    fc.assert(
      fc.property(
        routeCase({ paddingOneIn: 1000 }).chain((c) =>
          fc.tuple(fc.constant(c), fc.uniqueArray(fc.integer({ min: 0, max: c.rows }), { maxLength: 6 }), fc.constantFrom(...FACTORS)),
        ),
        ([c, before, capacityFactor]) => {
          const { padded, realIndex } = withPadding(c, new Set(before));
          const router = createRouter({ kind: 'switch', capacityFactor }, c);
          const plain = runRouter(router, c);
          const withPad = runRouter(router, padded);
          router.dispose();
          realIndex.forEach((p, r) => {
            expect(withPad.expertIds[p]).toBe(plain.expertIds[r]);
            expect(withPad.dropped[p]).toBe(plain.dropped[r]);
            expect(withPad.weights[p]).toBe(plain.weights[r]);
          });
        },
      ),
      FC_PARAMS,
    );
  });

  it('drops the later rows when every row prefers one expert', () => {
    // W_g sends every positive feature row to expert 2: with 8 real rows, E = 4, factor 1 → C = 2.
    const c: RouteCase = {
      rows: 9,
      dim: 2,
      choices: 4,
      features: Array.from({ length: 18 }, (_, i) => 1 + (i % 3)),
      mask: [1, 1, 0, 1, 1, 1, 1, 1, 1],
      taskIds: [],
      tokenIds: [],
      seed: 1,
      gateStd: 0,
    };
    const router = createRouter({ kind: 'switch', capacityFactor: 1 }, c);
    router.variables()[0]?.assign(tf.tensor2d([0, 0, 5, 0, 0, 0, 5, 0], [2, 4]));
    const d = runRouter(router, c);
    router.dispose();
    expect(Array.from(d.expertIds)).toEqual([2, 2, 2, 2, 2, 2, 2, 2, 2]);
    expect(Array.from(d.dropped)).toEqual([0, 0, 0, 1, 1, 1, 1, 1, 1]);
    expect(Array.from(d.weights, (w) => w > 0)).toEqual([true, true, false, false, false, false, false, false, false]);
  });
});
