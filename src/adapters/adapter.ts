/**
 * The adapter contract. An adapter (one named entry of a spec, e.g. "a LoRA of rank 8 on q and v of every
 * layer") creates one module per (layer, point) it targets. A module is tiny and owns its trainable
 * variables; the frozen base never sees them.
 *
 * Every module except prefixes is a *delta*: at its point it receives the point's input x and current
 * output y and returns Δ, so the adapted output is y + Δ. Composition (stack, parallel, average, route)
 * combines deltas; a module never combines anything itself.
 *
 * Shape letters: N token rows (B·T), I/O input/output width at the point, B batch, P prefix slots,
 * Hk key/value heads, Dh head width.
 */
import type * as tf from '@tensorflow/tfjs';
import type { z } from 'zod';
import type { ModelConfig } from '../base/config.js';
import type { AttentionPrefix, ForwardContext } from '../base/hooks.js';
import type { BlockName, SiteName } from '../base/sites.js';

/** Where in a layer a module attaches. */
export type AdapterPoint =
  /** After a site's frozen linear map: x is the site input [N, I], y the base output [N, O]. */
  | { readonly kind: 'site-output'; readonly site: SiteName }
  /** Before a site's linear map: x = y = the site input [N, I] (e.g. (IA)³ on the FFN intermediate). */
  | { readonly kind: 'site-input'; readonly site: SiteName }
  /** After a sub-block, before the residual add: x = y = the block output [N, D] (bottleneck adapters). */
  | { readonly kind: 'block-output'; readonly block: BlockName }
  /** Extra attention key/value slots for the layer (prefix tuning). */
  | { readonly kind: 'attention-prefix' };

export function pointKey(point: AdapterPoint): string {
  switch (point.kind) {
    case 'site-output':
      return `${point.site}`;
    case 'site-input':
      return `${point.site}:input`;
    case 'block-output':
      return `${point.block}:output`;
    case 'attention-prefix':
      return 'attn:prefix';
  }
}

/** What a module may know about the call it runs in. */
export interface ModuleContext {
  readonly training: boolean;
  readonly forward: ForwardContext;
}

interface ModuleBase {
  readonly kind: string;
  /** Name of the adapter this module belongs to. */
  readonly adapter: string;
  readonly layer: number;
  readonly point: AdapterPoint;
  /** Trainable variables, in a stable order (used for checkpoints and optimizers). */
  variables(): readonly tf.Variable[];
  dispose(): void;
}

export interface DeltaModule extends ModuleBase {
  readonly role: 'delta';
  /** Δ for the point: x [N, I], y [N, O] → [N, O]. Runs inside the forward's tidy. */
  delta(x: tf.Tensor2D, y: tf.Tensor2D, context: ModuleContext): tf.Tensor2D;
}

export interface PrefixModule extends ModuleBase {
  readonly role: 'prefix';
  /** Key/value slots [1, P, Hk, Dh] for the layer. Runs inside the forward's tidy. */
  prefix(context: ModuleContext): AttentionPrefix;
}

export type AdapterModule = DeltaModule | PrefixModule;

/** Everything a kind needs to build one module. */
export interface ModulePlacement {
  readonly adapter: string;
  readonly layer: number;
  readonly point: AdapterPoint;
  /** Width of x at the point (I). */
  readonly inFeatures: number;
  /** Width of y at the point (O). */
  readonly outFeatures: number;
  readonly model: ModelConfig;
  /** Seed for this module's initialisation, derived from the spec seed, adapter, layer and point. */
  readonly seed: number;
}

/**
 * A descriptor: one per adapter kind, collected in one record (src/adapters/registry.ts).
 * `Config` is the kind's own validated config (its `kind` field is the discriminant).
 */
export interface AdapterSpecBase {
  readonly kind: string;
  readonly name: string;
  readonly targets: { readonly sites?: 'all-linear' | readonly string[] | undefined; readonly layers: 'all' | readonly number[] };
}

export interface AdapterKind<Config extends AdapterSpecBase = AdapterSpecBase> {
  readonly kind: Config['kind'];
  readonly schema: z.ZodType<Config>;
  /** The points of one layer this adapter attaches to, given the sites its targets resolved to. */
  points(config: Config, sites: readonly SiteName[], model: ModelConfig): readonly AdapterPoint[];
  /** Sites targeted when the spec names none. */
  readonly defaultSites: readonly SiteName[];
  /** The module at one placement; undefined when the config leaves that placement empty (a LoRA rankPattern entry of 0). */
  create(config: Config, placement: ModulePlacement): AdapterModule | undefined;
}
