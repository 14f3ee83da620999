/**
 * The frozen vision encoder: a ViT (Dosovitskiy et al. 2021) — patch embedding (a p×p convolution with
 * stride p, computed as one matmul over flattened patches), a class token, learned positions, pre-norm
 * Transformer layers with full (non-causal) attention and a GELU FFN, a final LayerNorm. It returns the
 * patch tokens (the class token dropped, as LLaVA does) for a projector to map into a language model.
 *
 * Every linear map goes through the same site groups as a gpt2 layer (q/k/v, o, up, down), with the same
 * ForwardHooks contract as the language model, so adapters attach to the encoder unchanged. With no hooks
 * the forward is the plain encoder. Weights are plain tensors, never variables.
 *
 * Shape letters: B images, N patches, L = N + 1 tokens, Dv width, Fv FFN width, Hv heads, Dh head width,
 * K = C·p·p values per patch.
 */
import * as tf from '@tensorflow/tfjs';
import { groupedQueryAttention } from '../base/attention.js';
import type { ForwardContext, ForwardHooks } from '../base/hooks.js';
import { geluTanh, layerNorm } from '../base/layers.js';
import { FAMILY_SITE_GROUPS, type SiteGroup } from '../base/sites.js';
import type { LayerWeights, NormWeights } from '../base/weights.js';
import { ShapeError } from '../errors.js';
import { type VisionConfig, patchCount } from './encoder-config.js';
import { type PixelImage, checkImageSize } from './pixel-image.js';

export interface VisionWeights {
  readonly patchWeight: tf.Tensor2D; // [K, Dv]
  readonly patchBias: tf.Tensor1D; // [Dv]
  readonly classToken: tf.Tensor2D; // [1, Dv]
  readonly positions: tf.Tensor2D; // [L, Dv]
  readonly layers: readonly LayerWeights[];
  readonly finalNorm: NormWeights;
}

/** Every tensor of the weights, each once. */
export function listVisionTensors(weights: VisionWeights): tf.Tensor[] {
  const out: tf.Tensor[] = [weights.patchWeight, weights.patchBias, weights.classToken, weights.positions];
  for (const layer of weights.layers) {
    for (const norm of [layer.attnNorm, layer.mlpNorm]) out.push(norm.weight, ...(norm.bias ? [norm.bias] : []));
    for (const linear of Object.values(layer.sites)) out.push(linear.weight, ...(linear.bias ? [linear.bias] : []));
  }
  out.push(weights.finalNorm.weight, ...(weights.finalNorm.bias ? [weights.finalNorm.bias] : []));
  return out;
}

/**
 * Flattens images into patches, pixel values mapped from [0, 1] to [−1, 1] (ViT's image processor: mean and
 * std 0.5): [B][S·S·3] → [B·N, K], each patch in (channel, row, column) order like a conv weight [Dv, C, p, p].
 */
export function imagePatches(images: readonly PixelImage[], config: VisionConfig): Float32Array {
  const { imageSize: size, patchSize: p } = config;
  const side = size / p;
  const k = 3 * p * p;
  const out = new Float32Array(images.length * side * side * k);
  images.forEach((image, b) => {
    checkImageSize(image, size, `images[${b}]`);
    for (let py = 0; py < side; py++) {
      for (let px = 0; px < side; px++) {
        const base = ((b * side + py) * side + px) * k;
        for (let c = 0; c < 3; c++) {
          for (let y = 0; y < p; y++) {
            for (let x = 0; x < p; x++) {
              const pixel = ((py * p + y) * size + (px * p + x)) * 3 + c;
              out[base + (c * p + y) * p + x] = ((image.data[pixel] as number) - 0.5) / 0.5;
            }
          }
        }
      }
    }
  });
  return out;
}

export class VisionEncoder {
  readonly groups: readonly SiteGroup[] = FAMILY_SITE_GROUPS.gpt2;
  private disposed = false;

  constructor(
    readonly config: VisionConfig,
    readonly weights: VisionWeights,
  ) {}

  get parameterCount(): number {
    return listVisionTensors(this.weights).reduce((s, t) => s + t.size, 0);
  }

  /** N: tokens per image. */
  get tokensPerImage(): number {
    return patchCount(this.config);
  }

