/**
 * Hooks for one forward pass whose rows belong to different selections (adapters, combinations, routed
 * models, the bare base). Every row gets exactly what its selection gives it alone. Two ways, per group:
 *
 *  - Batched LoRA (batched-lora.ts): groups whose selection is a static composition of LoRA adapters (the
 *    multi-tenant serving case) are not run through their own hooks. At each site one of them adapts, one
 *    batched product computes every row's own delta (a few kernels whatever the number of groups, no row
 *    copies). Inference only: a training forward runs these groups the general way.
 *  - General (row copies): any other group (routed models, other adapter kinds) gets its own hooks and sees
 *    only its own rows, as if it ran alone: at a point the group's rows are gathered, its hooks adapt them,
 *    and the groups' outputs are put back into row order with one gather over a concatenation (as the
 *    routed layer's grouped strategy does). A group that says where it acts (`points`) is left out at the
 *    other points, so points where no group changes anything cost nothing.
 *
 * Rows of no group (the bare base), and rows whose group does not act at a point, keep the base value.
 *
 * Each general group gets its own ForwardContext (batch = its row count; its ids and mask rows) and, when the
 * pass decodes with a KV cache, its own small "shadow" KVCache: it holds no keys or values, only the group's
 * slot mask (kept in step with the real cache, so positions and `pastLength` agree) and its routing memory
 * (sequence-level decisions made at prefill), which must not mix with other groups' memory.
 *
 * Prefix adapters are not mixed: a prefix adds key/value slots to every row of the pass, so a selection
 * with prefixes runs in passes of its own (the batcher arranges that); mixing one here is an error.
 *
 * Shape letters: B rows of the pass, T tokens per row, N = B·T token rows, n a group's rows, I/O widths.
 */
import * as tf from '@tensorflow/tfjs';
import type { AdapterPoint } from '../adapters/adapter.js';
import type { AttentionPrefix, ForwardContext, ForwardHooks } from '../base/hooks.js';
import { KVCache } from '../base/kv-cache.js';
import type { BlockName, SiteName } from '../base/sites.js';
import { moduleKey } from '../adapters/instance.js';
import { RoutedPeftError } from '../errors.js';
import { BatchedLora, type LoraTerms } from './batched-lora.js';

export interface HookGroup {
  /** Batch rows of the group, ascending. */
  readonly rows: readonly number[];
  /** The group's hooks; undefined runs its rows on the bare base. */
  readonly hooks: ForwardHooks | undefined;
  /** moduleKeys of the points where `hooks` may change a value (undefined: any point). */
  readonly points?: ReadonlySet<string> | undefined;
  /** The same selection as LoRA terms, when it is exactly that (staticLoraTerms): lets the pass batch it. */
  readonly lora?: LoraTerms | undefined;
}

export interface PassHooks {
  /** What to pass to Transformer.forward (undefined: the bare base for every row). */
  readonly hooks: ForwardHooks | undefined;
  /** Frees per-pass state (batched LoRA operands, shadow caches' routing memory). Call once the pass is over. */
  dispose(): void;
}

interface ActiveGroup {
  readonly rows: readonly number[];
  readonly hooks: ForwardHooks;
  readonly points: ReadonlySet<string> | undefined;
  readonly lora: LoraTerms | undefined;
  /** Token rows of the group in the current forward, host copy. */
  tokenRows: number[];
  /** The same as a tensor: [n·T] int32 (lives in the forward's tidy). */
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
  /** The groups given as LoRA terms, batched; undefined when there are none. */
  private readonly lora: BatchedLora | undefined;
  /** Whether the current forward uses `lora` (not in training). */
  private batched = false;
  /** Groups run through their own hooks in the current forward. */
  private general: ActiveGroup[] = [];
  /** Token rows of the current forward (N). */
  private tokenCount = 0;
  /** By the general groups acting at a point: where each token row's value sits in concat(their outputs..., y). */
  private readonly combineIndices = new Map<string, tf.Tensor1D>();

  constructor(
    groups: readonly (HookGroup & { readonly hooks: ForwardHooks })[],
    private readonly nLayers: number,
  ) {
    this.groups = groups.map((g) => ({
      rows: [...g.rows].sort((a, b) => a - b),
      hooks: g.hooks,
      points: g.points,
      lora: g.lora,
      tokenRows: [],
      index: undefined,
      shadow: undefined,
    }));
    const loraGroups = this.groups.flatMap((g) => (g.lora === undefined ? [] : [{ rows: g.rows, terms: g.lora }]));
    this.lora = loraGroups.length === 0 ? undefined : new BatchedLora(loraGroups);
  }

