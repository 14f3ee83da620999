/**
 * Top-k router, as in Mixtral (Jiang et al. 2024, "Mixtral of Experts"):
 *   logits = x·W_g / τ,  p = softmax(logits),  keep the k largest,
 *   g = softmax over the k chosen logits  (= the chosen p renormalised to sum 1).
 *
 * This file also exports the small gating helpers the other gated routers share (W_g creation, input
 * checks, discrete selections without a gradient, masked renormalisation, slot read-back).
 *
 * Shape letters: R rows, D feature width, E choices (the null expert, when enabled, is choice E−1), K slots.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { ConfigError, ShapeError, formatShape } from '../src/errors.js';
import type { LinearTopK, Router, RouterInput, RouterKind, RouterShape, RoutingDecision } from '../src/routing/router.js';

// ---------------------------------------------------------------------------------------------------------
// Shared gating helpers
// ---------------------------------------------------------------------------------------------------------

/**
 * W_g starts as N(0, 0.02²), seeded by shape.seed. Zeros would give exactly uniform probabilities, and then
 * every top-k tie is broken by index (all rows pick experts 0..k−1 at step 0, identically at every site);
 * a small random init breaks those ties while keeping routing near uniform (Fedus et al. 2021 §2.4 also
 * recommend a reduced init scale for router stability).
 */
export const GATE_INIT_STD = 0.02;

/** Added to the logits of unchosen choices before a renormalising softmax: exp(−1e9) is exactly 0 in float32. */
const MASKED_LOGIT = -1e9;

let nextRouterId = 0;

/**
 * A fresh variable-name prefix per router instance (tfjs variable names must be unique in the engine),
 * e.g. `router/top-k/3`.
 */
export function routerScope(kind: string): string {
  return `router/${kind}/${nextRouterId++}`;
}

/** Creates a trainable [D, E] gating matrix: `normal` (std GATE_INIT_STD, seeded) or `zeros`. */
export function createGateWeight(shape: RouterShape, name: string, init: 'normal' | 'zeros', seed = shape.seed): tf.Variable<tf.Rank.R2> {
  const initial: tf.Tensor2D =
    init === 'zeros'
      ? tf.zeros([shape.inputDim, shape.choices]) // [D, E]
      : tf.randomNormal([shape.inputDim, shape.choices], 0, GATE_INIT_STD, 'float32', seed); // [D, E]
  const variable = tf.variable(initial, true, name); // [D, E], shares initial's buffer
  initial.dispose();
  return variable;
}

/**
 * What every gated router shares: its kind, E, a fresh variable scope, the gating matrix W_g [D, E] (N(0,
 * GATE_INIT_STD²), seeded) and its disposal. Subclasses only decide (`route`); one with more variables
 * extends variables() and dispose().
 */
export abstract class GatedRouter implements Router {
  readonly choices: number;
  /** Variable-name prefix of this instance (routerScope), for any further variables. */
  protected readonly scope: string;
  protected readonly gate: tf.Variable<tf.Rank.R2>; // W_g [D, E]

  protected constructor(
    readonly kind: string,
    protected readonly shape: RouterShape,
  ) {
    this.choices = shape.choices;
    this.scope = routerScope(kind);
    this.gate = createGateWeight(shape, `${this.scope}/W_g`, 'normal');
  }

  abstract route(input: RouterInput): RoutingDecision;

  variables(): readonly tf.Variable[] {
    return [this.gate];
  }

  dispose(): void {
    this.gate.dispose();
  }
}

/** Checks features [R, D] against the router's D and the mask [R] against R (host-side, free). */
export function checkRouterInput(input: RouterInput, shape: RouterShape, kind: string): number {
  const [rows, dim] = input.features.shape;
  if (input.features.rank !== 2 || dim !== shape.inputDim) {
    throw new ShapeError(`${kind} router expects features [R, ${shape.inputDim}], got ${formatShape(input.features.shape)}`, {
      path: 'router.features',
      hint: 'Routing features must have the width the router was created with',
    });
  }
  if (input.mask.rank !== 1 || input.mask.shape[0] !== rows) {
    throw new ShapeError(`${kind} router expects mask [${rows}], got ${formatShape(input.mask.shape)}`, { path: 'router.mask' });
  }
  return rows;
}

