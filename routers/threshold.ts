/**
 * Threshold router: top-k that may apply nothing. Each choice gets an independent score s_e = σ(x·W_e / τ);
 * a row activates its k best choices (weights: softmax over the k chosen logits, as top-k) only when its top
 * score reaches the threshold θ, and otherwise applies nothing: all its gates are 0, so that row's output
 * is the base output exactly.
 *
 *   logits = x·W_g / τ,  open = [max_e σ(logits_e) ≥ θ] = [max_e logits_e ≥ logit(θ)],
 *   g = open · softmax over the k chosen logits.
 *
 * Scoring every choice on its own and activating none below a threshold follows the top-any gating of
 * DynMoE (Guo et al. 2024, "Dynamic Mixture of Experts: An Auto-Tuning Approach for Efficient Transformer
 * Models"), which also learns its thresholds; here one threshold per router decides whether the row uses
 * experts at all, and a route's null expert (AdaMoE, Zeng et al. 2024) is not needed for that.
 *
 * Training: `open` stays a hard step in the forward (training routes as inference will), and its gradient is
 * the straight-through surrogate of σ((max logit − logit θ) / β) (Bengio et al. 2013, straight-through
 * estimators): rows where applying the experts lowers the loss raise their top logit (and, with
 * `learnThreshold`, lower θ), rows where it does not — base-domain text under a retention KL — lower it.
 * With `learnThreshold` θ is a trainable variable, kept as its logit.
 *
 * Shape letters: R rows, D feature width, E choices, K = k slots.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { checkK, checkRouterInput, GatedRouter, gateLogits, maskRows, topKSlots } from '../src/routing/gating.js';
import type { RouterInput, RouterKind, RouterShape, RoutingDecision } from '../src/routing/router.js';

export const ThresholdRouterConfig = z
  .object({
    kind: z.literal('threshold'),
    /** Experts per open row. */
    k: z.number().int().min(1).default(1),
    /** θ in (0, 1): a row applies its experts when its top score σ(max logit) is at least θ (start value when learned). */
    threshold: z.number().gt(0).lt(1).default(0.5),
    /** Train θ with the router (straight-through surrogate). */
    learnThreshold: z.boolean().default(false),
    /** Softmax temperature τ: logits = x·W_g / τ. */
    temperature: z.number().positive().default(1),
    /** β, the width (in logits) of the surrogate σ((max logit − logit θ) / β) that carries the gradient of the step. */
    sharpness: z.number().positive().default(1),
  })
  .strict()
  .readonly();
export type ThresholdRouterConfig = z.infer<typeof ThresholdRouterConfig>;

/** logit(p) = log(p / (1 − p)). */
function logit(p: number): number {
  return Math.log(p / (1 - p));
}

/**
 * [top ≥ cut] per row, with the straight-through gradient of σ((top − cut) / β): top [R], cut [] → [R].
 */
function openRows(top: tf.Tensor1D, cut: tf.Scalar, sharpness: number): tf.Tensor1D {
  const step = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [top, cut] = args as [tf.Tensor1D, tf.Scalar];
    const save = args[2] as tf.GradSaveFunc;
    save([top, cut]);
    const value = tf.cast(tf.greaterEqual(top, cut), 'float32') as tf.Tensor1D; // [R]
    return {
      value,
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
        const [t, c] = saved as [tf.Tensor1D, tf.Scalar];
        const upstream = dy as tf.Tensor1D; // [R]
        const s = tf.sigmoid(tf.div(tf.sub(t, c), sharpness)); // [R]
        const slope = tf.div(tf.mul(s, tf.sub(1, s)), sharpness); // [R]  dσ(u)/d top
        const dTop = tf.mul(upstream, slope); // [R]
        return [dTop, tf.neg(tf.sum(dTop))]; // d/d top [R], d/d cut []
      },
    };
  });
  return step(top, cut) as tf.Tensor1D;
}

class ThresholdRouter extends GatedRouter {
  /** logit(θ), trainable with learnThreshold: []. */
  private readonly cut: tf.Variable<tf.Rank.R0> | undefined;

  constructor(
    private readonly config: ThresholdRouterConfig,
    shape: RouterShape,
  ) {
    checkK('threshold', config.k, shape.choices);
    super('threshold', shape);
    if (config.learnThreshold) {
      const initial = tf.scalar(logit(config.threshold)); // []
      this.cut = tf.variable(initial, true, `${this.scope}/threshold_logit`); // [], shares initial's buffer
      initial.dispose();
    } else {
      this.cut = undefined;
    }
  }

  route(input: RouterInput): RoutingDecision {
    checkRouterInput(input, this.shape, this.kind);
    const { k, temperature, threshold, sharpness } = this.config;
    const logits = gateLogits(input.features, this.gate, temperature); // [R, E]
    const slots = topKSlots(logits, input.mask, { k, training: input.training }); // ids, weights [R, K]
    const cut = this.cut ?? tf.scalar(logit(threshold)); // []
    const top = tf.max(logits, 1) as tf.Tensor1D; // [R]
    const open = input.training ? openRows(top, cut, sharpness) : (tf.cast(tf.greaterEqual(top, cut), 'float32') as tf.Tensor1D); // [R]
    return {
      expertIds: slots.expertIds,
      weights: maskRows(slots.weights, open), // [R, K]  0 on rows that abstain
      dropped: tf.zeros([logits.shape[0]]), // [R]  abstaining is not being dropped
      logits,
      probabilities: tf.softmax(logits), // [R, E]
    };
  }

  override variables(): readonly tf.Variable[] {
    return this.cut === undefined ? super.variables() : [...super.variables(), this.cut];
  }

  override dispose(): void {
    super.dispose();
    this.cut?.dispose();
  }
}

export const thresholdRouterKind: RouterKind<ThresholdRouterConfig> = {
  kind: 'threshold',
  schema: ThresholdRouterConfig,
  create: (config, shape) => new ThresholdRouter(config, shape),
};
