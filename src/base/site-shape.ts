/**
 * Widths of each site's linear map, [O, I], from the architecture alone (the same for every family:
 * gpt2's split c_attn gives q, k, v of [D, D], which the llama formula yields with Hk = H).
 */
import type { ModelConfig } from './config.js';
import { headDim } from './config.js';
import type { SiteName } from './sites.js';

export function siteShape(config: ModelConfig, site: SiteName): [number, number] {
  const kv = config.nKvHeads * headDim(config);
  switch (site) {
    case 'attn.q':
    case 'attn.o':
      return [config.dim, config.dim];
    case 'attn.k':
    case 'attn.v':
      return [kv, config.dim];
    case 'mlp.gate':
    case 'mlp.up':
      return [config.hiddenDim, config.dim];
    case 'mlp.down':
      return [config.dim, config.hiddenDim];
  }
}
