/**
 * The routed layer: the only place expert outputs are combined. Given a decision's dense gates and the
 * experts at one point, it returns Σₑ gₑ·Δₑ(x, y) — the routed delta to add to the base output.
 *
 * Two strategies with identical results:
 *  - dense: every expert runs on every row and is weighted by its gate (zero for unchosen experts). For
 *    LoRA experts it is fused: all experts' A matrices concatenated into one matmul, the rank columns
 *    weighted by the gates, then one matmul by the concatenated B (2 matmuls whatever E is).
 *  - grouped: rows are gathered per expert, run through that expert only, weighted, and gathered back
 *    into place (one host read of the gates; only gather/concat, which every backend has); it pays off
 *    only for very many experts.
 *
 * Shape letters: N rows, I/O in/out width, E choices (experts, then the null expert if any), r rank,
 * Σr total rank, M rows routed to one expert, K most experts any row uses.
 */
import * as tf from '@tensorflow/tfjs';
import type { DeltaModule, ModuleContext } from '../adapters/adapter.js';
import { LoraModule } from '../adapters/lora/layer.js';
import type { RoutingDecision } from './router.js';

export type ExecutionStrategy = 'dense' | 'grouped';

/**
 * Experts at or above which `auto` picks the grouped strategy. Dense does E× the LoRA work, but in a few
 * large matmuls; grouped gathers rows per expert, and wasm's gather is slow: at E = 32 and 64 (d = 512,
 * 4×128 tokens) dense took 0.33–0.36× grouped's time (benchmarks/results, prefill-overhead).
 */
export const GROUPED_MIN_EXPERTS = 128;

/**
 * Dense gates [R, E] from a decision: slot weights scattered onto their choices (a one-hot product, so the
 * gradient reaches the weights on every backend). Dropped and padding rows already carry zero weights (the
 * router contract; property-tested for every router), so they get all-zero gates.
 */
export function decisionGates(decision: RoutingDecision, choices: number): tf.Tensor2D {
  // tf.oneHot needs depth ≥ 2; with a single choice every slot is choice 0.
  if (choices === 1) return tf.sum(decision.weights, 1, true); // [R, 1]
  const oneHot = tf.cast(tf.oneHot(decision.expertIds, choices), 'float32'); // [R, K, E]
  return tf.sum(tf.mul(oneHot, tf.expandDims(decision.weights, 2)), 1); // [R, E]
}

export function chooseStrategy(requested: 'auto' | ExecutionStrategy, experts: number): ExecutionStrategy {
  if (requested !== 'auto') return requested;
  return experts >= GROUPED_MIN_EXPERTS ? 'grouped' : 'dense';
}

/** True when every expert is LoRA with the same dropout, so the dense path can fuse them. */
export function fusableLora(experts: readonly (DeltaModule | undefined)[]): LoraModule[] | undefined {
  const present = experts.filter((e): e is DeltaModule => e !== undefined);
  if (present.length === 0 || !present.every((e) => e instanceof LoraModule)) return undefined;
  const lora = present as LoraModule[];
  return lora.every((e) => e.dropout === lora[0]?.dropout) ? lora : undefined;
}

/**
 * The experts' LoRA matrices concatenated and transposed (so every matmul is a plain one: tfjs-wasm's
 * transposed-operand matmul is much slower), and the matrix spreading gates over rank columns.
 */
export interface FusedLora {
  readonly aT: tf.Tensor2D; // [I, Σr]
  readonly bT: tf.Tensor2D; // [Σr, O]
  readonly spread: tf.Tensor2D; // [E, Σr]: expert e's LoRA scale on its rank columns
}

/**
 * Keeps one routed point's fused LoRA matrices between forwards. They are rebuilt only when a variable
 * changed (an optimizer step or a hot swap assigns new data), so inference pays no concatenation per call.
 */
export class FusedLoraCache {
  private entry: { readonly key: readonly object[]; readonly fused: FusedLora } | undefined;

  get(experts: readonly (DeltaModule | undefined)[], lora: readonly LoraModule[]): FusedLora {
    const key: object[] = experts.map((e) => e ?? FusedLoraCache.absent);
    for (const e of lora) key.push(e.a.dataId, e.b.dataId);
    const cached = this.entry;
    if (cached !== undefined && cached.key.length === key.length && cached.key.every((k, i) => k === key[i])) return cached.fused;
    const fused = tf.tidy(() => ({ ...buildFusedLora(experts, lora) }));
    this.dispose();
    this.entry = { key, fused: { aT: tf.keep(fused.aT), bT: tf.keep(fused.bT), spread: tf.keep(fused.spread) } };
    return this.entry.fused;
  }

  dispose(): void {
    if (this.entry === undefined) return;
    tf.dispose([this.entry.fused.aT, this.entry.fused.bT, this.entry.fused.spread]);
    this.entry = undefined;
  }

  private static readonly absent = {};
}

/** The spread matrix [E, Σr] on the host (row-major): expert e's LoRA scale on its own rank columns. */
export function spreadValues(
  experts: readonly (DeltaModule | undefined)[],
  lora: readonly LoraModule[],
): { readonly values: Float32Array; readonly totalRank: number } {
  const totalRank = lora.reduce((s, e) => s + e.rank, 0);
  const values = new Float32Array(experts.length * totalRank);
  let column = 0;
  experts.forEach((expert, e) => {
    if (!(expert instanceof LoraModule)) return;
    for (let j = 0; j < expert.rank; j++) values[e * totalRank + column + j] = expert.scale;
    column += expert.rank;
  });
  return { values, totalRank };
}

