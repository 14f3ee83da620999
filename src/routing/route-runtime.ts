/**
 * One `route` node of a composition at run time: its routers (one per site, per layer, or one for the
 * model), the decisions they make during a forward, their auxiliary losses and traces.
 *
 * Decisions are made once per router per forward and reused by every point that shares the router. With
 * sequence granularity, a decision made at prefill is kept in the KV cache's routing memory and reused
 * for every decoding step, so generation routes a sequence exactly as a full forward does.
 *
 * Shape letters: B batch, T tokens, N = B·T rows, D feature width, E choices (experts, then null).
 */
import * as tf from '@tensorflow/tfjs';
import type { AdapterPoint, DeltaModule } from '../adapters/adapter.js';
import type { LoraModule } from '../adapters/lora/layer.js';
import { pointKey } from '../adapters/adapter.js';
import type { ModelConfig } from '../base/config.js';
import type { SiteName } from '../base/sites.js';
import type { ForwardContext } from '../base/hooks.js';
import type { KVCache } from '../base/kv-cache.js';
import type { AdapterInstance } from '../adapters/instance.js';
import { deriveSeed, pointWidths } from '../adapters/instance.js';
import type { RouteNode } from '../compose/spec.js';
import { RoutedPeftError, ShapeError } from '../errors.js';
import { auxLossTotal } from './aux-losses.js';
import {
  FusedGroupCache,
  SHARED_INPUT_GROUPS,
  groupActivations,
  groupIndexOf,
  groupSiteDelta,
  siteTraceGates,
  type FusedMember,
  type GroupActivations,
} from './fused-sites.js';
import { FusedLoraCache, chooseStrategy, decisionGates, fusableLora, routedDelta, type ExecutionStrategy } from './routed-layer.js';
import type { Router, RouterInput } from './router.js';
import type { RouterRegistry } from './router-registry.js';
import { NULL_EXPERT, traceEntries, type RoutingTraceEntry } from './trace.js';

/** Per-forward state shared by every route of a model. */
export interface RoutingCall {
  readonly context: ForwardContext;
  readonly cache: KVCache | undefined;
  /** Task id per batch row, for task routers. */
  readonly taskIds: readonly number[] | undefined;
  /** Kept auxiliary-loss scalars (owned by the caller, who disposes them). */
  readonly auxLosses: tf.Scalar[] | undefined;
  readonly trace: RoutingTraceEntry[] | undefined;
  /** Strategy forced for every route (benchmarks, equivalence tests). */
  readonly strategy: ExecutionStrategy | undefined;
  /** [B, T] tokens sequence-level routers pool (AdaptedCallOptions.routingMask); undefined: every real token. */
  readonly routingMask?: readonly (readonly number[])[] | undefined;
  /**
   * Shared-input fusion at inference (fused-sites.ts): on unless false; 'device' also keeps the decision on
   * the device where it would run on the host. Tests compare every variant against the per-site path.
   */
  readonly fusion?: boolean | 'device' | undefined;
}

/** Token-level gates of one decision: [N, E]. */
type Gates = tf.Tensor2D;

