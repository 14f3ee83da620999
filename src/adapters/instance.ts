/**
 * Builds every module of every adapter in a spec: for each adapter, its kind resolves the targeted sites
 * and layers into points, and creates one module per (layer, point). Modules are looked up by
 * (adapter, layer, point).
 */
import type { AdapterModule, AdapterPoint, ModulePlacement } from './adapter.js';
import { pointKey } from './adapter.js';
import { adapterKind, type AdapterSpec } from './registry.js';
import { resolveLayers, resolveSites } from './targets.js';
import type { ModelConfig } from '../base/config.js';
import { siteShape } from '../base/site-shape.js';

/** FNV-1a over a string, mixed with a base seed: stable per-module seeds that do not depend on build order. */
export function deriveSeed(seed: number, label: string): number {
  let hash = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < label.length; i++) {
    hash ^= label.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash & 0x7fffffff;
}

export function moduleKey(layer: number, point: AdapterPoint): string {
  return `${layer}|${pointKey(point)}`;
}

/** In/out widths of x and y at a point. */
export function pointWidths(config: ModelConfig, point: AdapterPoint): { inFeatures: number; outFeatures: number } {
  switch (point.kind) {
    case 'site-output': {
      const [outFeatures, inFeatures] = siteShape(config, point.site);
      return { inFeatures, outFeatures };
    }
    case 'site-input': {
      const [, inFeatures] = siteShape(config, point.site);
      return { inFeatures, outFeatures: inFeatures };
    }
    case 'block-output':
    case 'attention-prefix':
      return { inFeatures: config.dim, outFeatures: config.dim };
  }
}

export class AdapterInstance {
  constructor(
    readonly spec: AdapterSpec,
    /** moduleKey → module */
    readonly modules: ReadonlyMap<string, AdapterModule>,
  ) {}

  get name(): string {
    return this.spec.name;
  }

  module(layer: number, point: AdapterPoint): AdapterModule | undefined {
    return this.modules.get(moduleKey(layer, point));
  }

  parameterCount(): number {
    let total = 0;
    for (const m of this.modules.values()) for (const v of m.variables()) total += v.size;
    return total;
  }

  dispose(): void {
    for (const m of this.modules.values()) m.dispose();
  }
}

/** Creates all modules of one adapter. Throws ConfigError for targets that do not exist. */
export function createAdapter(spec: AdapterSpec, config: ModelConfig, seed: number, path: string): AdapterInstance {
  const kind = adapterKind(spec.kind);
  const sites = resolveSites(spec.targets.sites, kind.defaultSites, config, `${path}.targets.sites`);
  const layers = resolveLayers(spec.targets.layers, config, `${path}.targets.layers`);
  const points = kind.points(spec, sites, config);
  const modules = new Map<string, AdapterModule>();
  try {
    for (const layer of layers) {
      for (const point of points) {
        const key = moduleKey(layer, point);
        const placement: ModulePlacement = {
          adapter: spec.name,
          layer,
          point,
          ...pointWidths(config, point),
          model: config,
          seed: deriveSeed(seed, `${spec.name}|${key}`),
        };
        const module = kind.create(spec, placement);
        if (module !== undefined) modules.set(key, module);
      }
    }
  } catch (error) {
    for (const m of modules.values()) m.dispose();
    throw error;
  }
  return new AdapterInstance(spec, modules);
}
