/**
 * One `route` node of a composition, built once: its experts, its routers (one per site, per layer, or one for
 * the model), their variables and stable names, and the LoRA banks of its experts per site group. What a
 * route decides during one forward lives in a RoutingPass (routing-pass.ts), never here.
 *
 * Shape letters: I input width of a site group, E choices (experts, then the null expert if any).
 */
import type * as tf from '@tensorflow/tfjs';
import type { AdapterPoint, DeltaModule } from '../adapters/adapter.js';
import { pointKey } from '../adapters/adapter.js';
import { type AdapterInstance, deriveSeed, pointWidths } from '../adapters/instance.js';
import { LoraBank } from '../adapters/lora/bank.js';
import { LoraModule } from '../adapters/lora/layer.js';
import type { ModelConfig } from '../base/config.js';
import type { SiteGroup, SiteName } from '../base/sites.js';
import type { RouteNode } from '../compose/spec.js';
import { ConfigError, RoutedPeftError } from '../errors.js';
import { FusedRouters } from './fused-group.js';
import type { RetentionChoices } from './retention-losses.js';
import type { Router } from './router.js';
import type { RouterRegistry } from './router-registry.js';
import { NULL_EXPERT } from './trace.js';

/** The LoRA experts of a route at one site group: a bank over the sites where every present expert is LoRA. */
export interface GroupBank {
  /** Sites of the group where the route has a router (some expert has a module there), in group order. */
  readonly members: readonly SiteName[];
  /** The bank's sites: the members whose experts are all LoRA with one dropout rate, in group order. */
  readonly sites: readonly SiteName[];
  readonly bank: LoraBank | undefined;
  /** The per-site router of each bank site (site placement), in the bank's order. */
  readonly routers: readonly (Router | undefined)[];
  /** For each site of the group, its index in the bank (−1: not a bank site). */
  readonly bankIndex: readonly number[];
  /** The fast path's cached router operands for this group. */
  readonly fused: FusedRouters;
}

export class RouterSet {
  private expertList: AdapterInstance[];
  readonly expertNames: readonly string[];
  /** E: experts plus the null expert. */
  readonly choices: number;
  readonly needsTokenIds: boolean;
  readonly needsTaskIds: boolean;
  /** Where the route's retention terms read (undefined: the route has none). */
  readonly retention: RetentionChoices | undefined;
  private readonly routers = new Map<string, Router>();
  /** By `${layer}|${group index}`, rebuilt when an expert is replaced. */
  private readonly banks = new Map<string, GroupBank>();

  constructor(
    readonly node: RouteNode,
    readonly index: number,
    adapters: ReadonlyMap<string, AdapterInstance>,
    config: ModelConfig,
    registry: RouterRegistry,
    seed: number,
  ) {
    this.expertList = node.experts.map((name) => adapters.get(name) as AdapterInstance);
    this.expertNames = [...node.experts, ...(node.nullExpert ? [NULL_EXPERT] : [])];
    this.choices = this.expertNames.length;
    const path = `composition.route[${index}]`;
    this.retention = retentionChoices(node, this.expertNames, `${path}.retention`);
    const kind = registry.get(node.router.kind, `${path}.router.kind`);
    this.needsTokenIds = kind.needsTokenIds === true;
    this.needsTaskIds = kind.needsTaskIds === true;
    if (node.granularity === 'sequence' && this.needsTokenIds) {
      throw new RoutedPeftError(`router '${kind.kind}' routes by token id and cannot route whole sequences`, {
        path: `${path}.granularity`,
        hint: "Use granularity 'token' with this router",
      });
    }
    if (this.experts.some((e) => [...e.modules.values()].some((m) => m.role === 'prefix')) && node.granularity !== 'sequence') {
      throw new RoutedPeftError('prefix experts can only be routed per sequence', {
        path: `${path}.granularity`,
        hint: "Set granularity to 'sequence' for routes with prefix experts",
      });
    }
    const extra = node.modalityFeature === true ? MODALITY_FEATURES : 0;
    const create = (key: string, inputDim: number): void => {
      this.routers.set(
        key,
        registry.create(node.router, { choices: this.choices, inputDim: inputDim + extra, seed: deriveSeed(seed, `route${index}|${key}`) }, `${path}.router`),
      );
    };
    try {
      if (node.placement === 'model') {
        create('model', config.dim);
      } else {
        for (let layer = 0; layer < config.nLayers; layer++) {
          const points = this.pointsAt(layer);
          if (points.length === 0) continue;
          if (node.placement === 'layer') create(`${layer}`, config.dim);
          else
            for (const point of points) create(siteKey(layer, point), point.kind === 'attention-prefix' ? config.dim : pointWidths(config, point).inFeatures);
        }
      }
    } catch (error) {
      this.dispose();
      throw error;
    }
  }

  get experts(): readonly AdapterInstance[] {
    return this.expertList;
  }

  /** Swaps in a replacement for the expert of the same name (same points, new weights). */
  replaceExpert(instance: AdapterInstance): void {
    this.expertList = this.expertList.map((e) => (e.name === instance.name ? instance : e));
    this.releaseBanks();
  }

  /** Points of a layer where at least one expert has a module. */
  pointsAt(layer: number): AdapterPoint[] {
    const seen = new Map<string, AdapterPoint>();
    for (const expert of this.experts) {
      for (const module of expert.modules.values()) if (module.layer === layer) seen.set(pointKey(module.point), module.point);
    }
    return [...seen.values()];
  }

