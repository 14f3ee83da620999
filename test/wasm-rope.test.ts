// The fused rotary-embedding kernel on wasm (src/wasm-rope.ts) against the op-by-op rotation (base/rope.ts):
// the same bits forward and for the gradient, over prefill, decode and grouped-query shapes; no leaks; the
// other backends keep the op path.
import * as tf from '@tensorflow/tfjs';
import fc from 'fast-check';
import { beforeAll, describe, expect, test } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { applyRope, applyRopeOps, ropeAngles, ropeTables } from '../src/base/rope.js';
import { hasFusedRope } from '../src/wasm-rope.js';

beforeAll(async () => {
  await selectBackend({ preference: 'wasm' });
});

/** The rotation and d(Σ w·rope(x))/dx by `rotate`, as plain arrays, with the tensor count unchanged. */
function rotated(rotate: typeof applyRope, shape: [number, number, number, number], start: number, seed: number): { y: Float32Array; dx: Float32Array } {
  const before = tf.memory().numTensors;
  const [b, t, , dh] = shape;
  const result = tf.tidy(() => {
    const tables = ropeTables(dh, start + t, 10000);
    const positions = tf.tensor2d(
      Array.from({ length: b }, () => Array.from({ length: t }, (_, i) => start + i)),
      [b, t],
      'int32',
    );
    const angles = ropeAngles(positions, tables);
    const x = tf.randomNormal(shape, 0, 1, 'float32', seed) as tf.Tensor4D; // [B, T, H, Dh]
    const weights = tf.randomNormal(shape, 0, 1, 'float32', seed + 1); // [B, T, H, Dh]
    const y = rotate(x, angles); // [B, T, H, Dh]
    const dx = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(rotate(input as tf.Tensor4D, angles), weights)))(x); // [B, T, H, Dh]
    tf.dispose([tables.cos, tables.sin]);
    return { y: y.dataSync() as Float32Array, dx: dx.dataSync() as Float32Array };
  });
  expect(tf.memory().numTensors).toBe(before);
  return result;
}

describe('fused RoPE on wasm', () => {
  test('is in use on wasm, not on cpu', () => {
    expect(hasFusedRope()).toBe(true);
    const previous = tf.getBackend();
    tf.setBackend('cpu');
    try {
      expect(hasFusedRope()).toBe(false);
    } finally {
      tf.setBackend(previous);
    }
  });

  test('the same bits as the op-by-op rotation, forward and gradient, for any shape and start position', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 }),
        fc.integer({ min: 1, max: 9 }),
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 1, max: 8 }).map((n) => 2 * n),
        fc.integer({ min: 0, max: 40 }),
        fc.integer({ min: 1, max: 1000 }), // a seed of 0 means none to tf.randomNormal
        (b, t, h, dh, start, seed) => {
          const fused = rotated(applyRope, [b, t, h, dh], start, seed);
          const ops = rotated(applyRopeOps, [b, t, h, dh], start, seed);
          expect(fused.y).toEqual(ops.y);
          expect(fused.dx).toEqual(ops.dx);
        },
      ),
      { numRuns: 40 },
    );
  });

  test("the benchmark's prefill shape: [4, 128, 8, 64]", () => {
    const fused = rotated(applyRope, [4, 128, 8, 64], 0, 3);
    const ops = rotated(applyRopeOps, [4, 128, 8, 64], 0, 3);
    expect(fused.y).toEqual(ops.y);
    expect(fused.dx).toEqual(ops.dx);
  });
});
