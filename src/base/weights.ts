/**
 * The frozen weights of a base model. They are plain tf.Tensors, never tf.Variables, so no optimizer
 * can reach them: "wrap the frozen model; never change it".
 *
 * Shape letters: V vocab, D model width, F FFN width, P learned positions, O/I a linear map's out/in widths.
 * Linear weights are stored [I, O] (Hugging Face linear weights are transposed at load; gpt2's Conv1D
 * weights already are [I, O]), so y = x · W + b is a plain matmul: tfjs-wasm runs matmuls with a
 * transposed operand on a much slower path (measured 8–9× on prefill; benchmarks/results/ANALYSIS.md).
 * A LoRA delta B·A [O, I] is therefore added transposed.
 */
import type * as tf from '@tensorflow/tfjs';
import type { SiteName } from './sites.js';

export interface LinearWeights {
  readonly weight: tf.Tensor2D; // [I, O]
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
  /** The output projection, stored [D, V] (for tied embeddings: a transposed copy of tokenEmbedding). */
  readonly head: tf.Tensor2D;
  /** The head is a copy of the token embedding, not a parameter of its own (not counted twice). */
  readonly tiedHead: boolean;
}

/** Every tensor of the weights, each once (a tied head's transposed copy included: it must be freed too). */
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

/** The model's parameters: a tied head is the embedding again, so it is not counted. */
export function countParameters(weights: TransformerWeights): number {
  const total = listWeightTensors(weights).reduce((sum, t) => sum + t.size, 0);
  return weights.tiedHead ? total - weights.head.size : total;
}

export function disposeWeights(weights: TransformerWeights): void {
  for (const t of listWeightTensors(weights)) t.dispose();
}
