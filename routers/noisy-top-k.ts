/**
 * Noisy top-k gating (Shazeer et al. 2017, "Outrageously Large Neural Networks", eq. 3–5):
 *   H(x) = x·W_g + ε · softplus(x·W_noise) · s,  ε ~ N(0, 1), during training only,
 *   then top-k over H / τ with the chosen entries renormalised (softmax over the k chosen).
 * s is the noise scale set by the trainer (`setAnnealing({ noise })`, default 1).
 *
 * decision.logits are the clean logits x·W_g / τ (for the z-loss); decision.probabilities are the softmax of
 * the logits the decision used (noisy while training), as the contract says.
 *
 * W_noise starts at zero, as in the paper (Appendix A: "we initialize W_g and W_noise to all zeros"): the
 * noise starts at std softplus(0) = ln 2 and the router learns where to keep it. W_g uses the small random
 * init shared by all gated routers (see GATE_INIT_STD in top-k.ts).
 *
 * Shape letters: R rows, D feature width, E choices, K = k slots.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { ConfigError } from '../src/errors.js';
import type { LinearTopK, RouterInput, RouterKind, RouterShape, RoutingDecision } from '../src/routing/router.js';
import { checkK, checkRouterInput, createGateWeight, GatedRouter, topKDecision } from '../src/routing/gating.js';

export const NoisyTopKRouterConfig = z
  .object({
    kind: z.literal('noisy-top-k'),
    k: z.number().int().min(1).default(2),
    temperature: z.number().positive().default(1),
  })
  .strict()
  .readonly();
export type NoisyTopKRouterConfig = z.infer<typeof NoisyTopKRouterConfig>;

class NoisyTopKRouter extends GatedRouter {
  private readonly noiseGate: tf.Variable<tf.Rank.R2>; // W_noise [D, E]
  private noiseScale = 1;
  /** Seed of the next noise draw: deterministic from shape.seed, different at every call. */
  private nextNoiseSeed: number;

  constructor(
    private readonly config: NoisyTopKRouterConfig,
    shape: RouterShape,
  ) {
    checkK('noisy-top-k', config.k, shape.choices);
    super('noisy-top-k', shape);
    this.noiseGate = createGateWeight(shape, `${this.scope}/W_noise`, 'zeros');
    this.nextNoiseSeed = shape.seed * 7919 + 1;
  }

  route(input: RouterInput): RoutingDecision {
    const rows = checkRouterInput(input, this.shape, this.kind);
    const { temperature, k } = this.config;
    const clean = tf.matMul(input.features, this.gate); // [R, E]
    const logits = tf.div<tf.Tensor2D>(clean, temperature); // [R, E]
    if (!input.training || this.noiseScale === 0) return topKDecision(logits, logits, input.mask, { k, training: input.training });
    const noiseStd = tf.mul(tf.softplus(tf.matMul(input.features, this.noiseGate)), this.noiseScale); // [R, E]
    const epsilon = tf.randomNormal([rows, this.choices], 0, 1, 'float32', this.nextNoiseSeed++); // [R, E]
    const noisy = tf.div<tf.Tensor2D>(tf.add(clean, tf.mul(epsilon, noiseStd)), temperature); // [R, E]
    return topKDecision(logits, noisy, input.mask, { k, training: true });
  }

  /** At inference the noise is off: the decision is the clean linear top-k gate. */
  linearTopK(): LinearTopK {
    return { gate: this.gate, temperature: this.config.temperature, k: this.config.k };
  }

  setAnnealing(state: { readonly temperature?: number; readonly noise?: number }): void {
    if (state.noise === undefined) return;
    if (!Number.isFinite(state.noise) || state.noise < 0) {
      throw new ConfigError(`noisy-top-k router: noise scale must be a finite number ≥ 0, got ${state.noise}`, { path: 'annealing.noise' });
    }
    this.noiseScale = state.noise;
  }

  getRandomState(): number {
    return this.nextNoiseSeed;
  }

  setRandomState(state: number): void {
    this.nextNoiseSeed = state;
  }

  override variables(): readonly tf.Variable[] {
    return [...super.variables(), this.noiseGate];
  }

  override dispose(): void {
    super.dispose();
    this.noiseGate.dispose();
  }
}

export const noisyTopKRouterKind: RouterKind<NoisyTopKRouterConfig> = {
  kind: 'noisy-top-k',
  schema: NoisyTopKRouterConfig,
  create: (config, shape) => new NoisyTopKRouter(config, shape),
};
