/**
 * Per-placement overrides (PEFT's rank_pattern / alpha_pattern): a key names a site (`attn.q`, glob,
 * /regex/) or one layer's site (`layers.3.attn.q`). The most specific match wins: a layer-qualified key
 * over a site key; among equals, the later key.
 */
import type { SiteName } from '../base/sites.js';
import { ConfigError } from '../errors.js';
import { sitePattern } from './targets.js';

const QUALIFIED = /^layers\.\d+\./;

export function patternOverride<T>(patterns: Readonly<Record<string, T>>, layer: number, site: SiteName, path: string): T | undefined {
  let best: { value: T; specific: boolean } | undefined;
  for (const [key, value] of Object.entries(patterns)) {
    const qualified = QUALIFIED.test(key);
    const matches = qualified ? sitePattern(key, `${path}.${key}`)(`layers.${layer}.${site}`) : sitePattern(key, `${path}.${key}`)(site);
    if (!matches) continue;
    if (best === undefined || qualified || !best.specific) best = { value, specific: qualified };
  }
  return best?.value;
}

/**
 * Refuses pattern keys that match nothing the adapter attaches to (a typo would otherwise silently keep the
 * default rank or alpha): a site key must match one of `sites`, a layer-qualified key one of `layers × sites`.
 */
export function checkPatternKeys(patterns: Readonly<Record<string, unknown>>, layers: readonly number[], sites: readonly SiteName[], path: string): void {
  for (const key of Object.keys(patterns)) {
    const qualified = QUALIFIED.test(key);
    const matches = sitePattern(key, `${path}.${key}`);
    const hit = qualified ? layers.some((layer) => sites.some((site) => matches(`layers.${layer}.${site}`))) : sites.some(matches);
    if (hit) continue;
    const layerList = layers.length > 8 ? `${layers.slice(0, 8).join(', ')}, …` : layers.join(', ');
    throw new ConfigError(`${path} key ${JSON.stringify(key)} matches no site this adapter attaches to`, {
      path: `${path}.${key}`,
      hint: `The adapter targets ${sites.join(', ') || '(no sites)'} in layers ${layerList}; keys are a site, a glob, a /regex/, or layers.<i>.<site>`,
    });
  }
}
