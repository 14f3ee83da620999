/**
 * Forward hooks that apply a composition to a base forward: at every point where one of its adapters has a
 * module, the composition's delta is added to the base value; elsewhere the base value passes through
 * untouched (no op at all). AdaptedModel builds its hooks here with its routes; the runtime uses it directly
 * for static compositions over a snapshot of adapter instances, so a hot swap never changes the weights a
 * running request sees.
 *
 * With routes, each forward gets a fresh RoutingPass at `begin` and releases it when the forward ends.
 *
 * Shape letters: N token rows, I/O a point's in/out widths (O_g: site g's), G sites of a group, D model width.
 */
import * as tf from '@tensorflow/tfjs';
import type { AdapterPoint, ModuleContext } from '../adapters/adapter.js';
import { type AdapterInstance, moduleKey } from '../adapters/instance.js';
import type { ForwardContext, ForwardHooks } from '../base/hooks.js';
import type { BlockName, SiteGroup } from '../base/sites.js';
import { adaptersIn, type CompositionNode, type RouteNode, routesIn } from '../compose/spec.js';
import type { RouterSet } from '../routing/router-set.js';
import { RoutingPass, type RoutingOptions } from '../routing/routing-pass.js';
import { type CompositionParts, compositionDelta, compositionGroupDeltas, compositionPrefix } from './evaluate-composition.js';

/** The routes a composition may use and how each forward routes. */
export interface CompositionRouting {
  /** Router sets by route node (the composition's route nodes must be keys). */
  readonly routes: ReadonlyMap<RouteNode, RouterSet>;
  /** The routing options of the forward about to run (called at every begin). */
  optionsFor(forward: ForwardContext): RoutingOptions;
  /** After a forward that succeeded (e.g. to emit its trace). */
  end?(): void;
}

/** True when any adapter of the composition contributes attention-prefix slots. */
export function compositionHasPrefix(root: CompositionNode, adapters: ReadonlyMap<string, AdapterInstance>): boolean {
  return adaptersIn(root).some((name) => [...(adapters.get(name)?.modules.values() ?? [])].some((m) => m.role === 'prefix'));
}

/** Keys of the (layer, point)s where the composition (route experts included) has at least one module. */
export function presentPoints(root: CompositionNode, adapters: ReadonlyMap<string, AdapterInstance>): Set<string> {
  const keys = new Set<string>();
  for (const name of adaptersIn(root)) for (const key of adapters.get(name)?.modules.keys() ?? []) keys.add(key);
  return keys;
}

export function compositionHooks(root: CompositionNode, adapters: ReadonlyMap<string, AdapterInstance>, routing?: CompositionRouting): ForwardHooks {
  const present = presentPoints(root, adapters);
  const routeSets = routesIn(root).map((node) => {
    const set = routing?.routes.get(node);
    if (set === undefined) throw new Error('a route of the composition has no router set');
    return set;
  });
  const noRoutes: ReadonlyMap<RouteNode, RouterSet> = new Map();
  let parts: CompositionParts | undefined;
  let context: ModuleContext | undefined;
  const adapt = (layer: number, point: AdapterPoint, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D => {
    if (parts === undefined || context === undefined || !present.has(moduleKey(layer, point))) return y;
    const delta = compositionDelta(root, parts, layer, point, x, y, context); // [N, O]
    return delta === undefined ? y : tf.add(y, delta); // [N, O]
  };
  /** Whether the composition has a module at some site of a group, by (layer, group, kind), computed once. */
  const groupPresence = new Map<number, boolean>();
  const presentIn = (layer: number, group: SiteGroup, kind: 'site-input' | 'site-output'): boolean => {
    const key = (layer * 64 + group.index) * 2 + (kind === 'site-input' ? 1 : 0);
    let found = groupPresence.get(key);
    if (found === undefined) {
      found = group.sites.some((site) => present.has(moduleKey(layer, { kind, site })));
      groupPresence.set(key, found);
    }
    return found;
  };
  return {
    begin: (forward: ForwardContext) => {
      parts?.pass?.release();
      context = { training: forward.training, forward };
      const pass = routeSets.length === 0 || routing === undefined ? undefined : new RoutingPass(forward, routing.optionsFor(forward));
      parts = { adapters, routes: routing?.routes ?? noRoutes, pass };
    },
    ...(routeSets.length === 0
      ? {}
      : {
          beginLayer: (layer: number, hidden: tf.Tensor2D) => {
            for (const set of routeSets) parts?.pass?.beginLayer(set, layer, hidden);
          },
        }),
    groupInputs: (layer: number, group: SiteGroup, x: tf.Tensor2D) =>
      presentIn(layer, group, 'site-input') ? group.sites.map((site) => adapt(layer, { kind: 'site-input', site }, x, x)) : group.sites.map(() => x), // G × [N, I]
    groupOutputs: (layer: number, group: SiteGroup, xs: readonly tf.Tensor2D[], ys: readonly tf.Tensor2D[]) => {
      if (parts === undefined || context === undefined || !presentIn(layer, group, 'site-output')) return ys;
      if (root.kind === 'route') {
        // A route that is the whole composition may produce the outputs itself (one kernel per site on webgpu).
        const set = parts.routes.get(root);
        const outputs = set === undefined ? undefined : parts.pass?.groupOutputs(set, layer, group, xs, ys);
        if (outputs !== undefined) return outputs; // G × [N, O_g]
      }
      const deltas = compositionGroupDeltas(root, parts, layer, group, xs, ys, context); // G × [N, O_g] or undefined
      return ys.map((y, g) => {
        const delta = deltas[g];
        return delta === undefined ? y : tf.add<tf.Tensor2D>(y, delta); // [N, O_g]
      });
    },
    blockOutput: (layer: number, block: BlockName, h: tf.Tensor2D) => adapt(layer, { kind: 'block-output', block }, h, h),
    attentionPrefix: (layer: number) => {
      if (parts === undefined || context === undefined || !present.has(moduleKey(layer, { kind: 'attention-prefix' }))) return undefined;
      return compositionPrefix(root, parts, layer, context);
    },
    ...(routing?.end === undefined ? {} : { end: routing.end }),
    release: () => {
      parts?.pass?.release();
      parts = undefined;
      context = undefined;
    },
  };
}
