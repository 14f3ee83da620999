/**
 * The LoRA adapter kind: attaches to the outputs of its target sites (default q and v, as PEFT does for llama).
 */
import type { AdapterKind } from '../adapter.js';
import { patternOverride } from '../patterns.js';
import { LoraConfig } from './config.js';
import { LoraModule } from './layer.js';

export { LoraConfig } from './config.js';
export { LoraModule, loraScale } from './layer.js';

export const loraKind: AdapterKind<LoraConfig> = {
  kind: 'lora',
  schema: LoraConfig,
  defaultSites: ['attn.q', 'attn.v'],
  points: (_config, sites) => sites.map((site) => ({ kind: 'site-output', site })),
  create(config, placement) {
    if (placement.point.kind !== 'site-output') throw new Error(`LoRA cannot attach at ${placement.point.kind}`);
    const site = placement.point.site;
    const path = `adapters.${config.name}`;
    return new LoraModule(placement, {
      rank: patternOverride(config.rankPattern, placement.layer, site, `${path}.rankPattern`) ?? config.r,
      alpha: patternOverride(config.alphaPattern, placement.layer, site, `${path}.alphaPattern`) ?? config.alpha,
      rslora: config.rslora,
      dropout: config.dropout,
      init: config.init,
    });
  },
};
