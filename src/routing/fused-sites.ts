/**
 * Inference fast path for per-site routes whose routers are linear top-k gates (Router.linearTopK) over
 * LoRA experts: the sites that read the same input tensor — q, k, v, and separately gate, up — are routed
 * and projected together.
 *
 *   logits  = x · [W_1 | … | W_G] / τ                 one matmul for the G routers        [N, G·E]
 *   top     = topk(logits as [N·G, E], k)              one TopK for all of them            [N·G, K]
 *   w       = softmax(top.values) (· row mask)         the chosen experts' weights         [N·G, K]
 *   gates   = w · spread[top.indices]                  each slot's expert scale on its rank columns
 *                                                      (a batched [1, K]·[K, Σr] product)  [N, G·Σr]
 *   mixed   = (x · [A_1ᵀ | … | A_Gᵀ]) ⊙ gates          one matmul for every expert's A     [N, G·Σr]
 *   Δ_g     = mixed_g · B_gᵀ                           per site                            [N, O]
 *
 * This is the dense fused-LoRA mixture of routed-layer.ts with the router's decision folded in: the gate
 * a row gives one of its rank columns is the single product w_k · scale_e, as there (the unchosen experts
 * contribute exact zeros in both), so outputs agree with the per-site path up to float round-off in the
 * matmuls. It replaces 17 kernels per site (12 router, 5 combine) by ~10 per group plus 2 per site.
 *
 * For many rows (prefill) the spread gather would copy N·G·K·Σr floats (wasm's gather is slow), so the
 * slots are scattered onto dense gates first (one-hot rows of the chosen experts, N·G·K·E floats) and each
 * site runs its own A and spread matmuls on its slice of them. Each site slices its own rank columns before its B matmul rather
 * than multiplying a B padded with zero rows to the group's width: at decode the matmuls are memory-bound,
 * and the padded B's would read ~2.4× the LoRA bytes per step for one kernel launch saved per site.
 *
 * Shape letters: N rows, I input width (shared by the group), O a site's output width, G sites in the group,
 * E choices, K slots per row, Σr the experts' total rank at one site.
 */
import * as tf from '@tensorflow/tfjs';
import type { DeltaModule } from '../adapters/adapter.js';
import type { LoraModule } from '../adapters/lora/layer.js';
import type { SiteName } from '../base/sites.js';
import { buildFusedLora, spreadValues, type FusedLora } from './routed-layer.js';
import type { LinearTopK } from './router.js';

/** Sites that read the same input in the base forward (the normalised residual), in call order. */
export const SHARED_INPUT_GROUPS: readonly (readonly SiteName[])[] = [['attn.q', 'attn.k', 'attn.v'], ['attn.o'], ['mlp.gate', 'mlp.up'], ['mlp.down']];

/** The shared-input group a site belongs to (every site is in exactly one). */
export function groupIndexOf(site: SiteName): number {
  return GROUP_OF.get(site) ?? -1;
}

const GROUP_OF: ReadonlyMap<SiteName, number> = new Map(SHARED_INPUT_GROUPS.flatMap((group, index) => group.map((site) => [site, index] as const)));

/** At most this many rows gather the spread per slot directly; more rows go through dense gates. */
export const GATHER_SPREAD_MAX_ROWS = 64;
/**
 * At most this many rows decide on the host when tensors live in host memory (wasm, cpu): reading the
 * N·G·E logits back is a copy of a few floats there, and replaces ~7 kernel launches per group.
 */
export const HOST_ROUTING_MAX_ROWS = 64;
const HOST_MEMORY_BACKENDS: ReadonlySet<string> = new Set(['wasm', 'cpu']);

/** One group member as the route runtime found it: the site's router gate and its experts. */
export interface FusedMember {
  readonly site: SiteName;
  readonly gate: LinearTopK;
  readonly experts: readonly (DeltaModule | undefined)[];
  readonly lora: readonly LoraModule[];
}

/** The group's operands, built once and reused until a router or expert variable changes. */
interface GroupWeights {
  readonly sites: readonly SiteName[];
  readonly choices: number; // E
  readonly k: number;
  readonly temperature: number;
  readonly totalRank: number; // Σr of one site
  readonly gates: tf.Tensor2D; // [I, G·E]
  readonly aCat: tf.Tensor2D; // [I, G·Σr]
  readonly spread: tf.Tensor2D; // [E, Σr], the same at every site of the group
  readonly aT: readonly tf.Tensor2D[]; // per site [I, Σr]
  readonly eye: tf.Tensor2D; // [E, E]
  readonly bT: readonly tf.Tensor2D[]; // per site [Σr, O]
  /** Host routing: [W_1 | … | W_G | A_1ᵀ | … | A_Gᵀ], logits and rank activations in one matmul. */
  readonly joint: tf.Tensor2D; // [I, G·E + G·Σr]
  /** Per choice, its rank columns [start, end) in one site's Σr and its LoRA scale (end = start: no module). */
  readonly columns: readonly { readonly start: number; readonly end: number; readonly scale: number }[];
}

