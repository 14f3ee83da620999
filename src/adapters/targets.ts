/**
 * Targeting: which sites and layers an adapter attaches to. A site entry is an exact site name
 * (`attn.q`), a glob (`attn.*`, `mlp.*`), a regular expression written `/^attn\.(q|v)$/`, or the whole
 * list `all-linear`. Layers are `all` or a list of indices. An entry that matches nothing is an error that
 * lists what exists, so a typo never silently attaches nothing.
 */
import { z } from 'zod';
import type { ModelConfig } from '../base/config.js';
import { FAMILY_SITES, type SiteName } from '../base/sites.js';
import { compileSafeRegex, escapeRegex } from '../config/safe-regex.js';
import { ConfigError } from '../errors.js';

/** Most entries a `targets.sites` list (or `feedforwardSites`) may hold. */
export const MAX_SITE_ENTRIES = 1024;
/** Most keys a `rankPattern` / `alphaPattern` may hold. */
export const MAX_PATTERN_KEYS = 1024;
/** Longest adapter name (it becomes a directory name). */
export const MAX_ADAPTER_NAME = 128;

export const TargetSpec = z
  .object({
    sites: z.union([z.literal('all-linear'), z.array(z.string().min(1)).min(1).max(MAX_SITE_ENTRIES)]).optional(),
    layers: z.union([z.literal('all'), z.array(z.number().int().min(0)).min(1).max(MAX_SITE_ENTRIES)]).default('all'),
  })
  .strict()
  .readonly();
export type TargetSpec = z.infer<typeof TargetSpec>;

function globToRegex(glob: string): string {
  let out = '';
  for (const ch of glob) out += ch === '*' ? '(?s:.*)' : ch === '?' ? '(?s:.)' : escapeRegex(ch);
  return out;
}

/** Compiled predicates by entry: patterns are matched once per module, and compiling RE2 is not free. */
const predicateCache = new Map<string, (site: string) => boolean>();
const PREDICATE_CACHE_SIZE = 4096;

/**
 * Turns one site entry into a predicate: an exact name, a glob, or a /regex/ run by the linear-time RE2 engine
 * (entries come from spec files, so a catastrophic pattern must not hang). A malformed or unsupported regular
 * expression is a ConfigError naming the entry.
 */
export function sitePattern(entry: string, path: string): (site: string) => boolean {
  const cached = predicateCache.get(entry);
  if (cached !== undefined) return cached;
  let predicate: (site: string) => boolean;
  if (entry.length > 2 && entry.startsWith('/') && entry.endsWith('/')) {
    const regex = compileSafeRegex(entry.slice(1, -1), { path, what: 'site regular expression' });
    predicate = (site) => regex.test(site);
  } else if (entry.includes('*') || entry.includes('?')) {
    const regex = compileSafeRegex(globToRegex(entry), { path, what: 'glob' });
    predicate = (site) => regex.fullMatch(site);
  } else {
    predicate = (site) => site === entry;
  }
  if (predicateCache.size >= PREDICATE_CACHE_SIZE) predicateCache.clear();
  predicateCache.set(entry, predicate);
  return predicate;
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
    .max(MAX_ADAPTER_NAME)
    .regex(/^[A-Za-z0-9_.-]+$/, 'use letters, digits, _, . and - (the name becomes a directory name)')
    .refine(
      (name) => !['default', 'none', 'head', '.', '..'].includes(name) && !/^route\d+$/.test(name),
      'the names default, none, head, route<N>, . and .. are reserved',
    ),
  targets: TargetSpec.default({ layers: 'all' }),
};
