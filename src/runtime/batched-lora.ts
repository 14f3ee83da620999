/**
 * Batched LoRA for a mixed pass (the dense form of Punica's SGMV / S-LoRA's batched LoRA): at a site, every
 * token row gets its own group's LoRA delta, for all rows at once and without copying any row out or back:
 *
 *   Δ = ((x · A_catᵀ) ⊙ (R · S)) · B_catᵀ
 *
 *   A_cat [Σr, I], B_cat [O, Σr]  every LoRA term of every group at the site, concatenated along the rank;
 *   R [N, G]                      1 where token row n belongs to group g (built once per forward);
 *   S [G, Σr]                     on group g's own rank columns, each term's weight × LoRA scale; 0 elsewhere.
 *
 * So a row multiplies every group's rank columns but keeps only its own: 3 kernels per adapted site (and the
 * add) whatever the number of groups G, at G× the LoRA FLOPs of one adapter. Rows of no group, and groups
 * with no term at the site, get an exact zero delta. A_catᵀ, B_catᵀ and S are built once per pass (the pass
 * leases its weights, so they cannot change under it); sites with the same column layout share one S, and
 * R·S is computed once per forward for each distinct S.
 *
 * Which selections qualify (`staticLoraTerms`): a static composition (adapter, stack, parallel, average) whose
 * adapters hold only LoRA modules. At a site output every child of such a composition reads the same site
 * input and a LoRA delta ignores the value it adapts, so the composition's delta is Σ weight · s · B·A·x
 * over its terms (weight: the product of the `average` weights above the adapter). Inference only: dropout
 * is not applied, so a training forward runs the groups' own hooks instead (mixed-hooks.ts).
 *
 * Shape letters: N token rows of the pass (B·T), B rows, T tokens, G groups, I/O a site's in/out widths,
 * r one term's rank, Σr the site's total rank.
 */
import * as tf from '@tensorflow/tfjs';
import { LoraModule } from '../adapters/lora/layer.js';
import type { AdapterInstance } from '../adapters/instance.js';
import type { CompositionNode } from '../compose/spec.js';

/** One LoRA of a selection at one site, with the weight the composition gives its delta. */
export interface LoraTerm {
  readonly module: LoraModule;
  readonly weight: number;
}

/** A selection as LoRA terms: moduleKey(layer, site output) → its terms there. */
export type LoraTerms = ReadonlyMap<string, readonly LoraTerm[]>;

/** The composition's LoRA terms, or undefined when it is not a static composition of LoRA adapters only. */
export function staticLoraTerms(root: CompositionNode, adapters: ReadonlyMap<string, AdapterInstance>): LoraTerms | undefined {
  const terms = new Map<string, LoraTerm[]>();
  const visit = (node: CompositionNode, weight: number): boolean => {
    switch (node.kind) {
      case 'route':
        return false;
      case 'adapter': {
        const modules = adapters.get(node.adapter)?.modules;
        if (modules === undefined) return false;
        for (const [key, module] of modules) {
          if (!(module instanceof LoraModule)) return false;
          terms.set(key, [...(terms.get(key) ?? []), { module, weight }]);
        }
        return true;
      }
      case 'average': {
        const weights = node.weights ?? node.children.map(() => 1 / node.children.length);
        return node.children.every((child, i) => visit(child, weight * (weights[i] ?? 0)));
      }
      case 'stack':
      case 'parallel':
        return node.children.every((child) => visit(child, weight));
    }
  };
  return visit(root, 1) ? terms : undefined;
}

/** A group of the pass whose selection is LoRA terms. */
export interface LoraGroup {
  /** Batch rows of the group. */
  readonly rows: readonly number[];
  readonly terms: LoraTerms;
}

interface FusedSite {
  readonly aT: tf.Tensor2D; // [I, Σr]
  readonly bT: tf.Tensor2D; // [Σr, O]
  readonly spread: tf.Tensor2D; // [G, Σr]
}

