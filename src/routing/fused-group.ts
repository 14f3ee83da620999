/**
 * Inference fast path for a per-site token route whose routers are linear top-k gates (Router.linearTopK) over
 * LoRA experts: the sites of a group (q/k/v; gate/up) read one input, so their routers and their experts' A
 * projections run together.
 *
 *   scores = x · [W_1 | … | W_G] / τ             one matmul for the G routers                 [N, G·E]
 *   slots  = topKSlots(scores as [N·G, E], k)     the one gating function, once for the group  [N·G, K]
 *   Δ_g    = bank.mix(x, slots)_g                 the LoRA bank: one A matmul for the group     [N, O_g]
 *
 * On host-memory backends with few rows (decode) the decision is made on the host: one matmul
 * x · [W_1 | … | W_G | A_catᵀ] gives every router's logits and every expert's rank activations, it is read
 * back (a copy there), the gating runs on the host (host-gating.ts) and the bank forms the gated rank
 * activations from the same read: the group costs one kernel, plus a B matmul and the add per site.
 *
 * Where the group's route is the whole composition, `fusedGroupOutputs` goes one step further on a backend
 * with a routed-site kernel (webgpu-routed-site.ts): router, gating, experts and the add to the frozen output
 * in one dispatch per site.
 *
 * The result is what the per-site path computes (router.route then bank.mixSite with its dense gates), up to
 * float round-off: the unchosen experts contribute exact zeros in both.
 *
 * Shape letters: N rows, I input width, G sites in the group, E choices, K slots, Σr one site's total rank.
 */
import * as tf from '@tensorflow/tfjs';
import type { LoraBank } from '../adapters/lora/bank.js';
import { topKSlots } from './gating.js';
import { decideOnHost, readOnHost, topKSlotsOnHost } from './host-gating.js';
import type { LinearTopK } from './router.js';
import { webgpuRoutedSiteOutputs } from './webgpu-routed-site.js';

/**
 * A backend's one-dispatch-per-site routed outputs: y_g + Δ_g for every bank site (ys and the result in bank
 * order), mask [N] or undefined; undefined hands back to the separate dispatches.
 */
export type RoutedSiteKernel = (
  gates: readonly LinearTopK[],
  bank: LoraBank,
  x: tf.Tensor2D,
  ys: readonly tf.Tensor2D[],
  mask: tf.Tensor1D | undefined,
) => tf.Tensor2D[] | undefined;

/** The library's WebGPU kernel is registered from the start; users (and tests, for the reference) may replace or remove it. */
const routedSiteKernels = new Map<string, RoutedSiteKernel>([['webgpu', webgpuRoutedSiteOutputs]]);

/** Registers `kernel` as the routed-site outputs of `backend` (tf.getBackend() name). */
export function registerRoutedSiteKernel(backend: string, kernel: RoutedSiteKernel): void {
  routedSiteKernels.set(backend, kernel);
}

/** Removes the routed-site kernel registered for `backend`, if any. */
export function unregisterRoutedSiteKernel(backend: string): void {
  routedSiteKernels.delete(backend);
}

/** The group's router operands, kept between forwards until a router variable or the bank's operands change. */
export class FusedRouters {
  private entry: { readonly key: readonly (object | number)[]; readonly gates: tf.Tensor2D; readonly joint: tf.Tensor2D } | undefined;

  /** W side by side [I, G·E] and [W | A_catᵀ] [I, G·E + G·Σr] for `gates` over `bank`. */
  get(gates: readonly LinearTopK[], bank: LoraBank, aCat: tf.Tensor2D): { readonly gates: tf.Tensor2D; readonly joint: tf.Tensor2D } {
    const cached = this.entry;
    const n = gates.length;
    if (cached !== undefined && cached.key.length === n + 1 && cached.key[n] === bank.version && gates.every((g, i) => cached.key[i] === g.gate.dataId))
      return cached;
    const key: (object | number)[] = [...gates.map((g) => g.gate.dataId), bank.version];
    this.dispose();
    const built = tf.tidy(() => {
      const w =
        gates.length === 1
          ? tf.clone((gates[0] as LinearTopK).gate)
          : tf.concat(
              gates.map((g) => g.gate),
              1,
            ); // [I, G·E]
      return { gates: w, joint: tf.concat([w, aCat], 1) }; // [I, G·E + G·Σr]
    });
    this.entry = { key, gates: tf.keep(built.gates), joint: tf.keep(built.joint) };
    return this.entry;
  }

  dispose(): void {
    if (this.entry === undefined) return;
    tf.dispose([this.entry.gates, this.entry.joint]);
    this.entry = undefined;
  }
}

