/**
 * Non-finite values (NaN, ±Infinity) in weights read from files are refused at load: a model with one NaN
 * weight computes NaN everywhere and would otherwise load "without a word". Loaders take an explicit opt-out,
 * `allowNonFinite: true` (CLI `--allow-non-finite`), for inspecting such files.
 */
import { NonFiniteError } from '../errors.js';

export interface FiniteOptions {
  /** Load tensors holding NaN or ±Infinity instead of refusing them (default false). */
  readonly allowNonFinite?: boolean | undefined;
}

/** Index of the first NaN or ±Infinity in `values`, or -1. */
export function firstNonFinite(values: ArrayLike<number>): number {
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as number;
    // v - v is 0 for finite v, NaN for NaN and ±Infinity: one comparison per element.
    if (v - v !== 0) return i;
  }
  return -1;
}

function describeNumber(v: number): string {
  return Number.isNaN(v) ? 'NaN' : v > 0 ? '+Infinity' : '-Infinity';
}

/**
 * Throws NonFiniteError naming the tensor, the first bad flat index and value, and how many there are, unless
 * `options.allowNonFinite`. `source` is the file the tensor came from.
 */
export function assertFiniteTensor(values: ArrayLike<number>, tensor: string, source: string | undefined, options: FiniteOptions = {}): void {
  if (options.allowNonFinite === true) return;
  const first = firstNonFinite(values);
  if (first < 0) return;
  let count = 0;
  for (let i = first; i < values.length; i++) {
    const v = values[i] as number;
    if (v - v !== 0) count++;
  }
  throw new NonFiniteError(
    `tensor ${JSON.stringify(tensor)} holds ${describeNumber(values[first] as number)} at flat index ${first} (${count} of its ${values.length} values are not finite)`,
    {
      ...(source === undefined ? {} : { path: source }),
      tensor,
      index: first,
      hint: 'The file is corrupt or was saved from a diverged run; pass allowNonFinite: true (CLI: --allow-non-finite) to load it anyway',
    },
  );
}
