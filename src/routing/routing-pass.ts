/**
 * What the routes of a composition decide during ONE forward: their decisions, traces and auxiliary losses.
 * A pass is created when the forward begins and released when it ends (succeeded or not), so nothing of one
 * forward survives into the next; routers and banks are built once, in RouterSets (router-set.ts).
 *
 * Decisions are made once per router per forward and reused by every point that shares the router. With
 * sequence granularity, a decision made at prefill is kept in the KV cache's routing memory and reused for
 * every decoding step, so generation routes a sequence exactly as a full forward does.
 *
 * Shape letters: B batch, T tokens, N = B·T rows, D feature width, E choices (experts, then null), G sites.
 */
import * as tf from '@tensorflow/tfjs';
import type { AdapterPoint } from '../adapters/adapter.js';
import { pointKey } from '../adapters/adapter.js';
import type { ForwardContext } from '../base/hooks.js';
import type { SiteGroup } from '../base/sites.js';
import { ShapeError } from '../errors.js';
import { auxLossTotal } from './aux-losses.js';
import { fusedGroupDeltas, fusedGroupOutputs, slotsToDense } from './fused-group.js';
import { readOnHost } from './host-gating.js';
import { retentionLossTotal } from './retention-losses.js';
import { decisionGates } from './gating.js';
import { type BankSite, chooseStrategy, type ExecutionStrategy, routedDelta } from './routed-layer.js';
import type { LinearTopK, RouterInput } from './router.js';
import { MODALITY_FEATURES, type RouterSet, siteKey } from './router-set.js';
import { oneHotFloat } from '../base/one-hot.js';
import { type DeferredTraceReads, type RoutingTraceEntry, readForTrace, traceEntries } from './trace.js';

/** How a call routes: one object, passed whole from the public API down to the pass. */
export interface RoutingOptions {
  /** Task id per batch row (task routers). */
  readonly taskIds?: readonly number[] | undefined;
  /** Receives one entry per routed decision and token. */
  readonly trace?: RoutingTraceEntry[] | undefined;
  /**
   * With `trace`: read what the trace needs after the forward (`await traceReads.flush()` fills `trace`)
   * instead of during it — for backends without synchronous reads (webgpu). The async generators and the
   * evaluation use it themselves.
   */
  readonly traceReads?: DeferredTraceReads | undefined;
  /** Receives the kept auxiliary-loss scalars of a training forward (the caller disposes them). */
  readonly auxLosses?: tf.Scalar[] | undefined;
  /** Forces an execution strategy on every route (benchmarks, equivalence tests). */
  readonly strategy?: ExecutionStrategy | undefined;
  /**
   * [B, T] 1 on the tokens whose features sequence-level routers pool (default: every real token). Give the
   * prompt tokens when training on prompt/completion pairs in one forward: routers then decide from what they
   * see when serving (the prompt alone), never from the answer. Token-level routes ignore it.
   */
  readonly routingMask?: readonly (readonly number[])[] | undefined;
  /**
   * Shared-input fusion of per-site top-k routes at inference (fused-group.ts): on unless false; 'device' also
   * keeps the decision on the device where it would run on the host. Tests compare every variant.
   */
  readonly fusion?: boolean | 'device' | undefined;
  /**
   * [B] 1 on base-domain (retention) rows, 0 on task rows, in a training forward: routes with retention terms
   * (RouteNode.retention) add them to auxLosses over these rows. Ignored outside training.
   */
  readonly retentionRows?: readonly number[] | undefined;
}

/** The routing option names, for callers that split them from other options. */
export const ROUTING_OPTION_KEYS = ['taskIds', 'trace', 'traceReads', 'auxLosses', 'strategy', 'routingMask', 'fusion', 'retentionRows'] as const;

/** Where a trace's token rows are: [batch, position] per row (undefined: padding), and which are image tokens. */
interface TraceRows {
  readonly rows: readonly ([number, number] | undefined)[];
  readonly imageRows: ArrayLike<number> | undefined;
}

