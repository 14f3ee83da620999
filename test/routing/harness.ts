// Shared by the router tests: a bounded fast-check arbitrary of routing inputs, a runner that routes inside a
// tidy and returns host copies of the decision, and small host-side helpers (softmax, row views).
import { fc } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../../routers/index.js';
import type { Router, RouterInput } from '../../src/routing/router.js';

/** Seeded, bounded runs for every property in test/routing. */
export const FC_PARAMS = { seed: 20240611, numRuns: 30 } as const;

/** One routing input on the host. Shape letters: R rows, D width, E choices. */
export interface RouteCase {
  readonly rows: number;
  readonly dim: number;
  readonly choices: number;
  /** [R·D] row-major. */
  readonly features: readonly number[];
  /** [R], 1 real, 0 padding. */
  readonly mask: readonly number[];
  readonly taskIds: readonly number[];
  readonly tokenIds: readonly number[];
  /** Seed of the router (RouterShape.seed) and of the gate re-initialisation. */
  readonly seed: number;
  /** When > 0, every router variable is re-drawn as N(0, gateStd²) so routing is far from uniform. */
  readonly gateStd: number;
}

export interface CaseBounds {
  readonly minChoices?: number;
  readonly maxChoices?: number;
  readonly minRows?: number;
  readonly maxRows?: number;
  readonly maxDim?: number;
  /** Probability-ish weight of padding rows: a row is padding with chance 1/paddingOneIn. Default 4. */
  readonly paddingOneIn?: number;
}

const featureValue = fc.float({ min: Math.fround(-4), max: Math.fround(4), noNaN: true, noDefaultInfinity: true });

export function routeCase(bounds: CaseBounds = {}): fc.Arbitrary<RouteCase> {
  const { minChoices = 1, maxChoices = 8, minRows = 1, maxRows = 24, maxDim = 8, paddingOneIn = 4 } = bounds;
  return fc
    .record({
      rows: fc.integer({ min: minRows, max: maxRows }),
      dim: fc.integer({ min: 1, max: maxDim }),
      choices: fc.integer({ min: minChoices, max: maxChoices }),
      seed: fc.integer({ min: 0, max: 10_000 }),
      gateStd: fc.constantFrom(0, 0.5, 2),
    })
    .chain(({ rows, dim, choices, seed, gateStd }) =>
      fc.record({
        rows: fc.constant(rows),
        dim: fc.constant(dim),
        choices: fc.constant(choices),
        seed: fc.constant(seed),
        gateStd: fc.constant(gateStd),
        features: fc.array(featureValue, { minLength: rows * dim, maxLength: rows * dim }),
        mask: fc.array(
          fc.integer({ min: 0, max: paddingOneIn - 1 }).map((v) => (v === 0 ? 0 : 1)),
          { minLength: rows, maxLength: rows },
        ),
        taskIds: fc.array(fc.integer({ min: 0, max: 20 }), { minLength: rows, maxLength: rows }),
        tokenIds: fc.array(fc.integer({ min: 0, max: 50_000 }), { minLength: rows, maxLength: rows }),
      }),
    );
}

/** Builds a router through the registry (so the config is validated) and re-draws its variables if asked. */
export function createRouter(
  spec: { readonly kind: string } & Readonly<Record<string, unknown>>,
  c: Pick<RouteCase, 'choices' | 'dim' | 'seed' | 'gateStd'>,
): Router {
  const router = builtinRouters().create(spec, { choices: c.choices, inputDim: c.dim, seed: c.seed }, 'router');
  if (c.gateStd > 0) {
    router.variables().forEach((v, i) => tf.tidy(() => v.assign(tf.randomNormal(v.shape, 0, c.gateStd, 'float32', c.seed * 31 + i))));
  }
  return router;
}