/** The LoRA groups of one pass: their operands (built once), and each forward's per-row gates. */
export class BatchedLora {
  private readonly sites = new Map<string, FusedSite>();
  private readonly owned: tf.Tensor[] = [];
  /** R for the current forward: [N, G] (lives in the forward's tidy). */
  private membership: tf.Tensor2D | undefined;
  /** R·S by S for the current forward: each [N, Σr] (lives in the forward's tidy). */
  private readonly rowScales = new Map<tf.Tensor2D, tf.Tensor2D>();

  constructor(private readonly groups: readonly LoraGroup[]) {
    try {
      const spreads = new Map<string, tf.Tensor2D>();
      for (const key of new Set(groups.flatMap((g) => [...g.terms.keys()]))) {
        const parts = groups.flatMap((group, g) => (group.terms.get(key) ?? []).map((term) => ({ g, term })));
        if (parts.length === 0) continue;
        const layout = parts.map(({ g, term }) => `${g}:${term.module.rank}:${term.weight * term.module.scale}`).join(' ');
        const spread = spreads.get(layout) ?? this.own(this.spreadOf(parts)); // [G, Σr]
        spreads.set(layout, spread);
        const modules = parts.map((p) => p.term.module);
        const aT = this.own(
          tf.tidy(() =>
            tf.transpose(
              tf.concat(
                modules.map((m) => m.a),
                0,
              ),
            ),
          ),
        ); // [Σr, I] → [I, Σr]
        const bT = this.own(
          tf.tidy(() =>
            tf.concat(
              modules.map((m) => tf.transpose(m.b)),
              0,
            ),
          ),
        ); // each [O, r] → [r, O]; [Σr, O]
        this.sites.set(key, { aT, bT, spread });
      }
    } catch (error) {
      this.dispose();
      throw error;
    }
  }

  /** Starts a forward over `batch` rows of `tokens` tokens. Call inside the forward's tidy. */
  begin(batch: number, tokens: number): void {
    const count = this.groups.length;
    const member = new Float32Array(batch * tokens * count);
    this.groups.forEach((group, g) => {
      for (const b of group.rows) for (let t = 0; t < tokens; t++) member[(b * tokens + t) * count + g] = 1;
    });
    this.membership = tf.tensor2d(member, [batch * tokens, count]); // [N, G]
    this.rowScales.clear();
  }

  /** Every row's own LoRA delta at a site: x [N, I] → [N, O], or undefined when no group has a term there. */
  delta(key: string, x: tf.Tensor2D): tf.Tensor2D | undefined {
    const site = this.sites.get(key);
    if (site === undefined) return undefined;
    const down = tf.matMul(x, site.aT); // [N, I]·[I, Σr] → [N, Σr]
    const own = tf.mul<tf.Tensor2D>(down, this.rowScalesFor(site.spread)); // [N, Σr]: other groups' columns zeroed
    return tf.matMul<tf.Tensor2D>(own, site.bT); // [N, Σr]·[Σr, O] → [N, O]
  }

  dispose(): void {
    tf.dispose(this.owned.splice(0));
    this.sites.clear();
  }

  private rowScalesFor(spread: tf.Tensor2D): tf.Tensor2D {
    if (this.membership === undefined) throw new Error('batched LoRA used before begin()');
    const cached = this.rowScales.get(spread);
    if (cached !== undefined) return cached;
    const scales = tf.matMul<tf.Tensor2D>(this.membership, spread); // [N, G]·[G, Σr] → [N, Σr]
    this.rowScales.set(spread, scales);
    return scales;
  }

  /** S: each term's weight × scale on its own rank columns, in its group's row. */
  private spreadOf(parts: readonly { readonly g: number; readonly term: LoraTerm }[]): tf.Tensor2D {
    const total = parts.reduce((s, p) => s + p.term.module.rank, 0);
    const values = new Float32Array(this.groups.length * total);
    let column = 0;
    for (const { g, term } of parts) {
      values.fill(term.weight * term.module.scale, g * total + column, g * total + column + term.module.rank);
      column += term.module.rank;
    }
    return tf.tensor2d(values, [this.groups.length, total]); // [G, Σr]
  }

  /** Keeps a per-pass tensor alive past any enclosing tidy; dispose() frees it. */
  private own<T extends tf.Tensor>(tensor: T): T {
    this.owned.push(tf.keep(tensor));
    return tensor;
  }
}
