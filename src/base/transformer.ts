/**
 * The frozen decoder-only Transformer: llama (RMSNorm, RoPE, grouped-query attention, SwiGLU) and gpt2
 * (LayerNorm, learned positions, GELU-tanh). Every linear map goes through a named site where hooks may
 * adapt it; with no hooks the forward is the plain base model.
 *
 * Shape letters: B batch, T new tokens, N = B·T rows, S attended slots, D width, F FFN width, H query heads,
 * Hk key/value heads, Dh head width, V vocabulary.
 */
import * as tf from '@tensorflow/tfjs';
import { ShapeError, formatShape } from '../errors.js';
import { attentionBias, groupedQueryAttention } from './attention.js';
import type { ModelConfig } from './config.js';
import { headDim } from './config.js';
import type { ForwardContext, ForwardHooks } from './hooks.js';
import { KVCache } from './kv-cache.js';
import { geluTanh, layerNorm, rmsNorm } from './layers.js';
import { applyRope, type RopeAngles, ropeAngles, ropeTables, type RopeTables } from './rope.js';
import { FAMILY_SITE_GROUPS, FAMILY_SITES, type SiteGroup, type SiteName } from './sites.js';
import { countParameters, disposeWeights, type NormWeights, type TransformerWeights } from './weights.js';

export type ForwardOutput = 'logits' | 'last-logits' | 'hidden';

/**
 * Embedding vectors that enter the model before the token embeddings of every row (LLaVA-style image
 * tokens): they take the first P slots and positions, attend to each other and are attended to by the text
 * that follows; their own outputs are not returned (logits and hidden states cover the ids only).
 */
export interface PrefixEmbeddings {
  /** [B, P, D], the model's width D. The caller keeps ownership. */
  readonly embeddings: tf.Tensor3D;
  /** 1 real slot, 0 padding, [B][P] (a row without an image: all 0); default all real. */
  readonly mask?: readonly (readonly number[])[];
}

export interface ForwardOptions {
  /** Token ids [B][T]; rows must have equal length (pad on the left for generation). */
  readonly ids: readonly (readonly number[])[];
  /** 1 real token, 0 padding, [B][T]; default all real. */
  readonly mask?: readonly (readonly number[])[];
  /** Continue from (and extend) this cache. */
  readonly cache?: KVCache;
  readonly hooks?: ForwardHooks;
  /** 'logits' [B, T, V] (default), 'last-logits' [B, V] of the last column, 'hidden' final normed states [B, T, D]. */
  readonly output?: ForwardOutput;
  readonly training?: boolean;
  /** Embedding vectors before the ids of every row (see PrefixEmbeddings); absent: the plain text forward. */
  readonly prefix?: PrefixEmbeddings;
}

export class Transformer {
  readonly sites: readonly SiteName[];
  /** The family's site groups (sites that read one input), in forward order. */
  readonly groups: readonly SiteGroup[];
  private readonly rope: RopeTables | undefined;
  private disposed = false;

  /** Tensors this instance frees on dispose(): all weights, or only a view's own replacements. */
  private readonly owned: readonly tf.Tensor[] | 'all';

  constructor(
    readonly config: ModelConfig,
    readonly weights: TransformerWeights,
    options: { readonly owned?: readonly tf.Tensor[]; readonly rope?: RopeTables } = {},
  ) {
    this.sites = FAMILY_SITES[config.family];
    this.groups = FAMILY_SITE_GROUPS[config.family];
    this.owned = options.owned ?? 'all';
    this.rope = options.rope ?? (config.family === 'llama' ? ropeTables(headDim(config), config.maxSeqLen, config.ropeTheta) : undefined);
  }

  /**
   * A view of this model with some site weights replaced (e.g. LoRA merged into a copy of W). The view
   * shares every other tensor with this model and, on dispose(), frees only the replacements it was given.
   * Keys are `${layer}|${site}`; replacement weights are [I, O] like the originals.
   */
  withSiteWeights(replacements: ReadonlyMap<string, tf.Tensor2D>): Transformer {
    const layers = this.weights.layers.map((layer, index) => {
      const sites = { ...layer.sites };
      for (const site of Object.keys(sites) as SiteName[]) {
        const weight = replacements.get(`${index}|${site}`);
        const linear = sites[site];
        if (weight !== undefined && linear !== undefined) sites[site] = { ...linear, weight };
      }
      return { ...layer, sites };
    });
    return new Transformer(this.config, { ...this.weights, layers }, { owned: [...replacements.values()], ...(this.rope ? { rope: this.rope } : {}) });
  }

