// Numeric assertions shared by the tests: element-wise closeness with a message that says where and by how
// much values differ, and a tensor-leak check around sync or async code.
import * as tf from '@tensorflow/tfjs';

export interface CloseOptions {
  /** Relative tolerance, scaled by |expected|. Default 1e-5. */
  readonly rtol?: number;
  /** Absolute tolerance. Default 1e-6. */
  readonly atol?: number;
  /** Names what is compared, for the failure message. */
  readonly label?: string;
}

function toValues(values: ArrayLike<number> | tf.Tensor): ArrayLike<number> {
  return values instanceof tf.Tensor ? (values.dataSync() as ArrayLike<number>) : values;
}

/**
 * Asserts |actual − expected| ≤ atol + rtol·|expected| element-wise (numpy's allclose rule; NaN equals NaN,
 * ±Infinity equals itself). On failure the message gives the number of offending elements, the largest
 * absolute difference with its index and both values there, and the first offending index.
 */
export function expectClose(actualInput: ArrayLike<number> | tf.Tensor, expectedInput: ArrayLike<number> | tf.Tensor, options: CloseOptions = {}): void {
  const { rtol = 1e-5, atol = 1e-6, label } = options;
  const what = label === undefined ? 'expectClose' : `expectClose(${label})`;
  const actual = toValues(actualInput);
  const expected = toValues(expectedInput);
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length} differs from the expected length ${expected.length}`);
  }
  let failures = 0;
  let firstFailure = -1;
  let worstIndex = -1;
  let worstDiff = -1;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i] as number;
    const e = expected[i] as number;
    let ok: boolean;
    let diff: number;
    if (Number.isNaN(a) || Number.isNaN(e)) {
      ok = Number.isNaN(a) && Number.isNaN(e);
      diff = ok ? 0 : Number.POSITIVE_INFINITY;
    } else if (!Number.isFinite(a) || !Number.isFinite(e)) {
      ok = a === e;
      diff = ok ? 0 : Number.POSITIVE_INFINITY;
    } else {
      diff = Math.abs(a - e);
      ok = diff <= atol + rtol * Math.abs(e);
    }
    if (diff > worstDiff) {
      worstDiff = diff;
      worstIndex = i;
    }
    if (!ok) {
      failures++;
      if (firstFailure < 0) firstFailure = i;
    }
  }
  if (failures > 0) {
    const at = (i: number): string => `index ${i} (actual ${actual[i]}, expected ${expected[i]})`;
    throw new Error(
      `${what}: ${failures} of ${actual.length} values differ by more than atol ${atol} + rtol ${rtol}·|expected|; ` +
        `max abs diff ${worstDiff} at ${at(worstIndex)}; first failure at ${at(firstFailure)}`,
    );
  }
}

/**
 * Runs `fn` and asserts that tf.memory().numTensors is the same afterwards as before (for an async `fn`,
 * after its promise settles successfully). Returns what `fn` returns; if `fn` throws, its error propagates
 * unchanged (wrap `expect(...).toThrow()` inside `fn` to check that a failing call leaks nothing).
 */
export function expectNoLeak<T>(fn: () => Promise<T>): Promise<T>;
export function expectNoLeak<T>(fn: () => T): T;
export function expectNoLeak<T>(fn: () => T | Promise<T>): T | Promise<T> {
  const before = tf.memory().numTensors;
  const check = (): void => {
    const after = tf.memory().numTensors;
    if (after !== before) {
      throw new Error(`expectNoLeak: numTensors went from ${before} to ${after} (${after > before ? '+' : ''}${after - before})`);
    }
  };
  const result = fn();
  if (result instanceof Promise) {
    return result.then((value) => {
      check();
      return value;
    });
  }
  check();
  return result;
}
