/**
 * Forward hooks that apply a composition to a base forward: at every point where one of its adapters has a
 * module, the composition's delta is added to the base value; elsewhere the base value passes through
 * untouched (no op at all). AdaptedModel builds its hooks here (adding its routes' per-forward work); the
 * runtime uses it directly for static compositions over a snapshot of adapter instances, so a hot swap
 * never changes the weights a running request sees.
 *
 * Shape letters: N token rows, I/O a point's in/out widths, D model width.
 */
import * as tf from '@tensorflow/tfjs';
import type { AdapterPoint, ModuleContext } from '../adapters/adapter.js';
import type { ForwardContext, ForwardHooks } from '../base/hooks.js';
import type { BlockName, SiteName } from '../base/sites.js';
import type { RouteRuntime } from '../routing/route-runtime.js';
import { compositionDelta, compositionPrefix, type CompositionParts } from './evaluate-composition.js';
import { moduleKey, type AdapterInstance } from '../adapters/instance.js';
import { adaptersIn, type CompositionNode, type RouteNode } from '../compose/spec.js';

/** Per-forward work beside the composition itself (routers deciding, traces). */
export interface CompositionHookExtras {
  begin?(forward: ForwardContext): void;
  beginLayer?(layer: number, hidden: tf.Tensor2D): void;
  end?(): void;
}

const NO_ROUTES: ReadonlyMap<RouteNode, RouteRuntime> = new Map();

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

export function compositionHooks(
  root: CompositionNode,
  adapters: ReadonlyMap<string, AdapterInstance>,
  routes: ReadonlyMap<RouteNode, RouteRuntime> = NO_ROUTES,
  extras: CompositionHookExtras = {},
): ForwardHooks {
  const parts: CompositionParts = { adapters, routes };
  const present = presentPoints(root, adapters);
  let context: ModuleContext | undefined;
  const adapt = (layer: number, point: AdapterPoint, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D => {
    if (context === undefined || !present.has(moduleKey(layer, point))) return y;
    const delta = compositionDelta(root, parts, layer, point, x, y, context); // [N, O]
    return delta === undefined ? y : tf.add(y, delta); // [N, O]
  };
  return {
    begin: (forward: ForwardContext) => {
      context = { training: forward.training, forward };
      extras.begin?.(forward);
    },
    ...(extras.beginLayer === undefined ? {} : { beginLayer: extras.beginLayer }),
    siteInput: (layer: number, site: SiteName, x: tf.Tensor2D) => adapt(layer, { kind: 'site-input', site }, x, x),
    siteOutput: (layer: number, site: SiteName, x: tf.Tensor2D, y: tf.Tensor2D) => adapt(layer, { kind: 'site-output', site }, x, y),
    blockOutput: (layer: number, block: BlockName, h: tf.Tensor2D) => adapt(layer, { kind: 'block-output', block }, h, h),
    attentionPrefix: (layer: number) => {
      if (context === undefined || !present.has(moduleKey(layer, { kind: 'attention-prefix' }))) return undefined;
      return compositionPrefix(root, parts, layer, context);
    },
    ...(extras.end === undefined ? {} : { end: extras.end }),
  };
}
