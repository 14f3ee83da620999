/**
 * The LoRA adapter kind: attaches to the outputs of its target sites (default q and v, as PEFT does for llama).
 */
import type { AdapterKind } from '../adapter.js';
import { siteShape } from '../../base/site-shape.js';
import { checkAdapterSize, targetedLayers, type PlannedTensor } from '../limits.js';
import { checkPatternKeys, patternOverride } from '../patterns.js';
import { LoraConfig } from './config.js';
import { LoraModule } from './layer.js';

export { LoraConfig } from './config.js';
export { LoraModule, loraScale } from './layer.js';

export const loraKind: AdapterKind<LoraConfig> = {
  kind: 'lora',
  schema: LoraConfig,
  defaultSites: ['attn.q', 'attn.v'],
  points(config, sites, model) {
    const path = `adapters.${config.name}`;
    const layers = targetedLayers(config.targets.layers, model);
    checkPatternKeys(config.rankPattern, layers, sites, `${path}.rankPattern`);
    checkPatternKeys(config.alphaPattern, layers, sites, `${path}.alphaPattern`);
    const planned: PlannedTensor[] = [];
    let largest = config.r;
    for (const layer of layers) {
      for (const site of sites) {
        const rank = patternOverride(config.rankPattern, layer, site, `${path}.rankPattern`) ?? config.r;
        largest = Math.max(largest, rank);
        const [outFeatures, inFeatures] = siteShape(model, site);
        planned.push({ what: `layers.${layer}.${site} lora_A [${rank}, ${inFeatures}]`, elements: rank * inFeatures });
        planned.push({ what: `layers.${layer}.${site} lora_B [${outFeatures}, ${rank}]`, elements: outFeatures * rank });
      }
    }
    checkAdapterSize(
      config.name,
      'lora',
      planned,
      `${path}.r`,
      `rank up to ${largest} on ${sites.length} site${sites.length === 1 ? '' : 's'} × ${layers.length} layers`,
    );
    return sites.map((site) => ({ kind: 'site-output', site }));
  },
  create(config, placement) {
    if (placement.point.kind !== 'site-output') throw new Error(`LoRA cannot attach at ${placement.point.kind}`);
    const site = placement.point.site;
    const path = `adapters.${config.name}`;
    const rank = patternOverride(config.rankPattern, placement.layer, site, `${path}.rankPattern`) ?? config.r;
    if (rank === 0) return undefined; // rankPattern 0: no module at this placement
    return new LoraModule(placement, {
      rank,
      alpha: patternOverride(config.alphaPattern, placement.layer, site, `${path}.alphaPattern`) ?? config.alpha,
      rslora: config.rslora,
      dropout: config.dropout,
      init: config.init,
    });
  },
};
