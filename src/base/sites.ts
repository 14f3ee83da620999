/**
 * Sites: the named linear maps of each Transformer layer, through which adapters attach.
 *
 * Every family exposes the attention projections separately (gpt2's fused c_attn is split at load time),
 * so an adapter spec written for one family reads the same on another.
 */

export const SITE_NAMES = ['attn.q', 'attn.k', 'attn.v', 'attn.o', 'mlp.gate', 'mlp.up', 'mlp.down'] as const;
export type SiteName = (typeof SITE_NAMES)[number];

export type ModelFamily = 'llama' | 'gpt2';

/** Sites each family has, in forward order. gpt2's MLP has no gate. */
export const FAMILY_SITES: Readonly<Record<ModelFamily, readonly SiteName[]>> = {
  llama: SITE_NAMES,
  gpt2: ['attn.q', 'attn.k', 'attn.v', 'attn.o', 'mlp.up', 'mlp.down'],
};

export function isSiteName(value: string): value is SiteName {
  return (SITE_NAMES as readonly string[]).includes(value);
}

/** Sub-blocks of a layer whose outputs (before the residual add) may be adapted, e.g. by bottleneck adapters. */
export type BlockName = 'attn' | 'mlp';

/**
 * A group of sites that read the same input in the base forward, in call order: the Transformer asks its hooks
 * for adapter outputs once per group (so q, k and v, or gate and up, can be adapted — and routed — together).
 */
export interface SiteGroup {
  /** Position of the group in its family's list (0 q/k/v, 1 o, 2 the FFN input sites, 3 down). */
  readonly index: number;
  readonly sites: readonly SiteName[];
}

/** Each family's site groups, in forward order; every site of the family is in exactly one group. */
export const FAMILY_SITE_GROUPS: Readonly<Record<ModelFamily, readonly SiteGroup[]>> = {
  llama: [
    { index: 0, sites: ['attn.q', 'attn.k', 'attn.v'] },
    { index: 1, sites: ['attn.o'] },
    { index: 2, sites: ['mlp.gate', 'mlp.up'] },
    { index: 3, sites: ['mlp.down'] },
  ],
  gpt2: [
    { index: 0, sites: ['attn.q', 'attn.k', 'attn.v'] },
    { index: 1, sites: ['attn.o'] },
    { index: 2, sites: ['mlp.up'] },
    { index: 3, sites: ['mlp.down'] },
  ],
};
