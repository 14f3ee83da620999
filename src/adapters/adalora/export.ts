/**
 * What a trained AdaLoRA adapter ends with: its ranks per layer and site, and the same function as a plain
 * LoRA. Both read the variables (a triplet is live when λᵢ ≠ 0), so they work on an adapter just trained or
 * one loaded from disk.
 *
 * The export keeps only live triplets: module m with live set K becomes a LoRA of rank |K| with
 *
 *   A = diag(s · λ_K) · Q_K   [|K|, I]        B = P_K   [O, |K|]        alpha = |K| (LoRA scale 1)
 *
 * so s·P·diag(Λ)·Q = B·A exactly in real arithmetic (float32 rounding differs: λ·s is folded into A before
 * the product). Ranks differ per module, so the LoRA carries them in `rankPattern` / `alphaPattern`, which
 * the PEFT writer turns into PEFT's rank_pattern / alpha_pattern. A module whose triplets were all pruned
 * gets rank 0: no module at all (and no tensors in a PEFT directory).
 */
import * as tf from '@tensorflow/tfjs';
import type { ModelConfig } from '../../base/config.js';
import type { SiteName } from '../../base/sites.js';
import { ConfigError } from '../../errors.js';
import { createAdapter, type AdapterInstance } from '../instance.js';
import { LoraModule } from '../lora/layer.js';
import { AdapterSpec } from '../registry.js';
import type { AdaloraConfig } from './config.js';
import { AdaloraModule } from './layer.js';

export interface AdaloraModuleRank {
  readonly layer: number;
  readonly site: SiteName;
  readonly initialRank: number;
  readonly rank: number;
}

/** The ranks of one AdaLoRA adapter (plain data: what `routed-peft train` writes as adalora-ranks.json). */
export interface AdaloraRankReport {
  readonly adapter: string;
  readonly modules: readonly AdaloraModuleRank[];
  /** Σ initR. */
  readonly initialTotalRank: number;
  /** targetR × modules. */
  readonly targetTotalRank: number;
  /** Live triplets now. */
  readonly totalRank: number;
  /** Elements of the adapter's variables (P, Λ, Q at the initial rank): what training holds. */
  readonly trainableParameters: number;
  /** Elements of the exported LoRA (Σ rank · (I + O)): what the pruned adapter costs to store and serve. */
  readonly exportedLoraParameters: number;
}

function adaloraModules(instance: AdapterInstance): AdaloraModule[] {
  if (instance.spec.kind !== 'adalora') {
    throw new ConfigError(`adapter ${JSON.stringify(instance.name)} is a ${instance.spec.kind} adapter, not AdaLoRA`, { hint: 'Pass an AdaLoRA adapter' });
  }
  return [...instance.modules.values()].filter((m): m is AdaloraModule => m instanceof AdaloraModule).sort((a, b) => a.layer - b.layer);
}

/** Ranks per (layer, site), read from Λ (one host read per module). */
export function adaloraRanks(instance: AdapterInstance): AdaloraRankReport {
  const spec = instance.spec as AdaloraConfig;
  const modules = adaloraModules(instance).map((m) => ({ module: m, live: m.activeRanks() }));
  const rows = modules.map(({ module, live }) => ({ layer: module.layer, site: module.site, initialRank: module.rank, rank: live.filter(Boolean).length }));
  const widths = (m: AdaloraModule): number => (m.p.shape[0] as number) + (m.q.shape[1] as number); // O + I
  return {
    adapter: instance.name,
    modules: rows,
    initialTotalRank: rows.reduce((s, r) => s + r.initialRank, 0),
    targetTotalRank: spec.targetR * rows.length,
    totalRank: rows.reduce((s, r) => s + r.rank, 0),
    trainableParameters: instance.parameterCount(),
    exportedLoraParameters: modules.reduce((s, { module, live }) => s + live.filter(Boolean).length * widths(module), 0),
  };
}

function mostCommon(values: readonly number[]): number {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let best = values[0] as number;
  for (const [v, c] of counts) if (c > (counts.get(best) ?? 0)) best = v;
  return best;
}

/** The adapter as a plain LoRA of its live triplets (see the file header). The caller disposes the result. */
export function adaloraToLora(instance: AdapterInstance, config: ModelConfig, options: { readonly name?: string } = {}): AdapterInstance {
  const spec = instance.spec as AdaloraConfig;
  const modules = adaloraModules(instance).map((m) => ({ module: m, live: m.activeRanks() }));
  const ranks = modules.map(({ live }) => live.filter(Boolean).length);
  const kept = ranks.filter((r) => r > 0);
  if (kept.length === 0) {
    throw new ConfigError(`AdaLoRA adapter ${JSON.stringify(instance.name)} has no live triplet left (every λ is 0): there is nothing to export`, {
      path: `adapters.${instance.name}.targetR`,
      hint: 'Train with targetR ≥ 1 (and at least one step past tinit), or export before every singular value is pruned',
    });
  }
  const r = mostCommon(kept);
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  modules.forEach(({ module }, i) => {
    const rank = ranks[i] as number;
    if (rank === r) return;
    rankPattern[`layers.${module.layer}.${module.site}`] = rank;
    if (rank > 0) alphaPattern[`layers.${module.layer}.${module.site}`] = rank;
  });
  const loraSpec = AdapterSpec.parse({
    kind: 'lora',
    name: options.name ?? instance.name,
    targets: spec.targets,
    r,
    alpha: r,
    dropout: spec.dropout,
    rankPattern,
    alphaPattern,
    init: 'zero-b',
  });
  const lora = createAdapter(loraSpec, config, 0, `adapters.${loraSpec.name}`);
  try {
    for (const { module, live } of modules) {
      const target = lora.module(module.layer, module.point);
      const rank = live.filter(Boolean).length;
      if (rank === 0) continue;
      if (!(target instanceof LoraModule) || target.rank !== rank || target.scale !== 1)
        throw new Error(`internal: no rank-${rank} LoRA at layer ${module.layer} ${module.site}`);
      const index = tf.tensor1d(
        live.flatMap((on, i) => (on ? [i] : [])),
        'int32',
      ); // [|K|]
      tf.tidy(() => {
        const lambda = tf.mul(tf.gather(module.lambda, index), module.scale); // [|K|]  s·λ_K
        target.a.assign(tf.mul(tf.gather(module.q, index, 0), tf.expandDims(lambda, 1))); // [|K|, I] ⊙ [|K|, 1]
        target.b.assign(tf.gather(module.p, index, 1)); // [O, |K|]
      });
      index.dispose();
    }
  } catch (error) {
    lora.dispose();
    throw error;
  }
  return lora;
}
