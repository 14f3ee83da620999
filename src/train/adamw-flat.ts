/**
 * AdamW's update over flat host vectors (adamw.ts has the formulas): one pass over a run of parameters whose
 * values, gradients and moments lie side by side in Float32Arrays. Data-parallel training (data-parallel.ts)
 * splits one step's update across its replicas this way: every thread updates its own range of variables in
 * shared memory, so the optimizer is not a serial part of the step.
 *
 * Each element is computed in double precision and stored as float32 (the tf-op update rounds after every
 * op instead: the two differ by float32 round-off, ≲ 1 ulp of an update).
 *
 * Shape letters: P the parameters' total count, n the number of variables.
 */

/** What one update does to every variable: where it lies and its constants (plain data, sent to workers). */
export interface FlatUpdatePlan {
  /** [n + 1] variable i is flat[offsets[i] : offsets[i + 1]]. */
  readonly offsets: Float64Array;
  /** [n] 1 where the variable is updated (it has a gradient), 0 where it is left alone. */
  readonly active: Uint8Array;
  /** [n] the learning rate. */
  readonly lr: Float64Array;
  /** [n] 1 − lr·wd, the decoupled weight decay's factor. */
  readonly decay: Float64Array;
  /** [n] the bias corrections 1 − β1ᵗ and 1 − β2ᵗ at the variable's own step t. */
  readonly correction1: Float64Array;
  readonly correction2: Float64Array;
  readonly beta1: number;
  readonly beta2: number;
  readonly epsilon: number;
  /** Every gradient is multiplied by this first (global-norm clipping; 1 for none). */
  readonly gradScale: number;
}

/** The vectors one update reads and writes, each [P]. */
export interface FlatUpdateBuffers {
  /** Read: the gradients. */
  readonly grads: Float32Array;
  /** Read and written: the parameters, the first and second moments. */
  readonly params: Float32Array;
  readonly m: Float32Array;
  readonly v: Float32Array;
}

/** Applies `plan` to variables [first, last) of `buffers`. */
export function applyFlatUpdate(plan: FlatUpdatePlan, first: number, last: number, buffers: FlatUpdateBuffers): void {
  const { grads, params, m, v } = buffers;
  const { beta1, beta2, epsilon, gradScale } = plan;
  for (let i = first; i < last; i++) {
    if (plan.active[i] !== 1) continue;
    const lr = plan.lr[i] as number;
    const decay = plan.decay[i] as number;
    const correction1 = plan.correction1[i] as number;
    const correction2 = plan.correction2[i] as number;
    const end = plan.offsets[i + 1] as number;
    for (let j = plan.offsets[i] as number; j < end; j++) {
      const g = (grads[j] as number) * gradScale;
      const mj = beta1 * (m[j] as number) + (1 - beta1) * g; // m ← β1·m + (1−β1)·g
      const vj = beta2 * (v[j] as number) + (1 - beta2) * g * g; // v ← β2·v + (1−β2)·g²
      m[j] = mj;
      v[j] = vj;
      // p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + ε)
      params[j] = (params[j] as number) * decay - (mj / correction1 / (Math.sqrt(vj / correction2) + epsilon)) * lr;
    }
  }
}

/**
 * Variables [0, n) cut into `parts` contiguous ranges of about equal element counts, as [first, last) pairs
 * (a range may be empty when there are more parts than variables).
 */
export function splitVariables(offsets: Float64Array, parts: number): [number, number][] {
  const n = offsets.length - 1;
  const total = offsets[n] as number; // P
  const ranges: [number, number][] = [];
  let first = 0;
  for (let part = 1; part <= parts; part++) {
    const target = (total * part) / parts;
    let last = first;
    while (last < n && (part === parts || (offsets[last + 1] as number) <= target)) last++;
    if (part < parts && last === first && last < n) last++; // a variable larger than a share still goes somewhere
    ranges.push([first, last]);
    first = last;
  }
  return ranges;
}
