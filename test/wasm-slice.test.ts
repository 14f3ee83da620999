// tfjs-wasm's Slice, SplitV and GatherV2 are replaced by heap-view copies (src/wasm-slice.ts): every piece
// and gather must hold exactly what the cpu backend's kernels give, for every rank, axis and dtype.
import * as tf from '@tensorflow/tfjs';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { selectBackend } from '../src/backend.js';

function on<T>(backend: 'cpu' | 'wasm', fn: () => T): T {
  const previous = tf.getBackend();
  tf.setBackend(backend);
  try {
    return fn();
  } finally {
    tf.setBackend(previous);
  }
}

/** Slice and split results as plain arrays, with the tensor count unchanged afterwards. */
function pieces(
  backend: 'cpu' | 'wasm',
  shape: number[],
  dtype: 'float32' | 'int32' | 'bool',
  begin: number[],
  size: number[],
  axis: number,
  splits: number[],
): unknown[] {
  return on(backend, () => {
    const before = tf.memory().numTensors;
    const values = Array.from({ length: tf.util.sizeFromShape(shape) }, (_, i) =>
      dtype === 'bool' ? i % 3 === 0 : dtype === 'int32' ? i - 7 : Math.sin(i) * 10,
    );
    const x = tf.tensor(values as number[], shape, dtype);
    const sliced = tf.slice(x, begin, size);
    const split = tf.split(x, splits, axis);
    const out = [sliced.arraySync(), split.map((s) => s.arraySync())];
    tf.dispose([x, sliced, ...split]);
    expect(tf.memory().numTensors).toBe(before);
    return out;
  });
}

describe('wasm Slice, SplitV and GatherV2 read the heap in place', () => {
  beforeAll(async () => {
    await selectBackend({ preference: 'cpu' });
    await selectBackend({ preference: 'wasm' });
  });
  afterAll(async () => {
    await selectBackend({ preference: 'wasm' });
  });

  test('any slice and any split of any rank-1..5 tensor equal cpu', () => {
    const arbitrary = fc
      .record({
        shape: fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 5 }),
        dtype: fc.constantFrom<'float32' | 'int32' | 'bool'>('float32', 'int32', 'bool'),
        seed: fc.array(fc.nat(), { minLength: 12, maxLength: 12 }),
      })
      .map(({ shape, dtype, seed }) => {
        const begin = shape.map((d, i) => (seed[i] as number) % d);
        const size = shape.map((d, i) => 1 + ((seed[i + 5] as number) % (d - (begin[i] as number))));
        const axis = (seed[10] as number) % shape.length;
        const length = shape[axis] as number;
        const first = 1 + ((seed[11] as number) % length);
        const splits = first === length ? [length] : [first, length - first];
        return { shape, dtype, begin, size, axis, splits };
      });
    fc.assert(
      fc.property(arbitrary, ({ shape, dtype, begin, size, axis, splits }) => {
        expect(pieces('wasm', shape, dtype, begin, size, axis, splits)).toEqual(pieces('cpu', shape, dtype, begin, size, axis, splits));
      }),
      { numRuns: 150 },
    );
  });

  test('any gather along any axis (indices of any rank, repeated) equals cpu; an index outside the axis is refused', () => {
    const arbitrary = fc.record({
      shape: fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 4 }),
      dtype: fc.constantFrom<'float32' | 'int32' | 'bool'>('float32', 'int32', 'bool'),
      indexShape: fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 0, maxLength: 2 }),
      seed: fc.nat(),
      axisSeed: fc.nat(),
    });
    const gathered = (backend: 'cpu' | 'wasm', shape: number[], dtype: 'float32' | 'int32' | 'bool', indexShape: number[], seed: number, axis: number) =>
      on(backend, () => {
        const before = tf.memory().numTensors;
        const values = Array.from({ length: tf.util.sizeFromShape(shape) }, (_, i) =>
          dtype === 'bool' ? i % 3 === 0 : dtype === 'int32' ? i - 7 : Math.sin(i) * 10,
        );
        const x = tf.tensor(values as number[], shape, dtype);
        const count = tf.util.sizeFromShape(indexShape);
        const indices = tf.tensor(
          Array.from({ length: count }, (_, i) => (seed + i * 7) % (shape[axis] as number)),
          indexShape,
          'int32',
        );
        const y = tf.gather(x, indices, axis);
        const out = [y.shape, y.arraySync()];
        tf.dispose([x, indices, y]);
        expect(tf.memory().numTensors).toBe(before);
        return out;
      });
    fc.assert(
      fc.property(arbitrary, ({ shape, dtype, indexShape, seed, axisSeed }) => {
        const axis = axisSeed % shape.length;
        expect(gathered('wasm', shape, dtype, indexShape, seed, axis)).toEqual(gathered('cpu', shape, dtype, indexShape, seed, axis));
      }),
      { numRuns: 150 },
    );
    const table = tf.tensor2d([1, 2, 3, 4], [2, 2]);
    const outside = tf.tensor1d([0, 2], 'int32');
    expect(() => tf.gather(table, outside)).toThrow(/index value 2 is not in \[0, 1\]/);
    tf.dispose([table, outside]);
  });

  test('a slice reaching to the end (-1), an empty piece and a string slice behave as on cpu', () => {
    const run = (backend: 'cpu' | 'wasm') =>
      on(backend, () => {
        const x = tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3]);
        const toEnd = tf.slice(x, [0, 1], [-1, -1]);
        const empty = tf.slice(x, [1, 0], [0, 3]);
        const strings = tf.tensor1d(['a', 'b', 'c'], 'string');
        const piece = tf.slice(strings, [1], [2]);
        const out = [toEnd.arraySync(), empty.shape, piece.arraySync()];
        tf.dispose([x, toEnd, empty, strings, piece]);
        return out;
      });
    expect(run('wasm')).toEqual(run('cpu'));
  });
});
