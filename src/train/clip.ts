/**
 * Gradient clipping by one global L2 norm over all gradients (Pascanu et al. 2013), which tfjs lacks:
 *   n = √(Σ_g Σ_i g_i²),   every g ← g · min(1, maxNorm / n).
 * The norm is read back once per call (one sync); it is also the trainer's non-finite check, since any NaN
 * or ±Inf element makes n non-finite.
 */
import * as tf from '@tensorflow/tfjs';
import { readSync } from '../backend-capabilities.js';

/** Σ g² over all gradients as a scalar tensor (owned by the caller); read it where the backend allows. */
export function squaredGlobalNorm(grads: Iterable<tf.Tensor>): tf.Scalar {
  const list = [...grads];
  if (list.length === 0) return tf.scalar(0);
  return tf.tidy(() => tf.addN(list.map((g) => tf.sum(tf.square(g))))) as tf.Scalar; // []  Σ g²
}

/** √(Σ g²) over all gradients, as a number (NaN or Infinity when any element is non-finite). */
export function globalNorm(grads: Iterable<tf.Tensor>): number {
  const squared = squaredGlobalNorm(grads); // []
  try {
    return Math.sqrt(
      readSync(
        squared,
        'Gradient clipping',
        'On a backend without synchronous reads (webgpu) read squaredGlobalNorm() with await data() and scale with scaleByGlobalNorm()',
      )[0] as number,
    );
  } finally {
    squared.dispose();
  }
}

export interface ClipResult {
  /** Global norm before clipping. */
  readonly norm: number;
  /** New tensors owned by the caller (copies when nothing was scaled); the inputs are left as they were. */
  readonly grads: Map<string, tf.Tensor>;
  /** The factor applied: min(1, maxNorm / norm); 1 when the norm is non-finite (nothing sensible to scale). */
  readonly scale: number;
}

/** Scales all gradients by min(1, maxNorm / globalNorm). `maxNorm` must be > 0. */
export function clipByGlobalNorm(grads: ReadonlyMap<string, tf.Tensor>, maxNorm: number): ClipResult {
  if (!(maxNorm > 0)) throw new RangeError(`clipByGlobalNorm: maxNorm must be > 0, got ${maxNorm}`);
  return scaleByGlobalNorm(grads, globalNorm(grads.values()), maxNorm);
}

/** The clip factor min(1, maxNorm / norm); 1 when the norm is non-finite (nothing sensible to scale). */
export function clipScale(norm: number, maxNorm: number): number {
  return Number.isFinite(norm) && norm > maxNorm ? maxNorm / norm : 1;
}

/** clipByGlobalNorm with the norm already read (√ of squaredGlobalNorm): no read of its own. */
export function scaleByGlobalNorm(grads: ReadonlyMap<string, tf.Tensor>, norm: number, maxNorm: number): ClipResult {
  if (!(maxNorm > 0)) throw new RangeError(`scaleByGlobalNorm: maxNorm must be > 0, got ${maxNorm}`);
  const scale = clipScale(norm, maxNorm);
  const clipped = new Map<string, tf.Tensor>();
  for (const [name, g] of grads) clipped.set(name, scale === 1 ? tf.clone(g) : tf.tidy(() => tf.mul(g, scale))); // [...g]
  return { norm, grads: clipped, scale };
}
