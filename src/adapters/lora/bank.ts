/**
 * The LoRA bank: the LoRA terms at a group of sites that read one input, and the only place in the library
 * where a LoRA product is computed (Hu et al. 2021: Δ = s · B·A·x). For every site g of the group:
 *
 *   Δ_g = ((x · A_gᵀ) ⊙ (gates · S_g)) · B_gᵀ
 *
 *   A_g [Σr, I], B_g [O_g, Σr]   the site's terms concatenated along the rank
 *   S_g [E, Σr]                  the spread: on term t's rank columns, in row choice(t), weight(t) · scale(t)
 *   gates [N, E]                 per row and choice: routing weights (dense, or top-k slots), adapter membership
 *                                (mixed-adapter batches: 1 on the row's own adapter), or ones (one choice)
 *
 * So a routed mixture of E experts costs two matmuls per site whatever E is (the dense form of Punica's SGMV /
 * S-LoRA's batched LoRA), and the unchosen experts contribute exact zeros. Routed experts, fused site groups,
 * mixed-adapter batches and merging all go through a bank; a single module's delta uses `singleLoraDelta`.
 *
 * Operands (A_gᵀ, B_gᵀ, S_g, and A of the whole group side by side) are built once and reused until a term's
 * variable changes (an optimizer step or a hot swap assigns new data, which changes its dataId); a training
 * forward builds them inside the forward instead, so gradients reach each term's A and B.
 *
 * The kernel seam: `registerLoraMixKernel(backend, kernel)` lets a backend replace `mix` with its own
 * implementation; the tfjs-ops implementation here is the reference every kernel is tested against. WebGPU's
 * routed top-k kernel (webgpu-mix.ts, WGSL) is registered from the start; training always uses the reference.
 *
 * Shape letters: N rows, I input width (shared by the group), O_g site g's output width, G sites, E choices,
 * K slots per row, r one term's rank, Σr a site's total rank.
 */
import * as tf from '@tensorflow/tfjs';
import { readSync } from '../../backend-capabilities.js';
import { oneHotFloat } from '../../base/one-hot.js';
import { webgpuLoraMix } from './webgpu-mix.js';

/** What the bank reads of a LoRA module (LoraModule satisfies it). */
export interface LoraWeights {
  readonly a: tf.Variable<tf.Rank.R2>; // [r, I]
  readonly b: tf.Variable<tf.Rank.R2>; // [O, r]
  readonly rank: number;
  /** alpha / r (or alpha / √r with rsLoRA). */
  readonly scale: number;
  readonly dropout: number;
}

/** One LoRA of a bank: its weights, the choice whose gate weighs it, and a constant factor (e.g. an average's weight). */
export interface LoraTerm {
  readonly lora: LoraWeights;
  readonly choice: number;
  readonly weight: number;
}

/** Top-k slots on the host: row-major [N·G, K] (row n, site g at (n·G + g)·K); weight 0 marks an unused slot. */
export interface HostSlots {
  readonly ids: Int32Array;
  readonly weights: Float32Array;
  readonly k: number;
  /**
   * x · A_catᵀ already on the host (e.g. from a matmul that also produced the routing logits): row n's rank
   * activation c of site g is values[n · stride + offset + g · Σr + c]. Without it the bank computes and reads it.
   */
  readonly down?: { readonly values: ArrayLike<number>; readonly stride: number; readonly offset: number } | undefined;
}

/** How the rows weigh the bank's choices. */
export type BankGates =
  /** Every choice weighs 1 on every row (one adapter, or a static composition given as weighted terms of choice 0). */
  | { readonly kind: 'ones' }
  /**
   * [N, E] gates shared by all sites, or one [N, E] per site. With shared gates, `memo` (one per forward) keeps
   * gates · S for each distinct spread layout, so sites and banks with the same layout compute it once.
   */
  | { readonly kind: 'dense'; readonly gates: tf.Tensor2D | readonly tf.Tensor2D[]; readonly memo?: Map<string, tf.Tensor2D> | undefined }
  /** Device top-k slots [N·G, K]: ids (int32) and weights. Needs a uniform layout. */
  | { readonly kind: 'slots'; readonly ids: tf.Tensor2D; readonly weights: tf.Tensor2D }
  /** The same slots on the host. Needs a uniform layout. */
  | { readonly kind: 'host-slots'; readonly slots: HostSlots };

export interface MixContext {
  /** Training: operands are built in the forward (gradients flow) and dropout applies. */
  readonly training: boolean;
}

