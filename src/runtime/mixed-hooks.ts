/**
 * Hooks for one forward pass whose rows belong to different selections (adapters, combinations, routed
 * models, the bare base). Each group of rows gets its own hooks and sees only its own rows, as if it ran
 * alone: at every point the group's rows are gathered, its hooks adapt them, and all groups' outputs are put
 * back into row order with one gather over a concatenation (as the routed layer's grouped strategy does).
 * Rows of no group (the bare base) keep the base value.
 *
 * Each group gets its own ForwardContext (batch = its row count; its ids and mask rows) and, when the pass
 * decodes with a KV cache, its own small "shadow" KVCache: it holds no keys or values, only the group's
 * slot mask (kept in step with the real cache, so positions and `pastLength` agree) and its routing memory
 * (sequence-level decisions made at prefill), which must not mix with other groups' memory.
 *
 * Prefix adapters are not mixed: a prefix adds key/value slots to every row of the pass, so a selection
 * with prefixes runs in passes of its own (the batcher arranges that); mixing one here is an error.
 *
 * Shape letters: B rows of the pass, T tokens per row, N = B·T token rows, n a group's rows, I/O widths.
 */
import * as tf from '@tensorflow/tfjs';
import type { AttentionPrefix, ForwardContext, ForwardHooks } from '../base/hooks.js';
import { KVCache } from '../base/kv-cache.js';
import type { BlockName, SiteName } from '../base/sites.js';
import { RoutedPeftError } from '../errors.js';

export interface HookGroup {
  /** Batch rows of the group, ascending. */
  readonly rows: readonly number[];
  /** The group's hooks; undefined runs its rows on the bare base. */
  readonly hooks: ForwardHooks | undefined;
}

export interface PassHooks {
  /** What to pass to Transformer.forward (undefined: the bare base for every row). */
  readonly hooks: ForwardHooks | undefined;
  /** Frees per-group state (shadow caches' routing memory). Call once the pass is over. */
  dispose(): void;
}

interface ActiveGroup {
  readonly rows: readonly number[];
  readonly hooks: ForwardHooks;
  /** Token rows of the group in the current forward: [n·T] int32 (lives in the forward's tidy). */
  index: tf.Tensor1D | undefined;
  shadow: KVCache | undefined;
}

/**
 * Hooks for a pass over `batch` rows split into groups. With a single group covering every row the group's
 * own hooks are used directly (exactly a solo forward); with no hooks at all, undefined.
 */
export function passHooks(groups: readonly HookGroup[], batch: number, nLayers: number): PassHooks {
  const covered = groups.flatMap((g) => g.rows).sort((a, b) => a - b);
  if (covered.length !== new Set(covered).size || covered.some((r) => r < 0 || r >= batch)) {
    throw new Error(`hook groups must use distinct rows in [0, ${batch})`);
  }
  const active = groups.filter((g): g is HookGroup & { hooks: ForwardHooks } => g.hooks !== undefined);
  if (active.length === 0) return { hooks: undefined, dispose: () => undefined };
  const only = active[0] as HookGroup & { hooks: ForwardHooks };
  if (active.length === 1 && only.rows.length === batch) return { hooks: only.hooks, dispose: () => undefined };
  const mixed = new MixedHooks(active, nLayers);
  return { hooks: mixed, dispose: () => mixed.dispose() };
}

export class MixedHooks implements ForwardHooks {
  private readonly groups: ActiveGroup[];
  /** Where each token row's adapted value sits in concat(group outputs..., unchanged value): [N] int32. */
  private combineIndex: tf.Tensor1D | undefined;

  constructor(
    groups: readonly { readonly rows: readonly number[]; readonly hooks: ForwardHooks }[],
    private readonly nLayers: number,
  ) {
    this.groups = groups.map((g) => ({ rows: [...g.rows].sort((a, b) => a - b), hooks: g.hooks, index: undefined, shadow: undefined }));
  }

