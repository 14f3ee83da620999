// The fixture's format and the comparison rules of the pinning test (paths.test.ts), shared with the
// generator (generate.ts), which also uses them to report how far apart equivalent paths are.
//
// Rules, per adapted output (logits):
//   logits  max|new − old| ≤ 1e-6 · max|old|
//   delta   Δ = adapted − bare base logits for the same input (both stored);
//           max|Δnew − Δold| ≤ 1e-4 · max|Δold|, and max|Δold| > 1e-3 so the delta is really there
//           (for a `bare` output, a base row of a mixed pass: max|Δnew| ≤ 1e-6 · max|old| instead)
//   base    the recomputed bare base logits match the stored ones like logits do
// Exact values (token ids, trace entries) must be equal; scalars within their rtol · max|old|.
import type { PinnedCase, PinnedTensor } from './run-paths.js';

export const LOGITS_RTOL = 1e-6;
export const DELTA_RTOL = 1e-4;
export const MIN_DELTA = 1e-3;

export interface StoredOutput extends PinnedTensor {
  /** Key of the bare base logits in Fixture.bases. */
  readonly base: string;
  readonly bare?: boolean;
}

export interface StoredCase {
  readonly about: string;
  readonly outputs: Record<string, StoredOutput>;
  readonly exact?: Record<string, unknown>;
  readonly scalars?: Record<string, { readonly values: number[]; readonly rtol: number }>;
}

export interface Fixture {
  readonly about: string;
  readonly generatedFrom: string;
  readonly backend: string;
  readonly tfjs: string;
  readonly bases: Record<string, PinnedTensor>;
  readonly cases: Record<string, StoredCase>;
}

export function maxAbs(values: ArrayLike<number>): number {
  let max = 0;
  for (let i = 0; i < values.length; i++) max = Math.max(max, Math.abs(values[i] as number));
  return max;
}

/** max|a − b| and where; NaN anywhere counts as Infinity. */
export function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): { readonly diff: number; readonly index: number } {
  if (a.length !== b.length) throw new Error(`length ${a.length} differs from ${b.length}`);
  let diff = 0;
  let index = -1;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs((a[i] as number) - (b[i] as number));
    const value = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
    if (value > diff || index < 0) {
      diff = value;
      index = i;
    }
  }
  return { diff, index };
}

function minus(a: readonly number[], b: readonly number[]): number[] {
  return a.map((v, i) => v - (b[i] as number));
}

function where(shape: readonly number[], index: number): string {
  const coords: number[] = [];
  let rest = index;
  for (let d = shape.length - 1; d >= 0; d--) {
    const size = shape[d] as number;
    coords.unshift(rest % size);
    rest = Math.floor(rest / size);
  }
  return `[${coords.join(', ')}]`;
}

function sameShape(label: string, actual: readonly number[], expected: readonly number[], failures: string[]): boolean {
  if (actual.length === expected.length && actual.every((d, i) => d === expected[i])) return true;
  failures.push(`${label}: shape [${actual.join(', ')}] differs from the pinned [${expected.join(', ')}]`);
  return false;
}

function within(label: string, fresh: PinnedTensor, pinned: PinnedTensor, rtol: number, failures: string[]): void {
  if (!sameShape(label, fresh.shape, pinned.shape, failures)) return;
  const scale = maxAbs(pinned.values);
  const { diff, index } = maxDiff(fresh.values, pinned.values);
  if (!(diff <= rtol * scale)) {
    failures.push(
      `${label}: max|new − old| = ${diff} > ${rtol} · max|old| = ${rtol * scale}, at ${where(pinned.shape, index)} (new ${fresh.values[index]}, old ${pinned.values[index]})`,
    );
  }
}

/**
 * Compares a freshly computed case with its stored form; returns the failures (empty when it matches).
 * `bases` holds the stored bare base logits by key.
 */
