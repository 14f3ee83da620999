/**
 * The routed layer: the only place expert outputs are combined. Given a decision's dense gates and the
 * experts at one point, it returns Σₑ gₑ·Δₑ(x, y) — the routed delta to add to the base output.
 *
 * Two strategies with identical results:
 *  - dense: every expert runs on every row and is weighted by its gate (zero for unchosen experts). LoRA
 *    experts go through their LoRA bank (adapters/lora/bank.ts): two matmuls whatever E is.
 *  - grouped: rows are gathered per expert, run through that expert only, weighted, and gathered back
 *    into place (one host read of the gates; only gather/concat, which every backend has); it pays off
 *    only for very many experts.
 *
 * Shape letters: N rows, I/O in/out width, E choices (experts, then the null expert if any), M rows routed
 * to one expert, K most experts any row uses.
 */
import * as tf from '@tensorflow/tfjs';
import { readSync } from '../backend-capabilities.js';
import type { DeltaModule, ModuleContext } from '../adapters/adapter.js';
import type { LoraBank } from '../adapters/lora/bank.js';

export type ExecutionStrategy = 'dense' | 'grouped';

/**
 * Experts at or above which `auto` picks the grouped strategy. Dense does E× the LoRA work, but in a few
 * large matmuls; grouped gathers rows per expert, and wasm's gather is slow: at E = 32 and 64 (d = 512,
 * 4×128 tokens) dense took 0.33–0.36× grouped's time (benchmarks/results, prefill-overhead).
 */
export const GROUPED_MIN_EXPERTS = 128;

export function chooseStrategy(requested: 'auto' | ExecutionStrategy, experts: number): ExecutionStrategy {
  if (requested !== 'auto') return requested;
  return experts >= GROUPED_MIN_EXPERTS ? 'grouped' : 'dense';
}

/** A LoRA bank holding every expert of the point, and the point's site in it. */
export interface BankSite {
  readonly bank: LoraBank;
  readonly site: number;
}

function denseDelta(
  experts: readonly (DeltaModule | undefined)[],
  gates: tf.Tensor2D,
  x: tf.Tensor2D,
  y: tf.Tensor2D,
  context: ModuleContext,
  lora: BankSite | undefined,
): tf.Tensor2D | undefined {
  if (lora !== undefined) return lora.bank.mixSite(lora.site, x, { kind: 'dense', gates }, { training: context.training }); // [N, O]
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
  const gateValues = readSync(gates, "The 'grouped' expert strategy", "Use routing.strategy 'dense' or 'auto' on this backend"); // one host read per routed point
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
 * contributes. `lora`: the bank holding exactly these experts, when they are all LoRA (dense strategy uses it).
 */
export function routedDelta(
  experts: readonly (DeltaModule | undefined)[],
  gates: tf.Tensor2D,
  x: tf.Tensor2D,
  y: tf.Tensor2D,
  context: ModuleContext,
  strategy: ExecutionStrategy,
  lora?: BankSite,
): tf.Tensor2D | undefined {
  return strategy === 'dense' ? denseDelta(experts, gates, x, y, context, lora) : groupedDelta(experts, gates, x, y, context);
}
