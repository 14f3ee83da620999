/**
 * Hooks for one forward pass whose rows belong to different selections (adapters, combinations, routed
 * models, the bare base). Every row gets exactly what its selection gives it alone. Two ways, per group:
 *
 *  - LoRA bank (adapters/lora/bank.ts): groups whose selection is a static composition of LoRA adapters (the
 *    multi-tenant serving case, model/lora-terms.ts) are not run through their own hooks. Each such group is one
 *    choice of a bank per site group, the gates are row membership (1 on the row's own group), and one bank
 *    product computes every row's own delta (a few kernels whatever the number of groups, no row copies).
 *    Inference only: a training forward runs these groups the general way.
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
 * Shape letters: B rows of the pass, T tokens per row, N = B·T token rows, n a group's rows, I/O widths,
 * G sites of a site group, L LoRA groups (the bank's choices).
 */
import * as tf from '@tensorflow/tfjs';
import { moduleKey } from '../adapters/instance.js';
import { LoraBank } from '../adapters/lora/bank.js';
import type { AttentionPrefix, ForwardContext, ForwardHooks } from '../base/hooks.js';
import { KVCache } from '../base/kv-cache.js';
import type { BlockName, SiteGroup } from '../base/sites.js';
import { RoutedPeftError } from '../errors.js';
import type { LoraTerms } from '../model/lora-terms.js';

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

/**
 * The LoRA groups of one pass as banks: per site group of a layer, a bank whose choice l holds LoRA group l's
 * terms there; the gates are row membership [N, L], built once per forward.
 */
class MembershipBanks {
  private readonly banks = new Map<string, { readonly bank: LoraBank; readonly sites: readonly number[] } | null>();
  /** Membership of the current forward, [N, L] (lives in the forward's tidy), and its memo of gates · S. */
  private membership: tf.Tensor2D | undefined;
  private memo = new Map<string, tf.Tensor2D>();

  constructor(private readonly groups: readonly { readonly rows: readonly number[]; readonly terms: LoraTerms }[]) {}

  /** Starts a forward over `batch` rows of `tokens` tokens. Call inside the forward's tidy. */
  begin(batch: number, tokens: number): void {
    const count = this.groups.length;
    const member = new Float32Array(batch * tokens * count);
    this.groups.forEach((group, l) => {
      for (const b of group.rows) for (let t = 0; t < tokens; t++) member[(b * tokens + t) * count + l] = 1;
    });
    this.membership = tf.tensor2d(member, [batch * tokens, count]); // [N, L]
    this.memo = new Map();
  }

  /** Every row's own LoRA delta at each site of the group: xs G × [N, I] → per site [N, O_g], undefined where no group has a term. */
  deltas(layer: number, group: SiteGroup, xs: readonly tf.Tensor2D[]): (tf.Tensor2D | undefined)[] {
    if (this.membership === undefined) throw new Error('mixed LoRA used before begin()');
    const entry = this.bankFor(layer, group);
    if (entry === null) return group.sites.map(() => undefined);
    const gates = { kind: 'dense', gates: this.membership, memo: this.memo } as const;
    const x = xs[0] as tf.Tensor2D;
    // One product for the group when its sites share the input; per site when an input adapter changed one.
    const deltas = xs.every((xg) => xg === x)
      ? entry.bank.mix(x, gates, { training: false })
      : entry.sites.map((g, at) => entry.bank.mixSite(at, xs[g] as tf.Tensor2D, gates, { training: false })); // per bank site [N, O_g]
    return group.sites.map((_, g) => {
      const at = entry.sites.indexOf(g);
      return at < 0 ? undefined : deltas[at];
    });
  }

  dispose(): void {
    for (const entry of this.banks.values()) entry?.bank.dispose();
    this.banks.clear();
  }

  private bankFor(layer: number, group: SiteGroup): { readonly bank: LoraBank; readonly sites: readonly number[] } | null {
    const key = `${layer}|${group.index}`;
    const cached = this.banks.get(key);
    if (cached !== undefined) return cached;
    const sites: number[] = [];
    const terms = group.sites.flatMap((site, g) => {
      const here = this.groups.flatMap((lg, l) =>
        (lg.terms.get(moduleKey(layer, { kind: 'site-output', site })) ?? []).map((t) => ({ lora: t.module, choice: l, weight: t.weight })),
      );
      if (here.length === 0) return [];
      sites.push(g);
      return [here];
    });
    const entry = terms.length === 0 ? null : { bank: new LoraBank(terms, this.groups.length), sites };
    this.banks.set(key, entry);
    return entry;
  }
}

