/**
 * The (IA)³ kind: default sites attn.k, attn.v and mlp.down (as PEFT's defaults for llama); sites listed in
 * `feedforwardSites` are scaled at their input, the others at their output.
 */
import type { AdapterKind, AdapterPoint } from '../adapter.js';
import { FAMILY_SITES } from '../../base/sites.js';
import { ConfigError } from '../../errors.js';
import { sitePattern } from '../targets.js';
import { Ia3Config } from './config.js';
import { Ia3Module } from './layer.js';

export { Ia3Config } from './config.js';
export { Ia3Module } from './layer.js';

export const ia3Kind: AdapterKind<Ia3Config> = {
  kind: 'ia3',
  schema: Ia3Config,
  defaultSites: ['attn.k', 'attn.v', 'mlp.down'],
  points(config, sites, model) {
    const path = `adapters.${config.name}.feedforwardSites`;
    const available = FAMILY_SITES[model.family];
    const feedforward = config.feedforwardSites.map((entry, i) => {
      const matches = sitePattern(entry, `${path}[${i}]`);
      if (!available.some(matches)) {
        throw new ConfigError(`feedforward site ${JSON.stringify(entry)} matches no site of a ${model.family} model`, {
          path: `${path}[${i}]`,
          hint: `Available sites: ${available.join(', ')}`,
        });
      }
      return matches;
    });
    return sites.map((site): AdapterPoint => (feedforward.some((matches) => matches(site)) ? { kind: 'site-input', site } : { kind: 'site-output', site }));
  },
  create(_config, placement) {
    return new Ia3Module(placement);
  },
};
