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

export class KVCache {
  private readonly layers: (LayerCache | undefined)[];
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
   * Replaces a layer's cached tensors with longer ones computed during a forward. The new tensors are
   * kept out of the enclosing tidy; the old ones are disposed.
   */
  set(layer: number, keys: tf.Tensor4D, values: tf.Tensor4D): void {
    this.assertLive();
    const old = this.layers[layer];
    this.layers[layer] = { keys: tf.keep(keys), values: tf.keep(values) };
    old?.keys.dispose();
    old?.values.dispose();
  }

  /** Records the mask of the tokens appended by one forward call (after all layers were set). */
  append(mask: readonly (readonly number[])[]): void {
    for (let b = 0; b < this.batch; b++) {
      const rowMask = mask[b] ?? [];
      this.slotMask[b] = [...(this.slotMask[b] ?? []), ...rowMask];
      this.realLengths[b] = (this.realLengths[b] ?? 0) + rowMask.reduce((s, m) => s + m, 0);
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const entry of this.layers) {
      entry?.keys.dispose();
      entry?.values.dispose();
    }
    this.layers.fill(undefined);
  }

  private assertLive(): void {
    if (this.disposed) throw new Error('KVCache used after dispose()');
  }
}
