/**
 * The projector: maps the vision encoder's patch tokens into the language model's embedding space, where
 * they enter as a prefix (LLaVA-1.5, Liu et al. 2023: a two-layer MLP with GELU). It is trainable; the
 * encoder and the language model stay frozen.
 *
 *   h = GELU(t · W1 + b1),  e = h · W2 + b2        t [R, Dv] → e [R, D]
 *
 * Init: W1, W2 uniform ±1/√fan_in (seeded), biases 0. Shape letters: R token rows, Dv encoder width,
 * H hidden width, D language model width.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { geluTanh } from '../base/layers.js';
import { trainableVariable } from '../variables.js';

export const ProjectorSpec = z
  .object({
    /** H: hidden width of the MLP (default: the language model's width). */
    hidden: z.number().int().positive().max(16_384).optional(),
  })
  .strict()
  .readonly();
export type ProjectorSpec = z.infer<typeof ProjectorSpec>;

export class Projector {
  private readonly w1: tf.Variable<tf.Rank.R2>;
  private readonly b1: tf.Variable<tf.Rank.R1>;
  private readonly w2: tf.Variable<tf.Rank.R2>;
  private readonly b2: tf.Variable<tf.Rank.R1>;

  constructor(
    readonly inputDim: number,
    readonly outputDim: number,
    readonly hidden: number,
    seed: number,
  ) {
    const bound1 = 1 / Math.sqrt(inputDim);
    const bound2 = 1 / Math.sqrt(hidden);
    this.w1 = trainableVariable('projector_W1', () => tf.randomUniform<tf.Rank.R2>([inputDim, hidden], -bound1, bound1, 'float32', seed)); // [Dv, H]
    this.b1 = trainableVariable('projector_b1', () => tf.zeros<tf.Rank.R1>([hidden])); // [H]
    this.w2 = trainableVariable('projector_W2', () => tf.randomUniform<tf.Rank.R2>([hidden, outputDim], -bound2, bound2, 'float32', seed + 1)); // [H, D]
    this.b2 = trainableVariable('projector_b2', () => tf.zeros<tf.Rank.R1>([outputDim])); // [D]
  }

  /** tokens [B, N, Dv] → [B, N, D]. Runs inside the caller's tidy. */
  apply(tokens: tf.Tensor3D): tf.Tensor3D {
    const [batch, count, width] = tokens.shape;
    const rows = tf.reshape<tf.Rank.R2>(tokens, [batch * count, width]); // [R, Dv]
    const hidden = geluTanh(tf.add<tf.Tensor2D>(tf.matMul(rows, this.w1), this.b1)); // [R, H]
    const out = tf.add<tf.Tensor2D>(tf.matMul(hidden, this.w2), this.b2); // [R, D]
    return tf.reshape(out, [batch, count, this.outputDim]); // [B, N, D]
  }

  /** W1, b1, W2, b2, in that order (stable names projector/0..3). */
  variables(): tf.Variable[] {
    return [this.w1, this.b1, this.w2, this.b2];
  }

  get parameterCount(): number {
    return this.variables().reduce((s, v) => s + v.size, 0);
  }

  dispose(): void {
    for (const v of this.variables()) v.dispose();
  }
}
