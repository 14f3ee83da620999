/**
 * Gradient clipping by one global L2 norm over all gradients (Pascanu et al. 2013), which tfjs lacks:
 *   n = √(Σ_g Σ_i g_i²),   every g ← g · min(1, maxNorm / n).
 * The norm is read back once per call (one sync); it is also the trainer's non-finite check, since any NaN
 * or ±Inf element makes n non-finite.
 */
import * as tf from '@tensorflow/tfjs';
import { readSync } from '../backend-capabilities.js';

/** √(Σ g²) over all gradients, as a number (NaN or Infinity when any element is non-finite). */
export function globalNorm(grads: Iterable<tf.Tensor>): number {
  const list = [...grads];
  if (list.length === 0) return 0;
  const squared = tf.tidy(() => tf.addN(list.map((g) => tf.sum(tf.square(g))))); // []  Σ g²
  const value = readSync(
    squared,
    'Gradient clipping',
    'Training and evaluation read results synchronously: run them on wasm or cpu (ROUTED_PEFT_BACKEND=wasm); on webgpu use the runtime and generateAsync',
  )[0] as number;
  squared.dispose();
  return Math.sqrt(value);
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
  const norm = globalNorm(grads.values());
  const scale = Number.isFinite(norm) && norm > maxNorm ? maxNorm / norm : 1;
  const clipped = new Map<string, tf.Tensor>();
  for (const [name, g] of grads) clipped.set(name, scale === 1 ? tf.clone(g) : tf.tidy(() => tf.mul(g, scale))); // [...g]
  return { norm, grads: clipped, scale };
}
