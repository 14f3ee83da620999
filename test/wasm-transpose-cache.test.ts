// A recurring transposed operand keeps its transpose on wasm (src/wasm-transpose-cache.ts), and tfjs-wasm's
// Identity shares data instead of copying (src/wasm-fallbacks.ts): products stay exact, a cached copy lives
// exactly as long as its source, and the budget is kept.
import * as tf from '@tensorflow/tfjs';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { selectBackend } from '../src/backend.js';
import { ConfigError } from '../src/errors.js';
import { setTransposeCacheLimit, transposeCacheLimit, transposeCacheLimitFromEnv, transposeCacheStats } from '../src/wasm-transpose-cache.js';

interface WasmInternals {
  numDataIds(): number;
}

function onCpu(fn: () => tf.Tensor): number[] {
  tf.setBackend('cpu');
  try {
    const out = fn();
    const values = [...out.dataSync()];
    out.dispose();
    return values;
  } finally {
    tf.setBackend('wasm');
  }
}

describe('wasm transpose cache', () => {
  const defaultLimit = 512 * 1024 * 1024;
  beforeAll(async () => {
    await selectBackend({ preference: 'cpu' });
    await selectBackend({ preference: 'wasm' });
  });
  afterEach(() => setTransposeCacheLimit(defaultLimit));
  afterAll(async () => {
    await selectBackend({ preference: 'wasm' });
  });

  test('a weight multiplied transposed again and again is transposed once, gives cpu values, and its copy is freed with it', () => {
    const backend = tf.backend() as unknown as WasmInternals;
    const values = Array.from({ length: 6 * 4 }, (_, i) => Math.sin(i + 1));
    const dyValues = Array.from({ length: 3 * 4 }, (_, i) => Math.cos(i));
    const expected = onCpu(() => tf.matMul(tf.tensor2d(dyValues, [3, 4]), tf.tensor2d(values, [6, 4]), false, true)); // [3, 6]
    const tensorsBefore = tf.memory().numTensors;
    const idsBefore = backend.numDataIds();
    const weight = tf.tensor2d(values, [6, 4]); // [O, I]  stands in for a frozen weight
    const dy = tf.tensor2d(dyValues, [3, 4]); // [N, I]
    const before = transposeCacheStats(tf.backend());
    const results: number[][] = [];
    for (let i = 0; i < 4; i++) {
      const dx = tf.matMul(dy, weight, false, true); // [N, O]
      results.push([...dx.dataSync()]);
      dx.dispose();
    }
    for (const result of results) expect(result).toEqual(results[0]); // cached or not: the same bits
    (results[0] as number[]).forEach((v, i) => expect(v).toBeCloseTo(expected[i] as number, 5));
    const after = transposeCacheStats(tf.backend());
    expect(after.copies - before.copies).toBe(1); // cached on its second use
    expect(after.hits - before.hits).toBe(2); // reused on the third and fourth
    expect(after.bytes - before.bytes).toBe(6 * 4 * 4);
    weight.dispose();
    dy.dispose();
    expect(transposeCacheStats(tf.backend()).copies).toBe(before.copies);
    expect(transposeCacheStats(tf.backend()).bytes).toBe(before.bytes);
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    expect(backend.numDataIds()).toBe(idsBefore); // the cached copy's buffer is gone too
  });

  test('a copy held while a clone of its source lives is kept until the last reference goes', () => {
    const weight = tf.tensor2d([1, 2, 3, 4, 5, 6], [3, 2]); // [O, I]
    const x = tf.tensor2d([1, 0, 0, 1], [2, 2]); // [N, I]
    for (let i = 0; i < 2; i++) tf.matMul(x, weight, false, true).dispose();
    const held = transposeCacheStats(tf.backend()).copies;
    const clone = tf.clone(weight); // shares the data (sharing Identity)
    weight.dispose();
    expect(transposeCacheStats(tf.backend()).copies).toBe(held); // data still referenced by the clone
    const dx = tf.matMul(x, clone, false, true); // [N, O]
    expect([...dx.dataSync()]).toEqual([1, 3, 5, 2, 4, 6]);
    dx.dispose();
    clone.dispose();
    expect(transposeCacheStats(tf.backend()).copies).toBe(held - 1);
  });

  test('a budget of 0 caches nothing and the products stay exact', () => {
    setTransposeCacheLimit(0);
    const weight = tf.tensor2d([1, 2, 3, 4, 5, 6], [3, 2]); // [O, I]
    const x = tf.tensor2d([2, 1], [1, 2]); // [N, I]
    const before = transposeCacheStats(tf.backend());
    for (let i = 0; i < 3; i++) {
      const y = tf.matMul(x, weight, false, true); // [N, O]
      expect([...y.dataSync()]).toEqual([4, 10, 16]);
      y.dispose();
    }
    expect(transposeCacheStats(tf.backend()).copies).toBe(before.copies);
    weight.dispose();
    x.dispose();
  });

  test('an invalid budget is refused by name', () => {
    expect(() => setTransposeCacheLimit(-1)).toThrow(ConfigError);
    expect(() => setTransposeCacheLimit(Number.NaN)).toThrow(/transpose cache limit/);
    expect(transposeCacheLimit()).toBe(defaultLimit);
  });

  test('Identity shares the data on wasm: a clone reads the same values and frees nothing of its source', () => {
    const idsBefore = (tf.backend() as unknown as WasmInternals).numDataIds();
    const x = tf.tensor1d([1.5, -2, 3]);
    const y = tf.clone(x);
    expect((tf.backend() as unknown as WasmInternals).numDataIds()).toBe(idsBefore + 1); // one buffer, two tensors
    x.dispose();
    expect([...y.dataSync()]).toEqual([1.5, -2, 3]);
    y.dispose();
    expect((tf.backend() as unknown as WasmInternals).numDataIds()).toBe(idsBefore);
    const strings = tf.tensor1d(['a', 'b'], 'string');
    const copy = tf.clone(strings);
    expect(copy.arraySync()).toEqual(['a', 'b']);
    tf.dispose([strings, copy]);
  });
});

describe('ROUTED_PEFT_TRANSPOSE_CACHE_MB', () => {
  test('sets the budget in MiB when backends are selected; unset keeps it; a bad value is refused by name', async () => {
    expect(transposeCacheLimitFromEnv({ ROUTED_PEFT_TRANSPOSE_CACHE_MB: '64' })).toBe(64 * 1024 * 1024);
    expect(transposeCacheLimitFromEnv({ ROUTED_PEFT_TRANSPOSE_CACHE_MB: ' ' })).toBeUndefined();
    expect(transposeCacheLimitFromEnv({})).toBeUndefined();
    expect(() => transposeCacheLimitFromEnv({ ROUTED_PEFT_TRANSPOSE_CACHE_MB: 'lots' })).toThrow(/ROUTED_PEFT_TRANSPOSE_CACHE_MB must be a number of MiB/);
    await selectBackend({ preference: 'wasm', env: { ROUTED_PEFT_TRANSPOSE_CACHE_MB: '0' } });
    expect(transposeCacheLimit()).toBe(0);
    await expect(selectBackend({ preference: 'wasm', env: { ROUTED_PEFT_TRANSPOSE_CACHE_MB: '-3' } })).rejects.toThrow(ConfigError);
    setTransposeCacheLimit(512 * 1024 * 1024);
  });
});