  get parameterCount(): number {
    return countParameters(this.weights);
  }

  newCache(batch: number): KVCache {
    return new KVCache(this.config.nLayers, batch);
  }

  /** Runs the model. The returned tensor belongs to the caller. */
  forward(options: ForwardOptions): tf.Tensor {
    if (this.disposed) throw new Error('Transformer used after dispose()');
    const { cache, hooks, prefix } = options;
    const batch = options.ids.length;
    const textTokens = options.ids[0]?.length ?? 0;
    this.validateIds(options.ids, options.mask, cache);
    const prefixSlots = prefix === undefined ? 0 : this.validatePrefix(prefix, batch, textTokens, options.mask, cache);
    const textMask = options.mask ?? options.ids.map((row) => row.map(() => 1));
    // With a prefix, every per-token view (mask, positions, the ids hooks see) covers the P prefix slots first.
    const prefixMask = prefix === undefined ? undefined : (prefix.mask ?? options.ids.map(() => Array.from({ length: prefixSlots }, () => 1)));
    const mask = prefixMask === undefined ? textMask : textMask.map((row, b) => [...(prefixMask[b] ?? []), ...row]);
    const ids = prefix === undefined ? options.ids : options.ids.map((row) => [...Array.from({ length: prefixSlots }, () => 0), ...row]);
    const modality = prefix === undefined ? undefined : options.ids.map((row) => [...Array.from({ length: prefixSlots }, () => 1), ...row.map(() => 0)]);
    const tokens = prefixSlots + textTokens;
    const past = cache?.length ?? 0;
    const positions = this.positions(mask, cache);

    const run = (): tf.Tensor =>
      tf.tidy(() => {
        const maskTensor = tf.tensor2d(
          mask.map((r) => [...r]),
          [batch, tokens],
          'float32',
        ); // [B, T]
        const padded = mask.some((row) => row.some((m) => m !== 1));
        const context: ForwardContext = {
          batch,
          tokens,
          ids,
          mask: maskTensor,
          padded,
          pastLength: past,
          cache,
          training: options.training ?? false,
          ...(modality === undefined ? {} : { modality }),
        };
        hooks?.begin?.(context);
        const keyMask = cache === undefined ? mask : cache.mask.map((row, b) => [...row, ...(mask[b] ?? [])]);
        const positionTensor = tf.tensor2d(positions, [batch, tokens], 'int32'); // [B, T]

        let hidden = prefix === undefined ? this.embed(ids, positionTensor) : this.embedWithPrefix(options.ids, prefix.embeddings, positionTensor); // [N, D]
        const angles = this.rope === undefined ? undefined : ropeAngles(positionTensor, this.rope); // [B, T, 1, Dh/2] ×2
        for (let layer = 0; layer < this.config.nLayers; layer++) {
          hooks?.beginLayer?.(layer, hidden);
          const attnIn = this.norm(hidden, this.layer(layer).attnNorm); // [N, D]
          let attnOut = this.attention(layer, attnIn, angles, keyMask, batch, tokens, past, options); // [N, D]
          if (hooks?.blockOutput) attnOut = hooks.blockOutput(layer, 'attn', attnOut);
          hidden = tf.add<tf.Tensor2D>(hidden, attnOut); // [N, D]
          const mlpIn = this.norm(hidden, this.layer(layer).mlpNorm); // [N, D]
          let mlpOut = this.mlp(layer, mlpIn, hooks); // [N, D]
          if (hooks?.blockOutput) mlpOut = hooks.blockOutput(layer, 'mlp', mlpOut);
          hidden = tf.add<tf.Tensor2D>(hidden, mlpOut); // [N, D]
        }
        hooks?.end?.();
        cache?.append(mask);
        let final = this.norm(hidden, this.weights.finalNorm); // [N, D]
        if (prefixSlots > 0) {
          // The outputs of the ids only: drop the prefix slots of every row.
          const rows = tf.reshape(final, [batch, tokens, this.config.dim]); // [B, P+T', D]
          final = tf.reshape(tf.slice(rows, [0, prefixSlots, 0], [batch, textTokens, this.config.dim]), [batch * textTokens, this.config.dim]); // [B·T', D]
        }
        const output = options.output ?? 'logits';
        if (output === 'hidden') return tf.reshape(final, [batch, textTokens, this.config.dim]); // [B, T, D]
        if (output === 'last-logits') {
          const last = tf.slice(tf.reshape(final, [batch, textTokens, this.config.dim]), [0, textTokens - 1, 0], [batch, 1, this.config.dim]); // [B, 1, D]
          return tf.matMul(tf.reshape(last, [batch, this.config.dim]), this.weights.head); // [B, V]
        }
        const logits = tf.matMul(final, this.weights.head); // [N, V]
        return tf.reshape(logits, [batch, textTokens, this.config.vocabSize]); // [B, T, V]
      });
    try {
      return run();
    } catch (error) {
      cache?.rollback();
      throw error;
    } finally {
      hooks?.release?.();
    }
  }

