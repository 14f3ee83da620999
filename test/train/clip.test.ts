// Global-norm clipping: after clipping the norm is ≤ maxNorm; gradients already below are unchanged; the
// direction is kept; non-finite gradients report a non-finite norm; nothing leaks.
import { fc, test } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { describe, expect } from 'vitest';
import { clipByGlobalNorm, globalNorm } from '../../src/train/clip.js';
import { expectClose, expectNoLeak } from '../helpers/tensor-asserts.js';

const value = fc.float({ min: Math.fround(-100), max: Math.fround(100), noNaN: true, noDefaultInfinity: true });
const gradientSet = fc.array(fc.array(value, { minLength: 1, maxLength: 12 }), { minLength: 1, maxLength: 4 });
const maxNorm = fc.float({ min: Math.fround(0.01), max: Math.fround(50), noNaN: true });

function hostNorm(sets: readonly (readonly number[])[]): number {
  return Math.sqrt(sets.flat().reduce((s, x) => s + x * x, 0));
}

describe('clipByGlobalNorm', () => {
  test.prop([gradientSet, maxNorm], { seed: 7, numRuns: 60 })('bounds the global norm and scales every gradient by one factor', (sets, max) => {
    const grads = new Map<string, tf.Tensor>(sets.map((values, i) => [`g${i}`, tf.tensor1d(values)]));
    expectNoLeak(() => {
      const result = clipByGlobalNorm(grads, max);
      const before = hostNorm(sets);
      expect(Math.abs(result.norm - before)).toBeLessThanOrEqual(1e-5 * before + 1e-6);
      const after = globalNorm(result.grads.values());
      expect(after).toBeLessThanOrEqual(max + 1e-4 * Math.max(1, max));
      if (before <= max) {
        for (const [name, g] of result.grads) expect(Array.from(g.dataSync())).toEqual(Array.from((grads.get(name) as tf.Tensor).dataSync()));
      } else {
        for (const [name, g] of result.grads)
          expectClose(
            g,
            ((grads.get(name) as tf.Tensor).dataSync() as Float32Array).map((x) => x * result.scale),
            { rtol: 1e-5, atol: 1e-6 },
          );
      }
      for (const g of result.grads.values()) g.dispose();
    });
    for (const g of grads.values()) g.dispose();
  });

  test('a non-finite gradient gives a non-finite norm and no scaling', () => {
    const grads = new Map([
      ['a', tf.tensor1d([1, Number.NaN])],
      ['b', tf.tensor1d([3])],
    ]);
    const result = clipByGlobalNorm(grads, 1);
    expect(Number.isFinite(result.norm)).toBe(false);
    expect(result.scale).toBe(1);
    for (const g of [...grads.values(), ...result.grads.values()]) g.dispose();
    expect(globalNorm([])).toBe(0);
  });
});