/** Token-level gates of one decision: [N, E]. */
type Gates = tf.Tensor2D;

export class RoutingPass {
  /** Decisions by route index and router key. */
  private readonly decisions = new Map<string, Gates>();
  /** The token mask repeated per group member, by group size: [N·G]. */
  private readonly groupMasks = new Map<number, tf.Tensor1D>();
  private maskValues: ArrayLike<number> | undefined;
  private released = false;

  constructor(
    readonly context: ForwardContext,
    readonly options: RoutingOptions,
  ) {}

  /** Forgets this forward's decisions (their tensors belong to the forward's tidy). */
  release(): void {
    this.released = true;
    this.decisions.clear();
    this.groupMasks.clear();
    this.maskValues = undefined;
  }

  /** Layer- and model-level routers decide from the residual stream entering the layer. hidden [N, D] */
  beginLayer(set: RouterSet, layer: number, hidden: tf.Tensor2D): void {
    const { placement, readLayer } = set.node;
    if (placement === 'model') {
      if (layer === readLayer) this.decide(set, 'model', layer, 'model', hidden);
      return;
    }
    if (placement === 'layer') {
      if (set.router(`${layer}`) !== undefined) this.decide(set, `${layer}`, layer, 'layer', hidden);
      return;
    }
    // Per-site routing of prefixes reads the layer input: a prefix has no input of its own.
    const prefixKey = siteKey(layer, { kind: 'attention-prefix' });
    if (set.router(prefixKey) !== undefined) this.decide(set, prefixKey, layer, 'attn:prefix', hidden);
  }

  /**
   * The routed deltas of a site group: xs G × [N, I], ys G × [N, O_g] → per site [N, O_g], or undefined where
   * the route adds nothing. Takes the fused path when the group allows it, else decides and combines per site.
   */
  groupDeltas(set: RouterSet, layer: number, group: SiteGroup, xs: readonly tf.Tensor2D[], ys: readonly tf.Tensor2D[]): (tf.Tensor2D | undefined)[] {
    const fused = this.fusedDeltas(set, layer, group, xs);
    if (fused !== undefined) return fused;
    const { bank, bankIndex } = set.groupBank(layer, group);
    return group.sites.map((site, g) => {
      const at = bankIndex[g] ?? -1;
      const lora = bank === undefined || at < 0 ? undefined : { bank, site: at };
      return this.pointDelta(set, layer, { kind: 'site-output', site }, xs[g] as tf.Tensor2D, ys[g] as tf.Tensor2D, lora);
    });
  }

  /** The routed delta at one point: x [N, I], y [N, O] → [N, O], or undefined when nothing applies. */
  pointDelta(set: RouterSet, layer: number, point: AdapterPoint, x: tf.Tensor2D, y: tf.Tensor2D, lora?: BankSite): tf.Tensor2D | undefined {
    const experts = set.expertModules(layer, point);
    if (experts.every((e) => e === undefined)) return undefined;
    const gates = this.gatesFor(set, layer, point, x);
    if (gates === undefined) return undefined;
    const strategy = this.options.strategy ?? chooseStrategy(set.node.strategy, set.experts.length);
    return routedDelta(experts, gates, x, y, { training: this.context.training, forward: this.context }, strategy, lora);
  }

  /** Per-sequence gates [B, E] for prefix experts of a layer (sequence granularity only). */
  sequenceGates(set: RouterSet, layer: number): tf.Tensor2D | undefined {
    const { placement, readLayer } = set.node;
    if (placement === 'model' && layer < readLayer) return undefined;
    const key = placement === 'model' ? 'model' : placement === 'layer' ? `${layer}` : siteKey(layer, { kind: 'attention-prefix' });
    const gates = this.decisions.get(`${set.index}|${key}`);
    if (gates === undefined) return undefined;
    const { batch, tokens } = this.context;
    return tf.reshape(tf.slice(tf.reshape(gates, [batch, tokens, set.choices]), [0, 0, 0], [batch, 1, set.choices]), [batch, set.choices]); // [B, E]
  }