/** The forward's token masks, as the fast path reads them (a RoutingPass provides them, once per forward). */
export interface ForwardMasks {
  /** Token mask on the host, [N]; undefined when the forward has no padding. */
  hostMask(): ArrayLike<number> | undefined;
  /** Token mask repeated for each of G routers, [N·G]; undefined when the forward has no padding. */
  groupMask(routers: number): tf.Tensor1D | undefined;
}

export interface FusedResult {
  /** Δ per bank site, [N, O_g]. */
  readonly deltas: readonly tf.Tensor2D[];
  /**
   * The decision's slots [N·G, K] when a trace was asked for: on the host when it was made there, else the
   * device tensors, for the caller to read (now or after the forward).
   */
  readonly traceSlots:
    | { readonly kind: 'host'; readonly ids: ArrayLike<number>; readonly weights: ArrayLike<number>; readonly k: number }
    | { readonly kind: 'device'; readonly ids: tf.Tensor2D; readonly weights: tf.Tensor2D; readonly k: number }
    | undefined;
}

/**
 * The group's deltas for x [N, I]: `gates` are the routers of the bank's sites, in the bank's order, with one k
 * and one temperature (the caller checks). Runs inside the forward's tidy.
 */
export function fusedGroupDeltas(
  gates: readonly LinearTopK[],
  bank: LoraBank,
  routers: FusedRouters,
  x: tf.Tensor2D,
  masks: ForwardMasks,
  /** Dense gates on the host are wanted (a trace). */
  trace: boolean,
  /** False keeps the decision on the device where it would run on the host (tests, benchmarks). */
  hostRouting: boolean,
): FusedResult {
  const rows = x.shape[0]; // N
  const count = gates.length; // G
  const choices = bank.choices; // E
  const { k, temperature } = gates[0] as LinearTopK;
  const operands = bank.operands({ training: false });
  if (operands.aCat === undefined) throw new Error('the fused path needs a bank with one rank layout');
  const fused = routers.get(gates, bank, operands.aCat);
  if (hostRouting && decideOnHost(rows)) {
    const width = count * choices + count * (bank.totalRanks[0] as number); // G·E + G·Σr
    const values = readOnHost(tf.matMul(x, fused.joint)); // [N, G·E + G·Σr] on the host: logits and x·A_catᵀ
    const slots = topKSlotsOnHost({ values, stride: width, rows, routers: count, choices }, k, temperature, masks.hostMask());
    const deltas = bank.mix(
      x,
      { kind: 'host-slots', slots: { ids: slots.ids, weights: slots.weights, k, down: { values, stride: width, offset: count * choices } } },
      MIX,
    );
    return { deltas, traceSlots: trace ? { kind: 'host', ids: slots.ids, weights: slots.weights, k } : undefined };
  }
  const raw: tf.Tensor2D = tf.matMul(x, fused.gates); // [N, G·E]
  const scores: tf.Tensor2D = temperature === 1 ? raw : tf.div<tf.Tensor2D>(raw, temperature); // [N, G·E]
  const slots = topKSlots(count === 1 ? scores : tf.reshape<tf.Rank.R2>(scores, [rows * count, choices]), masks.groupMask(count), { k, training: false }); // [N·G, K]
  const deltas = bank.mix(x, { kind: 'slots', ids: slots.expertIds, weights: slots.weights }, MIX);
  return { deltas, traceSlots: trace ? { kind: 'device', ids: slots.expertIds, weights: slots.weights, k } : undefined };
}

/**
 * The group's outputs y_g + Δ_g (bank order) when the active backend has a routed-site kernel that covers
 * them; undefined otherwise (the caller then adds fusedGroupDeltas). Runs inside the forward's tidy.
 */
export function fusedGroupOutputs(
  gates: readonly LinearTopK[],
  bank: LoraBank,
  x: tf.Tensor2D,
  ys: readonly tf.Tensor2D[],
  masks: ForwardMasks,
): tf.Tensor2D[] | undefined {
  const kernel = routedSiteKernels.get(tf.getBackend());
  return kernel?.(gates, bank, x, ys, masks.groupMask(1));
}

/** The fast path mixes at inference. */
const MIX = { training: false } as const;

/** Dense gates [R, E] on the host from slots [R, K]. */
export function slotsToDense(ids: ArrayLike<number>, weights: ArrayLike<number>, rows: number, k: number, choices: number): Float32Array {
  const dense = new Float32Array(rows * choices);
  for (let r = 0; r < rows; r++) {
    for (let slot = 0; slot < k; slot++) {
      const w = weights[r * k + slot] as number;
      if (w !== 0) dense[r * choices + (ids[r * k + slot] as number)] = w;
    }
  }
  return dense;
}
