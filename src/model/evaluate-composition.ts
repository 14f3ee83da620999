/**
 * Evaluates a composition in one layer: the deltas it adds to a site group's outputs (all sites of the group
 * at once, so routes can decide and mix them together), the delta at any other point (site inputs, block
 * outputs), and, at the attention-prefix point, the key/value slots it contributes.
 *
 * Shape letters: N rows, I/O in/out width (O_g: site g's), G sites of a group, B batch, P prefix slots,
 * Hk key/value heads, Dh head width, E route choices.
 */
import * as tf from '@tensorflow/tfjs';
import type { AdapterPoint, ModuleContext } from '../adapters/adapter.js';
import type { AttentionPrefix } from '../base/hooks.js';
import type { SiteGroup } from '../base/sites.js';
import type { RouterSet } from '../routing/router-set.js';
import type { RoutingPass } from '../routing/routing-pass.js';
import type { AdapterInstance } from '../adapters/instance.js';
import type { CompositionNode, RouteNode } from '../compose/spec.js';

export interface CompositionParts {
  readonly adapters: ReadonlyMap<string, AdapterInstance>;
  readonly routes: ReadonlyMap<RouteNode, RouterSet>;
  /** This forward's routing pass (undefined: the composition has no route). */
  readonly pass: RoutingPass | undefined;
}

/** At site inputs and block outputs the value being adapted is also the adapter's input. */
function inputFor(point: AdapterPoint, x: tf.Tensor2D, current: tf.Tensor2D): tf.Tensor2D {
  return point.kind === 'site-output' ? x : current;
}

function addOptional(a: tf.Tensor2D | undefined, b: tf.Tensor2D | undefined): tf.Tensor2D | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return tf.add<tf.Tensor2D>(a, b); // [N, O]
}

/** The composition's delta at a point: x [N, I], y [N, O] → [N, O], or undefined when nothing applies. */
export function compositionDelta(
  node: CompositionNode,
  parts: CompositionParts,
  layer: number,
  point: AdapterPoint,
  x: tf.Tensor2D,
  y: tf.Tensor2D,
  context: ModuleContext,
): tf.Tensor2D | undefined {
  switch (node.kind) {
    case 'adapter': {
      const module = parts.adapters.get(node.adapter)?.module(layer, point);
      return module?.role === 'delta' ? module.delta(x, y, context) : undefined;
    }
    case 'stack': {
      let current = y; // [N, O]
      let total: tf.Tensor2D | undefined;
      for (const child of node.children) {
        const delta = compositionDelta(child, parts, layer, point, inputFor(point, x, current), current, context);
        if (delta === undefined) continue;
        current = tf.add(current, delta); // [N, O]
        total = addOptional(total, delta);
      }
      return total;
    }
    case 'parallel':
      return node.children.reduce<tf.Tensor2D | undefined>(
        (total, child) => addOptional(total, compositionDelta(child, parts, layer, point, x, y, context)),
        undefined,
      );
    case 'average': {
      const weights = node.weights ?? node.children.map(() => 1 / node.children.length);
      return node.children.reduce<tf.Tensor2D | undefined>((total, child, i) => {
        const delta = compositionDelta(child, parts, layer, point, x, y, context);
        return delta === undefined ? total : addOptional(total, tf.mul<tf.Tensor2D>(delta, weights[i] ?? 0)); // [N, O]
      }, undefined);
    }
    case 'route': {
      const set = parts.routes.get(node);
      return set === undefined ? undefined : parts.pass?.pointDelta(set, layer, point, x, y);
    }
  }
}

type Deltas = (tf.Tensor2D | undefined)[];

function addEach(a: Deltas, b: Deltas): Deltas {
  return a.map((d, g) => addOptional(d, b[g]));
}

/**
 * The composition's deltas at a site group's outputs: xs G × [N, I] (the sites' inputs), ys G × [N, O_g] (their
 * base outputs) → per site [N, O_g], or undefined where nothing applies.
 */
