// Registry-driven conformance: the SAME properties run over every kind in BUILTIN_ROUTER_KINDS, with its
// default config and a few variants (task ids / token ids supplied when the kind says it needs them).
//
// Weight rule per kind (for real, non-dropped rows):
//   sum-to-one        weights sum to 1 (top-k, noisy top-k, soft, top-p, task, hash)
//   gate-probability  switch: one slot whose weight is the chosen gate probability, = max_e p[r, e]
//   selected-scores   expert-choice: each non-zero weight equals p[r, e] of its expert; the sum is ≤ 1
//   sum-or-abstain    threshold: weights sum to 1 when σ(max logit) ≥ θ, and are all 0 otherwise
// Permutation: routers without capacity are row-equivariant (permuting rows permutes the decision). The
// capacity routers (switch, expert-choice) drop/pick by row order or rank, so only row-wise quantities are
// equivariant (switch's chosen expert and gate; the logits) and per-expert kept counts are invariant.
import { fc } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { BUILTIN_ROUTER_KINDS } from '../../routers/index.js';
import type { RouterKind } from '../../src/routing/router.js';
import { expectNoLeak } from '../helpers/tensor-asserts.js';
import { FC_PARAMS, createRouter, permuteRows, routeCase, row, runRouter, type HostDecision, type RouteCase, type RunOptions } from './harness.js';

type WeightRule = 'sum-to-one' | 'gate-probability' | 'selected-scores' | 'sum-or-abstain';

interface KindRules {
  readonly weights: WeightRule;
  readonly capacity: boolean;
  readonly variants: readonly {
    readonly spec: { readonly kind: string } & Readonly<Record<string, unknown>>;
    readonly minChoices: number;
    readonly training?: boolean;
  }[];
}

const RULES: Readonly<Record<string, KindRules>> = {
  'top-k': {
    weights: 'sum-to-one',
    capacity: false,
    variants: [
      { spec: { kind: 'top-k' }, minChoices: 2 },
      { spec: { kind: 'top-k', k: 1 }, minChoices: 1 },
      { spec: { kind: 'top-k', k: 3, temperature: 0.5 }, minChoices: 3 },
    ],
  },
  'noisy-top-k': {
    weights: 'sum-to-one',
    capacity: false,
    variants: [
      { spec: { kind: 'noisy-top-k' }, minChoices: 2 },
      { spec: { kind: 'noisy-top-k', k: 1 }, minChoices: 1, training: true },
    ],
  },
  switch: {
    weights: 'gate-probability',
    capacity: true,
    variants: [
      { spec: { kind: 'switch' }, minChoices: 1 },
      { spec: { kind: 'switch', capacityFactor: 0.5 }, minChoices: 1 },
    ],
  },
  'expert-choice': {
    weights: 'selected-scores',
    capacity: true,
    variants: [
      { spec: { kind: 'expert-choice' }, minChoices: 1 },
      { spec: { kind: 'expert-choice', capacityFactor: 2.5 }, minChoices: 1 },
    ],
  },
  soft: {
    weights: 'sum-to-one',
    capacity: false,
    variants: [
      { spec: { kind: 'soft' }, minChoices: 1 },
      { spec: { kind: 'soft', temperature: 0.3 }, minChoices: 1 },
    ],
  },
  'top-p': {
    weights: 'sum-to-one',
    capacity: false,
    variants: [
      { spec: { kind: 'top-p' }, minChoices: 1 },
      { spec: { kind: 'top-p', p: 0.5, maxExperts: 2 }, minChoices: 1 },
      { spec: { kind: 'top-p', p: 1 }, minChoices: 1 },
    ],
  },
  task: {
    weights: 'sum-to-one',
    capacity: false,
    variants: [
      { spec: { kind: 'task' }, minChoices: 1 },
      { spec: { kind: 'task', mapping: { '1': 0, '7': 0 } }, minChoices: 1 },
    ],
  },
  hash: { weights: 'sum-to-one', capacity: false, variants: [{ spec: { kind: 'hash' }, minChoices: 1 }] },
  threshold: {
    weights: 'sum-or-abstain',
    capacity: false,
    variants: [
      { spec: { kind: 'threshold' }, minChoices: 1 },
      { spec: { kind: 'threshold', k: 2, threshold: 0.4, learnThreshold: true }, minChoices: 2, training: true },
    ],
  },
};