  /**
   * Applies the frozen linear maps of a group of sites that share the input x, with the group's hooks:
   * x [N, I] → one output [N, O_g] per site of the group, in group order.
   */
  applyGroup(layer: number, group: SiteGroup, x: tf.Tensor2D, hooks: ForwardHooks | undefined): readonly tf.Tensor2D[] {
    const sites = this.layer(layer).sites;
    const inputs = hooks?.groupInputs ? hooks.groupInputs(layer, group, x) : group.sites.map(() => x); // G × [N, I]
    const outputs = group.sites.map((site, g) => {
      const linear = sites[site];
      if (linear === undefined) throw new Error(`layer ${layer} has no site ${site}`);
      const projected: tf.Tensor2D = tf.matMul(inputs[g] as tf.Tensor2D, linear.weight); // [N, I]·[I, O] → [N, O]
      return linear.bias === undefined ? projected : tf.add<tf.Tensor2D>(projected, linear.bias); // [N, O]
    });
    return hooks?.groupOutputs ? hooks.groupOutputs(layer, group, inputs, outputs) : outputs; // G × [N, O_g]
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (this.owned !== 'all') {
      for (const t of this.owned) t.dispose();
      return;
    }
    disposeWeights(this.weights);
    this.rope?.cos.dispose();
    this.rope?.sin.dispose();
  }

  private layer(index: number): TransformerWeights['layers'][number] {
    const layer = this.weights.layers[index];
    if (layer === undefined) throw new Error(`no layer ${index}`);
    return layer;
  }

  private embed(ids: readonly (readonly number[])[], positions: tf.Tensor2D): tf.Tensor2D {
    const flatIds = tf.tensor1d(ids.flat(), 'int32'); // [N]
    const tokens = tf.gather(this.weights.tokenEmbedding, flatIds); // [N, D]
    if (this.weights.positionEmbedding === undefined) return tokens;
    const learned = tf.gather(this.weights.positionEmbedding, tf.reshape(positions, [-1])); // [N, D]
    return tf.add(tokens, learned); // [N, D]
  }

  /** Prefix vectors then token embeddings, row by row (learned positions added to both): → [N, D], N = B·(P+T). */
  private embedWithPrefix(ids: readonly (readonly number[])[], prefix: tf.Tensor3D, positions: tf.Tensor2D): tf.Tensor2D {
    const [batch, slots, dim] = prefix.shape;
    const textTokens = ids[0]?.length ?? 0;
    const text = tf.reshape(tf.gather(this.weights.tokenEmbedding, tf.tensor1d(ids.flat(), 'int32')), [batch, textTokens, dim]); // [B, T, D]
    const joined = tf.reshape(tf.concat([prefix, text], 1), [batch * (slots + textTokens), dim]) as tf.Tensor2D; // [N, D]
    if (this.weights.positionEmbedding === undefined) return joined;
    return tf.add(joined, tf.gather(this.weights.positionEmbedding, tf.reshape(positions, [-1]))); // [N, D]
  }

  private norm(x: tf.Tensor2D, weights: NormWeights): tf.Tensor2D {
    return this.config.family === 'llama' ? rmsNorm(x, weights, this.config.normEps) : layerNorm(x, weights, this.config.normEps);
  }