/** The group's rank activations for one input, computed at the first member's call of a layer. */
export interface GroupActivations {
  readonly x: tf.Tensor2D; // [N, I]
  readonly mixed: tf.Tensor2D; // [N, G·Σr]
  /** Dense gates on the host, [N, G, E] row-major, when a trace was asked for. */
  readonly traceGates: Float32Array | undefined;
  readonly weights: GroupWeights;
  /** Each site's gated rank activations [N, Σr] (host routing, or many rows on the device); mixed is then unused. */
  readonly perSite: readonly tf.Tensor2D[] | undefined;
}

function sameValues(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * Keeps one group's fused operands between forwards. `get` returns undefined when the members cannot be
 * fused (routers with different k or τ, or experts whose rank layout differs between the sites).
 */
export class FusedGroupCache {
  private entry: { readonly key: readonly (object | number)[]; readonly weights: GroupWeights | undefined } | undefined;

  get(members: readonly FusedMember[]): GroupWeights | undefined {
    const cached = this.entry;
    if (cached !== undefined && FusedGroupCache.matches(cached.key, members)) return cached.weights;
    const key: (object | number)[] = [];
    for (const m of members) {
      key.push(m.gate.gate.dataId, m.gate.k, m.gate.temperature);
      for (const e of m.experts) key.push(e ?? FusedGroupCache.absent);
      for (const e of m.lora) key.push(e.a.dataId, e.b.dataId);
    }
    this.dispose();
    this.entry = { key, weights: buildGroup(members) };
    return this.entry.weights;
  }

  /** True when members are what the key was built from (same modules, same variable data): no allocation. */
  private static matches(key: readonly (object | number)[], members: readonly FusedMember[]): boolean {
    let i = 0;
    for (const m of members) {
      if (key[i++] !== m.gate.gate.dataId || key[i++] !== m.gate.k || key[i++] !== m.gate.temperature) return false;
      for (const e of m.experts) if (key[i++] !== (e ?? FusedGroupCache.absent)) return false;
      for (const e of m.lora) if (key[i++] !== e.a.dataId || key[i++] !== e.b.dataId) return false;
    }
    return i === key.length;
  }

  dispose(): void {
    const weights = this.entry?.weights;
    this.entry = undefined;
    if (weights === undefined) return;
    tf.dispose([weights.gates, weights.aCat, weights.spread, weights.eye, weights.joint, ...weights.aT, ...weights.bT]);
  }

  private static readonly absent = {};
}

function buildGroup(members: readonly FusedMember[]): GroupWeights | undefined {
  const first = members[0];
  if (first === undefined) return undefined;
  const { k, temperature } = first.gate;
  const choices = first.experts.length;
  const spread = spreadValues(first.experts, first.lora);
  for (const m of members) {
    if (m.gate.k !== k || m.gate.temperature !== temperature || m.experts.length !== choices) return undefined;
    if (!sameValues(spreadValues(m.experts, m.lora).values, spread.values)) return undefined;
  }
  const count = members.length; // G
  const totalRank = spread.totalRank; // Σr
  const built = tf.tidy(() => {
    const fused = members.map((m) => buildFusedLora(m.experts, m.lora)); // per site aT [I, Σr], bT [Σr, O]
    const gates =
      count === 1
        ? tf.clone(first.gate.gate)
        : tf.concat(
            members.map((m) => m.gate.gate),
            1,
          ); // [I, G·E]
    const aCat =
      count === 1
        ? tf.clone((fused[0] as FusedLora).aT)
        : tf.concat(
            fused.map((f) => f.aT),
            1,
          ); // [I, G·Σr]
    return {
      gates,
      aCat,
      spread: tf.tensor2d(spread.values, [choices, totalRank]), // [E, Σr]
      aT: fused.map((f) => f.aT), // per site [I, Σr]
      eye: tf.eye(choices) as tf.Tensor2D, // [E, E]
      bT: fused.map((f) => f.bT), // per site [Σr, O]
      joint: tf.concat([gates, aCat], 1), // [I, G·E + G·Σr]
    };
  });
  for (const t of [built.gates, built.aCat, built.spread, built.eye, built.joint, ...built.aT, ...built.bT]) tf.keep(t);
  const columns = Array.from({ length: choices }, (_, e) => {
    let start = 0;
    while (start < totalRank && spread.values[e * totalRank + start] === 0) start++;
    let end = start;
    while (end < totalRank && spread.values[e * totalRank + end] !== 0) end++;
    return { start, end, scale: spread.values[e * totalRank + start] ?? 0 };
  });
  return { sites: members.map((m) => m.site), choices, k, temperature, totalRank, columns, ...built };
}

/**
 * Routes and projects the whole group for x [N, I]. The masks zero padding rows: deviceMask [N·G, 1] on the
 * device path, hostMask [N] on the host path (undefined when the forward has no padding). Runs inside the
 * forward's tidy.
 */
export function groupActivations(
  weights: GroupWeights,
  x: tf.Tensor2D,
  deviceMask: () => tf.Tensor2D | undefined,
  hostMask: () => ArrayLike<number> | undefined,
  trace: boolean,
  hostRouting = true,
): GroupActivations {
  const rows = x.shape[0]; // N
  if (hostRouting && rows <= HOST_ROUTING_MAX_ROWS && HOST_MEMORY_BACKENDS.has(tf.getBackend())) return hostActivations(weights, x, hostMask(), trace);
  const count = weights.sites.length; // G
  const { choices, k, totalRank } = weights;
  const scores = tf.matMul(x, weights.gates); // [N, G·E]
  const logits = weights.temperature === 1 ? scores : tf.div<tf.Tensor2D>(scores, weights.temperature); // [N, G·E]
  const top = tf.topk(count === 1 ? logits : tf.reshape<tf.Rank.R2>(logits, [rows * count, choices]), k); // values, indices [N·G, K]
  const softmaxed = tf.softmax(top.values); // [N·G, K]
  const rowMask = deviceMask(); // [N·G, 1]
  const slotWeights = tf.reshape<tf.Rank.R3>(rowMask === undefined ? softmaxed : tf.mul(softmaxed, rowMask), [rows * count, 1, k]); // [N·G, 1, K]
  // One-hot rows of the chosen experts: OneHot + Cast (wasm's OneHot writes int32 bits, hence the cast; its
  // GatherV2 is slow per element, 28–120 ns, so no gather from the identity); tf.oneHot needs depth ≥ 2.
  const slots = (): tf.Tensor3D => (choices === 1 ? tf.gather(weights.eye, top.indices) : tf.cast(tf.oneHot(top.indices, choices), 'float32')) as tf.Tensor3D; // [N·G, K, E]
  const dense = (): tf.Tensor2D => tf.reshape<tf.Rank.R2>(tf.matMul(slotWeights, slots()), [rows, count * choices]); // [N·G, 1, E] → [N, G·E]
  if (rows <= GATHER_SPREAD_MAX_ROWS && !trace) {
    const gates = tf.reshape<tf.Rank.R2>(tf.matMul(slotWeights, tf.gather(weights.spread, top.indices)), [rows, count * totalRank]); // [N·G, 1, Σr] → [N, G·Σr]
    const mixed = tf.mul<tf.Tensor2D>(tf.matMul(x, weights.aCat), gates); // [N, G·Σr]
    return { x, mixed, traceGates: undefined, weights, perSite: undefined };
  }
  // Many rows: each site's own A and spread matmuls (no column slices of wide activations, which wasm copies
  // through JS, and no block-diagonal spread, which would do G× the spread work).
  const dg = dense(); // [N, G·E]
  const traceGates = trace ? (dg.dataSync() as Float32Array) : undefined;
  const perSite = weights.aT.map((aT, g) => {
    const siteGates = count === 1 ? dg : tf.slice(dg, [0, g * choices], [rows, choices]); // [N, E]
    return tf.mul<tf.Tensor2D>(tf.matMul(x, aT), tf.matMul(siteGates, weights.spread)); // [N, Σr]
  });
  return { x, mixed: dg, traceGates, weights, perSite };
}

/** softmax in float32 steps' order: exp(v − max) / Σ exp(v − max). */
function softmaxInto(values: readonly number[], out: number[]): void {
  let max = -Infinity;
  for (const v of values) if (v > max) max = v;
  let sum = 0;
  values.forEach((v, i) => {
    out[i] = Math.exp(v - max);
    sum += out[i] as number;
  });
  for (let i = 0; i < values.length; i++) out[i] = Math.fround((out[i] as number) / sum);
}

/**
 * Host routing: one matmul gives every router's logits and every expert's rank activations x·Aᵀ, the result
 * is read back (a copy on host-memory backends), top-k, the softmax over the chosen and the gating run on
 * the host, and each site's gated rank activations come back as one small tensor: the group costs one
 * kernel, plus a B matmul and the add per site. Every value is the float32 result the per-site path computes
 * (products rounded once with Math.fround), except the softmax, which rounds once instead of per step.
 */
function hostActivations(weights: GroupWeights, x: tf.Tensor2D, mask: ArrayLike<number> | undefined, trace: boolean): GroupActivations {
  const rows = x.shape[0]; // N
  const count = weights.sites.length; // G
  const { choices, k, totalRank, temperature, columns } = weights;
  const logitWidth = count * choices; // G·E
  const width = logitWidth + count * totalRank; // G·E + G·Σr
  const joint: tf.Tensor2D = tf.matMul(x, weights.joint); // [N, G·E + G·Σr]
  const values = joint.dataSync(); // the host read: N·(G·E + G·Σr) floats
  const perSite = Array.from({ length: count }, () => new Float32Array(rows * totalRank)); // G × [N, Σr], zero where not chosen
  const traceGates = trace ? new Float32Array(rows * logitWidth) : undefined; // [N, G, E]
  const logits: number[] = new Array<number>(choices);
  const chosen: number[] = new Array<number>(k).fill(-1);
  const chosenValues: number[] = new Array<number>(k);
  const slotWeights: number[] = new Array<number>(k);
  for (let n = 0; n < rows; n++) {
    if (mask !== undefined && mask[n] !== 1) continue; // padding: no expert contributes
    for (let g = 0; g < count; g++) {
      for (let e = 0; e < choices; e++) {
        const v = values[n * width + g * choices + e] as number;
        logits[e] = temperature === 1 ? v : Math.fround(v / temperature);
      }
      // The k largest, descending; ties keep the lower index first (as TopK).
      for (let slot = 0; slot < k; slot++) {
        let best = -1;
        for (let e = 0; e < choices; e++) {
          if (chosen.indexOf(e) !== -1) continue;
          if (best === -1 || (logits[e] as number) > (logits[best] as number)) best = e;
        }
        chosen[slot] = best;
        chosenValues[slot] = logits[best] as number;
      }
      softmaxInto(chosenValues, slotWeights);
      const out = perSite[g] as Float32Array;
      const down = n * width + logitWidth + g * totalRank; // this row's rank activations x·A_gᵀ
      for (let slot = 0; slot < k; slot++) {
        const e = chosen[slot] as number;
        const w = slotWeights[slot] as number;
        if (traceGates !== undefined) traceGates[(n * count + g) * choices + e] = w;
        const { start, end, scale } = columns[e] as { start: number; end: number; scale: number };
        const gate = Math.fround(w * scale); // float32 product, as the per-site path's gates · spread
        for (let c = start; c < end; c++) out[n * totalRank + c] = Math.fround((values[down + c] as number) * gate);
      }
      chosen.fill(-1);
    }
  }
  return { x, mixed: joint, traceGates, weights, perSite: perSite.map((m) => tf.tensor2d(m, [rows, totalRank])) }; // each [N, Σr]
}

/** Site g's delta from the group's activations: [N, O]. */
export function groupSiteDelta(activations: GroupActivations, g: number): tf.Tensor2D {
  const { mixed, weights, perSite } = activations;
  const bT = weights.bT[g] as tf.Tensor2D; // [Σr, O]
  if (perSite !== undefined) return tf.matMul(perSite[g] as tf.Tensor2D, bT); // [N, Σr]·[Σr, O] → [N, O]
  if (weights.sites.length === 1) return tf.matMul(mixed, bT); // [N, Σr]·[Σr, O] → [N, O]
  const rows = mixed.shape[0]; // N
  const mine = tf.slice(mixed, [0, g * weights.totalRank], [rows, weights.totalRank]); // [N, Σr]
  return tf.matMul(mine, bT); // [N, O]
}

/** One site's dense gates [N, E] from the group's host gates [N, G, E]. */
export function siteTraceGates(traceGates: Float32Array, rows: number, count: number, choices: number, g: number): Float32Array {
  const out = new Float32Array(rows * choices);
  for (let n = 0; n < rows; n++) out.set(traceGates.subarray((n * count + g) * choices, (n * count + g + 1) * choices), n * choices);
  return out;
}