function runOptions(kind: RouterKind, training: boolean): RunOptions {
  return { training, taskIds: kind.needsTaskIds === true, tokenIds: kind.needsTokenIds === true };
}

function checkDecision(d: HostDecision, c: RouteCase, rule: WeightRule): void {
  const { rows, slots: K, choices: E } = d;
  expect(E).toBe(c.choices);
  expect(d.expertIds.length).toBe(rows * K);
  expect(d.weights.length).toBe(rows * K);
  expect(d.dropped.length).toBe(rows);
  for (const id of d.expertIds) expect(id >= 0 && id < E, `expert id ${id} outside [0, ${E})`).toBe(true);
  for (const w of d.weights) expect(Number.isFinite(w) && w >= 0, `weight ${w}`).toBe(true);
  for (const v of d.logits) expect(Number.isFinite(v), `logit ${v}`).toBe(true);
  for (let r = 0; r < rows; r++) {
    const weights = row(d.weights, r, K);
    const ids = row(d.expertIds, r, K);
    const p = row(d.probabilities, r, E);
    const dropped = d.dropped[r] as number;
    expect(dropped === 0 || dropped === 1, `dropped ${dropped}`).toBe(true);
    expect(Math.abs(p.reduce((a, b) => a + b, 0) - 1), `row ${r} probabilities sum`).toBeLessThan(1e-5);
    const total = weights.reduce((a, b) => a + b, 0);
    if (c.mask[r] === 0) {
      expect(dropped, `padding row ${r} dropped`).toBe(0);
      expect(total, `padding row ${r} weights`).toBe(0);
      continue;
    }
    if (dropped === 1) {
      expect(total, `dropped row ${r} weights`).toBe(0);
      continue;
    }
    if (rule === 'sum-or-abstain') {
      expect(total === 0 || Math.abs(total - 1) <= 1e-5, `row ${r} weights sum ${total} (1, or 0 when abstaining)`).toBe(true);
    } else if (rule === 'sum-to-one') {
      expect(Math.abs(total - 1), `row ${r} weights sum ${total}`).toBeLessThanOrEqual(1e-5);
    } else if (rule === 'gate-probability') {
      expect(K).toBe(1);
      expect(Math.abs((weights[0] as number) - Math.max(...p)), `row ${r}: switch weight = max probability`).toBeLessThanOrEqual(1e-6);
      expect(p[ids[0] as number]).toBe(Math.max(...p));
    } else {
      expect(total).toBeLessThanOrEqual(1 + 1e-5);
      weights.forEach((w, k) => {
        if (w > 0) expect(Math.abs(w - (p[ids[k] as number] as number)), `row ${r} slot ${k}: weight = score`).toBeLessThanOrEqual(1e-7);
      });
    }
  }
}

/** Kept (non-zero weight) assignments per choice, over real rows. */
function keptPerChoice(d: HostDecision): number[] {
  const counts = new Array<number>(d.choices).fill(0);
  d.weights.forEach((w, i) => {
    if (w > 0) counts[d.expertIds[i] as number]! += 1;
  });
  return counts;
}

const permutation = (c: RouteCase): fc.Arbitrary<number[]> =>
  fc.array(fc.nat(), { minLength: c.rows, maxLength: c.rows }).map((keys) =>
    keys
      .map((k, i) => [k, i] as const)
      .sort((a, b) => a[0] - b[0] || a[1] - b[1])
      .map(([, i]) => i),
  );

describe('every built-in router kind has conformance variants', () => {
  it('lists them', () => {
    expect(Object.keys(RULES).sort()).toEqual(BUILTIN_ROUTER_KINDS.map((k) => k.kind).sort());
  });
});