/** logits = x·W_g / τ. */
export function gateLogits(features: tf.Tensor2D, gate: tf.Variable<tf.Rank.R2>, temperature: number): tf.Tensor2D {
  const scores: tf.Tensor2D = tf.matMul(features, gate); // [R, E]
  return temperature === 1 ? scores : tf.div<tf.Tensor2D>(scores, temperature); // [R, E]
}

/**
 * Runs `fn` with no gradient path through it: its ops are not recorded on the gradient tape, and the
 * gradient with respect to each input is zero. Selections (TopK, comparisons) have no gradient in tfjs, so
 * computing them here keeps `tf.variableGrads` working through the smooth path of a decision.
 */
export function discrete<I extends tf.Tensor[], T extends tf.Tensor>(inputs: [...I], fn: (...xs: I) => T): T {
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const xs = args.slice(0, inputs.length) as I;
    return { value: fn(...xs), gradFunc: () => xs.map((x) => tf.zeros(x.shape)) }; // gradients are float32, even for int inputs
  });
  return op(...inputs);
}

/**
 * float32 one-hot of int32 ids: [...] → [..., E]. Not tf.oneHot(…, 'float32'): the wasm OneHot kernel writes
 * the integer bit pattern into a float buffer (1 reads as 1.4e−45); and tf.oneHot rejects depth 1 (one choice).
 */
export function oneHotFloat<T extends tf.Tensor>(ids: tf.Tensor, choices: number): T {
  if (choices === 1) return tf.onesLike(tf.cast(tf.expandDims(ids, -1), 'float32')) as T; // [..., 1]
  return tf.cast(tf.oneHot(ids, choices), 'float32') as T; // [..., E]
}

/** Ids of the k largest entries per row, descending (ties: lower index first). */
export function topKIds(scores: tf.Tensor2D, k: number): tf.Tensor2D {
  return discrete([scores], (s) => tf.topk(s, k).indices); // [R, K] int32
}

/** Multi-hot of the chosen ids: [R, K] ids → [R, E] with 1 where chosen (ids in a row must be distinct). */
export function chosenMask(ids: tf.Tensor2D, choices: number): tf.Tensor2D {
  return tf.sum(oneHotFloat(ids, choices), 1); // [R, E]
}

/** softmax over the kept logits only: kept [R, E] 0/1 → [R, E], zero where not kept, rows sum to 1. */
export function renormalisedSoftmax(logits: tf.Tensor2D, kept: tf.Tensor2D): tf.Tensor2D {
  const masked: tf.Tensor2D = tf.add(logits, tf.mul(tf.sub(1, kept), MASKED_LOGIT)); // [R, E]
  return tf.softmax(masked); // [R, E]
}

/** Reads per-choice values back into slots with a one-hot product (differentiable on every backend). */
export function readSlots(values: tf.Tensor2D, ids: tf.Tensor2D, choices: number): tf.Tensor2D {
  const slotOneHot = oneHotFloat(ids, choices); // [R, K, E]
  return tf.sum(tf.mul(slotOneHot, tf.expandDims(values, 1)), 2); // [R, K]
}

/** Zeroes the rows of padding: t [R, K] · mask [R]. */
export function maskRows(t: tf.Tensor2D, mask: tf.Tensor1D): tf.Tensor2D {
  return tf.mul(t, tf.expandDims(mask, 1)); // [R, K]
}

/** Slot ids 0..E−1 on every row, for dense routers (soft, expert-choice). */
export function allChoiceIds(rows: number, choices: number): tf.Tensor2D {
  return tf.tile(tf.expandDims<tf.Tensor2D>(tf.range(0, choices, 1, 'int32'), 0), [rows, 1]); // [R, E] int32
}

