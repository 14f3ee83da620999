/**
 * Switch routing (Fedus et al. 2021, "Switch Transformers", §2.1–2.2): top-1 with expert capacity
 *   p = softmax(x·W_g),  e = argmax p,  C = ceil(realRows / E · capacityFactor),
 * rows beyond an expert's capacity, in row order, are dropped (they keep only the base output), and a kept
 * row's weight is its gate probability p_e (Switch multiplies the expert output by it), so weights do NOT
 * sum to 1: the invariant is weight = max_e p_e on kept rows, 0 on dropped and padding rows.
 *
 * The decision is the library's one gating function (src/routing/gating.ts) with k = 1, probability weighting and
 * capacity: enforced on device, padding rows never consume it, and every choice (the null expert included) has C.
 *
 * Shape letters: R rows, D feature width, E choices, K = 1 slot.
 */
import { z } from 'zod';
import type { RouterInput, RouterKind, RouterShape, RoutingDecision } from '../src/routing/router.js';
import { checkRouterInput, GatedRouter, gateLogits, topKDecision } from '../src/routing/gating.js';

export const SwitchRouterConfig = z
  .object({
    kind: z.literal('switch'),
    /** C = ceil(realRows / E · capacityFactor). Switch-Base uses 1.0–2.0; 1.25 is the paper's common choice. */
    capacityFactor: z.number().positive().default(1.25),
  })
  .strict()
  .readonly();
export type SwitchRouterConfig = z.infer<typeof SwitchRouterConfig>;

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
    return topKDecision(logits, logits, input.mask, { k: 1, weighting: 'probability', capacityFactor: this.config.capacityFactor, training: input.training });
  }
}

export const switchRouterKind: RouterKind<SwitchRouterConfig> = {
  kind: 'switch',
  couplesRows: true,
  schema: SwitchRouterConfig,
  create: (config, shape) => new SwitchRouter(config, shape),
};
