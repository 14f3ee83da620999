/**
 * Targeting: which sites and layers an adapter attaches to. A site entry is an exact site name
 * (`attn.q`), a glob (`attn.*`, `mlp.*`), a regular expression written `/^attn\.(q|v)$/`, or the whole
 * list `all-linear`. Layers are `all` or a list of indices. An entry that matches nothing is an error that
 * lists what exists, so a typo never silently attaches nothing.
 */
import { z } from 'zod';
import type { ModelConfig } from '../base/config.js';
import { FAMILY_SITES, type SiteName } from '../base/sites.js';
import { ConfigError } from '../errors.js';

export const TargetSpec = z
  .object({
    sites: z.union([z.literal('all-linear'), z.array(z.string().min(1)).min(1)]).optional(),
    layers: z.union([z.literal('all'), z.array(z.number().int().min(0)).min(1)]).default('all'),
  })
  .strict()
  .readonly();
export type TargetSpec = z.infer<typeof TargetSpec>;

function globToRegExp(glob: string): RegExp {
  const escaped = glob
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '[^]*')
    .replace(/\?/g, '.');
  return new RegExp(`^${escaped}$`);
}

/** Turns one site entry into a predicate; a malformed regular expression is a ConfigError. */
export function sitePattern(entry: string, path: string): (site: string) => boolean {
  if (entry.length > 2 && entry.startsWith('/') && entry.endsWith('/')) {
    let regex: RegExp;
    try {
      regex = new RegExp(entry.slice(1, -1));
    } catch (cause) {
      throw new ConfigError(`invalid regular expression ${entry}: ${(cause as Error).message}`, { path, cause });
    }
    return (site) => regex.test(site);
  }
  if (entry.includes('*') || entry.includes('?')) {
    const regex = globToRegExp(entry);
    return (site) => regex.test(site);
  }
  return (site) => site === entry;
}

/** Resolves site entries against a family's sites, in the family's forward order. */
export function resolveSites(
  entries: 'all-linear' | readonly string[] | undefined,
  defaults: readonly SiteName[],
  config: ModelConfig,
  path: string,
): SiteName[] {
  const available = FAMILY_SITES[config.family];
  if (entries === 'all-linear') return [...available];
  if (entries === undefined) {
    const missing = defaults.filter((s) => !available.includes(s));
    if (missing.length > 0) {
      throw new ConfigError(`default sites ${missing.join(', ')} do not exist in a ${config.family} model`, {
        path,
        hint: `Name the sites explicitly; ${config.family} has ${available.join(', ')}`,
      });
    }
    return [...defaults];
  }
  const chosen = new Set<SiteName>();
  entries.forEach((entry, i) => {
    const matches = sitePattern(entry, `${path}[${i}]`);
    const hits = available.filter(matches);
    if (hits.length === 0) {
      throw new ConfigError(`site ${JSON.stringify(entry)} matches no site of a ${config.family} model`, {
        path: `${path}[${i}]`,
        hint: `Available sites: ${available.join(', ')} (or 'all-linear', a glob like 'attn.*', or /regex/)`,
      });
    }
    for (const hit of hits) chosen.add(hit);
  });
  return available.filter((s) => chosen.has(s));
}

export function resolveLayers(layers: 'all' | readonly number[], config: ModelConfig, path: string): number[] {
  if (layers === 'all') return Array.from({ length: config.nLayers }, (_, i) => i);
  layers.forEach((layer, i) => {
    if (layer >= config.nLayers) {
      throw new ConfigError(`layer ${layer} does not exist`, { path: `${path}[${i}]`, hint: `The model has layers 0..${config.nLayers - 1}` });
    }
  });
  return [...new Set(layers)].sort((a, b) => a - b);
}

/** Fields every adapter spec has, whatever its kind. */
export const adapterSpecFields = {
  /** Unique within a spec; names the adapter in compositions, traces and saved directories. */
  name: z
    .string()
    .min(1)
    .regex(/^[A-Za-z0-9_.-]+$/, 'use letters, digits, _, . and - (the name becomes a directory name)')
    .refine(
      (name) => !['default', 'none', 'head', '.', '..'].includes(name) && !/^route\d+$/.test(name),
      'the names default, none, head, route<N>, . and .. are reserved',
    ),
  targets: TargetSpec.default({ layers: 'all' }),
};
