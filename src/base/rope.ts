/**
 * Rotary position embeddings (Su et al. 2021) in the "rotate-half" layout of Hugging Face llama:
 * dimension i of a head pairs with i + Dh/2. llama2.c checkpoints rotate adjacent pairs (2i, 2i+1); their
 * q/k rows are permuted into this layout at load time (see io/llama2c-checkpoint.ts), as HF's converter does.
 *
 * Shape letters: B batch, T tokens, H heads, Dh head width, L table length.
 */
import * as tf from '@tensorflow/tfjs';
import { fusedRope, hasFusedRope } from '../wasm-rope.js';

export interface RopeTables {
  readonly cos: tf.Tensor2D; // [L, Dh/2]
  readonly sin: tf.Tensor2D; // [L, Dh/2]
}

/** cos/sin of pos · theta^(−2i/Dh) for every position below maxLen. */
export function ropeTables(headDim: number, maxLen: number, theta: number): RopeTables {
  const half = headDim / 2;
  const cos = new Float32Array(maxLen * half);
  const sin = new Float32Array(maxLen * half);
  for (let i = 0; i < half; i++) {
    // Math.fround mirrors llama2.c's float arithmetic so greedy decoding matches it token for token.
    const inverseFrequency = Math.fround(1 / Math.fround(theta ** Math.fround((2 * i) / headDim)));
    for (let pos = 0; pos < maxLen; pos++) {
      const angle = Math.fround(pos * inverseFrequency);
      cos[pos * half + i] = Math.cos(angle);
      sin[pos * half + i] = Math.sin(angle);
    }
  }
  return { cos: tf.tensor2d(cos, [maxLen, half]), sin: tf.tensor2d(sin, [maxLen, half]) };
}

/** The cos/sin of each token's position, gathered once per forward and shared by every layer's q and k. */
export interface RopeAngles {
  readonly cos: tf.Tensor4D; // [B, T, 1, Dh/2]
  readonly sin: tf.Tensor4D; // [B, T, 1, Dh/2]
}

/** The angles of positions [B, T] int32. */
export function ropeAngles(positions: tf.Tensor2D, tables: RopeTables): RopeAngles {
  const cos = tf.expandDims(tf.gather(tables.cos, positions), 2) as tf.Tensor4D; // [B, T, 1, Dh/2]
  const sin = tf.expandDims(tf.gather(tables.sin, positions), 2) as tf.Tensor4D; // [B, T, 1, Dh/2]
  return { cos, sin };
}

/** Rotates x [B, T, H, Dh] by its tokens' angles (one fused kernel on wasm: wasm-rope.ts, the same bits). */
export function applyRope(x: tf.Tensor4D, angles: RopeAngles): tf.Tensor4D {
  return hasFusedRope() ? fusedRope(x, angles.cos, angles.sin) : applyRopeOps(x, angles); // [B, T, H, Dh]
}

/** applyRope op by op (every backend). */
export function applyRopeOps(x: tf.Tensor4D, angles: RopeAngles): tf.Tensor4D {
  const [b, t, h, dh] = x.shape;
  const half = dh / 2;
  const { cos, sin } = angles;
  const first = tf.slice(x, [0, 0, 0, 0], [b, t, h, half]); // [B, T, H, Dh/2]
  const second = tf.slice(x, [0, 0, 0, half], [b, t, h, half]); // [B, T, H, Dh/2]
  const rotatedFirst: tf.Tensor4D = tf.sub(tf.mul(first, cos), tf.mul(second, sin)); // [B, T, H, Dh/2]
  const rotatedSecond: tf.Tensor4D = tf.add(tf.mul(second, cos), tf.mul(first, sin)); // [B, T, H, Dh/2]
  return tf.concat<tf.Tensor4D>([rotatedFirst, rotatedSecond], 3); // [B, T, H, Dh]
}
