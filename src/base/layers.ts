/**
 * Stateless building blocks of the base families. Shape letters: N token rows, D width, F FFN width.
 */
import * as tf from '@tensorflow/tfjs';
import type { NormWeights } from './weights.js';

/** RMSNorm (Zhang & Sennrich 2019), as in llama: x / sqrt(mean(x²) + eps) · w. */
export function rmsNorm(x: tf.Tensor2D, norm: NormWeights, eps: number): tf.Tensor2D {
  const meanSquare = tf.mean(tf.square(x), -1, true); // [N, 1]
  const normalised = tf.mul(x, tf.rsqrt(tf.add(meanSquare, eps))); // [N, D]
  return tf.mul(normalised, norm.weight); // [N, D]
}

/** LayerNorm (Ba et al. 2016), as in gpt2: (x − mean) / sqrt(var + eps) · w + b. */
export function layerNorm(x: tf.Tensor2D, norm: NormWeights, eps: number): tf.Tensor2D {
  const { mean, variance } = tf.moments(x, -1, true); // [N, 1] each
  const normalised = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))); // [N, D]
  const scaled: tf.Tensor2D = tf.mul(normalised, norm.weight); // [N, D]
  return norm.bias === undefined ? scaled : tf.add<tf.Tensor2D>(scaled, norm.bias); // [N, D]
}

/** GELU, tanh approximation ("gelu_new" in Hugging Face gpt2; Hendrycks & Gimpel 2016). */
export function geluTanh(x: tf.Tensor2D): tf.Tensor2D {
  const cubic = tf.mul(tf.pow(x, 3), 0.044715); // [N, F]
  const inner = tf.mul(tf.add(x, cubic), Math.sqrt(2 / Math.PI)); // [N, F]
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.tanh(inner), 1)); // [N, F]
}
