/**
 * Many tensors as one flat vector and back (a routed model trains hundreds of variables, exchanged between
 * data-parallel replicas as one vector). Measured on wasm with 900 tensors of 4,096 values: a read per tensor
 * into one buffer takes 4–7 ms, a concat and one read 24–34 ms; an upload per tensor 4 ms, one upload and a
 * split 10–28 ms — so both go tensor by tensor.
 *
 * Shape letters: P the tensors' total element count.
 */
import * as tf from '@tensorflow/tfjs';

/** The tensors' values concatenated in order into `flat` (its length must be their total size). */
export function readFlatInto(tensors: readonly tf.Tensor[], flat: Float32Array): Float32Array {
  const total = tensors.reduce((s, t) => s + t.size, 0); // P
  if (total !== flat.length) throw new Error(`tensors of ${total} values do not fill a flat vector of ${flat.length}`);
  let offset = 0;
  for (const t of tensors) {
    flat.set(t.dataSync() as Float32Array, offset);
    offset += t.size;
  }
  return flat;
}

/**
 * Tensors by name into `flat`, in `names` order (run i holds sizes[i] values): zeros where a name has no
 * tensor, and present[i] is 1 where a name had one.
 */
export function readNamedInto(
  names: readonly string[],
  sizes: readonly number[],
  tensors: ReadonlyMap<string, tf.Tensor>,
  flat: Float32Array,
  present: Uint8Array,
): void {
  let offset = 0;
  names.forEach((name, i) => {
    const t = tensors.get(name);
    const size = sizes[i] as number;
    if (t === undefined) flat.fill(0, offset, offset + size);
    else flat.set(t.dataSync() as Float32Array, offset);
    present[i] = t === undefined ? 0 : 1;
    offset += size;
  });
}

/** The same items in the same order (two replicas' variable names, or a variable list's data ids). */
export function sameItems<T>(a: readonly T[], b: readonly T[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Assigns consecutive runs of `flat` to `variables` (run i holds variable i's values), only where
 * only[i] = 1 when `only` is given; the values are copied.
 */
export function assignFlat(variables: readonly tf.Variable[], flat: Float32Array, only?: Uint8Array): void {
  const total = variables.reduce((s, v) => s + v.size, 0); // P
  if (total !== flat.length) throw new Error(`variables of ${total} values do not fill a flat vector of ${flat.length}`);
  let offset = 0;
  variables.forEach((v, i) => {
    if (only === undefined || only[i] === 1) tf.tidy(() => v.assign(tf.tensor(flat.subarray(offset, offset + v.size), v.shape, 'float32'))); // [...v]
    offset += v.size;
  });
}

/** Tensors of `shapes` over consecutive runs of `flat`, owned by the caller. */
export function splitFlat(flat: Float32Array, shapes: readonly (readonly number[])[]): tf.Tensor[] {
  const out: tf.Tensor[] = [];
  let offset = 0;
  for (const shape of shapes) {
    const size = tf.util.sizeFromShape([...shape]);
    out.push(tf.tensor(flat.subarray(offset, offset + size), [...shape], 'float32')); // copies the run
    offset += size;
  }
  if (offset !== flat.length) {
    tf.dispose(out);
    throw new Error(`a flat vector of ${flat.length} values does not fill shapes of ${offset}`);
  }
  return out;
}

/** (Σ wₛ·xₛ) / Σ wₛ over flat vectors of one length, written into the first: one pass (kept out of generators). */
export function weightedMeanInto(into: Float32Array, intoWeight: number, others: readonly { readonly values: Float32Array; readonly weight: number }[]): void {
  const total = others.reduce((s, o) => s + o.weight, intoWeight);
  const n = into.length;
  for (const { values } of others) if (values.length !== n) throw new Error(`flat vectors of ${values.length} and ${n} values cannot be averaged`);
  const a = intoWeight / total;
  if (others.length === 1) {
    const { values, weight } = others[0] as { readonly values: Float32Array; readonly weight: number };
    const b = weight / total;
    for (let j = 0; j < n; j++) into[j] = a * (into[j] as number) + b * (values[j] as number);
    return;
  }
  for (let j = 0; j < n; j++) into[j] = a * (into[j] as number);
  for (const { values, weight } of others) {
    const b = weight / total;
    for (let j = 0; j < n; j++) into[j] = (into[j] as number) + b * (values[j] as number);
  }
}

/** into += weight · values, element by element (vectors of one length). */
export function addScaledInto(into: Float32Array, values: Float32Array, weight: number): void {
  const n = into.length;
  if (values.length !== n) throw new Error(`flat vectors of ${values.length} and ${n} values cannot be added`);
  for (let j = 0; j < n; j++) into[j] = (into[j] as number) + weight * (values[j] as number);
}

/** Σ xⱼ² in double precision (NaN or Infinity when an element is non-finite). */
export function squaredNorm(values: Float32Array): number {
  let sum = 0;
  for (let j = 0; j < values.length; j++) sum += (values[j] as number) * (values[j] as number);
  return sum;
}
