/**
 * Forward hooks for a static composition (adapter, stack, parallel, average — no routes) over a fixed set of
 * adapter instances. The runtime uses them for PEFT adapter targets: the instances are a snapshot taken when
 * a request starts, so a hot swap of a target never changes the weights a running request sees.
 *
 * (AdaptedModel.hooks does the same for its own live adapter map, plus routes.)
 *
 * Shape letters: N token rows, I/O a point's in/out widths.
 */
import * as tf from '@tensorflow/tfjs';
import type { AdapterPoint, ModuleContext } from '../adapters/adapter.js';
import type { ForwardContext, ForwardHooks } from '../base/hooks.js';
import type { BlockName, SiteName } from '../base/sites.js';
import { compositionDelta, compositionPrefix, type CompositionParts } from '../compose/evaluate.js';
import { moduleKey, type AdapterInstance } from '../compose/modules.js';
import { adaptersIn, routesIn, type CompositionNode, type RouteNode } from '../compose/spec.js';
import type { RouteRuntime } from '../routing/route-runtime.js';

const NO_ROUTES: ReadonlyMap<RouteNode, RouteRuntime> = new Map();

/** True when any adapter of the composition contributes attention-prefix slots. */
export function compositionHasPrefix(root: CompositionNode, adapters: ReadonlyMap<string, AdapterInstance>): boolean {
  return adaptersIn(root).some((name) => [...(adapters.get(name)?.modules.values() ?? [])].some((m) => m.role === 'prefix'));
}

export function compositionHooks(root: CompositionNode, adapters: ReadonlyMap<string, AdapterInstance>): ForwardHooks {
  if (routesIn(root).length > 0) throw new Error('compositionHooks takes static compositions only (no routes)');
  const parts: CompositionParts = { adapters, routes: NO_ROUTES };
  const present = new Set<string>();
  for (const name of adaptersIn(root)) for (const key of adapters.get(name)?.modules.keys() ?? []) present.add(key);
  let context: ModuleContext | undefined;
  const adapt = (layer: number, point: AdapterPoint, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D => {
    if (context === undefined || !present.has(moduleKey(layer, point))) return y;
    const delta = compositionDelta(root, parts, layer, point, x, y, context); // [N, O]
    return delta === undefined ? y : tf.add(y, delta); // [N, O]
  };
  return {
    begin: (forward: ForwardContext) => {
      context = { training: forward.training, forward };
    },
    siteInput: (layer: number, site: SiteName, x: tf.Tensor2D) => adapt(layer, { kind: 'site-input', site }, x, x),
    siteOutput: (layer: number, site: SiteName, x: tf.Tensor2D, y: tf.Tensor2D) => adapt(layer, { kind: 'site-output', site }, x, y),
    blockOutput: (layer: number, block: BlockName, h: tf.Tensor2D) => adapt(layer, { kind: 'block-output', block }, h, h),
    attentionPrefix: (layer: number) => {
      if (context === undefined || !present.has(moduleKey(layer, { kind: 'attention-prefix' }))) return undefined;
      return compositionPrefix(root, parts, layer, context);
    },
  };
}