  /**
   * Encodes images to patch tokens [B, N, Dv] (final-normed). The returned tensor belongs to the caller.
   * `hooks` adapt the encoder's sites as they adapt a language model's.
   */
  forward(images: readonly PixelImage[], options: { readonly hooks?: ForwardHooks; readonly training?: boolean } = {}): tf.Tensor3D {
    if (this.disposed) throw new Error('VisionEncoder used after dispose()');
    if (images.length === 0) throw new ShapeError('the vision encoder needs at least one image', { path: 'images' });
    const { hooks } = options;
    const batch = images.length;
    const patches = patchCount(this.config);
    const tokens = patches + 1;
    const dim = this.config.dim;
    const patchValues = imagePatches(images, this.config);
    try {
      return tf.tidy(() => {
        const ones = Array.from({ length: batch }, () => Array.from({ length: tokens }, () => 1));
        const context: ForwardContext = {
          batch,
          tokens,
          ids: ones.map((row) => row.map(() => 0)),
          mask: tf.ones([batch, tokens]),
          padded: false,
          pastLength: 0,
          cache: undefined,
          training: options.training ?? false,
          modality: ones,
        };
        hooks?.begin?.(context);
        const flat = tf.tensor2d(patchValues, [batch * patches, 3 * this.config.patchSize ** 2]); // [B·N, K]
        const embedded = tf.reshape(tf.add(tf.matMul(flat, this.weights.patchWeight), this.weights.patchBias), [batch, patches, dim]); // [B, N, Dv]
        const cls = tf.tile(tf.reshape(this.weights.classToken, [1, 1, dim]), [batch, 1, 1]); // [B, 1, Dv]
        const withClass = tf.add(tf.concat([cls, embedded], 1), tf.expandDims(this.weights.positions, 0)); // [B, L, Dv]
        let hidden = tf.reshape(withClass, [batch * tokens, dim]) as tf.Tensor2D; // [B·L, Dv]
        for (let layer = 0; layer < this.config.nLayers; layer++) {
          hooks?.beginLayer?.(layer, hidden);
          const weights = this.layer(layer);
          const attnIn = layerNorm(hidden, weights.attnNorm, this.config.normEps); // [B·L, Dv]
          let attnOut = this.attention(layer, attnIn, batch, tokens, hooks); // [B·L, Dv]
          if (hooks?.blockOutput) attnOut = hooks.blockOutput(layer, 'attn', attnOut);
          hidden = tf.add<tf.Tensor2D>(hidden, attnOut); // [B·L, Dv]
          const mlpIn = layerNorm(hidden, weights.mlpNorm, this.config.normEps); // [B·L, Dv]
          const up = this.applyGroup(layer, this.group(2), mlpIn, hooks)[0] as tf.Tensor2D; // [B·L, Fv]
          let mlpOut = this.applyGroup(layer, this.group(3), this.activation(up), hooks)[0] as tf.Tensor2D; // [B·L, Dv]
          if (hooks?.blockOutput) mlpOut = hooks.blockOutput(layer, 'mlp', mlpOut);
          hidden = tf.add<tf.Tensor2D>(hidden, mlpOut); // [B·L, Dv]
        }
        hooks?.end?.();
        const final = tf.reshape(layerNorm(hidden, this.weights.finalNorm, this.config.normEps), [batch, tokens, dim]); // [B, L, Dv]
        return tf.slice(final, [0, 1, 0], [batch, patches, dim]) as tf.Tensor3D; // [B, N, Dv]  the class token dropped
      });
    } finally {
      hooks?.release?.();
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const t of listVisionTensors(this.weights)) t.dispose();
  }

  private activation(x: tf.Tensor2D): tf.Tensor2D {
    if (this.config.activation === 'gelu-tanh') return geluTanh(x); // [B·L, Fv]
    return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)); // [B·L, Fv]  exact GELU: x·Φ(x)
  }

  private attention(layer: number, x: tf.Tensor2D, batch: number, tokens: number, hooks: ForwardHooks | undefined): tf.Tensor2D {
    const heads = this.config.nHeads;
    const dh = this.config.dim / heads;
    const [qx, kx, vx] = this.applyGroup(layer, this.group(0), x, hooks) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D]; // [B·L, Dv] ×3
    const q = tf.reshape<tf.Rank.R4>(qx, [batch, tokens, heads, dh]); // [B, L, Hv, Dh]
    let k = tf.reshape<tf.Rank.R4>(kx, [batch, tokens, heads, dh]); // [B, L, Hv, Dh]
    let v = tf.reshape<tf.Rank.R4>(vx, [batch, tokens, heads, dh]); // [B, L, Hv, Dh]
    const prefix = hooks?.attentionPrefix?.(layer);
    if (prefix !== undefined) {
      const keys = prefix.keys.shape[0] === batch ? prefix.keys : tf.tile(prefix.keys, [batch, 1, 1, 1]); // [B, P, Hv, Dh]
      const values = prefix.values.shape[0] === batch ? prefix.values : tf.tile(prefix.values, [batch, 1, 1, 1]); // [B, P, Hv, Dh]
      k = tf.concat<tf.Tensor4D>([keys, k], 1); // [B, P+L, Hv, Dh]
      v = tf.concat<tf.Tensor4D>([values, v], 1); // [B, P+L, Hv, Dh]
    }
    const bias = tf.zeros([1, 1, 1, tokens, k.shape[1]]); // [1, 1, 1, L, P+L]  every token sees every token
    const mixed = groupedQueryAttention(q, k, v, bias); // [B, L, Dv]
    return this.applyGroup(layer, this.group(1), tf.reshape<tf.Rank.R2>(mixed, [batch * tokens, heads * dh]), hooks)[0] as tf.Tensor2D; // [B·L, Dv]
  }

  /** The frozen maps of a site group with its hooks, as Transformer.applyGroup: x [R, I] → G × [R, O]. */
  private applyGroup(layer: number, group: SiteGroup, x: tf.Tensor2D, hooks: ForwardHooks | undefined): readonly tf.Tensor2D[] {
    const sites = this.layer(layer).sites;
    const inputs = hooks?.groupInputs ? hooks.groupInputs(layer, group, x) : group.sites.map(() => x); // G × [R, I]
    const outputs = group.sites.map((site, g) => {
      const linear = sites[site];
      if (linear === undefined) throw new Error(`vision layer ${layer} has no site ${site}`);
      const projected: tf.Tensor2D = tf.matMul(inputs[g] as tf.Tensor2D, linear.weight); // [R, I]·[I, O] → [R, O]
      return linear.bias === undefined ? projected : tf.add<tf.Tensor2D>(projected, linear.bias); // [R, O]
    });
    return hooks?.groupOutputs ? hooks.groupOutputs(layer, group, inputs, outputs) : outputs; // G × [R, O]
  }

  private layer(index: number): LayerWeights {
    const layer = this.weights.layers[index];
    if (layer === undefined) throw new Error(`no vision layer ${index}`);
    return layer;
  }

  private group(index: number): SiteGroup {
    const group = this.groups[index];
    if (group === undefined) throw new Error(`no site group ${index}`);
    return group;
  }
}