  /**
   * The full outputs y_g + Δ_g of a site group, when this route is the whole composition and the backend's
   * routed-site kernel covers it (one dispatch per site, fused-group.ts `fusedGroupOutputs`); undefined
   * otherwise, and when tracing (the trace reads the gates back), so the caller adds groupDeltas instead.
   */
  groupOutputs(set: RouterSet, layer: number, group: SiteGroup, xs: readonly tf.Tensor2D[], ys: readonly tf.Tensor2D[]): tf.Tensor2D[] | undefined {
    const plan = this.fusedPlan(set, layer, group, xs);
    if (plan === undefined || plan.tracing) return undefined;
    const { gates, bank, bankIndex, x } = plan;
    const bankYs: tf.Tensor2D[] = [];
    bankIndex.forEach((at, g) => {
      if (at >= 0) bankYs[at] = ys[g] as tf.Tensor2D;
    });
    const outputs = fusedGroupOutputs(gates, bank, x, bankYs, this);
    if (outputs === undefined) return undefined;
    return ys.map((y, g) => {
      const at = bankIndex[g] ?? -1;
      return at < 0 ? y : (outputs[at] as tf.Tensor2D); // [N, O_g]
    });
  }

  /**
   * The fused path's deltas (fused-group.ts), or undefined when this group cannot take it (see fusedPlan).
   */
  private fusedDeltas(set: RouterSet, layer: number, group: SiteGroup, xs: readonly tf.Tensor2D[]): (tf.Tensor2D | undefined)[] | undefined {
    const plan = this.fusedPlan(set, layer, group, xs);
    if (plan === undefined) return undefined;
    const { gates, bank, sites, bankIndex, fused, x, tracing } = plan;
    const result = fusedGroupDeltas(gates, bank, fused, x, this, tracing, this.options.fusion !== 'device');
    const slots = result.traceSlots;
    if (tracing && slots !== undefined) {
      const rows = x.shape[0];
      const dense = (ids: ArrayLike<number>, weights: ArrayLike<number>) => slotsToDense(ids, weights, rows * sites.length, slots.k, set.choices); // [N, G, E]
      if (slots.kind === 'host') this.traceFused(set, layer, sites, dense(slots.ids, slots.weights), rows);
      else
        this.readTrace([slots.ids, slots.weights], ([ids, weights], where) =>
          this.traceFused(set, layer, sites, dense(ids as ArrayLike<number>, weights as ArrayLike<number>), rows, where),
        );
    }
    const out: (tf.Tensor2D | undefined)[] = [];
    for (const at of bankIndex) out.push(at < 0 ? undefined : result.deltas[at]);
    return out;
  }

  /**
   * What the fused paths need of a group, or undefined when it cannot take them: training, another placement
   * or granularity, routers that are not linear top-k gates with one k and τ, non-LoRA experts, different
   * rank layouts, or sites whose inputs differ (an input adapter changed one).
   */
  private fusedPlan(set: RouterSet, layer: number, group: SiteGroup, xs: readonly tf.Tensor2D[]) {
    const { node } = set;
    const { context, options } = this;
    if (
      options.fusion === false ||
      context.training ||
      node.modalityFeature === true ||
      node.placement !== 'site' ||
      node.granularity !== 'token' ||
      set.needsTokenIds ||
      set.needsTaskIds
    )
      return undefined;
    if ((options.strategy ?? chooseStrategy(node.strategy, set.experts.length)) !== 'dense') return undefined;
    const { members, sites, bank, routers, bankIndex, fused } = set.groupBank(layer, group);
    if (bank === undefined || !bank.uniformLayout || sites.length !== members.length) return undefined;
    const x = xs[0] as tf.Tensor2D;
    for (const xg of xs) if (xg !== x) return undefined; // an input adapter changed a site's input
    const gates: LinearTopK[] = [];
    for (const router of routers) {
      const gate = router?.linearTopK?.();
      if (gate === undefined || (gates.length > 0 && (gate.k !== gates[0]?.k || gate.temperature !== gates[0]?.temperature))) return undefined;
      gates.push(gate);
    }
    const tracing = options.trace !== undefined && x.shape[0] > 0;
    return { gates, bank, sites, bankIndex, fused, x, tracing };
  }

