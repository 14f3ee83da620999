/**
 * Top-p ("dynamic") routing, as in MixLoRA (Li et al. 2024) after Huang et al. 2024 ("Harder Tasks Need
 * More Experts: Dynamic Routing in MoE Models"): per row, sort p = softmax(x·W_g) descending and keep the
 * smallest prefix whose sum reaches p_threshold (optionally at most `maxExperts`); the kept probabilities are
 * renormalised to sum 1 (softmax over the kept logits).
 *
 * Output: K = E slots per row, ids in descending probability order; slots past the prefix have weight 0.
 * A sorted slot j is kept when the sum of the slots before it is still < p (an exclusive cumsum), which is
 * exactly "the smallest prefix with sum ≥ p". With p = 1, float rounding may leave out choices whose
 * probability is below float32 resolution (≈ 6e−8).
 *
 * Shape letters: R rows, D feature width, E choices, K = E slots.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import type { RouterInput, RouterKind, RouterShape, RoutingDecision } from '../src/routing/router.js';
import { checkRouterInput, discrete, GatedRouter, gateLogits, maskRows, oneHotFloat, readSlots, renormalisedSoftmax, topKIds } from '../src/routing/gating.js';

export const TopPRouterConfig = z
  .object({
    kind: z.literal('top-p'),
    /** Probability mass to cover, 0 < p ≤ 1. */
    p: z.number().gt(0).lte(1).default(0.8),
    /** Optional cap on the experts per row (values above E mean no cap). */
    maxExperts: z.number().int().min(1).optional(),
  })
  .strict()
  .readonly();
export type TopPRouterConfig = z.infer<typeof TopPRouterConfig>;

/** 1 where a choice is in the row's top-p prefix: probabilities [R, E] → [R, E]. */
export function topPKept(probabilities: tf.Tensor2D, threshold: number, maxExperts: number): tf.Tensor2D {
  return discrete([probabilities], (p) => {
    const choices = p.shape[1];
    const sorted = tf.topk(p, choices); // values, indices [R, E], descending
    const before = tf.cumsum(sorted.values, 1, true); // [R, E], mass of the slots before each slot
    const inPrefix = tf.cast(tf.less(before, threshold), 'float32'); // [R, E]
    const underCap = tf.cast(tf.less(tf.range(0, choices, 1, 'int32'), maxExperts), 'float32'); // [E]
    const keptSlots = tf.mul(inPrefix, underCap); // [R, E], by sorted slot
    const slotOneHot = oneHotFloat(sorted.indices, choices); // [R, E(slot), E(choice)]
    return tf.sum(tf.mul(slotOneHot, tf.expandDims(keptSlots, 2)), 1); // [R, E], by choice
  });
}

class TopPRouter extends GatedRouter {
  constructor(
    private readonly config: TopPRouterConfig,
    shape: RouterShape,
  ) {
    super('top-p', shape);
  }

  route(input: RouterInput): RoutingDecision {
    const rows = checkRouterInput(input, this.shape, this.kind);
    const E = this.choices;
    const logits = gateLogits(input.features, this.gate, 1); // [R, E]
    const probabilities = tf.softmax(logits); // [R, E]
    const expertIds = topKIds(probabilities, E); // [R, E] int32, descending
    const kept = topPKept(probabilities, this.config.p, this.config.maxExperts ?? E); // [R, E]
    const gates = renormalisedSoftmax(logits, kept); // [R, E]
    return {
      expertIds,
      weights: maskRows(readSlots(gates, expertIds, E), input.mask), // [R, E]
      dropped: tf.zeros([rows]), // [R]
      logits,
      probabilities,
    };
  }
}

export const topPRouterKind: RouterKind<TopPRouterConfig> = {
  kind: 'top-p',
  schema: TopPRouterConfig,
  create: (config, shape) => new TopPRouter(config, shape),
};