export class RouteRuntime {
  private expertList: AdapterInstance[];
  private readonly needsTokenIds: boolean;
  private readonly needsTaskIds: boolean;
  readonly expertNames: readonly string[];
  readonly choices: number;
  private readonly routers = new Map<string, Router>();
  /** Fused LoRA matrices per routed point, reused across inference forwards. */
  private readonly fusedCaches = new Map<string, FusedLoraCache>();
  /** Fused operands per shared-input group (`${layer}|${group index}`), reused across inference forwards. */
  private readonly groupCaches = new Map<string, FusedGroupCache>();
  /** Per group key: its fusable sites for the expert list they were resolved against (undefined: not fusable). */
  private readonly groupStructures = new Map<
    string,
    {
      readonly experts: readonly AdapterInstance[];
      readonly sites: readonly { site: SiteName; router: Router; experts: (DeltaModule | undefined)[]; lora: LoraModule[] }[] | undefined;
    }
  >();
  /** The current forward's group activations, by group key (valid only for the same input tensor). */
  private groupActs = new Map<string, GroupActivations | null>();
  /** The current forward's row masks repeated per group member, by group size: [N·G, 1]. */
  private groupMasks = new Map<number, tf.Tensor2D>();
  /** The current forward's token mask on the host, when read. */
  private maskValues: ArrayLike<number> | undefined;
  /** Decisions made during the current forward, by router key. */
  private decisions = new Map<string, Gates>();
  private call: RoutingCall | undefined;

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
    const kind = registry.get(node.router.kind, `composition.route[${index}].router.kind`);
    this.needsTokenIds = kind.needsTokenIds === true;
    this.needsTaskIds = kind.needsTaskIds === true;
    if (node.granularity === 'sequence' && kind.needsTokenIds === true) {
      throw new RoutedPeftError(`router '${kind.kind}' routes by token id and cannot route whole sequences`, {
        path: `composition.route[${index}].granularity`,
        hint: "Use granularity 'token' with this router",
      });
    }
    const create = (key: string, inputDim: number): void => {
      const path = `composition.route[${index}].router`;
      this.routers.set(key, registry.create(node.router, { choices: this.choices, inputDim, seed: deriveSeed(seed, `route${index}|${key}`) }, path));
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
            for (const point of points)
              create(this.siteKey(layer, point), point.kind === 'attention-prefix' ? config.dim : pointWidths(config, point).inFeatures);
        }
      }
    } catch (error) {
      this.dispose();
      throw error;
    }
    if (this.experts.some((e) => [...e.modules.values()].some((m) => m.role === 'prefix')) && node.granularity !== 'sequence') {
      this.dispose();
      throw new RoutedPeftError('prefix experts can only be routed per sequence', {
        path: `composition.route[${index}].granularity`,
        hint: "Set granularity to 'sequence' for routes with prefix experts",
      });
    }
  }

  get experts(): readonly AdapterInstance[] {
    return this.expertList;
  }

  /** Swaps in a replacement for the expert of the same name (same points, new weights). */
  replaceExpert(instance: AdapterInstance): void {
    this.expertList = this.expertList.map((e) => (e.name === instance.name ? instance : e));
    for (const cache of this.fusedCaches.values()) cache.dispose();
    for (const cache of this.groupCaches.values()) cache.dispose();
  }

  /** Points of a layer where at least one expert has a module. */
  pointsAt(layer: number): AdapterPoint[] {
    const seen = new Map<string, AdapterPoint>();
    for (const expert of this.experts) {
      for (const module of expert.modules.values()) if (module.layer === layer) seen.set(pointKey(module.point), module.point);
    }
    return [...seen.values()];
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

  begin(call: RoutingCall): void {
    this.call = call;
    this.decisions = new Map();
    this.groupActs = new Map();
    this.groupMasks = new Map();
    this.maskValues = undefined;
  }

  end(): void {
    this.call = undefined;
    this.decisions = new Map();
    this.groupActs = new Map();
    this.groupMasks = new Map();
    this.maskValues = undefined;
  }

  /** Layer-level routers decide from the residual stream entering the layer. hidden [N, D] */
  beginLayer(layer: number, hidden: tf.Tensor2D): void {
    if (this.node.placement === 'model') {
      if (layer === this.node.readLayer) this.decide('model', layer, 'model', hidden);
      return;
    }
    if (this.node.placement === 'layer') {
      if (this.routers.has(`${layer}`)) this.decide(`${layer}`, layer, 'layer', hidden);
      return;
    }
    // Per-site routing of prefixes reads the layer input: a prefix has no input of its own.
    const prefixKey = this.siteKey(layer, { kind: 'attention-prefix' });
    if (this.routers.has(prefixKey)) this.decide(prefixKey, layer, 'attn:prefix', hidden);
  }

  /** The routed delta at a delta point: x [N, I], y [N, O] → [N, O], or undefined when nothing applies. */
  delta(layer: number, point: AdapterPoint, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D | undefined {
    if (point.kind === 'site-output' && this.fusable()) {
      const fused = this.fusedDelta(layer, point.site, x);
      if (fused !== undefined) return fused;
    }
    const experts = this.expertModules(layer, point);
    if (experts.every((e) => e === undefined)) return undefined;
    const gates = this.gatesFor(layer, point, x);
    if (gates === undefined) return undefined;
    const call = this.requireCall();
    const strategy = call.strategy ?? chooseStrategy(this.node.strategy, this.experts.length);
    const cacheKey = this.siteKey(layer, point);
    let cache = this.fusedCaches.get(cacheKey);
    if (cache === undefined) {
      cache = new FusedLoraCache();
      this.fusedCaches.set(cacheKey, cache);
    }
    return routedDelta(experts, gates, x, y, { training: call.context.training, forward: call.context }, strategy, cache);
  }

  /** Per-sequence gates [B, E] for prefix experts of a layer (sequence granularity only). */
  sequenceGates(layer: number): tf.Tensor2D | undefined {
    const key = this.node.placement === 'model' ? 'model' : this.node.placement === 'layer' ? `${layer}` : this.siteKey(layer, { kind: 'attention-prefix' });
    if (this.node.placement === 'model' && layer < this.node.readLayer) return undefined;
    const gates = this.decisions.get(key);
    if (gates === undefined) return undefined;
    const { batch, tokens } = this.requireCall().context;
    return tf.reshape(tf.slice(tf.reshape(gates, [batch, tokens, this.choices]), [0, 0, 0], [batch, 1, this.choices]), [batch, this.choices]); // [B, E]
  }

  dispose(): void {
    for (const router of this.routers.values()) router.dispose();
    this.routers.clear();
    for (const cache of this.fusedCaches.values()) cache.dispose();
    this.fusedCaches.clear();
    for (const cache of this.groupCaches.values()) cache.dispose();
    this.groupCaches.clear();
  }

  /** True when this forward may take the shared-input fused path (per-site token routing at inference). */
  private fusable(): boolean {
    const call = this.requireCall();
    return (
      call.fusion !== false &&
      !call.context.training &&
      this.node.placement === 'site' &&
      this.node.granularity === 'token' &&
      !this.needsTokenIds &&
      !this.needsTaskIds
    );
  }

  /**
   * The site's delta through its shared-input group (fused-sites.ts), or undefined when the group cannot be
   * fused or this site's input is not the tensor the group was computed for (the per-site path then runs).
   */
  private fusedDelta(layer: number, site: SiteName, x: tf.Tensor2D): tf.Tensor2D | undefined {
    const groupIndex = groupIndexOf(site);
    const key = `${layer}|${groupIndex}`;
    let acts = this.groupActs.get(key);
    if (acts === undefined) {
      acts = this.computeGroup(layer, groupIndex, key, x) ?? null;
      this.groupActs.set(key, acts);
    }
    if (acts === null || acts.x !== x) return undefined;
    const g = acts.weights.sites.indexOf(site);
    if (g < 0) return undefined;
    const call = this.requireCall();
    if (call.trace !== undefined && acts.traceGates !== undefined) {
      const rows = x.shape[0];
      const gates = siteTraceGates(acts.traceGates, rows, acts.weights.sites.length, this.choices, g);
      call.trace.push(...this.trace(layer, site, gates, new Float32Array(rows), call));
    }
    return groupSiteDelta(acts, g); // [N, O]
  }

  private computeGroup(layer: number, groupIndex: number, key: string, x: tf.Tensor2D): GroupActivations | undefined {
    const call = this.requireCall();
    if ((call.strategy ?? chooseStrategy(this.node.strategy, this.experts.length)) !== 'dense') return undefined;
    const members = this.groupMembers(layer, groupIndex, key);
    if (members === undefined) return undefined;
    let cache = this.groupCaches.get(key);
    if (cache === undefined) {
      cache = new FusedGroupCache();
      this.groupCaches.set(key, cache);
    }
    const weights = cache.get(members);
    if (weights === undefined) return undefined;
    const rows = x.shape[0];
    return groupActivations(
      weights,
      x,
      () => this.groupMask(members.length, call),
      () => this.hostMask(call),
      call.trace !== undefined && rows > 0,
      call.fusion !== 'device',
    );
  }

  /**
   * The group's members at a layer (sites with a router here, their routers' linear gates and LoRA experts),
   * or undefined when the group cannot be fused. Kept across forwards until the expert list changes; the
   * gates are re-read every forward (the descriptor is cheap and names the router's current variable).
   */
  private groupMembers(layer: number, groupIndex: number, key: string): FusedMember[] | undefined {
    let structure = this.groupStructures.get(key);
    if (structure === undefined || structure.experts !== this.expertList) {
      const sites: { site: SiteName; router: Router; experts: (DeltaModule | undefined)[]; lora: LoraModule[] }[] = [];
      let fusable = true;
      for (const site of SHARED_INPUT_GROUPS[groupIndex] ?? []) {
        const point: AdapterPoint = { kind: 'site-output', site };
        const router = this.routers.get(this.siteKey(layer, point));
        if (router === undefined) continue;
        const experts = this.expertModules(layer, point);
        const lora = experts.every((e) => e === undefined) ? undefined : fusableLora(experts);
        if (lora === undefined) fusable = false;
        else sites.push({ site, router, experts, lora });
      }
      structure = { experts: this.expertList, sites: fusable && sites.length > 0 ? sites : undefined };
      this.groupStructures.set(key, structure);
    }
    if (structure.sites === undefined) return undefined;
    const members: FusedMember[] = [];
    for (const { site, router, experts, lora } of structure.sites) {
      const gate = router.linearTopK?.();
      if (gate === undefined) return undefined;
      members.push({ site, gate, experts, lora });
    }
    return members;
  }

  /** The forward's token mask on the host, [N] (read once per forward); undefined without padding. */
  private hostMask(call: RoutingCall): ArrayLike<number> | undefined {
    if (call.context.padded === false) return undefined;
    this.maskValues ??= call.context.mask.dataSync();
    return this.maskValues;
  }

  /** The forward's token mask repeated for each of G group members: [N·G, 1]; undefined without padding. */
  private groupMask(count: number, call: RoutingCall): tf.Tensor2D | undefined {
    const { batch, tokens, mask, padded } = call.context;
    if (padded === false) return undefined;
    let rowMask = this.groupMasks.get(count);
    if (rowMask === undefined) {
      const column = tf.reshape<tf.Rank.R2>(mask, [batch * tokens, 1]); // [N, 1]
      rowMask = count === 1 ? column : tf.reshape<tf.Rank.R2>(tf.tile(column, [1, count]), [batch * tokens * count, 1]); // [N·G, 1]
      this.groupMasks.set(count, rowMask);
    }
    return rowMask;
  }

  private expertModules(layer: number, point: AdapterPoint): (DeltaModule | undefined)[] {
    const modules = this.experts.map((e) => {
      const m = e.module(layer, point);
      return m?.role === 'delta' ? m : undefined;
    });
    return this.node.nullExpert ? [...modules, undefined] : modules;
  }

  private gatesFor(layer: number, point: AdapterPoint, x: tf.Tensor2D): Gates | undefined {
    if (this.node.placement === 'model') return layer < this.node.readLayer ? undefined : this.decisions.get('model');
    if (this.node.placement === 'layer') return this.decisions.get(`${layer}`);
    const key = this.siteKey(layer, point);
    return this.decisions.get(key) ?? this.decide(key, layer, pointKey(point), x);
  }

  private siteKey(layer: number, point: AdapterPoint): string {
    return `${layer}|${pointKey(point)}`;
  }

  private requireCall(): RoutingCall {
    if (this.call === undefined) throw new Error('route used outside a forward');
    return this.call;
  }

  /** Runs a router on token features [N, D] (pooled per sequence when asked); returns token gates [N, E]. */
  private decide(key: string, layer: number, site: string, features: tf.Tensor2D): Gates {
    const call = this.requireCall();
    const router = this.routers.get(key);
    if (router === undefined) throw new Error(`no router for ${key}`);
    const { batch, tokens, mask, pastLength } = call.context;
    const flatMask = tf.reshape(mask, [batch * tokens]) as tf.Tensor1D; // [N]
    const memoryKey = `route${this.index}|${key}`;
    const sequence = this.node.granularity === 'sequence';
    let gates: tf.Tensor2D; // [R, E], R = N (token) or B (sequence)
    const remembered = sequence && pastLength > 0 ? call.cache?.routingMemory.get(memoryKey) : undefined;
    if (remembered !== undefined) {
      gates = remembered as tf.Tensor2D;
    } else {
      const input = sequence ? this.sequenceInput(features, call) : this.tokenInput(features, flatMask, call);
      const decision = router.route(input);
      gates = decisionGates(decision, this.choices); // [R, E]
      if (call.auxLosses !== undefined && call.context.training) call.auxLosses.push(tf.keep(auxLossTotal(decision, input.mask, this.node.aux)));
      if (sequence && call.cache !== undefined) call.cache.routingMemory.set(memoryKey, gates);
      if (call.trace !== undefined) {
        const dropped = decision.dropped.dataSync();
        const gateValues = gates.dataSync();
        call.trace.push(...this.trace(layer, site, gateValues, dropped, call));
      }
    }
    const tokenGates = sequence
      ? (tf.reshape(tf.tile(tf.expandDims(gates, 1), [1, tokens, 1]), [batch * tokens, this.choices]) as tf.Tensor2D) // [N, E]
      : gates; // [N, E]
    this.decisions.set(key, tokenGates);
    return tokenGates;
  }

  private tokenInput(features: tf.Tensor2D, mask: tf.Tensor1D, call: RoutingCall): RouterInput {
    const { ids, tokens } = call.context;
    const taskIds = this.needsTaskIds ? call.taskIds : undefined;
    return {
      features, // [N, D]
      mask, // [N]
      ...(this.needsTokenIds ? { tokenIds: tf.tensor1d(ids.flat(), 'int32') } : {}), // [N]
      ...(taskIds === undefined
        ? {}
        : {
            taskIds: tf.tensor1d(
              taskIds.flatMap((t) => Array.from({ length: tokens }, () => t)),
              'int32',
            ),
          }), // [N]
      training: call.context.training,
    };
  }

  /** Mean-pools token features over each sequence's real tokens (those of the routing mask when given): [N, D] → [B, D]. */
  private sequenceInput(features: tf.Tensor2D, call: RoutingCall): RouterInput {
    const { batch, tokens } = call.context;
    const mask = this.poolingMask(call); // [B, T]
    const width = features.shape[1];
    const perSequence = tf.reshape(features, [batch, tokens, width]); // [B, T, D]
    const counts = tf.sum(mask, 1, true); // [B, 1]
    const summed = tf.sum(tf.mul(perSequence, tf.expandDims(mask, 2)), 1); // [B, D]
    const pooled = tf.div(summed, tf.maximum(counts, 1)) as tf.Tensor2D; // [B, D]
    const rowMask = tf.cast(tf.greater(tf.reshape(counts, [batch]), 0), 'float32') as tf.Tensor1D; // [B]
    const taskIds = this.needsTaskIds ? call.taskIds : undefined;
    return {
      features: pooled,
      mask: rowMask,
      ...(taskIds === undefined ? {} : { taskIds: tf.tensor1d([...taskIds], 'int32') }), // [B]
      training: call.context.training,
    };
  }

  /** The context's mask of real tokens, times the call's routing mask when there is one: [B, T]. */
  private poolingMask(call: RoutingCall): tf.Tensor2D {
    const { batch, tokens, mask } = call.context;
    const routing = call.routingMask;
    if (routing === undefined) return mask; // [B, T]
    if (routing.length !== batch || routing.some((row) => row.length !== tokens)) {
      const rows = routing.map((row) => row.length);
      throw new ShapeError(`routingMask must be [${batch}, ${tokens}] like the ids, got ${routing.length} rows of lengths ${[...new Set(rows)].join('/')}`, {
        path: 'routingMask',
        hint: 'Give one 0/1 entry per token of every row (padding included), 1 on the tokens routers should read',
      });
    }
    return tf.mul(
      mask,
      tf.tensor2d(
        routing.map((row) => [...row]),
        [batch, tokens],
        'float32',
      ),
    ); // [B, T]
  }

  private trace(layer: number, site: string, gates: ArrayLike<number>, dropped: ArrayLike<number>, call: RoutingCall): RoutingTraceEntry[] {
    const { batch, tokens } = call.context;
    const maskRows = call.context.mask.dataSync();
    const rows: ([number, number] | undefined)[] = [];
    for (let b = 0; b < batch; b++) {
      let position = call.cache?.positionsOf(b) ?? 0;
      for (let t = 0; t < tokens; t++) rows.push(maskRows[b * tokens + t] === 1 ? [b, position++] : undefined);
    }
    const sequence = this.node.granularity === 'sequence';
    return traceEntries({
      layer,
      site,
      route: this.index,
      expertNames: this.expertNames,
      gates,
      dropped,
      rows,
      decisionRow: (n) => (sequence ? Math.floor(n / tokens) : n),
    });
  }
}
