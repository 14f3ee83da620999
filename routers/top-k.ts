/**
 * Top-k router, as in Mixtral (Jiang et al. 2024, "Mixtral of Experts"):
 *   logits = x·W_g / τ,  p = softmax(logits),  keep the k largest,
 *   g = softmax over the k chosen logits  (= the chosen p renormalised to sum 1).
 *
 * Shape letters: R rows, D feature width, E choices (the null expert, when enabled, is choice E−1), K slots.
 */
import { z } from 'zod';
import { checkK, checkRouterInput, GatedRouter, gateLogits, topKDecision } from '../src/routing/gating.js';
import type { LinearTopK, RouterInput, RouterKind, RouterShape, RoutingDecision } from '../src/routing/router.js';

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
    return topKDecision(logits, logits, input.mask, { k: this.config.k, training: input.training });
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