export function buildFusedLora(experts: readonly (DeltaModule | undefined)[], lora: readonly LoraModule[]): FusedLora {
  const { values: spread, totalRank } = spreadValues(experts, lora);
  const aCat =
    lora.length === 1
      ? (lora[0] as LoraModule).a
      : tf.concat(
          lora.map((e) => e.a),
          0,
        ); // [Σr, I]
  const bCat =
    lora.length === 1
      ? (lora[0] as LoraModule).b
      : tf.concat(
          lora.map((e) => e.b),
          1,
        ); // [O, Σr]
  return {
    aT: tf.transpose(aCat), // [I, Σr]
    bT: tf.transpose(bCat), // [Σr, O]
    spread: tf.tensor2d(spread, [experts.length, totalRank]), // [E, Σr]
  };
}

/**
 * Fused dense LoRA mixture: Δ = ((x·A_catᵀ) ⊙ (g·S)) · B_catᵀ, where S [E, Σr] spreads each expert's gate
 * (times its LoRA scale) over its rank columns. Training builds the concatenation inside the forward so
 * gradients flow to each expert's A and B; inference reuses the cached one.
 */
function fusedLoraDelta(
  experts: readonly (DeltaModule | undefined)[],
  lora: readonly LoraModule[],
  gates: tf.Tensor2D,
  x: tf.Tensor2D,
  context: ModuleContext,
  cache: FusedLoraCache | undefined,
): tf.Tensor2D {
  const { aT, bT, spread } = context.training || cache === undefined ? buildFusedLora(experts, lora) : cache.get(experts, lora);
  const dropout = lora[0]?.dropout ?? 0;
  const input = context.training && dropout > 0 ? tf.dropout(x, dropout) : x; // [N, I]
  const down = tf.matMul(input, aT); // [N, Σr]
  const rankGates = tf.matMul(gates, spread); // [N, Σr]
  return tf.matMul(tf.mul(down, rankGates), bT); // [N, O]
}

function denseDelta(
  experts: readonly (DeltaModule | undefined)[],
  gates: tf.Tensor2D,
  x: tf.Tensor2D,
  y: tf.Tensor2D,
  context: ModuleContext,
  cache: FusedLoraCache | undefined,
): tf.Tensor2D | undefined {
  const lora = fusableLora(experts);
  if (lora !== undefined) return fusedLoraDelta(experts, lora, gates, x, context, cache);
  let total: tf.Tensor2D | undefined;
  experts.forEach((expert, e) => {
    if (expert === undefined) return;
    const gate = tf.slice(gates, [0, e], [-1, 1]); // [N, 1]
    const weighted: tf.Tensor2D = tf.mul(expert.delta(x, y, context), gate); // [N, O]
    total = total === undefined ? weighted : tf.add<tf.Tensor2D>(total, weighted);
  });
  return total;
}

function groupedDelta(
  experts: readonly (DeltaModule | undefined)[],
  gates: tf.Tensor2D,
  x: tf.Tensor2D,
  y: tf.Tensor2D,
  context: ModuleContext,
): tf.Tensor2D | undefined {
  const [rows, choices] = gates.shape;
  const gateValues = gates.dataSync(); // one host read per routed point
  const pieces: tf.Tensor2D[] = [];
  /** For every row, where its weighted expert outputs sit in the concatenation of pieces. */
  const slots: number[][] = Array.from({ length: rows }, () => []);
  let offset = 0;
  experts.forEach((expert, e) => {
    if (expert === undefined) return;
    const members: number[] = [];
    for (let n = 0; n < rows; n++) if (gateValues[n * choices + e] !== 0) members.push(n);
    if (members.length === 0) return;
    const index = tf.tensor1d(members, 'int32'); // [M]
    const xe: tf.Tensor2D = tf.gather(x, index); // [M, I]
    const ye: tf.Tensor2D = tf.gather(y, index); // [M, O]
    const ge = tf.gather(tf.slice(gates, [0, e], [-1, 1]), index); // [M, 1]
    pieces.push(tf.mul<tf.Tensor2D>(expert.delta(xe, ye, context), ge)); // [M, O]
    members.forEach((n, i) => slots[n]?.push(offset + i));
    offset += members.length;
  });
  if (pieces.length === 0) return undefined;
  const width = y.shape[1];
  const stacked = tf.concat<tf.Tensor2D>([...pieces, tf.zeros([1, width])], 0); // [ΣM + 1, O]; last row is zero
  const most = Math.max(...slots.map((s) => s.length));
  let total: tf.Tensor2D | undefined;
  for (let k = 0; k < most; k++) {
    const index = tf.tensor1d(
      slots.map((s) => s[k] ?? offset),
      'int32',
    ); // [N]
    const part: tf.Tensor2D = tf.gather(stacked, index); // [N, O]
    total = total === undefined ? part : tf.add<tf.Tensor2D>(total, part);
  }
  return total;
}

/**
 * Σₑ gₑ·Δₑ(x, y) over the experts present at this point (undefined entries: the expert has no module
 * here, or is the null expert). gates [N, E]; x [N, I]; y [N, O] → [N, O], or undefined when no expert
 * contributes.
 */
export function routedDelta(
  experts: readonly (DeltaModule | undefined)[],
  gates: tf.Tensor2D,
  x: tf.Tensor2D,
  y: tf.Tensor2D,
  context: ModuleContext,
  strategy: ExecutionStrategy,
  cache?: FusedLoraCache,
): tf.Tensor2D | undefined {
  return strategy === 'dense' ? denseDelta(experts, gates, x, y, context, cache) : groupedDelta(experts, gates, x, y, context);
}