  private attention(
    layer: number,
    x: tf.Tensor2D,
    angles: RopeAngles | undefined,
    keyMask: readonly (readonly number[])[],
    batch: number,
    tokens: number,
    past: number,
    options: ForwardOptions,
  ): tf.Tensor2D {
    const { nHeads, nKvHeads } = this.config;
    const dh = headDim(this.config);
    const hooks = options.hooks;
    const [qx, kx, vx] = this.applyGroup(layer, this.group(0), x, hooks) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D]; // [N, D], [N, Hk·Dh] ×2
    let q = tf.reshape<tf.Rank.R4>(qx, [batch, tokens, nHeads, dh]); // [B, T, H, Dh]
    let k = tf.reshape<tf.Rank.R4>(kx, [batch, tokens, nKvHeads, dh]); // [B, T, Hk, Dh]
    let v = tf.reshape<tf.Rank.R4>(vx, [batch, tokens, nKvHeads, dh]); // [B, T, Hk, Dh]
    if (angles !== undefined) {
      q = applyRope(q, angles); // [B, T, H, Dh]
      k = applyRope(k, angles); // [B, T, Hk, Dh]
    }
    const cache = options.cache;
    const cached = cache?.get(layer);
    if (cached !== undefined) {
      k = tf.concat<tf.Tensor4D>([cached.keys, k], 1); // [B, S, Hk, Dh]
      v = tf.concat<tf.Tensor4D>([cached.values, v], 1); // [B, S, Hk, Dh]
    }
    if (cache !== undefined) cache.set(layer, k, v);

