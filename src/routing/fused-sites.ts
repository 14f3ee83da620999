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
 * slots are scattered onto dense gates first (a gather from the identity, N·G·K·E floats) and spread by one
 * matmul against the block-diagonal spread; for few rows (decode) each site's B is multiplied padded with
 * zero rows to the group's width, which saves the column slice.
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
  return SHARED_INPUT_GROUPS.findIndex((group) => group.includes(site));
}

/** At most this many rows gather the spread per slot directly; more rows go through dense gates. */
export const GATHER_SPREAD_MAX_ROWS = 64;
/** At most this many rows multiply each site's B padded to the group's width instead of slicing. */
export const PADDED_B_MAX_ROWS = 8;

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
  readonly blockSpread: tf.Tensor2D; // [G·E, G·Σr]
  readonly eye: tf.Tensor2D; // [E, E]
  readonly bT: readonly tf.Tensor2D[]; // per site [Σr, O]
  readonly bPadded: readonly tf.Tensor2D[]; // per site [G·Σr, O]: B_gᵀ on rows g·Σr.., zeros elsewhere
}

/** The group's rank activations for one input, computed at the first member's call of a layer. */
export interface GroupActivations {
  readonly x: tf.Tensor2D; // [N, I]
  readonly mixed: tf.Tensor2D; // [N, G·Σr]
  /** Dense gates on the host, [N, G, E] row-major, when a trace was asked for. */
  readonly traceGates: Float32Array | undefined;
  readonly weights: GroupWeights;
}

