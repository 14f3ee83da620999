/**
 * Soft (dense) routing: every row mixes all experts, g = softmax(x·W_g / τ) — the scalings of X-LoRA
 * (Buehler & Buehler 2024) and the router of LoRAMoE (Dou et al. 2023). K = E slots, ids 0..E−1.
 * τ comes from the config and may be overridden by the trainer (`setAnnealing({ temperature })`), e.g. to
 * anneal from soft towards sharp routing. decision.logits = x·W_g / τ (the logits the weights use).
 *
 * Shape letters: R rows, D feature width, E choices, K = E slots.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { ConfigError } from '../src/errors.js';
import type { RouterInput, RouterKind, RouterShape, RoutingDecision } from '../src/routing/router.js';
import { allChoiceIds, checkRouterInput, GatedRouter, gateLogits, maskRows } from '../src/routing/gating.js';

export const SoftRouterConfig = z
  .object({
    kind: z.literal('soft'),
    temperature: z.number().positive().default(1),
  })
  .strict()
  .readonly();
export type SoftRouterConfig = z.infer<typeof SoftRouterConfig>;

class SoftRouter extends GatedRouter {
  private temperature: number;

  constructor(config: SoftRouterConfig, shape: RouterShape) {
    super('soft', shape);
    this.temperature = config.temperature;
  }

  route(input: RouterInput): RoutingDecision {
    const rows = checkRouterInput(input, this.shape, this.kind);
    const logits = gateLogits(input.features, this.gate, this.temperature); // [R, E]
    const probabilities = tf.softmax(logits); // [R, E]
    return {
      expertIds: allChoiceIds(rows, this.choices), // [R, E]
      weights: maskRows(probabilities, input.mask), // [R, E]
      dropped: tf.zeros([rows]), // [R]
      logits,
      probabilities,
    };
  }

  setAnnealing(state: { readonly temperature?: number; readonly noise?: number }): void {
    if (state.temperature === undefined) return;
    if (!(state.temperature > 0) || !Number.isFinite(state.temperature)) {
      throw new ConfigError(`soft router: temperature must be a finite number > 0, got ${state.temperature}`, { path: 'annealing.temperature' });
    }
    this.temperature = state.temperature;
  }
}

export const softRouterKind: RouterKind<SoftRouterConfig> = {
  kind: 'soft',
  schema: SoftRouterConfig,
  create: (config, shape) => new SoftRouter(config, shape),
};
