/**
 * Routing traces: what each router decided, copied to plain data. One entry per layer, routed point and
 * real token: the experts with a non-zero weight (by name; the null expert is NULL_EXPERT), their weights,
 * and whether the token was dropped (capacity) and so kept only the base output.
 */

import * as tf from '@tensorflow/tfjs';
import { readSync } from '../backend-capabilities.js';

export const NULL_EXPERT = 'null';

/** A tensor a trace reads during the forward, on the host (a SyncReadError on backends without synchronous reads). */
export function readForTrace(tensor: tf.Tensor): ArrayLike<number> {
  return readSync(
    tensor,
    'A routing trace',
    'Routing traces are read during the forward: trace on a backend with synchronous reads (wasm, cpu), or omit routing.trace on webgpu',
  );
}

/**
 * Trace reads postponed past the forward, for backends without synchronous reads (webgpu): the forward keeps
 * what its trace needs (tensor handles that share the data, so the forward's own tensors are untouched) and
 * `flush` reads them with `await data()`, in the order they were recorded, and builds the entries. Pass one
 * as `routing.traceReads` beside `routing.trace`; `dispose` frees whatever was not flushed.
 */
export class DeferredTraceReads {
  private pending: { readonly tensors: tf.Tensor[]; readonly build: (values: ArrayLike<number>[]) => void }[] = [];

  /** Keeps `tensors` until flush, which calls `build` with their values (in the same order). */
  add(tensors: readonly tf.Tensor[], build: (values: ArrayLike<number>[]) => void): void {
    this.pending.push({ tensors: tensors.map((t) => tf.keep(tf.clone(t))), build });
  }

  /** Reads every recorded tensor and builds its entries; frees them whatever happens. */
  async flush(): Promise<void> {
    const pending = this.pending;
    this.pending = [];
    try {
      const values = await Promise.all(pending.map((p) => Promise.all(p.tensors.map((t) => t.data()))));
      pending.forEach((p, i) => p.build(values[i] as ArrayLike<number>[]));
    } finally {
      for (const p of pending) tf.dispose(p.tensors);
    }
  }

  /** Frees what was recorded and not flushed. */
  dispose(): void {
    for (const p of this.pending) tf.dispose(p.tensors);
    this.pending = [];
  }
}

export interface RoutingTraceEntry {
  readonly layer: number;
  /** The routed point (`attn.q`, `mlp:output`, ...), `layer` for per-layer routers, `model` for a model router. */
  readonly site: string;
  /** Which route of the composition (0 for the first). */
  readonly route: number;
  readonly batch: number;
  /** Position of the token in its sequence (padding excluded). */
  readonly token: number;
  readonly experts: readonly string[];
  readonly weights: readonly number[];
  readonly dropped: boolean;
  /** What the token is: text, or an image token of a prefix (multimodal forwards). */
  readonly modality: 'text' | 'image';
}

/** Copies a decision's host arrays into trace entries. gates [R·E] row-major; rows map to (batch, token). */
export function traceEntries(options: {
  readonly layer: number;
  readonly site: string;
  readonly route: number;
  readonly expertNames: readonly string[];
  readonly gates: ArrayLike<number>;
  readonly dropped: ArrayLike<number>;
  /** For each token row: [batch, position] or undefined for padding. */
  readonly rows: readonly ([number, number] | undefined)[];
  /** Decision row of each token row (sequence granularity maps every token of a sequence to its row). */
  readonly decisionRow: (tokenRow: number) => number;
  /** 1 where a token row is an image token (default: every row is text). */
  readonly imageRows?: ArrayLike<number>;
}): RoutingTraceEntry[] {
  const choices = options.expertNames.length;
  const entries: RoutingTraceEntry[] = [];
  options.rows.forEach((where, n) => {
    if (where === undefined) return;
    const r = options.decisionRow(n);
    const experts: string[] = [];
    const weights: number[] = [];
    for (let e = 0; e < choices; e++) {
      const w = options.gates[r * choices + e] as number;
      if (w !== 0) {
        experts.push(options.expertNames[e] as string);
        weights.push(w);
      }
    }
    entries.push({
      layer: options.layer,
      site: options.site,
      route: options.route,
      batch: where[0],
      token: where[1],
      experts,
      weights,
      dropped: options.dropped[r] === 1,
      modality: options.imageRows?.[n] === 1 ? 'image' : 'text',
    });
  });
  return entries;
}