export function compareCase(name: string, fresh: PinnedCase, stored: StoredCase, bases: Record<string, PinnedTensor>): string[] {
  const failures: string[] = [];
  const freshNames = Object.keys(fresh.outputs).sort();
  const storedNames = Object.keys(stored.outputs).sort();
  if (freshNames.join() !== storedNames.join()) failures.push(`${name}: outputs [${freshNames.join(', ')}] differ from the pinned [${storedNames.join(', ')}]`);
  for (const [out, pinned] of Object.entries(stored.outputs)) {
    const now = fresh.outputs[out];
    const label = `${name} ${out}`;
    if (now === undefined) continue;
    const pinnedBase = bases[pinned.base];
    if (pinnedBase === undefined) {
      failures.push(`${label}: the fixture has no base logits ${pinned.base}`);
      continue;
    }
    if (now.base.key !== pinned.base) failures.push(`${label}: base input ${now.base.key} differs from the pinned ${pinned.base}`);
    within(`${label} logits`, now.logits, pinned, LOGITS_RTOL, failures);
    within(`${label} bare base logits`, now.base, pinnedBase, LOGITS_RTOL, failures);
    if (!sameShape(`${label} base vs logits`, now.base.shape, now.logits.shape, failures)) continue;
    if (!sameShape(`${label} pinned base vs logits`, pinnedBase.shape, pinned.shape, failures)) continue;
    const oldDelta = minus(pinned.values, pinnedBase.values);
    const newDelta = minus(now.logits.values, now.base.values);
    const deltaScale = maxAbs(oldDelta);
    if (pinned.bare === true) {
      const bareScale = LOGITS_RTOL * maxAbs(pinned.values);
      if (!(maxAbs(newDelta) <= bareScale)) failures.push(`${label}: a bare row's delta max|Δnew| = ${maxAbs(newDelta)} > ${bareScale}`);
      continue;
    }
    if (!(deltaScale > MIN_DELTA))
      failures.push(`${label}: the pinned delta is trivial (max|Δold| = ${deltaScale} ≤ ${MIN_DELTA}): this output would not catch a lost adapter`);
    const { diff, index } = maxDiff(newDelta, oldDelta);
    if (!(diff <= DELTA_RTOL * deltaScale)) {
      failures.push(
        `${label} delta: max|Δnew − Δold| = ${diff} > ${DELTA_RTOL} · max|Δold| = ${DELTA_RTOL * deltaScale}, at ${where(pinned.shape, index)} (Δnew ${newDelta[index]}, Δold ${oldDelta[index]})`,
      );
    }
  }
  const exactNames = [...new Set([...Object.keys(fresh.exact ?? {}), ...Object.keys(stored.exact ?? {})])];
  for (const key of exactNames) {
    const a = JSON.stringify(fresh.exact?.[key]);
    const b = JSON.stringify(stored.exact?.[key]);
    if (a !== b) failures.push(`${name} ${key}: ${(a ?? 'undefined').slice(0, 300)} differs from the pinned ${(b ?? 'undefined').slice(0, 300)}`);
  }
  const scalarNames = [...new Set([...Object.keys(fresh.scalars ?? {}), ...Object.keys(stored.scalars ?? {})])];
  for (const key of scalarNames) {
    const a = fresh.scalars?.[key];
    const b = stored.scalars?.[key];
    if (a === undefined || b === undefined) {
      failures.push(`${name} ${key}: present ${a === undefined ? 'only in the fixture' : 'only in the new run'}`);
      continue;
    }
    within(`${name} ${key}`, { shape: [a.values.length], values: a.values }, { shape: [b.values.length], values: b.values }, b.rtol, failures);
  }
  return failures;
}

/** The stored form of a case (bases go to the shared table, by key). */
export function storeCase(about: string, fresh: PinnedCase, bases: Record<string, PinnedTensor>): StoredCase {
  const outputs: Record<string, StoredOutput> = {};
  for (const [out, { logits, base, bare }] of Object.entries(fresh.outputs)) {
    const { key, ...baseTensor } = base;
    const known = bases[key];
    if (known === undefined) bases[key] = baseTensor;
    else if (maxDiff(known.values, baseTensor.values).diff !== 0) throw new Error(`base logits ${key} differ between cases: the key must name one input`);
    outputs[out] = { base: key, ...(bare === true ? { bare } : {}), ...logits };
  }
  return { about, outputs, ...(fresh.exact === undefined ? {} : { exact: fresh.exact }), ...(fresh.scalars === undefined ? {} : { scalars: fresh.scalars }) };
}