/**
 * The top-k decision from `scores` (the logits the decision uses, noisy or not): ids of the k largest,
 * weights = softmax over the chosen scores, zero on padding; `logits` is reported as given (before noise).
 *
 * Training takes the differentiable path (masked softmax read back through one-hot products, since TopK
 * has no gradient in tfjs). Inference softmaxes TopK's values directly: the same weights (up to float
 * rounding) in a handful of kernels instead of ~20 — routing cost per site is dominated by kernel count.
 */
export function topKDecision(logits: tf.Tensor2D, scores: tf.Tensor2D, mask: tf.Tensor1D, k: number, training = true): RoutingDecision {
  const [rows, choices] = scores.shape;
  if (!training) {
    const top = tf.topk(scores, k); // values, indices [R, K]
    return {
      expertIds: top.indices, // [R, K] int32
      weights: maskRows(tf.softmax(top.values), mask), // [R, K]
      dropped: tf.zeros([rows]), // [R]
      logits,
      probabilities: tf.softmax(scores), // [R, E]
    };
  }
  const expertIds = topKIds(scores, k); // [R, K] int32
  const kept = chosenMask(expertIds, choices); // [R, E]
  const gates = renormalisedSoftmax(scores, kept); // [R, E]
  const weights = maskRows(readSlots(gates, expertIds, choices), mask); // [R, K]
  return {
    expertIds,
    weights,
    dropped: tf.zeros([rows]), // [R]
    logits,
    probabilities: tf.softmax(scores), // [R, E]
  };
}

/**
 * Expert capacity ceil(realRows · factor / E) on device, from the mask (no host round trip). The product is
 * shrunk by a relative 1e-6 first so float32 rounding (e.g. 10 · 1.2 / 3 = 4.0000001) cannot add a slot.
 */
export function capacityOf(mask: tf.Tensor1D, factor: number, choices: number): tf.Scalar {
  return tf.ceil(tf.mul<tf.Scalar>(tf.sum(mask), (factor / choices) * (1 - 1e-6))); // []
}

/** Throws a ConfigError unless k ≤ E. */
export function checkK(kind: string, k: number, choices: number): void {
  if (k > choices) {
    throw new ConfigError(`${kind} router: router.k = ${k} is larger than the number of choices E = ${choices}`, {
      path: 'router.k',
      hint: `Use k ≤ E = ${choices} (E counts the null expert when the route enables one)`,
    });
  }
}

// ---------------------------------------------------------------------------------------------------------
// The top-k router
// ---------------------------------------------------------------------------------------------------------

export const TopKRouterConfig = z
  .object({
    kind: z.literal('top-k'),
    /** Experts per row. */
    k: z.number().int().min(1).default(2),
    /** Softmax temperature τ: logits = x·W_g / τ (changes the weights, never the choice). */
    temperature: z.number().positive().default(1),
  })
  .strict()
  .readonly();
export type TopKRouterConfig = z.infer<typeof TopKRouterConfig>;

class TopKRouter extends GatedRouter {
  constructor(
    private readonly config: TopKRouterConfig,
    shape: RouterShape,
  ) {
    checkK('top-k', config.k, shape.choices);
    super('top-k', shape);
  }

  route(input: RouterInput): RoutingDecision {
    checkRouterInput(input, this.shape, this.kind);
    const logits = gateLogits(input.features, this.gate, this.config.temperature); // [R, E]
    return topKDecision(logits, logits, input.mask, this.config.k, input.training);
  }

  linearTopK(): LinearTopK {
    return { gate: this.gate, temperature: this.config.temperature, k: this.config.k };
  }
}

export const topKRouterKind: RouterKind<TopKRouterConfig> = {
  kind: 'top-k',
  schema: TopKRouterConfig,
  create: (config, shape) => new TopKRouter(config, shape),
};