/** One site's operands. */
export interface SiteOperands {
  readonly aT: tf.Tensor2D; // [I, Σr]
  readonly bT: tf.Tensor2D; // [Σr, O]
  readonly spread: tf.Tensor2D; // [E, Σr]
  /** Σ over choices of the spread, the rank-column factors when every gate is 1: [1, Σr]. */
  readonly spreadSum: tf.Tensor2D;
}

export interface BankOperands {
  readonly sites: readonly SiteOperands[];
  /** All sites' A side by side, [I, G·Σr]; only with a uniform layout. */
  readonly aCat: tf.Tensor2D | undefined;
}

/** A backend's own implementation of `LoraBank.mix`; undefined hands the call back to the tfjs-ops one. */
export type LoraMixKernel = (bank: LoraBank, operands: BankOperands, x: tf.Tensor2D, gates: BankGates) => readonly tf.Tensor2D[] | undefined;

/** The library's own kernels (webgpu-mix.ts) are registered from the start; users may replace or remove them. */
const mixKernels = new Map<string, LoraMixKernel>([['webgpu', webgpuLoraMix]]);

/** Registers `kernel` as the bank's mix on `backend` (tf.getBackend() name); it replaces any earlier one. */
export function registerLoraMixKernel(backend: string, kernel: LoraMixKernel): void {
  mixKernels.set(backend, kernel);
}

/** Removes the mix kernel registered for `backend`, if any. */
export function unregisterLoraMixKernel(backend: string): void {
  mixKernels.delete(backend);
}

/** At most this many rows gather the spread per slot directly; more rows go through dense gates. */
export const GATHER_SPREAD_MAX_ROWS = 64;

/** One choice's rank columns at a site: [start, end) with one factor (weight · scale). */
interface Segment {
  readonly start: number;
  readonly end: number;
  readonly factor: number;
}

/** One module's delta, s · B·A·dropout(x): x [N, I] → [N, O]. The bank's product for a single LoRA. */
export function singleLoraDelta(lora: LoraWeights, x: tf.Tensor2D, context: MixContext): tf.Tensor2D {
  const input = context.training && lora.dropout > 0 ? tf.dropout(x, lora.dropout) : x; // [N, I]
  // Transposing the small matrices first keeps both matmuls on tfjs-wasm's fast (untransposed) path.
  const down = tf.matMul(input, tf.transpose(lora.a)); // [N, I]·[I, r] → [N, r]
  const up: tf.Tensor2D = tf.matMul(down, tf.transpose(lora.b)); // [N, r]·[r, O] → [N, O]
  return tf.mul(up, lora.scale); // [N, O]
}

export class LoraBank {
  /** G: sites of the bank. */
  readonly siteCount: number;
  /** Σr per site. */
  readonly totalRanks: readonly number[];
  /** True when every site has the same spread (same ranks and factors per choice): the group-wide top-k paths need it. */
  readonly uniformLayout: boolean;
  /** The terms' common dropout, or undefined when they differ (a training mix then refuses the bank). */
  readonly dropout: number | undefined;
  /** Increases each time the cached operands are rebuilt, so dependents (a fused router operand) can follow. */
  version = 0;
  private readonly spreads: readonly Float32Array[];
  /** Per site, its spread as a string: equal strings, equal spreads (the dense memo's key). */
  private readonly layouts: readonly string[];
  private readonly segments: readonly (readonly Segment[])[]; // per choice, on the uniform layout
  private cached: { readonly key: readonly object[]; readonly operands: BankOperands } | undefined;

  constructor(
    readonly terms: readonly (readonly LoraTerm[])[],
    readonly choices: number,
  ) {
    this.siteCount = terms.length;
    this.totalRanks = terms.map((site) => site.reduce((s, t) => s + t.lora.rank, 0));
    this.spreads = terms.map((site, g) => spreadValues(site, choices, this.totalRanks[g] as number));
    this.layouts = this.spreads.map((spread) => `${choices}:${spread.join(',')}`);
    const first = this.spreads[0];
    this.uniformLayout = first !== undefined && this.spreads.every((s) => s.length === first.length && s.every((v, i) => v === first[i]));
    this.segments = this.uniformLayout && first !== undefined ? choiceSegments(first, choices, this.totalRanks[0] as number) : [];
    const rates = new Set(terms.flatMap((site) => site.map((t) => t.lora.dropout)));
    this.dropout = rates.size <= 1 ? ([...rates][0] ?? 0) : undefined;
  }

