/**
 * The prefix-tuning kind: one module per targeted layer at the layer's attention ('attention-prefix').
 * Sites play no part, so `defaultSites` is empty.
 */
import type { AdapterKind, AdapterPoint } from '../adapter.js';
import { headDim } from '../../base/config.js';
import { ConfigError } from '../../errors.js';
import { checkAdapterSize, targetedLayers } from '../limits.js';
import { PrefixConfig } from './config.js';
import { PrefixTuningModule } from './layer.js';

export { PrefixConfig } from './config.js';
export { PREFIX_INIT_STD, PrefixTuningModule, type PrefixShape } from './layer.js';

const POINTS: readonly AdapterPoint[] = [{ kind: 'attention-prefix' }];

export const prefixKind: AdapterKind<PrefixConfig> = {
  kind: 'prefix',
  schema: PrefixConfig,
  defaultSites: [],
  points(config, _sites, model) {
    if (config.targets.sites !== undefined) {
      throw new ConfigError('prefix adapters attach to attention, not to sites', {
        path: `adapters.${config.name}.targets.sites`,
        hint: 'Remove targets.sites; choose layers with targets.layers',
      });
    }
    const path = `adapters.${config.name}`;
    if (config.prefixLength > model.maxSeqLen) {
      throw new ConfigError(
        `prefix adapter ${JSON.stringify(config.name)} has prefixLength ${config.prefixLength}, more than the model's context of ${model.maxSeqLen} tokens`,
        {
          path: `${path}.prefixLength`,
          hint: `Use at most ${model.maxSeqLen} prefix slots (prefixes of 1-100 are usual)`,
        },
      );
    }
    const P = config.prefixLength;
    const slot = model.nKvHeads * headDim(model); // C
    const E = config.reparamHiddenDim;
    const perLayer = config.reparameterize
      ? [
          { what: `embedding [${P}, ${E}]`, elements: P * E },
          { what: `mlp.0 [${E}, ${E}]`, elements: E * E + E },
          { what: `mlp.2 [${2 * slot}, ${E}]`, elements: 2 * slot * E + 2 * slot },
        ]
      : [
          { what: `keys [1, ${P}, ${model.nKvHeads}, ${headDim(model)}]`, elements: P * slot },
          { what: `values [1, ${P}, ${model.nKvHeads}, ${headDim(model)}]`, elements: P * slot },
        ];
    const layers = targetedLayers(config.targets.layers, model);
    const field = config.reparameterize ? 'reparamHiddenDim' : 'prefixLength';
    checkAdapterSize(
      config.name,
      'prefix',
      layers.flatMap(() => perLayer),
      `${path}.${field}`,
      `${P} slots${config.reparameterize ? `, MLP width ${E}` : ''} × ${layers.length} layers`,
    );
    return POINTS;
  },
  create(config, placement) {
    if (placement.point.kind !== 'attention-prefix') throw new Error(`a prefix cannot attach at ${placement.point.kind}`);
    return new PrefixTuningModule(placement, {
      length: config.prefixLength,
      reparameterize: config.reparameterize,
      hiddenDim: config.reparamHiddenDim,
    });
  },
};
