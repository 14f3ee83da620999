/**
 * What one adapter module changes, measured from its variables on the host.
 *
 *   lora        ΔW = s·B·A with B [O, r], A [r, I] (PEFT's lora_B, lora_A), s = alpha / r (alpha / √r, rsLoRA)
 *   adalora     ΔW = s·P·diag(Λ)·Q with P [O, r], Λ [r], Q [r, I], s = alpha / r (r the initial rank)
 *   ia3         y ↦ y ⊙ l: no ΔW of its own (it rescales the base's), measured by l − 1
 *   bottleneck  up·act(down·h + b) + b': a non-linear function of the block output, no fixed matrix
 *   prefix      extra attention keys and values: no matrix at any site
 *
 * Any other kind (a future registry entry) is reported by name as not analysed, never skipped.
 *
 * Shape letters: O output width, I input width, r rank, W the (IA)³ vector's width.
 */
import type { AdapterModule } from '../adapters/adapter.js';
import { AdaloraModule } from '../adapters/adalora/index.js';
import { Ia3Module } from '../adapters/ia3/index.js';
import { LoraModule } from '../adapters/lora/index.js';
import { type HostMatrix, hostMatrix, lowRankSvd } from './linear-algebra.js';
import type { ModuleMeasure } from './report.js';
import { effectiveRank, frobeniusFromSpectrum, numericalRank } from './spectrum.js';

/** A module's measure, plus (for a ΔW) its left singular vectors, most important first, for overlaps. */
export interface MeasuredModule {
  readonly measure: ModuleMeasure;
  /** U [O, r] of ΔW with orthonormal columns for its non-zero singular values; absent without a ΔW. */
  readonly outputBasis?: HostMatrix;
}

const WHY_NOT: Readonly<Record<string, string>> = {
  bottleneck: 'a bottleneck adds up·act(down·h) to the block output: a non-linear function, not a weight matrix',
  prefix: 'prefix tuning adds attention key/value slots: it changes no weight matrix',
};

function parameterCount(module: AdapterModule): number {
  return module.variables().reduce((sum, v) => sum + v.size, 0);
}

function allFinite(values: ArrayLike<number>): boolean {
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i] as number)) return false;
  return true;
}

/** What a module holding NaN or ±Infinity (loaded with --allow-non-finite) reports instead of a meaningless spectrum. */
function nonFinite(adapter: string, kind: string, parameters: number): MeasuredModule {
  return { measure: { adapter, kind, measure: 'none', parameters, reason: 'its weights hold NaN or ±Infinity, so it has no spectrum' } };
}

/**
 * Measures ΔW = scale·B·A from host copies of B [O, r] and A [r, I]. Factors holding NaN or ±Infinity give a
 * `measure: "none"` entry (its `parameters`: the factors' entries) instead of a meaningless spectrum.
 */
export function measureFactoredDelta(
  identity: { readonly adapter: string; readonly kind: 'lora' | 'adalora'; readonly rank: number },
  b: HostMatrix,
  a: HostMatrix,
  scale: number,
): MeasuredModule {
  if (!allFinite(b.data) || !allFinite(a.data) || !Number.isFinite(scale)) {
    return nonFinite(identity.adapter, identity.kind, b.data.length + a.data.length);
  }
  const { u, s } = lowRankSvd(b, a, scale); // U [O, r], s [r]
  const kept = Math.min(identity.rank, s.length);
  const singularValues = Array.from(s.subarray(0, kept));
  return {
    measure: {
      adapter: identity.adapter,
      kind: identity.kind,
      measure: 'delta-w',
      shape: [b.rows, a.cols],
      rank: identity.rank,
      scale,
      singularValues,
      effectiveRank: effectiveRank(singularValues),
      numericalRank: numericalRank(singularValues),
      frobenius: frobeniusFromSpectrum(singularValues),
    },
    outputBasis: u,
  };
}

/** Reads the module's variables (asynchronously: any backend) and measures it. */
export async function measureModule(module: AdapterModule): Promise<MeasuredModule> {
  if (module instanceof LoraModule) {
    const [rank, inFeatures] = module.a.shape; // [r, I]
    const [outFeatures] = module.b.shape; // [O, r]
    const a = hostMatrix(rank, inFeatures, await module.a.data()); // [r, I]
    const b = hostMatrix(outFeatures, rank, await module.b.data()); // [O, r]
    return measureFactoredDelta({ adapter: module.adapter, kind: 'lora', rank: module.rank }, b, a, module.scale);
  }
  if (module instanceof AdaloraModule) {
    const [rank, inFeatures] = module.q.shape; // [r, I]
    const [outFeatures] = module.p.shape; // [O, r]
    const p = await module.p.data(); // [O, r]
    const lambda = await module.lambda.data(); // [r]
    const q = await module.q.data(); // [r, I]
    if (!allFinite(p) || !allFinite(lambda) || !allFinite(q)) return nonFinite(module.adapter, module.kind, parameterCount(module));
    const b = hostMatrix(outFeatures, rank); // P·diag(Λ) [O, r]
    for (let i = 0; i < outFeatures; i++) for (let j = 0; j < rank; j++) b.data[i * rank + j] = (p[i * rank + j] as number) * (lambda[j] as number);
    const a = hostMatrix(rank, inFeatures, q); // [r, I]
    return measureFactoredDelta({ adapter: module.adapter, kind: 'adalora', rank: module.rank }, b, a, module.scale);
  }
  if (module instanceof Ia3Module) {
    const l = await module.scale.data(); // [W]
    if (!allFinite(l)) return nonFinite(module.adapter, module.kind, l.length);
    let squares = 0;
    let max = 0;
    let sum = 0;
    for (const value of l) {
      const deviation = value - 1;
      squares += deviation * deviation;
      max = Math.max(max, Math.abs(deviation));
      sum += value;
    }
    return {
      measure: {
        adapter: module.adapter,
        kind: 'ia3',
        measure: 'scale-vector',
        width: l.length,
        deviationNorm: Math.sqrt(squares),
        maxDeviation: max,
        meanScale: l.length === 0 ? 0 : sum / l.length,
      },
    };
  }
  const reason = WHY_NOT[module.kind] ?? `the analysis has no measure for adapter kind '${module.kind}'`;
  return { measure: { adapter: module.adapter, kind: module.kind, measure: 'none', parameters: parameterCount(module), reason } };
}
