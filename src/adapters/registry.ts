/**
 * The one record of adapter kinds. A new kind is a folder under src/adapters/ plus one line here; nothing
 * registers itself on import. The spec union is derived from the same record, so a kind's config schema
 * is validated wherever specs are parsed.
 */
import { z } from 'zod';
import type { AdapterKind } from './adapter.js';
import { AdaloraConfig, adaloraKind } from './adalora/index.js';
import { BottleneckConfig, bottleneckKind } from './bottleneck/index.js';
import { Ia3Config, ia3Kind } from './ia3/index.js';
import { LoraConfig, loraKind } from './lora/index.js';
import { PrefixConfig, prefixKind } from './prefix/index.js';

export const ADAPTER_KINDS = {
  lora: loraKind,
  bottleneck: bottleneckKind,
  prefix: prefixKind,
  ia3: ia3Kind,
  adalora: adaloraKind,
} as const;

export type AdapterKindName = keyof typeof ADAPTER_KINDS;

export const AdapterSpec = z.discriminatedUnion('kind', [LoraConfig, BottleneckConfig, PrefixConfig, Ia3Config, AdaloraConfig]);
export type AdapterSpec = z.infer<typeof AdapterSpec>;

export function adapterKind(kind: string): AdapterKind<AdapterSpec> {
  const found: unknown = (ADAPTER_KINDS as Readonly<Record<string, unknown>>)[kind];
  if (found === undefined) throw new Error(`unknown adapter kind '${kind}'`);
  return found as AdapterKind<AdapterSpec>;
}