/** Host copy of a decision. Shape letters: R rows, K slots, E choices. */
export interface HostDecision {
  readonly rows: number;
  readonly slots: number;
  readonly choices: number;
  readonly expertIds: Int32Array; // [R·K]
  readonly weights: Float32Array; // [R·K]
  readonly dropped: Float32Array; // [R]
  readonly logits: Float32Array; // [R·E]
  readonly probabilities: Float32Array; // [R·E]
}

export interface RunOptions {
  readonly training?: boolean;
  readonly taskIds?: boolean;
  readonly tokenIds?: boolean;
}

/** The RouterInput of a case (tensors owned by the caller's tidy). */
export function routerInput(c: RouteCase, options: RunOptions = {}): RouterInput {
  return {
    features: tf.tensor2d([...c.features], [c.rows, c.dim]), // [R, D]
    mask: tf.tensor1d([...c.mask]), // [R]
    ...(options.taskIds === true ? { taskIds: tf.tensor1d([...c.taskIds], 'int32') } : {}), // [R]
    ...(options.tokenIds === true ? { tokenIds: tf.tensor1d([...c.tokenIds], 'int32') } : {}), // [R]
    training: options.training ?? false,
  };
}

/** Routes a case inside a tidy and returns host copies; leaves no tensors behind. */
export function runRouter(router: Router, c: RouteCase, options: RunOptions = {}): HostDecision {
  let out: HostDecision | undefined;
  tf.tidy(() => {
    const d = router.route(routerInput(c, options));
    out = {
      rows: c.rows,
      slots: d.expertIds.shape[1],
      choices: d.logits.shape[1],
      expertIds: d.expertIds.dataSync() as Int32Array,
      weights: d.weights.dataSync() as Float32Array,
      dropped: d.dropped.dataSync() as Float32Array,
      logits: d.logits.dataSync() as Float32Array,
      probabilities: d.probabilities.dataSync() as Float32Array,
    };
  });
  if (out === undefined) throw new Error('unreachable');
  return out;
}

/** Row r of a flat [R, n] array. */
export function row<T extends Int32Array | Float32Array>(values: T, r: number, width: number): T {
  return values.subarray(r * width, (r + 1) * width) as T;
}

/** Softmax in float64. */
export function softmax(values: ArrayLike<number>): number[] {
  const xs = Array.from(values);
  const max = Math.max(...xs);
  const exps = xs.map((x) => Math.exp(x - max));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / total);
}

/** The case with its rows reordered: new row i is old row perm[i]. */
export function permuteRows(c: RouteCase, perm: readonly number[]): RouteCase {
  const pick = <T>(values: readonly T[], width: number): T[] => perm.flatMap((p) => values.slice(p * width, (p + 1) * width));
  return {
    ...c,
    features: pick(c.features, c.dim),
    mask: pick(c.mask, 1),
    taskIds: pick(c.taskIds, 1),
    tokenIds: pick(c.tokenIds, 1),
  };
}

/** The case with padding rows inserted before the rows listed in `before` (row indices of the original). */
export function withPadding(c: RouteCase, before: ReadonlySet<number>): { padded: RouteCase; realIndex: number[] } {
  const features: number[] = [];
  const mask: number[] = [];
  const taskIds: number[] = [];
  const tokenIds: number[] = [];
  const realIndex: number[] = [];
  for (let r = 0; r <= c.rows; r++) {
    if (before.has(r)) {
      features.push(...Array.from({ length: c.dim }, (_, i) => ((r + i) % 5) - 2)); // arbitrary padding features
      mask.push(0);
      taskIds.push(0);
      tokenIds.push(0);
    }
    if (r === c.rows) break;
    realIndex.push(mask.length);
    features.push(...c.features.slice(r * c.dim, (r + 1) * c.dim));
    mask.push(c.mask[r] as number);
    taskIds.push(c.taskIds[r] as number);
    tokenIds.push(c.tokenIds[r] as number);
  }
  return { padded: { ...c, rows: mask.length, features, mask, taskIds, tokenIds }, realIndex };
}