describe.each(BUILTIN_ROUTER_KINDS.map((kind) => [kind.kind, kind] as const))('router %s', (name, kind) => {
  const rules = RULES[name];
  if (rules === undefined) throw new Error(`add conformance variants for router kind '${name}' in router-properties.test.ts`);

  describe.each(rules.variants.map((v) => [JSON.stringify(v.spec) + (v.training === true ? ' (training)' : ''), v] as const))('%s', (_label, variant) => {
    const training = variant.training ?? false;
    const cases = routeCase({ minChoices: variant.minChoices });

    it('decides valid ids, finite non-negative weights, zero weights on padding and dropped rows', () => {
      fc.assert(
        fc.property(cases, (c) => {
          const router = createRouter(variant.spec, c);
          try {
            checkDecision(runRouter(router, c, runOptions(kind, training)), c, rules.weights);
          } finally {
            router.dispose();
          }
        }),
        FC_PARAMS,
      );
    });

    it(
      rules.capacity
        ? 'keeps row-wise choices under a row permutation (capacity: per-choice counts invariant)'
        : 'permutes the decision when the rows are permuted',
      () => {
        fc.assert(
          fc.property(
            cases.chain((c) => fc.tuple(fc.constant(c), permutation(c))),
            ([c, perm]) => {
              const router = createRouter(variant.spec, c);
              try {
                const options = runOptions(kind, false); // noise only in training: evaluate deterministically
                const base = runRouter(router, c, options);
                const moved = runRouter(router, permuteRows(c, perm), options);
                const { slots: K, choices: E } = base;
                perm.forEach((from, to) => {
                  expect(Array.from(row(moved.logits, to, E))).toEqual(Array.from(row(base.logits, from, E)));
                  if (rules.capacity) {
                    if (name === 'switch') expect(row(moved.expertIds, to, K)[0]).toBe(row(base.expertIds, from, K)[0]);
                    return;
                  }
                  expect(Array.from(row(moved.expertIds, to, K))).toEqual(Array.from(row(base.expertIds, from, K)));
                  expect(Array.from(row(moved.weights, to, K))).toEqual(Array.from(row(base.weights, from, K)));
                  expect(moved.dropped[to]).toBe(base.dropped[from]);
                });
                if (rules.capacity) expect(keptPerChoice(moved)).toEqual(keptPerChoice(base));
              } finally {
                router.dispose();
              }
            },
          ),
          FC_PARAMS,
        );
      },
    );

    it('when it describes itself as a linear top-k gate (linearTopK), that is exactly its inference decision', () => {
      fc.assert(
        fc.property(cases, (c) => {
          const router = createRouter(variant.spec, c);
          try {
            const linear = router.linearTopK?.();
            if (linear === undefined) return;
            const decision = runRouter(router, c, runOptions(kind, false));
            const [ids, weights] = tf.tidy(() => {
              const scores = tf.matMul(tf.tensor2d([...c.features], [c.rows, c.dim]), linear.gate); // [R, E]
              const logits = linear.temperature === 1 ? scores : tf.div(scores, linear.temperature); // [R, E]
              const top = tf.topk(logits, linear.k); // [R, K]
              const w = tf.mul(tf.softmax(top.values), tf.expandDims(tf.tensor1d([...c.mask]), 1)); // [R, K]
              return [top.indices.dataSync(), w.dataSync()];
            });
            expect(Array.from(decision.expertIds)).toEqual(Array.from(ids));
            expect(Array.from(decision.weights)).toEqual(Array.from(weights));
          } finally {
            router.dispose();
          }
        }),
        FC_PARAMS,
      );
    });

    it('leaks no tensors (route in a tidy, then dispose the router)', () => {
      fc.assert(
        fc.property(cases, (c) => {
          expectNoLeak(() => {
            const router = createRouter(variant.spec, c);
            runRouter(router, c, runOptions(kind, training));
            runRouter(router, c, runOptions(kind, !training));
            router.dispose();
          });
        }),
        { ...FC_PARAMS, numRuns: 10 },
      );
      expect(tf.memory().numTensors).toBeGreaterThanOrEqual(0);
    });
  });
});