export function compositionGroupDeltas(
  node: CompositionNode,
  parts: CompositionParts,
  layer: number,
  group: SiteGroup,
  xs: readonly tf.Tensor2D[],
  ys: readonly tf.Tensor2D[],
  context: ModuleContext,
): Deltas {
  switch (node.kind) {
    case 'adapter': {
      const instance = parts.adapters.get(node.adapter);
      return group.sites.map((site, g) => {
        const module = instance?.module(layer, { kind: 'site-output', site });
        return module?.role === 'delta' ? module.delta(xs[g] as tf.Tensor2D, ys[g] as tf.Tensor2D, context) : undefined; // [N, O_g]
      });
    }
    case 'stack': {
      let current: readonly tf.Tensor2D[] = ys;
      let total: Deltas = group.sites.map(() => undefined);
      for (const child of node.children) {
        const deltas = compositionGroupDeltas(child, parts, layer, group, xs, current, context);
        current = current.map((y, g) => {
          const d = deltas[g];
          return d === undefined ? y : tf.add<tf.Tensor2D>(y, d); // [N, O_g]
        });
        total = addEach(total, deltas);
      }
      return total;
    }
    case 'parallel':
      return node.children.reduce<Deltas>(
        (total, child) => addEach(total, compositionGroupDeltas(child, parts, layer, group, xs, ys, context)),
        group.sites.map(() => undefined),
      );
    case 'average': {
      const weights = node.weights ?? node.children.map(() => 1 / node.children.length);
      return node.children.reduce<Deltas>(
        (total, child, i) => {
          const deltas = compositionGroupDeltas(child, parts, layer, group, xs, ys, context);
          return addEach(
            total,
            deltas.map((d) => (d === undefined ? undefined : tf.mul<tf.Tensor2D>(d, weights[i] ?? 0))),
          ); // [N, O_g]
        },
        group.sites.map(() => undefined),
      );
    }
    case 'route': {
      const set = parts.routes.get(node);
      return set === undefined || parts.pass === undefined ? group.sites.map(() => undefined) : parts.pass.groupDeltas(set, layer, group, xs, ys);
    }
  }
}

interface ScaledPrefix {
  readonly prefix: AttentionPrefix;
  /** A number, or per-sequence scales [B, 1, 1, 1]. */
  readonly scale: number | tf.Tensor4D;
}

function collectPrefixes(node: CompositionNode, parts: CompositionParts, layer: number, context: ModuleContext, scale: number): ScaledPrefix[] {
  switch (node.kind) {
    case 'adapter': {
      const module = parts.adapters.get(node.adapter)?.module(layer, { kind: 'attention-prefix' });
      return module?.role === 'prefix' ? [{ prefix: module.prefix(context), scale }] : [];
    }
    case 'stack':
    case 'parallel':
      return node.children.flatMap((child) => collectPrefixes(child, parts, layer, context, scale));
    case 'average': {
      const weights = node.weights ?? node.children.map(() => 1 / node.children.length);
      return node.children.flatMap((child, i) => collectPrefixes(child, parts, layer, context, scale * (weights[i] ?? 0)));
    }
    case 'route': {
      const route = parts.routes.get(node);
      const gates = route === undefined ? undefined : parts.pass?.sequenceGates(route, layer); // [B, E]
      if (route === undefined || gates === undefined) return [];
      const out: ScaledPrefix[] = [];
      route.experts.forEach((expert, e) => {
        const module = expert.module(layer, { kind: 'attention-prefix' });
        if (module?.role !== 'prefix') return;
        const gate = tf.reshape(tf.slice(gates, [0, e], [-1, 1]), [gates.shape[0], 1, 1, 1]) as tf.Tensor4D; // [B, 1, 1, 1]
        out.push({ prefix: module.prefix(context), scale: tf.mul<tf.Tensor4D>(gate, scale) });
      });
      return out;
    }
  }
}

/**
 * The composition's prefix slots for a layer, concatenated along P; each part's values scaled by its
 * weight (average) or its sequence's gate (route). Undefined when the composition has no prefix here.
 */
export function compositionPrefix(node: CompositionNode, parts: CompositionParts, layer: number, context: ModuleContext): AttentionPrefix | undefined {
  const collected = collectPrefixes(node, parts, layer, context, 1);
  if (collected.length === 0) return undefined;
  const batch = context.forward.batch;
  const perSequence = collected.some((c) => typeof c.scale !== 'number');
  const widen = (t: tf.Tensor4D): tf.Tensor4D => (perSequence && t.shape[0] !== batch ? tf.tile(t, [batch, 1, 1, 1]) : t); // [B, P, Hk, Dh]
  const keys = collected.map((c) => widen(c.prefix.keys)); // each [B or 1, P, Hk, Dh]
  const values = collected.map((c) => {
    const scaled = c.scale === 1 ? c.prefix.values : tf.mul<tf.Tensor4D>(c.prefix.values, c.scale); // [B or 1, P, Hk, Dh]
    return widen(scaled);
  });
  return {
    keys: keys.length === 1 ? (keys[0] as tf.Tensor4D) : tf.concat<tf.Tensor4D>(keys, 1), // [B or 1, ΣP, Hk, Dh]
    values: values.length === 1 ? (values[0] as tf.Tensor4D) : tf.concat<tf.Tensor4D>(values, 1), // [B or 1, ΣP, Hk, Dh]
  };
}
