/**
 * The one gating function (gating.ts `topKSlots`, inference, softmax over the k chosen) for decisions made on
 * the host: where tensors live in host memory (wasm, cpu), reading a few logits back is a copy, and deciding
 * here replaces ~7 kernel launches per site group at decode. Same choices as the device (ties: lower index
 * first) and the same float32 weights up to the softmax, which rounds once instead of per step.
 *
 * Shape letters: N rows, G sites (routers) of a group, E choices, K slots.
 */
import type { HostSlots } from '../adapters/lora/bank.js';
import type * as tf from '@tensorflow/tfjs';
import { getBackendCapabilities, readSync } from '../backend-capabilities.js';

/** A tensor the host path reads (taken only where the backend's tensors live in host memory). */
export function readOnHost(tensor: tf.Tensor): ArrayLike<number> {
  return readSync(tensor, 'Host routing', 'Host routing is taken only where getBackendCapabilities().hostMemory holds');
}

/** At most this many rows decide on the host (decode and short prompts); more rows decide on the device. */
export const HOST_ROUTING_MAX_ROWS = 64;

/** True when a decision over `rows` rows is best made on the host on the current backend. */
export function decideOnHost(rows: number): boolean {
  return rows <= HOST_ROUTING_MAX_ROWS && getBackendCapabilities().hostMemory;
}

/** Where the logits of G routers sit in a host buffer: row n, router g, choice e at values[n·stride + g·E + e]. */
export interface HostLogits {
  readonly values: ArrayLike<number>;
  readonly stride: number;
  readonly rows: number; // N
  readonly routers: number; // G
  readonly choices: number; // E
}

/**
 * Top-k slots of G routers on the host: logits / τ, the k largest (descending), softmax over them, zero on
 * padding rows (mask[n] ≠ 1). Returns slots laid out as the LoRA bank reads them ([N·G, K]).
 */
export function topKSlotsOnHost(logits: HostLogits, k: number, temperature: number, mask: ArrayLike<number> | undefined): HostSlots {
  const { values, stride, rows, routers, choices } = logits;
  const ids = new Int32Array(rows * routers * k);
  const weights = new Float32Array(rows * routers * k); // zero on padding rows: no expert contributes
  const scaled: number[] = new Array<number>(choices);
  const chosen: number[] = new Array<number>(k);
  const chosenValues: number[] = new Array<number>(k);
  for (let n = 0; n < rows; n++) {
    if (mask !== undefined && mask[n] !== 1) continue;
    for (let g = 0; g < routers; g++) {
      for (let e = 0; e < choices; e++) {
        const v = values[n * stride + g * choices + e] as number;
        scaled[e] = temperature === 1 ? v : Math.fround(v / temperature);
      }
      for (let slot = 0; slot < k; slot++) {
        let best = -1;
        for (let e = 0; e < choices; e++) {
          let taken = false;
          for (let s = 0; s < slot; s++) if (chosen[s] === e) taken = true;
          if (taken) continue;
          if (best === -1 || (scaled[e] as number) > (scaled[best] as number)) best = e;
        }
        chosen[slot] = best;
        chosenValues[slot] = scaled[best] as number;
      }
      const at = (n * routers + g) * k;
      softmaxInto(chosenValues, weights, at);
      for (let slot = 0; slot < k; slot++) ids[at + slot] = chosen[slot] as number;
    }
  }
  return { ids, weights, k };
}

/** softmax in float32 steps' order: exp(v − max) / Σ exp(v − max), written at out[at …]. */
function softmaxInto(values: readonly number[], out: Float32Array, at: number): void {
  let max = -Infinity;
  for (const v of values) if (v > max) max = v;
  let sum = 0;
  const exps = values.map((v) => Math.exp(v - max));
  for (const e of exps) sum += e;
  exps.forEach((e, i) => {
    out[at + i] = Math.fround(e / sum);
  });
}