function sameValues(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * Keeps one group's fused operands between forwards. `get` returns undefined when the members cannot be
 * fused (routers with different k or τ, or experts whose rank layout differs between the sites).
 */
export class FusedGroupCache {
  private entry: { readonly key: readonly object[]; readonly weights: GroupWeights | undefined } | undefined;

  get(members: readonly FusedMember[]): GroupWeights | undefined {
    const key: object[] = [];
    for (const m of members) {
      key.push(m.gate.gate.dataId);
      for (const e of m.experts) key.push(e ?? FusedGroupCache.absent);
      for (const e of m.lora) key.push(e.a.dataId, e.b.dataId);
    }
    const cached = this.entry;
    if (cached !== undefined && cached.key.length === key.length && cached.key.every((k, i) => k === key[i])) return cached.weights;
    this.dispose();
    this.entry = { key, weights: buildGroup(members) };
    return this.entry.weights;
  }

  dispose(): void {
    const weights = this.entry?.weights;
    this.entry = undefined;
    if (weights === undefined) return;
    tf.dispose([weights.gates, weights.aCat, weights.spread, weights.blockSpread, weights.eye, ...weights.bT, ...weights.bPadded]);
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
  const block = new Float32Array(count * choices * count * totalRank);
  for (let g = 0; g < count; g++) {
    for (let e = 0; e < choices; e++) {
      for (let c = 0; c < totalRank; c++) block[(g * choices + e) * count * totalRank + g * totalRank + c] = spread.values[e * totalRank + c] ?? 0;
    }
  }
  const built = tf.tidy(() => {
    const fused = members.map((m) => buildFusedLora(m.experts, m.lora)); // per site aT [I, Σr], bT [Σr, O]
    return {
      gates: count === 1 ? tf.clone(first.gate.gate) : tf.concat(members.map((m) => m.gate.gate), 1), // [I, G·E]
      aCat: count === 1 ? (fused[0] as FusedLora).aT : tf.concat(fused.map((f) => f.aT), 1), // [I, G·Σr]
      spread: tf.tensor2d(spread.values, [choices, totalRank]), // [E, Σr]
      blockSpread: tf.tensor2d(block, [count * choices, count * totalRank]), // [G·E, G·Σr]
      eye: tf.eye(choices) as tf.Tensor2D, // [E, E]
      bT: fused.map((f) => f.bT), // per site [Σr, O]
      bPadded: count === 1 ? [] : fused.map((f, g) => tf.pad(f.bT, [[g * totalRank, (count - 1 - g) * totalRank], [0, 0]])), // per site [G·Σr, O]
    };
  });
  for (const t of [built.gates, built.aCat, built.spread, built.blockSpread, built.eye, ...built.bT, ...built.bPadded]) tf.keep(t);
  return { sites: members.map((m) => m.site), choices, k, temperature, totalRank, ...built };
}

/**
 * Routes and projects the whole group for x [N, I]. rowMask [N·G, 1] zeroes padding rows (undefined when
 * the forward has none). Runs inside the forward's tidy.
 */
export function groupActivations(weights: GroupWeights, x: tf.Tensor2D, rowMask: tf.Tensor2D | undefined, trace: boolean): GroupActivations {
  const rows = x.shape[0]; // N
  const count = weights.sites.length; // G
  const { choices, k, totalRank } = weights;
  const scores = tf.matMul(x, weights.gates); // [N, G·E]
  const logits = weights.temperature === 1 ? scores : tf.div<tf.Tensor2D>(scores, weights.temperature); // [N, G·E]
  const top = tf.topk(count === 1 ? logits : tf.reshape<tf.Rank.R2>(logits, [rows * count, choices]), k); // values, indices [N·G, K]
  const softmaxed = tf.softmax(top.values); // [N·G, K]
  const slotWeights = tf.reshape<tf.Rank.R3>(rowMask === undefined ? softmaxed : tf.mul(softmaxed, rowMask), [rows * count, 1, k]); // [N·G, 1, K]
  const dense = (): tf.Tensor2D => tf.reshape<tf.Rank.R2>(tf.matMul(slotWeights, tf.gather(weights.eye, top.indices)), [rows, count * choices]); // [N·G, 1, E] → [N, G·E]
  let gates: tf.Tensor2D; // [N, G·Σr]
  let traceGates: Float32Array | undefined;
  if (rows <= GATHER_SPREAD_MAX_ROWS && !trace) {
    gates = tf.reshape<tf.Rank.R2>(tf.matMul(slotWeights, tf.gather(weights.spread, top.indices)), [rows, count * totalRank]); // [N·G, 1, Σr] → [N, G·Σr]
  } else {
    const dg = dense(); // [N, G·E]
    if (trace) traceGates = dg.dataSync() as Float32Array;
    gates = tf.matMul(dg, weights.blockSpread); // [N, G·Σr]
  }
  const mixed = tf.mul<tf.Tensor2D>(tf.matMul(x, weights.aCat), gates); // [N, G·Σr]
  return { x, mixed, traceGates, weights };
}

/** Site g's delta from the group's activations: [N, O]. */
export function groupSiteDelta(activations: GroupActivations, g: number): tf.Tensor2D {
  const { mixed, weights } = activations;
  const rows = mixed.shape[0]; // N
  const count = weights.sites.length; // G
  if (count === 1) return tf.matMul(mixed, weights.bT[0] as tf.Tensor2D); // [N, Σr]·[Σr, O] → [N, O]
  if (rows <= PADDED_B_MAX_ROWS) return tf.matMul(mixed, weights.bPadded[g] as tf.Tensor2D); // [N, G·Σr]·[G·Σr, O] → [N, O]
  const mine = tf.slice(mixed, [0, g * weights.totalRank], [rows, weights.totalRank]); // [N, Σr]
  return tf.matMul(mine, weights.bT[g] as tf.Tensor2D); // [N, O]
}

/** One site's dense gates [N, E] from the group's host gates [N, G, E]. */
export function siteTraceGates(traceGates: Float32Array, rows: number, count: number, choices: number, g: number): Float32Array {
  const out = new Float32Array(rows * choices);
  for (let n = 0; n < rows; n++) out.set(traceGates.subarray((n * count + g) * choices, (n * count + g + 1) * choices), n * choices);
  return out;
}
