/**
 * The frozen weights of a base model. They are plain tf.Tensors, never tf.Variables, so no optimizer
 * can reach them: "wrap the frozen model; never change it".
 *
 * Shape letters: V vocab, D model width, F FFN width, P learned positions, O/I a linear map's out/in widths.
 * Linear weights are stored [O, I] like Hugging Face linear layers (gpt2's [I, O] Conv1D weights are
 * transposed at load), so y = x · Wᵀ + b and a LoRA delta B·A has the same layout.
 */
import * as tf from '@tensorflow/tfjs';
import type { SiteName } from './sites.js';

export interface LinearWeights {
  readonly weight: tf.Tensor2D; // [O, I]
  readonly bias?: tf.Tensor1D; // [O]
}

export interface NormWeights {
  readonly weight: tf.Tensor1D; // [D]
  readonly bias?: tf.Tensor1D; // [D] (LayerNorm only)
}

export interface LayerWeights {
  readonly attnNorm: NormWeights;
  readonly mlpNorm: NormWeights;
  readonly sites: Readonly<Partial<Record<SiteName, LinearWeights>>>;
}

export interface TransformerWeights {
  readonly tokenEmbedding: tf.Tensor2D; // [V, D]
  readonly positionEmbedding?: tf.Tensor2D; // [P, D] (gpt2)
  readonly layers: readonly LayerWeights[];
  readonly finalNorm: NormWeights;
  /** [V, D]; the same tensor as tokenEmbedding when the embeddings are tied. */
  readonly head: tf.Tensor2D;
}

/** Every distinct tensor of the weights, each once (a tied head is not counted twice). */
export function listWeightTensors(weights: TransformerWeights): tf.Tensor[] {
  const seen = new Set<tf.Tensor>();
  const add = (t: tf.Tensor | undefined): void => {
    if (t !== undefined) seen.add(t);
  };
  add(weights.tokenEmbedding);
  add(weights.positionEmbedding);
  for (const layer of weights.layers) {
    for (const norm of [layer.attnNorm, layer.mlpNorm]) {
      add(norm.weight);
      add(norm.bias);
    }
    for (const linear of Object.values(layer.sites)) {
      add(linear.weight);
      add(linear.bias);
    }
  }
  add(weights.finalNorm.weight);
  add(weights.finalNorm.bias);
  add(weights.head);
  return [...seen];
}

export function countParameters(weights: TransformerWeights): number {
  return listWeightTensors(weights).reduce((sum, t) => sum + t.size, 0);
}

export function disposeWeights(weights: TransformerWeights): void {
  for (const t of listWeightTensors(weights)) t.dispose();
}
