/**
 * The gating library every router and every fast path uses: W_g creation, input checks, selections without
 * a gradient, masked renormalisation, slot read-back, expert capacity — and the one gating function,
 *
 *   scores → top-k → weights (softmax over the k chosen, or the chosen probabilities) → capacity → mask,
 *
 * `topKSlots` (with `topKDecision` adding what auxiliary losses read). Top-k, noisy top-k and switch routers
 * decide with it; the fused inference path (routing/fused-group.ts) calls it on all routers of a site group at
 * once, and routing/host-gating.ts is the same function for decisions made on the host (wasm, cpu).
 *
 * The null expert, when a route has one, is choice E−1 like any other: chosen, weighted and counted against
 * capacity the same way; the combining side simply has no module for it.
 *
 * Shape letters: R rows, D feature width, E choices, K slots.
 */
import * as tf from '@tensorflow/tfjs';
import { oneHotFloat } from '../base/one-hot.js';
import { ConfigError, ShapeError, formatShape } from '../errors.js';
import type { Router, RouterInput, RouterShape, RoutingDecision } from './router.js';
import { webgpuTopKSlots } from './webgpu-gating.js';

/** A backend's own inference top-k (renormalised softmax over the chosen, row mask applied); undefined hands back. */
export type TopKSlotsKernel = (scores: tf.Tensor2D, mask: tf.Tensor1D | undefined, k: number) => { expertIds: tf.Tensor2D; weights: tf.Tensor2D } | undefined;

/** The library's WebGPU kernel (webgpu-gating.ts) is registered from the start; users may replace or remove it. */
const topKKernels = new Map<string, TopKSlotsKernel>([['webgpu', webgpuTopKSlots]]);

/** Registers `kernel` as the inference top-k of `topKSlots` on `backend` (tf.getBackend() name). */
export function registerTopKSlotsKernel(backend: string, kernel: TopKSlotsKernel): void {
  topKKernels.set(backend, kernel);
}

/** Removes the top-k kernel registered for `backend`, if any. */
export function unregisterTopKSlotsKernel(backend: string): void {
  topKKernels.delete(backend);
}

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

export { oneHotFloat } from '../base/one-hot.js';

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

export interface TopKGateOptions {
  readonly k: number;
  /**
   * `renormalised` (Mixtral; default): softmax over the k chosen scores, so a row's weights sum to 1.
   * `probability` (Switch): the chosen entries of softmax over all scores, not renormalised.
   */
  readonly weighting?: 'renormalised' | 'probability' | undefined;
  /**
   * Switch expert capacity (k = 1): rows past C = ceil(real rows · factor / E) of their expert, in row order, are
   * dropped (weight 0; they keep only the base output). Padding rows never consume capacity.
   */
  readonly capacityFactor?: number | undefined;
  /** Training takes the differentiable path; inference the one with fewest kernels (same values up to rounding). */
  readonly training: boolean;
}

/** The chosen slots of the one gating function: ids [R, K] int32, weights [R, K] (0 on padding and dropped rows), kept [R]. */
export interface TopKSlots {
  readonly expertIds: tf.Tensor2D;
  readonly weights: tf.Tensor2D;
  /** 1 for real rows within capacity; undefined without a capacity (every real row is kept). */
  readonly kept: tf.Tensor1D | undefined;
}

/**
 * The one gating function: the k largest scores per row (ties: lower index first), weighted, capacity applied,
 * padding zeroed (mask undefined: every row is real). Training reads the weights back through one-hot products (TopK has no gradient in tfjs);
 * inference softmaxes TopK's values directly: the same weights in a handful of kernels instead of ~20.
 */
export function topKSlots(scores: tf.Tensor2D, mask: tf.Tensor1D | undefined, options: TopKGateOptions): TopKSlots {
  const choices = scores.shape[1];
  const { k, weighting = 'renormalised', capacityFactor } = options;
  if (capacityFactor !== undefined && k !== 1) throw new ConfigError(`expert capacity needs k = 1, got k = ${k}`, { path: 'router.k' });
  let expertIds: tf.Tensor2D; // [R, K] int32
  let weights: tf.Tensor2D; // [R, K]
  if (weighting === 'probability') {
    expertIds = topKIds(scores, k);
    weights = readSlots(tf.softmax(scores), expertIds, choices); // [R, K]
  } else if (!options.training) {
    const custom = capacityFactor === undefined ? topKKernels.get(tf.getBackend())?.(scores, mask, k) : undefined;
    if (custom !== undefined) return { ...custom, kept: undefined }; // mask already applied
    const top = tf.topk(scores, k); // values, indices [R, K]
    expertIds = top.indices;
    weights = tf.softmax(top.values); // [R, K]
  } else {
    expertIds = topKIds(scores, k);
    const gates = renormalisedSoftmax(scores, chosenMask(expertIds, choices)); // [R, E]
    weights = readSlots(gates, expertIds, choices); // [R, K]
  }
  if (capacityFactor === undefined) return { expertIds, weights: mask === undefined ? weights : maskRows(weights, mask), kept: undefined };
  if (mask === undefined) throw new Error('expert capacity needs the row mask');
  const kept = withinCapacity(expertIds, mask, choices, capacityFactor); // [R]
  return { expertIds, weights: maskRows(weights, kept), kept };
}

/**
 * A routing decision from the one gating function: `scores` are the logits the decision uses (noisy or not),
 * `logits` are reported as given (before noise, for the z-loss); probabilities = softmax(scores).
 */
export function topKDecision(logits: tf.Tensor2D, scores: tf.Tensor2D, mask: tf.Tensor1D, options: TopKGateOptions): RoutingDecision {
  const { expertIds, weights, kept } = topKSlots(scores, mask, options);
  return {
    expertIds,
    weights,
    dropped: kept === undefined ? tf.zeros([scores.shape[0]]) : tf.mul(mask, tf.sub(1, kept)), // [R]
    logits,
    probabilities: tf.softmax(scores), // [R, E]
  };
}

/**
 * 1 for real rows within their expert's capacity, 0 for rows past it and for padding (row order decides), as a
 * running count (cumsum over rows) of a one-hot [R, E] that is zero on padding. ids [R, 1] int32, mask [R] → [R].
 */
export function withinCapacity(ids: tf.Tensor2D, mask: tf.Tensor1D, choices: number, capacityFactor: number): tf.Tensor1D {
  return discrete([ids, mask], (idsIn, maskIn) => {
    const assigned = tf.mul(oneHotFloat(tf.squeeze(idsIn, [1]), choices), tf.expandDims(maskIn, 1)); // [R, E]
    const position = tf.sum(tf.mul(tf.cumsum(assigned, 0), assigned), 1); // [R], 1-based place in its expert's queue; 0 on padding
    const capacity = capacityOf(maskIn, capacityFactor, choices); // []
    return tf.mul(tf.cast(tf.lessEqual(position, capacity), 'float32'), maskIn); // [R]
  });
}

/**
 * Dense gates [R, E] from a decision: slot weights scattered onto their choices (a one-hot product, so the
 * gradient reaches the weights on every backend). Dropped and padding rows already carry zero weights (the
 * router contract; property-tested for every router), so they get all-zero gates.
 */
export function decisionGates(decision: RoutingDecision, choices: number): tf.Tensor2D {
  if (choices === 1) return tf.sum(decision.weights, 1, true); // [R, 1]
  return tf.sum(tf.mul(oneHotFloat<tf.Tensor3D>(decision.expertIds, choices), tf.expandDims(decision.weights, 2)), 1); // [R, E]
}
