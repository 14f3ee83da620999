/**
 * Switch routing (Fedus et al. 2021, "Switch Transformers", §2.1–2.2): top-1 with expert capacity
 *   p = softmax(x·W_g),  e = argmax p,  C = ceil(realRows / E · capacityFactor),
 * rows beyond an expert's capacity, in row order, are dropped (they keep only the base output), and a kept
 * row's weight is its gate probability p_e (Switch multiplies the expert output by it), so weights do NOT
 * sum to 1: the invariant is weight = max_e p_e on kept rows, 0 on dropped and padding rows.
 *
 * Capacity is enforced on device: a running count (cumsum over rows) of a one-hot [R, E] that is zero on
 * padding, so padding rows never consume capacity. Every choice (the null expert included) has capacity C.
 *
 * Shape letters: R rows, D feature width, E choices, K = 1 slot.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import type { RouterInput, RouterKind, RouterShape, RoutingDecision } from '../src/routing/router.js';
import { capacityOf, checkRouterInput, discrete, GatedRouter, gateLogits, oneHotFloat, readSlots, topKIds } from './top-k.js';

export const SwitchRouterConfig = z
  .object({
    kind: z.literal('switch'),
    /** C = ceil(realRows / E · capacityFactor). Switch-Base uses 1.0–2.0; 1.25 is the paper's common choice. */
    capacityFactor: z.number().positive().default(1.25),
  })
  .strict()
  .readonly();
export type SwitchRouterConfig = z.infer<typeof SwitchRouterConfig>;

/**
 * 1 for real rows within their expert's capacity, 0 for rows past it and for padding (row order decides).
 * ids [R, 1] int32, mask [R] → [R].
 */
export function withinCapacity(ids: tf.Tensor2D, mask: tf.Tensor1D, choices: number, capacityFactor: number): tf.Tensor1D {
  return discrete([ids, mask], (idsIn, maskIn) => {
    const assigned = tf.mul(oneHotFloat(tf.squeeze(idsIn, [1]), choices), tf.expandDims(maskIn, 1)); // [R, E]
    const position = tf.sum(tf.mul(tf.cumsum(assigned, 0), assigned), 1); // [R], 1-based place in its expert's queue; 0 on padding
    const capacity = capacityOf(maskIn, capacityFactor, choices); // []
    return tf.mul(tf.cast(tf.lessEqual(position, capacity), 'float32'), maskIn); // [R]
  });
}

class SwitchRouter extends GatedRouter {
  constructor(
    private readonly config: SwitchRouterConfig,
    shape: RouterShape,
  ) {
    super('switch', shape);
  }

  route(input: RouterInput): RoutingDecision {
    checkRouterInput(input, this.shape, this.kind);
    const logits = gateLogits(input.features, this.gate, 1); // [R, E]
    const probabilities = tf.softmax(logits); // [R, E]
    const expertIds = topKIds(logits, 1); // [R, 1] int32
    const kept = withinCapacity(expertIds, input.mask, this.choices, this.config.capacityFactor); // [R]
    const gate = readSlots(probabilities, expertIds, this.choices); // [R, 1], p of the chosen expert
    return {
      expertIds,
      weights: tf.mul(gate, tf.expandDims(kept, 1)), // [R, 1]
      dropped: tf.mul(input.mask, tf.sub(1, kept)), // [R]
      logits,
      probabilities,
    };
  }
}

export const switchRouterKind: RouterKind<SwitchRouterConfig> = {
  kind: 'switch',
  couplesRows: true,
  schema: SwitchRouterConfig,
  create: (config, shape) => new SwitchRouter(config, shape),
};