export class MixedHooks implements ForwardHooks {
  private readonly groups: ActiveGroup[];
  /** The groups given as LoRA terms, as banks; undefined when there are none. */
  private readonly lora: MembershipBanks | undefined;
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
    this.lora = loraGroups.length === 0 ? undefined : new MembershipBanks(loraGroups);
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

  groupInputs(layer: number, group: SiteGroup, x: tf.Tensor2D): readonly tf.Tensor2D[] {
    const xs = group.sites.map(() => x); // G × [N, I]
    const keys = group.sites.map((site) => moduleKey(layer, { kind: 'site-input', site }));
    return this.mixRows(keys, xs, xs, (hooks, xgs) => hooks.groupInputs?.(layer, group, xgs[0] as tf.Tensor2D));
  }

  groupOutputs(layer: number, group: SiteGroup, xs: readonly tf.Tensor2D[], ys: readonly tf.Tensor2D[]): readonly tf.Tensor2D[] {
    const keys = group.sites.map((site) => moduleKey(layer, { kind: 'site-output', site }));
    const mixed = this.mixRows(keys, xs, ys, (hooks, xgs, ygs) => hooks.groupOutputs?.(layer, group, xgs, ygs)); // G × [N, O_g]
    if (!this.batched || this.lora === undefined) return mixed;
    const deltas = this.lora.deltas(layer, group, xs); // per site [N, O_g]
    return mixed.map((y, g) => {
      const delta = deltas[g];
      return delta === undefined ? y : tf.add<tf.Tensor2D>(y, delta); // [N, O_g]
    });
  }

  blockOutput(layer: number, block: BlockName, h: tf.Tensor2D): tf.Tensor2D {
    const apply = (hooks: ForwardHooks, hgs: readonly tf.Tensor2D[]) => {
      const out = hooks.blockOutput?.(layer, block, hgs[0] as tf.Tensor2D); // [n·T, D]
      return out === undefined ? undefined : [out];
    };
    return this.mixRows([moduleKey(layer, { kind: 'block-output', block })], [h], [h], apply)[0] as tf.Tensor2D; // [N, D]
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

  release(): void {
    for (const group of this.general) group.hooks.release?.();
  }

  dispose(): void {
    this.lora?.dispose();
    for (const group of this.groups) {
      group.shadow?.dispose();
      group.shadow = undefined;
    }
  }

  /**
   * The hooks of each general group acting at any of `keys` (the points of xs/ys), on its own rows; every other
   * row unchanged. xs P × [N, I], ys P × [N, O_p] → P × [N, O_p]; returns ys itself when nothing changed.
   */
  private mixRows(
    keys: readonly string[],
    xs: readonly tf.Tensor2D[],
    ys: readonly tf.Tensor2D[],
    apply: (hooks: ForwardHooks, xgs: readonly tf.Tensor2D[], ygs: readonly tf.Tensor2D[]) => readonly tf.Tensor2D[] | undefined,
  ): readonly tf.Tensor2D[] {
    const acting = this.general.filter((g) => g.points === undefined || keys.some((key) => g.points?.has(key)));
    if (acting.length === 0) return ys;
    const outputs: (readonly tf.Tensor2D[])[] = [];
    const changed = ys.map(() => false);
    for (const member of acting) {
      const index = this.indexOf(member);
      const gathered = new Map<tf.Tensor2D, tf.Tensor2D>(); // one gather per distinct tensor (xs are usually one)
      const rowsOf = (t: tf.Tensor2D): tf.Tensor2D => {
        const g = gathered.get(t) ?? tf.gather(t, index); // [n·T, ·]
        gathered.set(t, g);
        return g;
      };
      const ygs = ys.map(rowsOf); // P × [n·T, O_p]
      const out = apply(member.hooks, xs.map(rowsOf), ygs) ?? ygs;
      out.forEach((o, p) => {
        if (o !== ygs[p]) changed[p] = true;
      });
      outputs.push(out);
    }
    if (!changed.some(Boolean)) return ys;
    const index = this.combineIndex(acting);
    return ys.map((y, p) => {
      if (!changed[p]) return y;
      const stacked = tf.concat<tf.Tensor2D>([...outputs.map((o) => o[p] as tf.Tensor2D), y], 0); // [Σn·T + N, O_p]
      return tf.gather(stacked, index); // [N, O_p]
    });
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