  begin(context: ForwardContext): void {
    const { batch, tokens } = context;
    this.tokenCount = batch * tokens;
    this.combineIndices.clear();
    this.batched = this.lora !== undefined && !context.training;
    if (this.batched) this.lora?.begin(batch, tokens);
    this.general = this.batched ? this.groups.filter((g) => g.lora === undefined) : this.groups;
    for (const group of this.general) {
      group.tokenRows = group.rows.flatMap((b) => Array.from({ length: tokens }, (_, t) => b * tokens + t));
      group.index = tf.tensor1d(group.tokenRows, 'int32'); // [n·T]
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
  }

  beginLayer(layer: number, hidden: tf.Tensor2D): void {
    for (const group of this.general) group.hooks.beginLayer?.(layer, tf.gather(hidden, this.indexOf(group))); // [n·T, D]
  }

  siteInput(layer: number, site: SiteName, x: tf.Tensor2D): tf.Tensor2D {
    return this.mix({ kind: 'site-input', site }, layer, x, x, (hooks, xg) => hooks.siteInput?.(layer, site, xg)); // [N, I]
  }

  siteOutput(layer: number, site: SiteName, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D {
    const point: AdapterPoint = { kind: 'site-output', site };
    const mixed = this.mix(point, layer, x, y, (hooks, xg, yg) => hooks.siteOutput?.(layer, site, xg, yg)); // [N, O]
    const delta = this.batched ? this.lora?.delta(moduleKey(layer, point), x) : undefined; // [N, O]
    return delta === undefined ? mixed : tf.add(mixed, delta); // [N, O]
  }

  blockOutput(layer: number, block: BlockName, h: tf.Tensor2D): tf.Tensor2D {
    return this.mix({ kind: 'block-output', block }, layer, h, h, (hooks, hg) => hooks.blockOutput?.(layer, block, hg)); // [N, D]
  }

  attentionPrefix(layer: number): AttentionPrefix | undefined {
    for (const group of this.general) {
      if (group.hooks.attentionPrefix?.(layer) !== undefined) {
        throw new RoutedPeftError('a selection with prefix adapters cannot share a forward pass with other selections', {
          hint: 'Run prefix selections in passes of their own (RoutedRuntime does this)',
        });
      }
    }
    return undefined;
  }

  end(): void {
    for (const group of this.general) group.hooks.end?.();
  }

  dispose(): void {
    this.lora?.dispose();
    for (const group of this.groups) {
      group.shadow?.dispose();
      group.shadow = undefined;
    }
  }

  /**
   * x [N, I], y [N, O] → [N, O]: the hooks of each general group acting at the point, on its own rows; every
   * other row unchanged. Returns y itself when nothing changed.
   */
  private mix(
    point: AdapterPoint,
    layer: number,
    x: tf.Tensor2D,
    y: tf.Tensor2D,
    apply: (hooks: ForwardHooks, xg: tf.Tensor2D, yg: tf.Tensor2D) => tf.Tensor2D | undefined,
  ): tf.Tensor2D {
    const key = moduleKey(layer, point);
    const acting = this.general.filter((g) => g.points?.has(key) ?? true);
    if (acting.length === 0) return y;
    const outputs: tf.Tensor2D[] = [];
    let changed = false;
    for (const group of acting) {
      const index = this.indexOf(group);
      const xg: tf.Tensor2D = tf.gather(x, index); // [n·T, I]
      const yg: tf.Tensor2D = y === x ? xg : tf.gather(y, index); // [n·T, O]
      const out = apply(group.hooks, xg, yg) ?? yg; // [n·T, O]
      if (out !== yg) changed = true;
      outputs.push(out);
    }
    if (!changed) return y;
    const stacked = tf.concat<tf.Tensor2D>([...outputs, y], 0); // [Σn·T + N, O]
    return tf.gather(stacked, this.combineIndex(acting)); // [N, O]
  }

  /** For concat(outputs of `acting`..., y): each token row's own group output, or its row of y. [N] int32 */
  private combineIndex(acting: readonly ActiveGroup[]): tf.Tensor1D {
    const key = acting.map((g) => this.groups.indexOf(g)).join(',');
    let index = this.combineIndices.get(key);
    if (index === undefined) {
      const slot = new Int32Array(this.tokenCount).fill(-1);
      let offset = 0;
      for (const group of acting) {
        group.tokenRows.forEach((n, i) => {
          slot[n] = offset + i;
        });
        offset += group.tokenRows.length;
      }
      // Rows of no acting group read the unchanged value, appended after the groups' outputs.
      index = tf.tensor1d(
        Array.from(slot, (s, n) => (s >= 0 ? s : offset + n)),
        'int32',
      ); // [N]
      this.combineIndices.set(key, index);
    }
    return index;
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