  /** Site g's spread [E, Σr] on the host (row-major), for kernels that bake the layout in; undefined past the last site. */
  spreadOf(g: number): Float32Array | undefined {
    return this.spreads[g];
  }

  /** The bank's operands: cached at inference, built in the forward when training. */
  operands(context: MixContext): BankOperands {
    if (context.training) return this.build();
    const cached = this.cached;
    if (cached !== undefined && this.current(cached.key)) return cached.operands; // the decode path: no allocation
    const key = this.terms.flatMap((site) => site.flatMap((t) => [t.lora.a.dataId, t.lora.b.dataId]));
    let operands: BankOperands | undefined;
    tf.tidy(() => {
      operands = this.build();
      return operandTensors(operands); // kept past the tidy; the intermediates are freed
    });
    if (operands === undefined) throw new Error('LoRA bank operands were not built');
    this.releaseCache();
    for (const t of operandTensors(operands)) tf.keep(t);
    this.cached = { key, operands };
    this.version++;
    return operands;
  }

  /** True when every term's variables still hold the data the key was built from. */
  private current(key: readonly object[]): boolean {
    let i = 0;
    for (const site of this.terms) {
      for (const { lora } of site) if (key[i++] !== lora.a.dataId || key[i++] !== lora.b.dataId) return false;
    }
    return i === key.length;
  }

  /** Δ_g for every site from one shared input: x [N, I] → G × [N, O_g]. Runs inside the forward's tidy. */
  mix(x: tf.Tensor2D, gates: BankGates, context: MixContext): readonly tf.Tensor2D[] {
    if (context.training) {
      // Training builds each site's operands on the gradient tape; slot gates are an inference shortcut.
      if (gates.kind !== 'ones' && gates.kind !== 'dense') throw new Error(`a training mix takes 'ones' or 'dense' gates, not '${gates.kind}'`);
      return this.terms.map((_, g) => this.mixSite(g, x, gates, context));
    }
    const operands = this.operands(context);
    const kernel = mixKernels.get(tf.getBackend());
    const custom = kernel?.(this, operands, x, gates);
    if (custom !== undefined) return custom;
    switch (gates.kind) {
      case 'ones':
      case 'dense':
        return operands.sites.map((site, g) => this.mixOperands(g, site, x, gates, context));
      case 'slots':
        return this.mixSlots(operands, x, gates.ids, gates.weights);
      case 'host-slots': {
        const rows = x.shape[0];
        return this.hostRanks(operands, x, gates.slots).map((ranks, g) =>
          tf.matMul(tf.tensor2d(ranks, [rows, this.totalRanks[0] as number]), (operands.sites[g] as SiteOperands).bT),
        ); // [N, Σr]·[Σr, O] → [N, O_g]
      }
    }
  }

  /** Δ_g of one site: x [N, I] (this site's input) → [N, O_g]; gates 'ones' or 'dense'. */
  mixSite(g: number, x: tf.Tensor2D, gates: BankGates, context: MixContext): tf.Tensor2D {
    const site = context.training ? this.buildSite(g) : this.operands(context).sites[g];
    if (site === undefined) throw new Error(`LoRA bank has no site ${g}`);
    return this.mixOperands(g, site, x, gates, context);
  }

  /** mixSite on operands already at hand (a whole-bank mix fetches them once). */
  private mixOperands(g: number, site: SiteOperands, x: tf.Tensor2D, gates: BankGates, context: MixContext): tf.Tensor2D {
    if (context.training && this.dropout === undefined) throw new Error('a LoRA bank whose terms have different dropout rates cannot train');
    const input = context.training && (this.dropout ?? 0) > 0 ? tf.dropout(x, this.dropout ?? 0) : x; // [N, I]
    const down = tf.matMul(input, site.aT); // [N, I]·[I, Σr] → [N, Σr]
    let rankGates: tf.Tensor2D; // [N, Σr] or [1, Σr]
    if (gates.kind === 'ones')
      rankGates = site.spreadSum; // [1, Σr]
    else if (gates.kind === 'dense') {
      const shared = !Array.isArray(gates.gates);
      const siteGates = shared ? (gates.gates as tf.Tensor2D) : (gates.gates as readonly tf.Tensor2D[])[g]; // [N, E]
      if (siteGates === undefined) throw new Error(`dense gates have no entry for site ${g}`);
      const layout = this.layouts[g] as string;
      const memoised = shared ? gates.memo?.get(layout) : undefined;
      rankGates = memoised ?? tf.matMul(siteGates, site.spread); // [N, E]·[E, Σr] → [N, Σr]
      if (shared && memoised === undefined) gates.memo?.set(layout, rankGates);
    } else throw new Error(`mixSite takes 'ones' or 'dense' gates, not '${gates.kind}'`);
    return tf.matMul(tf.mul<tf.Tensor2D>(down, rankGates), site.bT); // [N, Σr]·[Σr, O] → [N, O]
  }