  /** The router deciding for `key` (`model`, `${layer}`, or siteKey(layer, point)). */
  router(key: string): Router | undefined {
    return this.routers.get(key);
  }

  routerList(): readonly Router[] {
    return [...this.routers.values()];
  }

  variables(): tf.Variable[] {
    return this.routerList().flatMap((r) => [...r.variables()]);
  }

  parameterCount(): number {
    return this.variables().reduce((s, v) => s + v.size, 0);
  }

  /** Trainable router variables by a stable name (for checkpoints): `route<i>/<router key>/<variable index>`. */
  namedVariables(): Map<string, tf.Variable> {
    const named = new Map<string, tf.Variable>();
    for (const [key, router] of this.routers) router.variables().forEach((v, i) => named.set(`route${this.index}/${key}/${i}`, v));
    return named;
  }

  /** Each choice's delta module at a point (undefined: no module there, or the null expert). */
  expertModules(layer: number, point: AdapterPoint): (DeltaModule | undefined)[] {
    const modules = this.experts.map((e) => {
      const m = e.module(layer, point);
      return m?.role === 'delta' ? m : undefined;
    });
    return this.node.nullExpert ? [...modules, undefined] : modules;
  }

  /** The LoRA bank of this route's experts at a site group of a layer (built at first use, kept until an expert changes). */
  groupBank(layer: number, group: SiteGroup): GroupBank {
    const key = `${layer}|${group.index}`;
    const cached = this.banks.get(key);
    if (cached !== undefined) return cached;
    const members: SiteName[] = [];
    const sites: SiteName[] = [];
    const terms: { lora: LoraModule; choice: number; weight: number }[][] = [];
    for (const site of group.sites) {
      const experts = this.expertModules(layer, { kind: 'site-output', site });
      if (experts.every((e) => e === undefined)) continue;
      members.push(site);
      const present = experts.flatMap((module, choice) => (module === undefined ? [] : [{ module, choice }]));
      const lora = present.every((p) => p.module instanceof LoraModule)
        ? present.map((p) => ({ lora: p.module as LoraModule, choice: p.choice, weight: 1 }))
        : undefined;
      if (lora === undefined || new Set(lora.map((t) => t.lora.dropout)).size > 1) continue;
      sites.push(site);
      terms.push(lora);
    }
    const routers = sites.map((site) => this.routers.get(siteKey(layer, { kind: 'site-output', site })));
    const bankIndex = group.sites.map((site) => sites.indexOf(site));
    const entry: GroupBank = {
      members,
      sites,
      bank: terms.length === 0 ? undefined : new LoraBank(terms, this.choices),
      routers,
      bankIndex,
      fused: new FusedRouters(),
    };
    this.banks.set(key, entry);
    return entry;
  }

  dispose(): void {
    for (const router of this.routers.values()) router.dispose();
    this.routers.clear();
    this.releaseBanks();
  }

  private releaseBanks(): void {
    for (const entry of this.banks.values()) {
      entry.bank?.dispose();
      entry.fused.dispose();
    }
    this.banks.clear();
  }
}

/** Width of the modality features a route with `modalityFeature` appends to its routers' input (one-hot text, image). */
export const MODALITY_FEATURES = 2;
/** Checks a route's retention terms against its choices; undefined when it has none. */
function retentionChoices(node: RouteNode, choices: readonly string[], path: string): RetentionChoices | undefined {
  const spec = node.retention;
  if (spec === undefined) return undefined;
  if (spec.nullRouting > 0 && !node.nullExpert) {
    throw new ConfigError(`retention.nullRouting = ${spec.nullRouting} trains the null expert, but this route has none`, {
      path: `${path}.nullRouting`,
      hint: 'Set "nullExpert": true on the route, or nullRouting to 0',
    });
  }
  const names = spec.group ?? (node.nullExpert ? [NULL_EXPERT] : undefined);
  if (names === undefined) {
    if (spec.localBalance > 0) {
      throw new ConfigError('retention.localBalance needs a group of choices that serve base-domain rows', {
        path: `${path}.group`,
        hint: `Name the experts of the base-domain group in retention.group (of ${choices.join(', ')}), or add the null expert ("nullExpert": true)`,
      });
    }
    return { nullIndex: undefined, group: choices.map(() => 0) };
  }
  names.forEach((name, i) => {
    if (!choices.includes(name)) {
      throw new ConfigError(`retention.group names ${JSON.stringify(name)}, which is not a choice of this route`, {
        path: `${path}.group[${i}]`,
        hint: `The route's choices are ${choices.join(', ')}${node.nullExpert ? '' : ` (add "nullExpert": true to use ${NULL_EXPERT})`}`,
      });
    }
  });
  if (new Set(names).size !== names.length) throw new ConfigError('retention.group names a choice twice', { path: `${path}.group` });
  if (names.length === choices.length) {
    throw new ConfigError('retention.group holds every choice of the route; no choice is left for task rows', {
      path: `${path}.group`,
      hint: 'Leave at least one expert out of the base-domain group',
    });
  }
  return { nullIndex: node.nullExpert ? choices.length - 1 : undefined, group: choices.map((c) => (names.includes(c) ? 1 : 0)) };
}

/** The key of a per-site router: `${layer}|${pointKey}`. */
export function siteKey(layer: number, point: AdapterPoint): string {
  return `${layer}|${pointKey(point)}`;
}
