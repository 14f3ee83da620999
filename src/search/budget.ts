/**
 * Exact budget accounting. The trainable count of a spec is the sum of the sizes of the variables the model
 * built from it holds (every adapter module and every router), counted on the real base — not a formula, so
 * it cannot drift from what training updates. `fitCandidate` finds the largest size of a candidate whose
 * count fits a target, by bisection (the count grows with the size).
 */
import type { Transformer } from '../base/transformer.js';
import { AdaptedModel } from '../model/adapted-model.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import { type Candidate, candidateSpec, searchKind } from './space.js';

/** Σ size of the model's trainable variables (adapters and routers). */
export function trainableCount(model: AdaptedModel): number {
  return model.variables().reduce((total, v) => total + v.size, 0);
}

/** The trainable count of a spec, measured by building it on the base (then freed). */
export function specTrainableCount(base: Transformer, spec: unknown, routers: RouterRegistry): number {
  const model = AdaptedModel.create(base, spec, { routers });
  try {
    return trainableCount(model);
  } finally {
    model.dispose();
  }
}

export interface FittedCandidate {
  readonly candidate: Candidate;
  /** The size field's value (1 for kinds without one). */
  readonly size: number;
  readonly spec: Record<string, unknown>;
  /** Exact: Σ variable sizes of the model the spec builds. */
  readonly trainableParams: number;
}

/**
 * The candidate at the largest size whose trainable count is at most `target`, or undefined when even size 1
 * exceeds it.
 */
export function fitCandidate(base: Transformer, routers: RouterRegistry, candidate: Candidate, target: number, seed: number): FittedCandidate | undefined {
  const kind = searchKind(candidate.kind);
  const model = { family: base.config.family, nLayers: base.config.nLayers };
  const count = (size: number): number => specTrainableCount(base, candidateSpec(candidate, size, model, seed), routers);
  if (count(1) > target) return undefined;
  let lo = 1;
  let hi = kind.sizeField === undefined ? 1 : kind.maxSize(base.config.maxSeqLen);
  // Invariant: count(lo) ≤ target; the answer is in [lo, hi].
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (count(mid) <= target) lo = mid;
    else hi = mid - 1;
  }
  const spec = candidateSpec(candidate, lo, model, seed);
  return { candidate, size: lo, spec, trainableParams: specTrainableCount(base, spec, routers) };
}