  /** ΔW_g = A_gᵀ · diag(Σ_e S_g[e]) · B_gᵀ in the base's [I, O] layout (merging): the delta when every gate is 1. */
  deltaWeight(g: number): tf.Tensor2D {
    return tf.tidy(() => {
      const site = this.buildSite(g);
      return tf.matMul(tf.mul<tf.Tensor2D>(site.aT, site.spreadSum), site.bT); // ([I, Σr] ⊙ [1, Σr])·[Σr, O] → [I, O]
    });
  }

  dispose(): void {
    this.releaseCache();
  }

  /** Device slots: one spread gather and one A matmul for the group (few rows), or per-site dense gates (many). */
  private mixSlots(operands: BankOperands, x: tf.Tensor2D, ids: tf.Tensor2D, weights: tf.Tensor2D): tf.Tensor2D[] {
    this.requireUniform('slots');
    const rows = x.shape[0]; // N
    const count = this.siteCount; // G
    const k = ids.shape[1]; // K
    const totalRank = this.totalRanks[0] as number; // Σr
    const first = operands.sites[0] as SiteOperands;
    const slotWeights = tf.reshape<tf.Rank.R3>(weights, [rows * count, 1, k]); // [N·G, 1, K]
    if (rows <= GATHER_SPREAD_MAX_ROWS && operands.aCat !== undefined) {
      const spreadPerSlot = tf.gather(first.spread, ids); // [N·G, K, Σr]
      const gates = tf.reshape<tf.Rank.R2>(tf.matMul(slotWeights, spreadPerSlot), [rows, count * totalRank]); // [N·G, 1, Σr] → [N, G·Σr]
      const mixed = tf.mul<tf.Tensor2D>(tf.matMul(x, operands.aCat), gates); // [N, G·Σr]
      return operands.sites.map((site, g) => tf.matMul(count === 1 ? mixed : tf.slice(mixed, [0, g * totalRank], [rows, totalRank]), site.bT)); // [N, O_g]
    }
    // Many rows: dense gates from one-hot slots (gathering Σr floats per slot would copy N·G·K·Σr), then per site
    // its own A and spread matmuls (no column slices of wide activations, which wasm copies through JS).
    const dense = tf.reshape<tf.Rank.R2>(tf.matMul(slotWeights, oneHotFloat<tf.Tensor3D>(ids, this.choices)), [rows, count * this.choices]); // [N·G, 1, E] → [N, G·E]
    return operands.sites.map((site, g) => {
      const siteGates = count === 1 ? dense : tf.slice(dense, [0, g * this.choices], [rows, this.choices]); // [N, E]
      return tf.matMul(tf.mul<tf.Tensor2D>(tf.matMul(x, site.aT), tf.matMul(siteGates, site.spread)), site.bT); // [N, O_g]
    });
  }

