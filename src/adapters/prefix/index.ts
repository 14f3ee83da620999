/**
 * The prefix-tuning kind: one module per targeted layer at the layer's attention ('attention-prefix').
 * Sites play no part, so `defaultSites` is empty.
 */
import type { AdapterKind, AdapterPoint } from '../adapter.js';
import { ConfigError } from '../../errors.js';
import { PrefixConfig } from './config.js';
import { PrefixTuningModule } from './layer.js';

export { PrefixConfig } from './config.js';
export { PREFIX_INIT_STD, PrefixTuningModule, type PrefixShape } from './layer.js';

const POINTS: readonly AdapterPoint[] = [{ kind: 'attention-prefix' }];

export const prefixKind: AdapterKind<PrefixConfig> = {
  kind: 'prefix',
  schema: PrefixConfig,
  defaultSites: [],
  points(config) {
    if (config.targets.sites !== undefined) {
      throw new ConfigError('prefix adapters attach to attention, not to sites', {
        path: `adapters.${config.name}.targets.sites`,
        hint: 'Remove targets.sites; choose layers with targets.layers',
      });
    }
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
