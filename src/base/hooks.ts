/**
 * The contract between the frozen model and everything attached to it. The base computes its own output
 * at every point and hands it to a hook, which returns the adapted value; with no hooks (or hooks that
 * return their input) the forward is exactly the base forward.
 *
 * Sites are visited a group at a time (sites.ts: q/k/v, o, gate/up, down — the sites that read one input),
 * so a hook sees every base output of a group in one call and can adapt them together (one routing
 * decision and one LoRA bank product for q, k and v) without carrying state between calls.
 *
 * All hook methods run synchronously inside the forward's tf.tidy: tensors they create and do not
 * return are freed with it. Shape letters: N = B·T token rows, I/O a site's in/out width (O_g: site g's),
 * G sites in a group, D model width, P prefix slots, Hk key/value heads, Dh head width.
 */
import type * as tf from '@tensorflow/tfjs';
import type { KVCache } from './kv-cache.js';
import type { BlockName, SiteGroup, SiteName } from './sites.js';

/** Facts about the current forward, given to hooks once before the first layer. */
export interface ForwardContext {
  readonly batch: number; // B
  readonly tokens: number; // T: new tokens in this call (1 per step when decoding with a cache)
  /** Token ids of this call, host copy [B][T]. */
  readonly ids: readonly (readonly number[])[];
  /** 1 for real tokens, 0 for padding, over this call's tokens: [B, T] float32. */
  readonly mask: tf.Tensor2D;
  /**
   * False when the caller knows every token of this call is real (no padding), so per-row masking can be
   * skipped; absent or true when there may be padding.
   */
  readonly padded?: boolean;
  /** Tokens already in the KV cache before this call. */
  readonly pastLength: number;
  /** The KV cache this call extends, if any: per-generation state (e.g. routing decisions) may live in it. */
  readonly cache: KVCache | undefined;
  /** True inside a training step (dropout, router noise). */
  readonly training: boolean;
  /**
   * Modality of every token of this call, [B][T]: 0 text, 1 image (a prefix of image embeddings, whose ids
   * read 0). Absent when the call has no prefix: every token is text.
   */
  readonly modality?: readonly (readonly number[])[];
}

export interface AttentionPrefix {
  readonly keys: tf.Tensor4D; // [B or 1, P, Hk, Dh]
  readonly values: tf.Tensor4D; // [B or 1, P, Hk, Dh]
}

export interface ForwardHooks {
  begin?(context: ForwardContext): void;
  /** The residual stream entering a layer, [N, D]: lets a router decide once per layer. */
  beginLayer?(layer: number, hidden: tf.Tensor2D): void;
  /**
   * The input of each site of a group before its base map, from the group's shared input, e.g. (IA)³ scaling
   * of the FFN intermediate: x [N, I] → G tensors [N, I], in group.sites order (x itself where unchanged).
   */
  groupInputs?(layer: number, group: SiteGroup, x: tf.Tensor2D): readonly tf.Tensor2D[];
  /**
   * Adapts a group's outputs given its inputs: xs (G × [N, I], usually one tensor G times) and the base
   * outputs ys (G × [N, O_g], y_g = base_g(x_g)) → G adapted outputs, in group.sites order.
   */
  groupOutputs?(layer: number, group: SiteGroup, xs: readonly tf.Tensor2D[], ys: readonly tf.Tensor2D[]): readonly tf.Tensor2D[];
  /** Adapts a sub-block's output before the residual add, e.g. bottleneck adapters. [N, D] → [N, D] */
  blockOutput?(layer: number, block: BlockName, h: tf.Tensor2D): tf.Tensor2D;
  /** Extra key/value slots every query of the layer may attend to (prefix tuning). */
  attentionPrefix?(layer: number): AttentionPrefix | undefined;
  /** After the last layer of a forward that succeeded. */
  end?(): void;
  /** After every forward, whether it succeeded or threw: frees what the hooks kept for this forward. */
  release?(): void;
}

/** Hooks written one site at a time: simpler to write, and what `perSiteHooks` turns into ForwardHooks. */
export interface PerSiteHooks extends Omit<ForwardHooks, 'groupInputs' | 'groupOutputs'> {
  /** Transforms a site's input before the base map. [N, I] → [N, I] */
  siteInput?(layer: number, site: SiteName, x: tf.Tensor2D): tf.Tensor2D;
  /** Adapts a site's output given its input: x [N, I], y = base(x) [N, O] → [N, O]. */
  siteOutput?(layer: number, site: SiteName, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D;
}

/** ForwardHooks that call per-site callbacks for each site of every group, in group order. */
export function perSiteHooks(hooks: PerSiteHooks): ForwardHooks {
  const { siteInput, siteOutput, ...rest } = hooks;
  return {
    ...rest,
    ...(siteInput === undefined ? {} : { groupInputs: (layer, group, x) => group.sites.map((site) => siteInput(layer, site, x)) }),
    ...(siteOutput === undefined
      ? {}
      : { groupOutputs: (layer, group, xs, ys) => group.sites.map((site, g) => siteOutput(layer, site, xs[g] as tf.Tensor2D, ys[g] as tf.Tensor2D)) }),
  };
}