  begin(context: ForwardContext): void {
    const { batch, tokens } = context;
    const slot = new Int32Array(batch * tokens).fill(-1);
    let offset = 0;
    for (const group of this.groups) {
      const tokenRows = group.rows.flatMap((b) => Array.from({ length: tokens }, (_, t) => b * tokens + t));
      group.index = tf.tensor1d(tokenRows, 'int32'); // [n·T]
      tokenRows.forEach((n, i) => {
        slot[n] = offset + i;
      });
      offset += tokenRows.length;
      const rowIndex = tf.tensor1d([...group.rows], 'int32'); // [n]
      const sub: ForwardContext = {
        batch: group.rows.length,
        tokens,
        ids: group.rows.map((b) => context.ids[b] ?? []),
        mask: tf.gather(context.mask, rowIndex), // [n, T]
        pastLength: context.pastLength,
        cache: this.shadowCache(group, context.cache),
        training: context.training,
      };
      group.hooks.begin?.(sub);
    }
    // Rows of no group read the unchanged value, appended after the groups' outputs.
    this.combineIndex = tf.tensor1d(Array.from(slot, (s, n) => (s >= 0 ? s : offset + n)), 'int32'); // [N]
  }

  beginLayer(layer: number, hidden: tf.Tensor2D): void {
    for (const group of this.groups) group.hooks.beginLayer?.(layer, tf.gather(hidden, this.indexOf(group))); // [n·T, D]
  }

  siteInput(layer: number, site: SiteName, x: tf.Tensor2D): tf.Tensor2D {
    return this.mix(x, x, (hooks, xg) => hooks.siteInput?.(layer, site, xg));
  }

  siteOutput(layer: number, site: SiteName, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D {
    return this.mix(x, y, (hooks, xg, yg) => hooks.siteOutput?.(layer, site, xg, yg));
  }

  blockOutput(layer: number, block: BlockName, h: tf.Tensor2D): tf.Tensor2D {
    return this.mix(h, h, (hooks, hg) => hooks.blockOutput?.(layer, block, hg));
  }

  attentionPrefix(layer: number): AttentionPrefix | undefined {
    for (const group of this.groups) {
      if (group.hooks.attentionPrefix?.(layer) !== undefined) {
        throw new RoutedPeftError('a selection with prefix adapters cannot share a forward pass with other selections', {
          hint: 'Run prefix selections in passes of their own (RoutedRuntime does this)',
        });
      }
    }
    return undefined;
  }

  dispose(): void {
    for (const group of this.groups) {
      group.shadow?.dispose();
      group.shadow = undefined;
    }
  }

  /** x [N, I], y [N, O] → [N, O]: each group's hooks on its own rows, the rest unchanged. */
  private mix(x: tf.Tensor2D, y: tf.Tensor2D, apply: (hooks: ForwardHooks, xg: tf.Tensor2D, yg: tf.Tensor2D) => tf.Tensor2D | undefined): tf.Tensor2D {
    const outputs: tf.Tensor2D[] = [];
    let changed = false;
    for (const group of this.groups) {
      const index = this.indexOf(group);
      const xg: tf.Tensor2D = tf.gather(x, index); // [n·T, I]
      const yg: tf.Tensor2D = y === x ? xg : tf.gather(y, index); // [n·T, O]
      const out = apply(group.hooks, xg, yg) ?? yg; // [n·T, O]
      if (out !== yg) changed = true;
      outputs.push(out);
    }
    if (!changed) return y;
    const stacked = tf.concat<tf.Tensor2D>([...outputs, y], 0); // [Σn·T + N, O]
    return tf.gather(stacked, this.combineIndex as tf.Tensor1D); // [N, O]
  }

  private indexOf(group: ActiveGroup): tf.Tensor1D {
    if (group.index === undefined) throw new Error('mixed hooks used before begin()');
    return group.index;
  }

  /** The group's shadow cache, its slot mask brought level with the pass's cache. */
  private shadowCache(group: ActiveGroup, cache: ForwardContext['cache']): KVCache | undefined {
    if (cache === undefined) return undefined;
    if (group.shadow === undefined || group.shadow.length > cache.length) {
      group.shadow?.dispose();
      group.shadow = new KVCache(this.nLayers, group.rows.length);
    }
    const shadow = group.shadow;
    if (shadow.length < cache.length) {
      const from = shadow.length;
      shadow.append(group.rows.map((b) => (cache.mask[b] ?? []).slice(from)));
    }
    return shadow;
  }
}
