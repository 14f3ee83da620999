/**
 * Merging LoRA adapters into a copy of the base weights (Hu et al. 2021, §4.1: "we can explicitly compute
 * and store W = W₀ + BA and perform inference as usual", so a merged adapter adds no latency).
 *
 * At every site any of the adapters targets, the merged weight is
 *   W' = W + Σ_a w_a · s_a · (B_a·A_a)ᵀ                   [I, O] (sites store W transposed; see base/weights.ts)
 * with s_a = alpha / r (or alpha / √r with rsLoRA) and w_a the adapter's weight (default 1). W' is a NEW
 * tensor held by a view of the base (Transformer.withSiteWeights); the base's W is never written. So
 * "unmerge" is disposing the view: it frees only the merged weights, and the base — which never changed —
 * is restored exactly, with no W − ΔW round-off.
 *
 * Only LoRA merges: (IA)³, bottleneck adapters and prefixes are not a weight delta at a site (or not a
 * linear one), so asking to merge them is a ConfigError.
 *
 * Shape letters: O/I a site's out/in widths, r the rank.
 */
import * as tf from '@tensorflow/tfjs';
import type { Transformer } from '../../base/transformer.js';
import type { AdapterInstance } from '../instance.js';
import { ConfigError, ShapeError, formatShape } from '../../errors.js';
import { LoraBank } from './bank.js';
import { LoraModule } from './layer.js';

export interface LoraMergeEntry {
  readonly instance: AdapterInstance;
  /** Multiplies the adapter's ΔW (default 1); like a weight of an `average` composition. */
  readonly weight?: number;
}

interface SiteTerm {
  readonly module: LoraModule;
  readonly weight: number;
}

interface SiteMerge {
  /** The base weight W, stored [I, O] (read, never written). */
  readonly base: tf.Tensor2D;
  readonly terms: SiteTerm[];
}

/**
 * A view of `base` with the LoRA adapters merged into the weights of the sites they target. The caller
 * owns the view: dispose it to unmerge (the base and its weights stay untouched and usable throughout).
 * Throws ConfigError for a non-LoRA adapter or a non-finite weight, and ShapeError when an adapter was
 * built for a model whose site shapes differ from `base`; in both cases before any tensor is created.
 */
export function mergeLora(base: Transformer, adapters: readonly LoraMergeEntry[]): Transformer {
  const bySite = new Map<string, SiteMerge>();
  adapters.forEach(({ instance, weight = 1 }, i) => {
    const path = `adapters[${i}]`;
    if (instance.spec.kind !== 'lora') {
      throw new ConfigError(
        `adapter ${JSON.stringify(instance.name)} is a ${instance.spec.kind} adapter; only LoRA adapters can be merged into the base weights`,
        {
          path: `${path}.instance`,
          hint: `Apply ${JSON.stringify(instance.name)} at run time through an AdaptedModel instead of merging it`,
        },
      );
    }
    if (!Number.isFinite(weight)) {
      throw new ConfigError(`merge weight ${weight} of adapter ${JSON.stringify(instance.name)} is not a finite number`, { path: `${path}.weight` });
    }
    for (const module of instance.modules.values()) {
      if (!(module instanceof LoraModule)) {
        throw new ConfigError(`adapter ${JSON.stringify(instance.name)} holds a ${module.kind} module; only LoRA modules can be merged`, {
          path: `${path}.instance`,
        });
      }
      const key = `${module.layer}|${module.site}`;
      const linear = base.weights.layers[module.layer]?.sites[module.site];
      if (linear === undefined) {
        throw new ShapeError(
          `adapter ${JSON.stringify(instance.name)} targets layer ${module.layer} site ${module.site}, which this ${base.config.family} model does not have`,
          {
            path: `${path}.instance`,
            hint: 'Merge an adapter into the model it was created for',
          },
        );
      }
      const expected = [linear.weight.shape[1], linear.weight.shape[0]]; // W is stored [I, O]; ΔW is [O, I]
      const actual = [module.b.shape[0], module.a.shape[1]];
      if (actual[0] !== expected[0] || actual[1] !== expected[1]) {
        throw new ShapeError(
          `adapter ${JSON.stringify(instance.name)} at layer ${module.layer} site ${module.site} has ΔW ${formatShape(actual)} but the base weight is ${formatShape(expected)}`,
          {
            path: `${path}.instance`,
            hint: 'Merge an adapter into the model it was created for',
          },
        );
      }
      const site = bySite.get(key) ?? { base: linear.weight, terms: [] };
      site.terms.push({ module, weight });
      bySite.set(key, site);
    }
  });

  const sites = [...bySite];
  const merged = sites.map(([, { base: weight, terms }]) => {
    const bank = new LoraBank([terms.map((t) => ({ lora: t.module, choice: 0, weight: t.weight }))], 1); // one site, one choice
    const delta = bank.deltaWeight(0); // [I, O]  Σ w·s·Aᵀ·Bᵀ
    const sum = tf.add<tf.Tensor2D>(weight, delta); // [I, O]  a new tensor; W itself is untouched
    delta.dispose();
    bank.dispose();
    return sum;
  });
  return base.withSiteWeights(new Map(sites.map(([key], i) => [key, merged[i] as tf.Tensor2D])));
}
