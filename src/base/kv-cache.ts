/**
 * Key/value cache for incremental decoding. It owns its tensors: every update disposes what it replaces,
 * and dispose() frees the rest.
 *
 * Shape letters: B batch, S cached slots, Hk key/value heads, Dh head width.
 */
import * as tf from '@tensorflow/tfjs';

interface LayerCache {
  keys: tf.Tensor4D; // [B, S, Hk, Dh], RoPE already applied
  values: tf.Tensor4D; // [B, S, Hk, Dh]
}

/**
 * Tensors that must live as long as a generation: e.g. sequence-level routing decisions made at prefill
 * and reused at every decoding step. Values are kept out of tidies and disposed with the cache.
 */
export class CacheMemory {
  private readonly entries = new Map<string, tf.Tensor>();

  get(key: string): tf.Tensor | undefined {
    return this.entries.get(key);
  }

  set(key: string, value: tf.Tensor): void {
    const old = this.entries.get(key);
    this.entries.set(key, tf.keep(value));
    if (old !== undefined && old !== value) old.dispose();
  }

  dispose(): void {
    for (const t of this.entries.values()) t.dispose();
    this.entries.clear();
  }
}

export class KVCache {
  /** Routing decisions and other per-generation state (see CacheMemory). */
  readonly routingMemory = new CacheMemory();
  private readonly layers: (LayerCache | undefined)[];
  /** Longer keys/values computed by the forward in progress; committed together by append(). */
  private readonly pending: (LayerCache | undefined)[];
  /** Host copy of the key mask over all cached slots, [B][S]: 1 real token, 0 padding. */
  private slotMask: number[][];
  /** Real (non-padding) tokens cached per row: the next real token's position. */
  private realLengths: number[];
  private disposed = false;

  constructor(
    readonly nLayers: number,
    readonly batch: number,
  ) {
    this.layers = Array.from({ length: nLayers }, () => undefined);
    this.pending = Array.from({ length: nLayers }, () => undefined);
    this.slotMask = Array.from({ length: batch }, () => []);
    this.realLengths = Array.from({ length: batch }, () => 0);
  }

  /** Slots cached so far (S), padding included. */
  get length(): number {
    return this.slotMask[0]?.length ?? 0;
  }

  positionsOf(row: number): number {
    return this.realLengths[row] ?? 0;
  }

  get mask(): readonly (readonly number[])[] {
    return this.slotMask;
  }

  /** Past keys/values of a layer (undefined before the first call). The cache keeps ownership. */
  get(layer: number): Readonly<LayerCache> | undefined {
    this.assertLive();
    return this.layers[layer];
  }

  /**
   * Stages a layer's longer keys/values computed during a forward. They are kept out of the enclosing
   * tidy and become visible only when append() commits the whole step, so a forward that fails half-way
   * leaves the cache as it was.
   */
  set(layer: number, keys: tf.Tensor4D, values: tf.Tensor4D): void {
    this.assertLive();
    this.dropPending(layer);
    this.pending[layer] = { keys: tf.keep(keys), values: tf.keep(values) };
  }

  /** Discards what a failed forward staged. */
  rollback(): void {
    for (let layer = 0; layer < this.nLayers; layer++) this.dropPending(layer);
  }

  /** Commits the staged keys/values of every layer and records the mask of the tokens they add. */
  append(mask: readonly (readonly number[])[]): void {
    this.assertLive();
    for (let layer = 0; layer < this.nLayers; layer++) {
      const staged = this.pending[layer];
      if (staged === undefined) continue;
      const old = this.layers[layer];
      this.layers[layer] = staged;
      this.pending[layer] = undefined;
      old?.keys.dispose();
      old?.values.dispose();
    }
    for (let b = 0; b < this.batch; b++) {
      const rowMask = mask[b] ?? [];
      this.slotMask[b] = [...(this.slotMask[b] ?? []), ...rowMask];
      this.realLengths[b] = (this.realLengths[b] ?? 0) + rowMask.reduce((s, m) => s + m, 0);
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.rollback();
    this.routingMemory.dispose();
    for (const entry of this.layers) {
      entry?.keys.dispose();
      entry?.values.dispose();
    }
    this.layers.fill(undefined);
  }

  private dropPending(layer: number): void {
    const staged = this.pending[layer];
    staged?.keys.dispose();
    staged?.values.dispose();
    this.pending[layer] = undefined;
  }

  private assertLive(): void {
    if (this.disposed) throw new Error('KVCache used after dispose()');
  }
}