  /** Trace entries of the fused path from its dense host gates [N, G, E] (`where`: the rows, read now when absent). */
  private traceFused(set: RouterSet, layer: number, sites: readonly string[], traceGates: Float32Array, rows: number, where?: TraceRows): void {
    const choices = set.choices;
    const at = where ?? this.traceRowsNow();
    sites.forEach((site, g) => {
      const siteGates = new Float32Array(rows * choices); // [N, E]
      for (let n = 0; n < rows; n++) siteGates.set(traceGates.subarray((n * sites.length + g) * choices, (n * sites.length + g + 1) * choices), n * choices);
      this.options.trace?.push(...this.trace(set, layer, site, siteGates, new Float32Array(rows), at));
    });
  }

  /**
   * Reads `tensors` for the trace — now, or after the forward when the call deferred trace reads — and calls
   * `build` with their values and the token rows (which need the mask, read the same way). The cache
   * positions and modality are captured now: they belong to this forward.
   */
  private readTrace(tensors: readonly tf.Tensor[], build: (values: ArrayLike<number>[], where: TraceRows) => void): void {
    const positions = this.positionsNow();
    const imageRows = this.context.modality === undefined ? undefined : this.modalityRows();
    const deferred = this.options.traceReads;
    if (deferred === undefined) {
      build(
        tensors.map((t) => readForTrace(t)),
        this.traceRows(this.maskOnHost(readForTrace), positions, imageRows),
      );
      return;
    }
    deferred.add([...tensors, this.context.mask], (values) =>
      build(values.slice(0, -1), this.traceRows(values[values.length - 1] as ArrayLike<number>, positions, imageRows)),
    );
  }

  /** The next cache position of each sequence (0 without a cache), at this forward. */
  private positionsNow(): number[] {
    const { batch, cache } = this.context;
    return Array.from({ length: batch }, (_, b) => cache?.positionsOf(b) ?? 0);
  }

  /** The token rows of this forward, reading the mask now (the host-gating fused path has read it already). */
  private traceRowsNow(): TraceRows {
    return this.traceRows(this.maskOnHost(readForTrace), this.positionsNow(), this.context.modality === undefined ? undefined : this.modalityRows());
  }

  /** For each token row [batch, position], or undefined for padding; and which rows are image tokens. */
  private traceRows(maskRows: ArrayLike<number>, positions: readonly number[], imageRows: ArrayLike<number> | undefined): TraceRows {
    const { batch, tokens } = this.context;
    const rows: ([number, number] | undefined)[] = [];
    for (let b = 0; b < batch; b++) {
      let position = positions[b] ?? 0;
      for (let t = 0; t < tokens; t++) rows.push(maskRows[b * tokens + t] === 1 ? [b, position++] : undefined);
    }
    return { rows, imageRows };
  }

  /** The forward's token mask on the host, [N] (read once per forward); undefined without padding. */
  hostMask(): ArrayLike<number> | undefined {
    if (this.context.padded === false) return undefined;
    return this.maskOnHost(readOnHost);
  }

  /** The forward's token mask on the host, [N], read once per forward (host routing and traces share it). */
  private maskOnHost(read: (tensor: tf.Tensor) => ArrayLike<number>): ArrayLike<number> {
    this.maskValues ??= read(this.context.mask);
    return this.maskValues;
  }

  /** The forward's token mask repeated for each of G group members: [N·G]; undefined without padding. */
  groupMask(count: number): tf.Tensor1D | undefined {
    const { batch, tokens, mask, padded } = this.context;
    if (padded === false) return undefined;
    let rowMask = this.groupMasks.get(count);
    if (rowMask === undefined) {
      const column = tf.reshape<tf.Rank.R2>(mask, [batch * tokens, 1]); // [N, 1]
      rowMask = tf.reshape<tf.Rank.R1>(count === 1 ? column : tf.tile(column, [1, count]), [batch * tokens * count]); // [N·G]
      this.groupMasks.set(count, rowMask);
    }
    return rowMask;
  }

