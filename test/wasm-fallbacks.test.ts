// The kernels registered for wasm (src/wasm-fallbacks.ts) compute what the cpu backend computes:
// BatchMatMul with transposed operands and batched ones (forward and the gradients training takes through it) and
// UnsortedSegmentSum (the gradient of gather).
import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, test } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { slicedMatMulCount } from '../src/wasm-batched-matmul.js';

/** Runs fn on a backend and returns plain arrays (so results can be compared across backends). */
function on<T>(backend: 'cpu' | 'wasm', fn: () => T): T {
  const previous = tf.getBackend();
  tf.setBackend(backend);
  try {
    return fn();
  } finally {
    tf.setBackend(previous);
  }
}

function seeded(shape: number[], seed: number): tf.Tensor {
  return tf.randomNormal(shape, 0, 1, 'float32', seed);
}

describe('wasm fallback kernels', () => {
  afterAll(async () => {
    await selectBackend({ preference: 'wasm' });
  });

  test('matMul with every transpose combination, batched and not, equals cpu (values and gradients)', async () => {
    await selectBackend({ preference: 'cpu' });
    await selectBackend({ preference: 'wasm' });
    const cases: { a: number[]; b: number[]; transposeA: boolean; transposeB: boolean; valueOnly?: true }[] = [
      { a: [5, 3], b: [3, 4], transposeA: false, transposeB: false },
      { a: [3, 5], b: [3, 4], transposeA: true, transposeB: false },
      { a: [5, 3], b: [4, 3], transposeA: false, transposeB: true },
      { a: [3, 5], b: [4, 3], transposeA: true, transposeB: true },
      { a: [2, 3, 5], b: [2, 4, 3], transposeA: true, transposeB: true },
      { a: [2, 5, 3], b: [2, 4, 3], transposeA: false, transposeB: true },
      // Batched with at least MIN_SLICE_ROWS rows: one XNNPACK product per slice (wasm-batched-matmul.ts).
      { a: [2, 3, 9, 5], b: [2, 3, 5, 7], transposeA: false, transposeB: false },
      // A broadcast batch (tfjs has no gradient for it, on any backend).
      { a: [4, 9, 5], b: [5, 7], transposeA: false, transposeB: false, valueOnly: true },
      { a: [9, 5], b: [3, 5, 7], transposeA: false, transposeB: false, valueOnly: true },
      { a: [1, 9, 5], b: [3, 7, 5], transposeA: false, transposeB: true, valueOnly: true },
      { a: [3, 5, 9], b: [3, 7, 5], transposeA: true, transposeB: true },
      { a: [2, 2, 12, 6], b: [2, 2, 12, 6], transposeA: false, transposeB: true },
    ];
    const slicedBefore = slicedMatMulCount();
    for (const [i, c] of cases.entries()) {
      const run = (): { value: number[]; da: number[]; db: number[] } =>
        tf.tidy(() => {
          const a = seeded(c.a, 10 + i);
          const b = seeded(c.b, 20 + i);
          const f = (x: tf.Tensor, y: tf.Tensor): tf.Scalar => tf.sum(tf.square(tf.matMul(x, y, c.transposeA, c.transposeB)));
          const value = tf.matMul(a, b, c.transposeA, c.transposeB);
          if (c.valueOnly) return { value: [...value.dataSync()], da: [], db: [] };
          const [da, db] = tf.grads(f)([a, b]);
          return { value: [...value.dataSync()], da: [...(da as tf.Tensor).dataSync()], db: [...(db as tf.Tensor).dataSync()] };
        });
      const before = on('wasm', () => tf.memory().numTensors);
      const wasm = on('wasm', run);
      expect(on('wasm', () => tf.memory().numTensors)).toBe(before);
      const cpu = on('cpu', run);
      for (const key of ['value', 'da', 'db'] as const) {
        expect(wasm[key].length).toBe(cpu[key].length);
        wasm[key].forEach((v, j) => expect(v).toBeCloseTo(cpu[key][j] as number, 4));
      }
    }
    expect(slicedMatMulCount()).toBeGreaterThan(slicedBefore + 6); // the batched cases took the slice path
  });

  test('the gradient of gather (UnsortedSegmentSum) equals cpu', async () => {
    await selectBackend({ preference: 'cpu' });
    await selectBackend({ preference: 'wasm' });
    const run = (): number[] =>
      tf.tidy(() => {
        const table = seeded([6, 3], 3);
        const ids = tf.tensor1d([0, 2, 2, 5, 0], 'int32');
        const [grad] = tf.grads((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids), tf.range(1, 16).reshape([5, 3]))))([table]);
        return [...(grad as tf.Tensor).dataSync()];
      });
    const wasm = on('wasm', run);
    const cpu = on('cpu', run);
    expect(wasm).toEqual(cpu);
    expect(wasm.slice(3, 6)).toEqual([0, 0, 0]); // row 1 is never gathered
  });
});
