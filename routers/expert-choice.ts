/**
 * Expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing", §3.1):
 *   S = softmax(x·W_g) over experts per row,  C = ceil(realRows · capacityFactor / E),
 * each expert takes the C real rows with the highest score S[:, e]; a row may get 0..E experts. The gate of
 * a selected (row, expert) is its score S[r, e] (not renormalised, as in the paper), so a row's weights sum
 * to at most 1. Rows no expert picked are `dropped` (base output only).
 *
 * Output: K = E slots per row, expertIds[r] = 0..E−1, weights[r, e] = S[r, e] where selected, else 0.
 *
 * The per-expert top-C is done on device without knowing C on the host: sort each expert's column
 * (TopK with k = R), invert the permutation with a second TopK to get each row's rank, keep rank < C.
 * Padding rows score −1 so they rank last, and are masked out besides: they never take capacity.
 * Ties between rows go to the lower row index.
 *
 * Shape letters: R rows, D feature width, E choices, K = E slots.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import type { RouterInput, RouterKind, RouterShape, RoutingDecision } from '../src/routing/router.js';
import { allChoiceIds, capacityOf, checkRouterInput, discrete, GatedRouter, gateLogits } from '../src/routing/gating.js';

export const ExpertChoiceRouterConfig = z
  .object({
    kind: z.literal('expert-choice'),
    /** C = ceil(realRows · capacityFactor / E): the mean number of experts per row (the paper's c). */
    capacityFactor: z.number().positive().default(1),
  })
  .strict()
  .readonly();
export type ExpertChoiceRouterConfig = z.infer<typeof ExpertChoiceRouterConfig>;

/** 1 where expert e picked row r: scores [R, E], mask [R] → [R, E]. */
export function expertChoiceSelection(scores: tf.Tensor2D, mask: tf.Tensor1D, capacityFactor: number): tf.Tensor2D {
  return discrete([scores, mask], (s, m) => {
    const [rows, choices] = s.shape;
    const columns = tf.transpose(tf.where(tf.greater(tf.expandDims(m, 1), 0), s, tf.fill([rows, choices], -1))); // [E, R]
    const order = tf.topk(columns, rows).indices; // [E, R]: row at each rank, best first
    const rank = tf.topk(tf.neg(tf.cast(order, 'float32')), rows).indices; // [E, R]: rank of each row
    const capacity = capacityOf(m, capacityFactor, choices); // []
    const picked: tf.Tensor2D = tf.mul(tf.cast(tf.less(rank, capacity), 'float32'), tf.expandDims(m, 0)); // [E, R]
    return tf.transpose<tf.Tensor2D>(picked); // [R, E]
  });
}

class ExpertChoiceRouter extends GatedRouter {
  constructor(
    private readonly config: ExpertChoiceRouterConfig,
    shape: RouterShape,
  ) {
    super('expert-choice', shape);
  }

  route(input: RouterInput): RoutingDecision {
    const rows = checkRouterInput(input, this.shape, this.kind);
    const logits = gateLogits(input.features, this.gate, 1); // [R, E]
    const probabilities = tf.softmax(logits); // [R, E]
    const selected = expertChoiceSelection(probabilities, input.mask, this.config.capacityFactor); // [R, E]
    const experts = tf.sum(selected, 1); // [R], experts per row
    return {
      expertIds: allChoiceIds(rows, this.choices), // [R, E]
      weights: tf.mul(probabilities, selected), // [R, E]
      dropped: discrete([experts, input.mask], (n, m) => tf.mul(tf.cast(tf.equal(n, 0), 'float32'), m)), // [R]
      logits,
      probabilities,
    };
  }
}

export const expertChoiceRouterKind: RouterKind<ExpertChoiceRouterConfig> = {
  kind: 'expert-choice',
  couplesRows: true,
  schema: ExpertChoiceRouterConfig,
  create: (config, shape) => new ExpertChoiceRouter(config, shape),
};