  private gatesFor(set: RouterSet, layer: number, point: AdapterPoint, x: tf.Tensor2D): Gates | undefined {
    const { placement, readLayer } = set.node;
    if (placement === 'model') return layer < readLayer ? undefined : this.decisions.get(`${set.index}|model`);
    if (placement === 'layer') return this.decisions.get(`${set.index}|${layer}`);
    const key = siteKey(layer, point);
    return this.decisions.get(`${set.index}|${key}`) ?? this.decide(set, key, layer, pointKey(point), x);
  }

  /** Runs a router on token features [N, D] (pooled per sequence when asked); returns token gates [N, E]. */
  private decide(set: RouterSet, key: string, layer: number, site: string, features: tf.Tensor2D): Gates {
    if (this.released) throw new Error('a routing pass was used after its forward ended');
    const router = set.router(key);
    if (router === undefined) throw new Error(`no router for ${key}`);
    const { context, options } = this;
    const { batch, tokens, mask, pastLength, cache } = context;
    const memoryKey = `route${set.index}|${key}`;
    const sequence = set.node.granularity === 'sequence';
    let gates: tf.Tensor2D; // [R, E], R = N (token) or B (sequence)
    const remembered = sequence && pastLength > 0 ? cache?.routingMemory.get(memoryKey) : undefined;
    if (remembered !== undefined) {
      gates = remembered as tf.Tensor2D;
    } else {
      const flatMask = tf.reshape(mask, [batch * tokens]) as tf.Tensor1D; // [N]
      const routed = set.node.modalityFeature === true ? this.withModality(features) : features; // [N, D] or [N, D + 2]
      const input = sequence ? this.sequenceInput(set, routed) : this.tokenInput(set, routed, flatMask);
      const decision = router.route(input);
      gates = decisionGates(decision, set.choices); // [R, E]
      if (options.auxLosses !== undefined && context.training) {
        options.auxLosses.push(tf.keep(auxLossTotal(decision, input.mask, set.node.aux)));
        const retention = set.node.retention;
        if (retention !== undefined && set.retention !== undefined && options.retentionRows !== undefined) {
          options.auxLosses.push(tf.keep(retentionLossTotal(decision, input.mask, this.domainRows(sequence), retention, set.retention)));
        }
      }
      if (sequence && cache !== undefined) cache.routingMemory.set(memoryKey, gates);
      if (options.trace !== undefined) {
        this.readTrace([gates, decision.dropped], ([g, d], where) =>
          options.trace?.push(...this.trace(set, layer, site, g as ArrayLike<number>, d as ArrayLike<number>, where)),
        );
      }
    }
    const tokenGates = sequence
      ? (tf.reshape(tf.tile(tf.expandDims(gates, 1), [1, tokens, 1]), [batch * tokens, set.choices]) as tf.Tensor2D) // [N, E]
      : gates; // [N, E]
    this.decisions.set(`${set.index}|${key}`, tokenGates);
    return tokenGates;
  }

  /** Each token's modality, flat [N] (0 text, 1 image; all 0 without a prefix). */
  private modalityRows(): number[] {
    const { batch, tokens, modality } = this.context;
    return modality === undefined ? Array.from({ length: batch * tokens }, () => 0) : modality.flat();
  }

  /** Appends the one-hot modality of each token: features [N, D] → [N, D + 2]. */
  private withModality(features: tf.Tensor2D): tf.Tensor2D {
    const oneHot = oneHotFloat<tf.Tensor2D>(tf.tensor1d(this.modalityRows(), 'int32'), MODALITY_FEATURES); // [N, 2]
    return tf.concat([features, oneHot], 1); // [N, D + 2]
  }

