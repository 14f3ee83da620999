/**
 * The AdaLoRA adapter kind: an SVD-form LoRA (config.ts) on the outputs of its target sites (default q and
 * v, like LoRA), with its rank budget allocated during training by budget.ts and importance.ts.
 */
import type { AdapterKind } from '../adapter.js';
import { siteShape } from '../../base/site-shape.js';
import { checkAdapterSize, targetedLayers, type PlannedTensor } from '../limits.js';
import { AdaloraConfig } from './config.js';
import { AdaloraModule } from './layer.js';

export { AdaloraConfig } from './config.js';
export { AdaloraModule } from './layer.js';

export const adaloraKind: AdapterKind<AdaloraConfig> = {
  kind: 'adalora',
  schema: AdaloraConfig,
  defaultSites: ['attn.q', 'attn.v'],
  points(config, sites, model) {
    const planned: PlannedTensor[] = [];
    const r = config.initR;
    for (const layer of targetedLayers(config.targets.layers, model)) {
      for (const site of sites) {
        const [outFeatures, inFeatures] = siteShape(model, site);
        planned.push({ what: `layers.${layer}.${site} adalora_P [${outFeatures}, ${r}]`, elements: outFeatures * r });
        planned.push({ what: `layers.${layer}.${site} adalora_Q [${r}, ${inFeatures}]`, elements: r * inFeatures });
        planned.push({ what: `layers.${layer}.${site} adalora_E [${r}]`, elements: r });
      }
    }
    checkAdapterSize(config.name, 'adalora', planned, `adapters.${config.name}.initR`, `rank ${r} on ${sites.length} site${sites.length === 1 ? '' : 's'}`);
    return sites.map((site) => ({ kind: 'site-output', site }));
  },
  create(config, placement) {
    if (placement.point.kind !== 'site-output') throw new Error(`AdaLoRA cannot attach at ${placement.point.kind}`);
    return new AdaloraModule(placement, { rank: config.initR, alpha: config.alpha, dropout: config.dropout, init: config.init });
  },
};