  /**
   * Host slots: the gated rank activations are formed on the host (products rounded once to float32, as the
   * device's), so each site costs one B matmul; x·A_catᵀ is read back unless the caller already holds it.
   */
  /** The gated rank activations of host slots on the host: G × [N, Σr], zero on unchosen experts' columns. */
  private hostRanks(operands: BankOperands, x: tf.Tensor2D, slots: HostSlots): Float32Array[] {
    this.requireUniform('host-slots');
    const rows = x.shape[0]; // N
    const count = this.siteCount; // G
    const totalRank = this.totalRanks[0] as number; // Σr
    const { ids, weights, k } = slots;
    let down = slots.down;
    if (down === undefined) {
      if (operands.aCat === undefined) throw new Error('host slots need the group A operand');
      down = {
        values: readSync(tf.matMul(x, operands.aCat), "The LoRA bank's 'host-slots' gates", "Use 'slots' gates on a backend without host memory"),
        stride: count * totalRank,
        offset: 0,
      }; // [N, G·Σr] on the host
    }
    const values = down.values;
    const perSite: Float32Array[] = []; // G × [N, Σr], zero where not chosen
    for (let g = 0; g < count; g++) perSite.push(new Float32Array(rows * totalRank));
    for (let n = 0; n < rows; n++) {
      for (let g = 0; g < count; g++) {
        const out = perSite[g] as Float32Array;
        const base = n * down.stride + down.offset + g * totalRank; // this row's x·A_gᵀ
        for (let slot = 0; slot < k; slot++) {
          const w = weights[(n * count + g) * k + slot] as number;
          if (w === 0) continue;
          const segments = this.segments[ids[(n * count + g) * k + slot] as number] as readonly Segment[];
          for (let s = 0; s < segments.length; s++) {
            const { start, end, factor } = segments[s] as Segment;
            const gate = Math.fround(w * factor); // float32, as gates · spread on the device
            const row = n * totalRank;
            for (let c = start; c < end; c++) out[row + c] = (out[row + c] as number) + Math.fround((values[base + c] as number) * gate); // the store rounds to float32
          }
        }
      }
    }
    return perSite;
  }

  private requireUniform(kind: string): void {
    if (!this.uniformLayout) throw new Error(`'${kind}' gates need the same rank layout at every site of the bank`);
  }

  /** Site g's operands, built now (in the caller's tidy, on the gradient tape when training). */
  private buildSite(g: number): SiteOperands {
    const site = this.terms[g];
    if (site === undefined) throw new Error(`LoRA bank has no site ${g}`);
    const loras = site.map((t) => t.lora);
    const totalRank = this.totalRanks[g] as number;
    const spread = tf.tensor2d(this.spreads[g] as Float32Array, [this.choices, totalRank]); // [E, Σr]
    return {
      aT:
        loras.length === 1
          ? tf.transpose((loras[0] as LoraWeights).a)
          : tf.transpose(
              tf.concat(
                loras.map((l) => l.a),
                0,
              ),
            ), // [Σr, I] → [I, Σr]
      bT:
        loras.length === 1
          ? tf.transpose((loras[0] as LoraWeights).b)
          : tf.concat(
              loras.map((l) => tf.transpose(l.b)),
              0,
            ), // each [O, r] → [r, O]; [Σr, O]
      spread,
      spreadSum: tf.sum(spread, 0, true), // [1, Σr]
    };
  }

  private build(): BankOperands {
    const sites = this.terms.map((_, g) => this.buildSite(g));
    const aCat = this.uniformLayout
      ? sites.length === 1
        ? (sites[0] as SiteOperands).aT
        : tf.concat(
            sites.map((s) => s.aT),
            1,
          )
      : undefined; // [I, G·Σr]
    return { sites, aCat };
  }

  private releaseCache(): void {
    if (this.cached === undefined) return;
    tf.dispose([...new Set(operandTensors(this.cached.operands))]);
    this.cached = undefined;
  }
}

function operandTensors(operands: BankOperands): tf.Tensor[] {
  return [...operands.sites.flatMap((s) => [s.aT, s.bT, s.spread, s.spreadSum]), ...(operands.aCat === undefined ? [] : [operands.aCat])];
}

/** The spread [E, Σr] on the host (row-major): each term's weight × scale on its rank columns, in its choice's row. */
function spreadValues(terms: readonly LoraTerm[], choices: number, totalRank: number): Float32Array {
  const values = new Float32Array(choices * totalRank);
  let column = 0;
  for (const { lora, choice, weight } of terms) {
    if (!Number.isInteger(choice) || choice < 0 || choice >= choices) throw new Error(`LoRA term choice ${choice} is outside [0, ${choices})`);
    values.fill(weight * lora.scale, choice * totalRank + column, choice * totalRank + column + lora.rank);
    column += lora.rank;
  }
  return values;
}

/** Per choice, its runs of equal non-zero spread on the host: the columns a chosen slot gates. */
function choiceSegments(spread: Float32Array, choices: number, totalRank: number): Segment[][] {
  return Array.from({ length: choices }, (_, e) => {
    const out: Segment[] = [];
    let c = 0;
    while (c < totalRank) {
      const factor = spread[e * totalRank + c] as number;
      if (factor === 0) {
        c++;
        continue;
      }
      const start = c;
      while (c < totalRank && spread[e * totalRank + c] === factor) c++;
      out.push({ start, end: c, factor });
    }
    return out;
  });
}