  private tokenInput(set: RouterSet, features: tf.Tensor2D, mask: tf.Tensor1D): RouterInput {
    const { ids, tokens, training } = this.context;
    const taskIds = set.needsTaskIds ? this.options.taskIds : undefined;
    return {
      features, // [N, D]
      mask, // [N]
      ...(set.needsTokenIds ? { tokenIds: tf.tensor1d(ids.flat(), 'int32') } : {}), // [N]
      ...(this.context.modality === undefined ? {} : { modality: tf.tensor1d(this.modalityRows(), 'int32') }), // [N]
      ...(taskIds === undefined
        ? {}
        : {
            taskIds: tf.tensor1d(
              taskIds.flatMap((t) => Array.from({ length: tokens }, () => t)),
              'int32',
            ),
          }), // [N]
      training,
    };
  }

  /** Mean-pools token features over each sequence's real tokens (those of the routing mask when given): [N, D] → [B, D]. */
  private sequenceInput(set: RouterSet, features: tf.Tensor2D): RouterInput {
    const { batch, tokens, training } = this.context;
    const mask = this.poolingMask(); // [B, T]
    const width = features.shape[1];
    const perSequence = tf.reshape(features, [batch, tokens, width]); // [B, T, D]
    const counts = tf.sum(mask, 1, true); // [B, 1]
    const summed = tf.sum(tf.mul(perSequence, tf.expandDims(mask, 2)), 1); // [B, D]
    const pooled = tf.div(summed, tf.maximum(counts, 1)) as tf.Tensor2D; // [B, D]
    const rowMask = tf.cast(tf.greater(tf.reshape(counts, [batch]), 0), 'float32') as tf.Tensor1D; // [B]
    const taskIds = set.needsTaskIds ? this.options.taskIds : undefined;
    return {
      features: pooled,
      mask: rowMask,
      ...(taskIds === undefined ? {} : { taskIds: tf.tensor1d([...taskIds], 'int32') }), // [B]
      training,
    };
  }

  /** The rows' domain (1: base-domain) per router row: [B] for sequence routing, [N] for token routing. */
  private domainRows(sequence: boolean): tf.Tensor1D {
    const { batch, tokens } = this.context;
    const rows = this.options.retentionRows ?? [];
    if (rows.length !== batch || rows.some((r) => r !== 0 && r !== 1)) {
      throw new ShapeError(`routing.retentionRows must hold one 0/1 entry per batch row (${batch}), got ${JSON.stringify(rows.slice(0, 8))}`, {
        path: 'routing.retentionRows',
        hint: 'Mark each row 1 when it is base-domain (retention) text, else 0',
      });
    }
    return sequence
      ? tf.tensor1d([...rows], 'float32')
      : tf.tensor1d(
          rows.flatMap((r) => Array.from({ length: tokens }, () => r)),
          'float32',
        ); // [B] or [N]
  }

  /** The context's mask of real tokens, times the call's routing mask when there is one: [B, T]. */
  private poolingMask(): tf.Tensor2D {
    const { batch, tokens, mask, modality } = this.context;
    const given = this.options.routingMask;
    if (given === undefined) return mask; // [B, T]
    // A routing mask written for the ids alone covers the image prefix too: the image is part of the prompt.
    const prefixSlots = modality?.[0]?.indexOf(0) ?? 0;
    const routing =
      prefixSlots > 0 && given.every((row) => row.length === tokens - prefixSlots)
        ? given.map((row) => [...Array.from({ length: prefixSlots }, () => 1), ...row])
        : given;
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

  private trace(set: RouterSet, layer: number, site: string, gates: ArrayLike<number>, dropped: ArrayLike<number>, where: TraceRows): RoutingTraceEntry[] {
    const { tokens } = this.context;
    const sequence = set.node.granularity === 'sequence';
    return traceEntries({
      layer,
      site,
      route: set.index,
      expertNames: set.expertNames,
      gates,
      dropped,
      rows: where.rows,
      decisionRow: (n) => (sequence ? Math.floor(n / tokens) : n),
      ...(where.imageRows === undefined ? {} : { imageRows: where.imageRows }),
    });
  }
}