    const prefix = hooks?.attentionPrefix?.(layer);
    let prefixSlots = 0;
    if (prefix !== undefined) {
      prefixSlots = prefix.keys.shape[1];
      const prefixKeys = prefix.keys.shape[0] === batch ? prefix.keys : tf.tile(prefix.keys, [batch, 1, 1, 1]); // [B, P, Hk, Dh]
      const prefixValues = prefix.values.shape[0] === batch ? prefix.values : tf.tile(prefix.values, [batch, 1, 1, 1]); // [B, P, Hk, Dh]
      k = tf.concat<tf.Tensor4D>([prefixKeys, k], 1); // [B, P+S, Hk, Dh]
      v = tf.concat<tf.Tensor4D>([prefixValues, v], 1); // [B, P+S, Hk, Dh]
    }
    const bias = attentionBias(keyMask, tokens, past, prefixSlots); // [B, 1, 1, T, P+S]
    const mixed = groupedQueryAttention(q, k, v, bias); // [B, T, D]
    return this.applySingle(layer, 1, tf.reshape<tf.Rank.R2>(mixed, [batch * tokens, nHeads * dh]), hooks); // [N, D]
  }

  private mlp(layer: number, x: tf.Tensor2D, hooks: ForwardHooks | undefined): tf.Tensor2D {
    if (this.config.family === 'llama') {
      const [gate, up] = this.applyGroup(layer, this.group(2), x, hooks) as [tf.Tensor2D, tf.Tensor2D]; // [N, F] each
      const intermediate = tf.mul<tf.Tensor2D>(tf.mul(gate, tf.sigmoid(gate)), up); // [N, F]  SwiGLU (Shazeer 2020)
      return this.applySingle(layer, 3, intermediate, hooks); // [N, D]
    }
    const intermediate = geluTanh(this.applySingle(layer, 2, x, hooks)); // [N, F]
    return this.applySingle(layer, 3, intermediate, hooks); // [N, D]
  }

  /** A group of one site (o, down; gpt2's up): x [N, I] → [N, O]. */
  private applySingle(layer: number, groupIndex: number, x: tf.Tensor2D, hooks: ForwardHooks | undefined): tf.Tensor2D {
    return this.applyGroup(layer, this.group(groupIndex), x, hooks)[0] as tf.Tensor2D; // [N, O]
  }

  private group(index: number): SiteGroup {
    const group = this.groups[index];
    if (group === undefined) throw new Error(`no site group ${index}`);
    return group;
  }

  /** Absolute position of every new token: real tokens count up from the cache's length; padding sits at 0. */
  private positions(mask: readonly (readonly number[])[], cache: KVCache | undefined): number[][] {
    return mask.map((row, b) => {
      let next = cache?.positionsOf(b) ?? 0;
      return row.map((m) => (m === 1 ? next++ : 0));
    });
  }

  /** Checks a prefix against the ids (and the cache's length limit); returns P. */
  private validatePrefix(prefix: PrefixEmbeddings, batch: number, textTokens: number, mask: ForwardOptions['mask'], cache: KVCache | undefined): number {
    const shape = prefix.embeddings.shape;
    if (shape.length !== 3 || shape[0] !== batch || shape[2] !== this.config.dim || shape[1] < 1) {
      throw new ShapeError(`prefix embeddings ${formatShape(shape)} must be [${batch}, P ≥ 1, ${this.config.dim}] (rows of the ids, the model's width)`, {
        path: 'prefix.embeddings',
        hint: 'Project the image tokens to the language model width (a projector) and give one row per sequence',
      });
    }
    const slots = shape[1];
    if (prefix.mask !== undefined && (prefix.mask.length !== batch || prefix.mask.some((r) => r.length !== slots || r.some((m) => m !== 0 && m !== 1)))) {
      throw new ShapeError(`prefix mask must be 0/1 of shape ${formatShape([batch, slots])}`, { path: 'prefix.mask' });
    }
    const longest = Math.max(
      ...Array.from({ length: batch }, (_, b) => {
        const real = (prefix.mask?.[b] ?? []).reduce((s, m) => s + m, 0) + (prefix.mask === undefined ? slots : 0);
        const text = mask?.[b]?.reduce((s, m) => s + m, 0) ?? textTokens;
        return (cache?.positionsOf(b) ?? 0) + real + text;
      }),
    );
    if (longest > this.config.maxSeqLen) {
      throw new ShapeError(
        `prefix of ${slots} slots and ${textTokens} tokens make ${longest} positions, beyond the model's maximum of ${this.config.maxSeqLen}`,
        {
          path: 'prefix.embeddings',
          hint: 'Use fewer image tokens or a shorter prompt',
        },
      );
    }
    return slots;
  }

  private validateIds(ids: readonly (readonly number[])[], mask: ForwardOptions['mask'], cache: KVCache | undefined): void {
    const batch = ids.length;
    const tokens = ids[0]?.length ?? 0;
    if (batch === 0 || tokens === 0) throw new ShapeError('forward needs at least one row of at least one token', { hint: 'Pass ids as [[id, ...], ...]' });
    for (const [b, row] of ids.entries()) {
      if (row.length !== tokens) {
        throw new ShapeError(`row ${b} has ${row.length} tokens but row 0 has ${tokens}`, {
          path: `ids[${b}]`,
          hint: 'Pad rows to one length and pass a mask',
        });
      }
      for (const [t, id] of row.entries()) {
        if (!Number.isInteger(id) || id < 0 || id >= this.config.vocabSize) {
          throw new ShapeError(`token id ${id} is outside the vocabulary [0, ${this.config.vocabSize})`, { path: `ids[${b}][${t}]` });
        }
      }
    }
    if (mask !== undefined) {
      const shape = [mask.length, mask[0]?.length ?? 0];
      if (shape[0] !== batch || mask.some((r) => r.length !== tokens || r.some((m) => m !== 0 && m !== 1))) {
        throw new ShapeError(`mask ${formatShape(shape)} must be 0/1 of the ids' shape ${formatShape([batch, tokens])}`, { path: 'mask' });
      }
    }
    if (cache !== undefined && cache.batch !== batch) {
      throw new ShapeError(`cache holds ${cache.batch} rows but ids have ${batch}`, { path: 'cache' });
    }
    const longest = Math.max(
      ...(mask?.map((r, b) => (cache?.positionsOf(b) ?? 0) + r.reduce((s, m) => s + m, 0)) ?? ids.map((_, b) => (cache?.positionsOf(b) ?? 0) + tokens)),
    );
    if (longest > this.config.maxSeqLen) {
      throw new ShapeError(`sequence of ${longest} tokens exceeds the model's maximum of ${this.config.maxSeqLen}`, { path: 'ids' });
    }
  }
}
