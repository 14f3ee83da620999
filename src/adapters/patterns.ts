/**
 * Per-placement overrides (PEFT's rank_pattern / alpha_pattern): a key names a site (`attn.q`, glob,
 * /regex/) or one layer's site (`layers.3.attn.q`). The most specific match wins: a layer-qualified key
 * over a site key; among equals, the later key.
 */
import type { SiteName } from '../base/sites.js';
import { sitePattern } from './targets.js';

export function patternOverride<T>(patterns: Readonly<Record<string, T>>, layer: number, site: SiteName, path: string): T | undefined {
  let best: { value: T; specific: boolean } | undefined;
  for (const [key, value] of Object.entries(patterns)) {
    const qualified = /^layers\.\d+\./.test(key);
    const matches = qualified ? sitePattern(key, `${path}.${key}`)(`layers.${layer}.${site}`) : sitePattern(key, `${path}.${key}`)(site);
    if (!matches) continue;
    if (best === undefined || qualified || !best.specific) best = { value, specific: qualified };
  }
  return best?.value;
}
