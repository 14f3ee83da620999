/**
 * The spec of an adapted (possibly routed) model: the adapters, how they compose, and a seed. It is the
 * `spec` part of routed-peft.json and what `routed-peft init --spec` reads.
 */
import { z } from 'zod';
import type { ModelConfig } from '../base/config.js';
import { AdapterSpec } from '../adapters/registry.js';
import { parseConfig } from '../config/parse.js';
import { ConfigError } from '../errors.js';
import { CompositionNode, adaptersIn, routesIn } from './spec.js';

/** Most adapters one spec may define. */
export const MAX_SPEC_ADAPTERS = 4096;

export const AdaptedModelSpec = z
  .object({
    /** Seed for every module's and router's initialisation. */
    seed: z.number().int().default(0),
    adapters: z.array(AdapterSpec).min(1).max(MAX_SPEC_ADAPTERS),
    /** How the adapters combine at every point; default: all adapters in parallel. */
    composition: CompositionNode.optional(),
  })
  .strict();
export type AdaptedModelSpec = z.infer<typeof AdaptedModelSpec>;

/** The composition a spec uses: its own, or all adapters in parallel. */
export function effectiveComposition(spec: AdaptedModelSpec): CompositionNode {
  if (spec.composition !== undefined) return spec.composition;
  const leaves = spec.adapters.map((a) => ({ kind: 'adapter' as const, adapter: a.name }));
  return leaves.length === 1 ? (leaves[0] as CompositionNode) : { kind: 'parallel', children: leaves };
}

/** Checks that a composition names only known adapters, each at most once. */
export function checkComposition(composition: CompositionNode, known: readonly string[], path: string): void {
  const seen = new Set<string>();
  for (const name of adaptersIn(composition)) {
    if (!known.includes(name)) {
      throw new ConfigError(`composition names unknown adapter ${JSON.stringify(name)}`, {
        path,
        hint: `Known adapters: ${known.join(', ') || '(none)'}`,
      });
    }
    if (seen.has(name)) {
      throw new ConfigError(`adapter ${JSON.stringify(name)} appears twice in the composition`, {
        path,
        hint: 'Each adapter may appear once; define a second adapter for a second position',
      });
    }
    seen.add(name);
  }
}

export function parseAdaptedModelSpec(value: unknown, what = 'spec'): AdaptedModelSpec {
  const spec = parseConfig(AdaptedModelSpec, value, what);
  const names = spec.adapters.map((a) => a.name);
  const duplicate = names.find((n, i) => names.indexOf(n) !== i);
  if (duplicate !== undefined) {
    throw new ConfigError(`two adapters are named ${JSON.stringify(duplicate)}`, {
      path: `${what}.adapters[${names.lastIndexOf(duplicate)}].name`,
      hint: 'Adapter names must be unique',
    });
  }
  if (spec.composition !== undefined) checkComposition(spec.composition, names, `${what}.composition`);
  return spec;
}

/**
 * Checks what a spec says about the model it will run on: a model-level route reads the hidden state entering
 * layer `readLayer`, which must exist. (Adapter sizes and targets are checked when the adapters are built.)
 */
export function checkSpecAgainstModel(spec: AdaptedModelSpec, config: ModelConfig, what = 'spec'): void {
  routesIn(effectiveComposition(spec)).forEach((route, i) => {
    if (route.placement === 'model' && route.readLayer >= config.nLayers) {
      throw new ConfigError(`route ${i} reads the hidden state entering layer ${route.readLayer}, but the model has layers 0..${config.nLayers - 1}`, {
        path: `${what}.composition${routesIn(effectiveComposition(spec)).length === 1 ? '' : ` (route ${i})`}.readLayer`,
        hint: `Use a readLayer in [0, ${config.nLayers - 1}] (0 reads the embeddings)`,
      });
    }
  });
}
