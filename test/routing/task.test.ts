// Task router: expert = mapping[taskId] or taskId mod E, weight 1, no variables; task ids are required.
import { fc } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { taskRouterKind } from '../../routers/task.js';
import { ConfigError, RoutedPeftError } from '../../src/errors.js';
import { FC_PARAMS, createRouter, routeCase, runRouter } from './harness.js';

describe('task router', () => {
  it('routes taskId mod E, or the mapped expert, with weight 1 (0 on padding) and one-hot probabilities', () => {
    fc.assert(
      fc.property(
        routeCase().chain((c) =>
          fc.tuple(fc.constant(c), fc.dictionary(fc.integer({ min: 0, max: 20 }).map(String), fc.integer({ min: 0, max: c.choices - 1 }), { maxKeys: 4 })),
        ),
        ([c, mapping]) => {
          const router = createRouter({ kind: 'task', mapping }, c);
          expect(router.variables()).toEqual([]);
          const d = runRouter(router, c, { taskIds: true });
          const again = runRouter(router, c, { taskIds: true });
          router.dispose();
          expect(Array.from(again.expertIds)).toEqual(Array.from(d.expertIds));
          for (let r = 0; r < c.rows; r++) {
            const task = c.taskIds[r] as number;
            const expected = mapping[String(task)] ?? task % c.choices;
            expect(d.expertIds[r], `row ${r}, task ${task}`).toBe(expected);
            expect(d.weights[r]).toBe(c.mask[r]);
            for (let e = 0; e < c.choices; e++) expect(d.probabilities[r * c.choices + e]).toBe(e === expected ? 1 : 0);
          }
        },
      ),
      FC_PARAMS,
    );
  });

  it('declares that it needs task ids, and says how to pass them when they are missing', () => {
    expect(taskRouterKind.needsTaskIds).toBe(true);
    const c = { rows: 2, dim: 2, choices: 3, features: [0, 0, 0, 0], mask: [1, 1], taskIds: [0, 1], tokenIds: [0, 0], seed: 0, gateStd: 0 };
    const router = createRouter({ kind: 'task' }, c);
    expect(() => runRouter(router, c)).toThrow(RoutedPeftError);
    expect(() => runRouter(router, c)).toThrow(/needs task ids.*`taskIds`/);
    router.dispose();
  });

  it('rejects a mapping to an expert ≥ E, and task ids that are not non-negative integers', () => {
    const shape = { choices: 3, dim: 2, seed: 0, gateStd: 0 };
    expect(() => createRouter({ kind: 'task', mapping: { '4': 3 } }, shape)).toThrow(ConfigError);
    expect(() => createRouter({ kind: 'task', mapping: { '4': 3 } }, shape)).toThrow(/router\.mapping\.4/);
    expect(() => createRouter({ kind: 'task', mapping: { abc: 0 } }, shape)).toThrow(/router\.mapping/);
  });
});
