/**
 * Prototypes of proposed src/ changes (see results/ANALYSIS.md), written as patched copies inside
 * benchmarks/ so their effect can be measured before anyone touches src/. Each is checked against the
 * library's own output first (max |Δ logits|), then timed side by side with the library in one run.
 *
 *  P1 pre-transposed base weights: the library calls tf.matMul(x, W, false, true) with W [O, I]. On wasm
 *     only a plain 2-D matMul(x, W) reaches XNNPACK's fast kernel; any transpose flag (or a batch dimension)
 *     falls back to a naive loop ~10× slower. P1 stores Wᵀ [I, O] once and calls matMul(x, Wᵀ).
 *  P2 lean routed LoRA (inference): per site, the top-k gates straight from the logits (topk → k-th value →
 *     greaterEqual → where → softmax; no one-hot scatter/gather round trip, no unused probability softmax),
 *     and A_catᵀ [I, Σr], s·B_catᵀ [Σr, O] and the spread matrix [E, Σr] built ONCE (not concatenated and
 *     uploaded on every call), all in matMul's fast, untransposed form.
 *  P3 P2 + shared-input fusion: q/k/v (and gate/up) read the same input, so their three routers' W_g and
 *     their experts' A matrices are concatenated into one matMul each, with one batched top-k for the group.
 *  P4 lean grouped (FLOP-sparse, for prefill): per site one router matMul, topk and a softmax over the k chosen
 *     logits (= the renormalised top-k weights), one host read of the chosen ids, then per expert a gather of
 *     its rows and two fast matMuls by its cached Aᵀ [I, r] and s·Bᵀ [r, O]; the N·K pieces are weighted in one
 *     multiply and gathered back, one gather + add per slot. Only k·r rank columns per row are computed
 *     (dense computes all E·r).
 *  'layer' placement (no patch: a spec option that exists today): one router per layer shared by its sites.
 *
 * Shape letters: N rows, D width, I/O a site's in/out width, E experts, K experts per row, r rank,
 * Σr = E·r, G sites in a group.
 */
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../routers/index.js';
import { LoraModule } from '../src/adapters/lora/layer.js';
import type { ForwardContext, ForwardHooks } from '../src/base/hooks.js';
import type { KVCache } from '../src/base/kv-cache.js';
import type { RopeTables } from '../src/base/rope.js';
import type { SiteName } from '../src/base/sites.js';
import { Transformer } from '../src/base/transformer.js';
import { AdaptedModel } from '../src/runtime/adapted-model.js';
import { compare, decodeWarmupCap, isMain, logRatio, machineInfo, parseArgs, ratioResult, round, useBackend, writeResult, type BenchArgs, type BenchResult, type Case, type RatioResult } from './lib/harness.js';
import { BENCH_MODEL, QUICK_MODEL, randomIds, randomLlama } from './lib/random-model.js';
import { expertNames, routedLoraSpec } from './lib/specs.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const EXPERTS = 8;
const K = 2;
const RANK = 8;
const FULL = { prefill: { batch: 4, tokens: 128, warmup: 1, rounds: 3 }, decode: { batch: 1, prefill: 32, warmup: 3, rounds: 20 } };
const QUICK = { prefill: { batch: 2, tokens: 16, warmup: 1, rounds: 2 }, decode: { batch: 1, prefill: 8, warmup: 2, rounds: 5 } };
/** Sites that read the same input, fused by P3 (in forward order; the first one triggers the group). */
const GROUPS: readonly (readonly SiteName[])[] = [['attn.q', 'attn.k', 'attn.v'], ['attn.o'], ['mlp.gate', 'mlp.up'], ['mlp.down']];
/** Masked logit for unchosen experts (exp underflows to exactly 0 in float32, as in routers/top-k.ts). */
const MASKED_LOGIT = -1e9;
// ---------------------------------------------------------------------------------------------------------

// --- P1: a base whose sites multiply by pre-transposed weights ----------------------------------------------

export class PretransposedTransformer extends Transformer {
  constructor(
    source: Transformer,
    private readonly transposed: ReadonlyMap<string, tf.Tensor2D>, // `${layer}|${site}` → Wᵀ [I, O]
  ) {
    // Shares every tensor with `source` and owns none (the caller frees `transposed`).
    super(source.config, source.weights, { owned: [], rope: (source as unknown as { rope: RopeTables }).rope });
  }

  static from(source: Transformer): { model: PretransposedTransformer; dispose: () => void } {
    const transposed = new Map<string, tf.Tensor2D>();
    source.weights.layers.forEach((layer, i) => {
      for (const [site, linear] of Object.entries(layer.sites)) if (linear !== undefined) transposed.set(`${i}|${site}`, tf.transpose(linear.weight)); // [I, O]
    });
    return { model: new PretransposedTransformer(source, transposed), dispose: () => transposed.forEach((t) => t.dispose()) };
  }

  override applySite(layer: number, site: SiteName, x: tf.Tensor2D, hooks: ForwardHooks | undefined): tf.Tensor2D {
    const weightT = this.transposed.get(`${layer}|${site}`);
    const linear = this.weights.layers[layer]?.sites[site];
    if (weightT === undefined || linear === undefined) throw new Error(`layer ${layer} has no site ${site}`);
    const input = hooks?.siteInput ? hooks.siteInput(layer, site, x) : x; // [N, I]
    const projected: tf.Tensor2D = tf.matMul(input, weightT); // [N, O]  fast path: no transpose flag
    const base = linear.bias === undefined ? projected : tf.add<tf.Tensor2D>(projected, linear.bias); // [N, O]
    return hooks?.siteOutput ? hooks.siteOutput(layer, site, input, base) : base; // [N, O]
  }
}

// --- P2 / P3: lean routed LoRA hooks ------------------------------------------------------------------------

interface SitePack {
  readonly gate: tf.Tensor2D; // W_g [I, E] (the router's variable)
  readonly aCatT: tf.Tensor2D; // [I, Σr]
  readonly bCatT: tf.Tensor2D; // s·B_catᵀ [Σr, O]
}

interface ExpertPack {
  readonly aT: readonly tf.Tensor2D[]; // per expert Aᵀ [I, r]
  readonly bT: readonly tf.Tensor2D[]; // per expert s·Bᵀ [r, O]
}

interface GroupPack {
  readonly sites: readonly SiteName[];
  readonly gates: tf.Tensor2D; // [I, G·E]
  readonly aCatT: tf.Tensor2D; // [I, G·Σr]
  readonly spread: tf.Tensor2D; // block-diagonal 0/1 [G·E, G·Σr]
}

/** Everything P2/P3 precompute once from the library's own routers and experts (tensors it must free). */
export class LeanRoutedLora {
  private readonly sites = new Map<string, SitePack>();
  private readonly experts = new Map<string, ExpertPack>();
  private readonly groups = new Map<string, GroupPack>(); // `${layer}|${first site}`
  private readonly owned: tf.Tensor[] = [];

  constructor(
    readonly model: AdaptedModel,
    private readonly k: number,
  ) {
    const route = model.routes[0];
    if (route === undefined) throw new Error('model has no route');
    const gates = new Map<string, tf.Variable>();
    for (const [name, v] of route.namedVariables()) {
      const match = /^route\d+\/(\d+\|[^/]+)\/0$/.exec(name);
      if (match?.[1] !== undefined) gates.set(match[1], v);
    }
    const experts = expertNames(route.experts.length).map((n) => model.adapters.get(n));
    const nLayers = model.base.config.nLayers;
    for (let layer = 0; layer < nLayers; layer++) {
      for (const group of GROUPS) {
        for (const site of group) {
          const modules = experts.map((e) => e?.module(layer, { kind: 'site-output', site }));
          if (!modules.every((m): m is LoraModule => m instanceof LoraModule)) throw new Error('experts must all be LoRA');
          const gate = gates.get(`${layer}|${site}`);
          if (gate === undefined) throw new Error(`no router at ${layer}|${site}`);
          const [aCatT, bCatT] = tf.tidy(() => [
            tf.transpose(tf.concat(modules.map((m) => m.a), 0)), // [I, Σr]
            tf.transpose(tf.concat(modules.map((m) => tf.mul(m.b, m.scale)), 1)), // [Σr, O]
          ]) as [tf.Tensor2D, tf.Tensor2D];
          this.owned.push(aCatT, bCatT);
          this.sites.set(`${layer}|${site}`, { gate: gate as tf.Variable<tf.Rank.R2>, aCatT, bCatT });
          const aT = modules.map((m) => tf.transpose(m.a) as tf.Tensor2D); // each [I, r]
          const bT = modules.map((m) => tf.tidy(() => tf.transpose(tf.mul(m.b, m.scale))) as tf.Tensor2D); // each [r, O]
          this.owned.push(...aT, ...bT);
          this.experts.set(`${layer}|${site}`, { aT, bT });
        }
        const packs = group.map((s) => this.sites.get(`${layer}|${s}`) as SitePack);
        const ranks = experts.map((e) => ((e?.module(layer, { kind: 'site-output', site: group[0] as SiteName }) as LoraModule).rank));
        const totalRank = ranks.reduce((a, b) => a + b, 0);
        const choices = experts.length;
        const spreadValues = new Float32Array(group.length * choices * group.length * totalRank);
        const width = group.length * totalRank;
        group.forEach((_, g) => {
          let column = 0;
          ranks.forEach((r, e) => {
            for (let j = 0; j < r; j++) spreadValues[(g * choices + e) * width + g * totalRank + column + j] = 1;
            column += r;
          });
        });
        const [gatesCat, aCat] = tf.tidy(() => [
          packs.length === 1 ? tf.clone(packs[0]?.gate as tf.Tensor2D) : tf.concat(packs.map((p) => p.gate), 1), // [I, G·E]
          packs.length === 1 ? tf.clone(packs[0]?.aCatT as tf.Tensor2D) : tf.concat(packs.map((p) => p.aCatT), 1), // [I, G·Σr]
        ]) as [tf.Tensor2D, tf.Tensor2D];
        const spread = tf.tensor2d(spreadValues, [group.length * choices, width]); // [G·E, G·Σr]
        this.owned.push(gatesCat, aCat, spread);
        this.groups.set(`${layer}|${group[0] ?? ''}`, { sites: group, gates: gatesCat, aCatT: aCat, spread });
      }
    }
  }

  dispose(): void {
    for (const t of this.owned) t.dispose();
  }

  /** Dense top-k gates from logits [R, E]: softmax over the k largest, 0 elsewhere. */
  private topKGates(logits: tf.Tensor2D): tf.Tensor2D {
    const rows = logits.shape[0];
    const kth = tf.slice(tf.topk(logits, this.k).values, [0, this.k - 1], [rows, 1]); // [R, 1]
    const masked = tf.where(tf.greaterEqual(logits, kth), logits, tf.scalar(MASKED_LOGIT) as tf.Tensor as tf.Tensor2D); // [R, E] (the scalar broadcasts)
    return tf.softmax(masked); // [R, E]
  }

  /** P2: every site on its own, with precomputed operands. */
  perSiteHooks(): ForwardHooks {
    let rowMask: tf.Tensor2D | undefined; // [N, 1]
    const spreads = new Map<string, tf.Tensor2D>();
    return {
      begin: (context: ForwardContext) => {
        rowMask = tf.reshape(context.mask, [context.batch * context.tokens, 1]);
      },
      siteOutput: (layer, site, x, y) => {
        const pack = this.sites.get(`${layer}|${site}`);
        if (pack === undefined || rowMask === undefined) return y;
        const groupSpread = this.spreadFor(layer, site, spreads);
        const gates = tf.mul<tf.Tensor2D>(this.topKGates(tf.matMul(x, pack.gate)), rowMask); // [N, E]
        const down = tf.matMul(x, pack.aCatT); // [N, Σr]
        const mixed = tf.mul(down, tf.matMul(gates, groupSpread)); // [N, Σr]
        return tf.add<tf.Tensor2D>(y, tf.matMul(mixed, pack.bCatT)); // [N, O]
      },
    };
  }

  /** The single-site spread [E, Σr] (the top-left block of the group's), cached per width. */
  private spreadFor(layer: number, site: SiteName, cache: Map<string, tf.Tensor2D>): tf.Tensor2D {
    const group = GROUPS.find((g) => g.includes(site)) as readonly SiteName[];
    const pack = this.groups.get(`${layer}|${group[0] ?? ''}`) as GroupPack;
    if (group.length === 1) return pack.spread;
    const key = `${group.length}`;
    let spread = cache.get(key);
    if (spread === undefined) {
      const [rows, cols] = pack.spread.shape;
      spread = tf.keep(tf.slice(pack.spread, [0, 0], [rows / group.length, cols / group.length]));
      this.owned.push(spread);
      cache.set(key, spread);
    }
    return spread;
  }

  /** P4: only the chosen experts run, on their gathered rows (one host read per site). */
  sparseGroupedHooks(): ForwardHooks {
    let rowMask: tf.Tensor2D | undefined; // [N, 1]
    const k = this.k;
    return {
      begin: (context: ForwardContext) => {
        rowMask = tf.reshape(context.mask, [context.batch * context.tokens, 1]);
      },
      siteOutput: (layer, site, x, y) => {
        const pack = this.sites.get(`${layer}|${site}`);
        const experts = this.experts.get(`${layer}|${site}`);
        if (pack === undefined || experts === undefined || rowMask === undefined) return y;
        const rows = x.shape[0];
        const top = tf.topk(tf.matMul(x, pack.gate), k); // values, indices [N, K]
        const weights = tf.mul(tf.softmax(top.values), rowMask); // [N, K]  softmax over the chosen logits
        const chosen = top.indices.dataSync(); // the one host read
        const members: number[][] = experts.aT.map(() => []); // rows per expert
        const slotsOf: number[][] = experts.aT.map(() => []); // flat slot n·K+s per member
        for (let n = 0; n < rows; n++) {
          for (let slot = 0; slot < k; slot++) {
            const e = chosen[n * k + slot] as number;
            members[e]?.push(n);
            slotsOf[e]?.push(n * k + slot);
          }
        }
        const pieces: tf.Tensor2D[] = [];
        const order: number[] = []; // flat slot of each stacked row
        const position = new Int32Array(rows * k); // stacked row of each flat slot
        members.forEach((m, e) => {
          if (m.length === 0) return;
          const xe = tf.gather(x, tf.tensor1d(m, 'int32')); // [M, I]
          pieces.push(tf.matMul(tf.matMul(xe, experts.aT[e] as tf.Tensor2D), experts.bT[e] as tf.Tensor2D)); // [M, O]
          for (const flat of slotsOf[e] ?? []) position[flat] = order.push(flat) - 1;
        });
        const stacked = pieces.length === 1 ? (pieces[0] as tf.Tensor2D) : tf.concat(pieces, 0); // [N·K, O]
        const slotWeights = tf.gather(tf.reshape(weights, [rows * k]), tf.tensor1d(order, 'int32')); // [N·K]
        const weighted = tf.mul(stacked, tf.expandDims(slotWeights, 1)); // [N·K, O]
        let out = y; // [N, O]
        for (let slot = 0; slot < k; slot++) {
          const index = tf.tensor1d(Array.from({ length: rows }, (_, n) => position[n * k + slot] as number), 'int32'); // [N]
          out = tf.add(out, tf.gather(weighted, index)); // [N, O]
        }
        return out;
      },
    };
  }

  /** P3: sites reading the same input share one router matMul, one top-k and one A matMul. */
  groupedHooks(): ForwardHooks {
    let rowMask: tf.Tensor2D | undefined; // [N, 1]
    /** Per layer: the group's x and its gated rank activations h [N, G·Σr]. */
    let pending = new Map<string, { x: tf.Tensor2D; mixed: tf.Tensor2D; totalRank: number; sites: readonly SiteName[] }>();
    return {
      begin: (context: ForwardContext) => {
        rowMask = tf.reshape(context.mask, [context.batch * context.tokens, 1]);
        pending = new Map();
      },
      siteOutput: (layer, site, x, y) => {
        const pack = this.sites.get(`${layer}|${site}`);
        if (pack === undefined || rowMask === undefined) return y;
        const group = GROUPS.find((g) => g.includes(site)) as readonly SiteName[];
        const key = `${layer}|${group[0] ?? ''}`;
        let entry = pending.get(key);
        if (entry === undefined || entry.x !== x) {
          const g = this.groups.get(key) as GroupPack;
          const rows = x.shape[0];
          const choices = g.spread.shape[0] / group.length;
          const logits = tf.reshape<tf.Rank.R2>(tf.matMul(x, g.gates), [rows * group.length, choices]); // [N·G, E]
          const gates = tf.mul<tf.Tensor2D>(tf.reshape(this.topKGates(logits), [rows, group.length * choices]), rowMask); // [N, G·E]
          const mixed = tf.mul<tf.Tensor2D>(tf.matMul(x, g.aCatT), tf.matMul(gates, g.spread)); // [N, G·Σr]
          entry = { x, mixed, totalRank: g.aCatT.shape[1] / group.length, sites: group };
          pending.set(key, entry);
        }
        const index = entry.sites.indexOf(site);
        const rows = x.shape[0];
        const mine = entry.sites.length === 1 ? entry.mixed : tf.slice(entry.mixed, [0, index * entry.totalRank], [rows, entry.totalRank]); // [N, Σr]
        return tf.add<tf.Tensor2D>(y, tf.matMul(mine, pack.bCatT)); // [N, O]
      },
    };
  }
}

// --- measurement --------------------------------------------------------------------------------------------

function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): number {
  const d = tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0] ?? Number.NaN);
  a.dispose();
  b.dispose();
  return d;
}

async function kernelsOf(fn: () => tf.Tensor): Promise<number> {
  const profile = await tf.profile(() => {
    fn().dispose();
  });
  return profile.kernels.length;
}

export async function run(args: BenchArgs): Promise<BenchResult> {
  const started = performance.now();
  await useBackend('wasm');
  const sizes = args.quick ? QUICK : FULL;
  const modelOptions = args.quick ? QUICK_MODEL : BENCH_MODEL;
  const routers = builtinRouters();
  const base = randomLlama(modelOptions);
  const fast = PretransposedTransformer.from(base);
  const spec = routedLoraSpec({ experts: EXPERTS, k: K, r: RANK });
  const routed = AdaptedModel.create(base, spec, { routers });
  const routedLayer = AdaptedModel.create(base, { ...spec, composition: { ...(spec['composition'] as object), placement: 'layer' } }, { routers });
  const routedOnFast = AdaptedModel.create(fast.model, spec, { routers }); // same seed → same experts and routers as `routed`
  const lean = new LeanRoutedLora(routed, K);
  const leanFast = new LeanRoutedLora(routedOnFast, K);
  const ratios: RatioResult[] = [];
  const details: Record<string, unknown> = {};
  try {
    // Equivalence with the library (same weights): logits of a short prompt.
    const check = randomIds(2, 12, modelOptions.vocabSize, 3);
    const reference = (): tf.Tensor => routed.forward({ ids: check, strategy: 'dense' });
    details['maxAbsDiff'] = {
      p1Base: maxAbsDiff(fast.model.forward({ ids: check }), base.forward({ ids: check })),
      p1Routed: maxAbsDiff(routedOnFast.forward({ ids: check }), reference()),
      p2: maxAbsDiff(base.forward({ ids: check, hooks: lean.perSiteHooks() }), reference()),
      p3: maxAbsDiff(base.forward({ ids: check, hooks: lean.groupedHooks() }), reference()),
      p4: maxAbsDiff(base.forward({ ids: check, hooks: lean.sparseGroupedHooks() }), reference()),
      p1p2: maxAbsDiff(fast.model.forward({ ids: check, hooks: leanFast.perSiteHooks() }), reference()),
      p1p3: maxAbsDiff(fast.model.forward({ ids: check, hooks: leanFast.groupedHooks() }), reference()),
    };
    console.log('  max |Δ logits| vs the library:', details['maxAbsDiff']);
    const one = randomIds(1, 1, modelOptions.vocabSize, 4);
    details['kernelsPerForward1Token'] = {
      base: await kernelsOf(() => base.forward({ ids: one, output: 'last-logits' })),
      routed: await kernelsOf(() => routed.forward({ ids: one, output: 'last-logits' })),
      layerPlacement: await kernelsOf(() => routedLayer.forward({ ids: one, output: 'last-logits' })),
      p2: await kernelsOf(() => base.forward({ ids: one, output: 'last-logits', hooks: lean.perSiteHooks() })),
      p3: await kernelsOf(() => base.forward({ ids: one, output: 'last-logits', hooks: lean.groupedHooks() })),
      p4: await kernelsOf(() => base.forward({ ids: one, output: 'last-logits', hooks: lean.sparseGroupedHooks() })),
    };
    console.log('  kernels per 1-token forward:', details['kernelsPerForward1Token']);

    // --- decode step, batch 1 ---
    const d = sizes.decode;
    const prompt = randomIds(d.batch, d.prefill, modelOptions.vocabSize);
    const sides: { name: string; forward: (ids: number[][], cache: KVCache) => tf.Tensor }[] = [
      { name: 'base', forward: (ids, cache) => base.forward({ ids, cache, output: 'last-logits' }) },
      { name: 'routed', forward: (ids, cache) => routed.forward({ ids, cache, output: 'last-logits' }) },
      { name: 'routed-layer-placement', forward: (ids, cache) => routedLayer.forward({ ids, cache, output: 'last-logits' }) },
      { name: 'p2', forward: (ids, cache) => base.forward({ ids, cache, output: 'last-logits', hooks: lean.perSiteHooks() }) },
      { name: 'p3', forward: (ids, cache) => base.forward({ ids, cache, output: 'last-logits', hooks: lean.groupedHooks() }) },
      { name: 'p1-base', forward: (ids, cache) => fast.model.forward({ ids, cache, output: 'last-logits' }) },
      { name: 'p1-routed', forward: (ids, cache) => routedOnFast.forward({ ids, cache, output: 'last-logits' }) },
      { name: 'p1p2', forward: (ids, cache) => fast.model.forward({ ids, cache, output: 'last-logits', hooks: leanFast.perSiteHooks() }) },
      { name: 'p1p3', forward: (ids, cache) => fast.model.forward({ ids, cache, output: 'last-logits', hooks: leanFast.groupedHooks() }) },
      { name: 'p1p4', forward: (ids, cache) => fast.model.forward({ ids, cache, output: 'last-logits', hooks: leanFast.sparseGroupedHooks() }) },
    ];
    const caches = sides.map(() => base.newCache(d.batch));
    try {
      sides.forEach((s, i) => s.forward(prompt, caches[i] as KVCache).dispose());
      const cases: Case[] = sides.map((s, i) => {
        const cache = caches[i] as KVCache;
        return { name: s.name, run: () => s.forward(randomIds(d.batch, 1, modelOptions.vocabSize, 1000 + cache.length), cache) };
      });
      const decode = await compare(cases, { ...d, maxWarmup: decodeWarmupCap(modelOptions.maxSeqLen, d.prefill, d.rounds) });
      details['decodeSamplesMs'] = { wall: decode.samples, cpu: decode.cpuSamples };
      ratios.push(
        ratioResult(decode, 'proto/decode-routed', 'decode b1: library routed / base', 'routed', 'base', { target: 1.3 }),
        ratioResult(decode, 'proto/decode-layer', "decode b1: library routed, placement 'layer' / base", 'routed-layer-placement', 'base', { target: 1.3 }),
        ratioResult(decode, 'proto/decode-p2', 'decode b1: P2 lean per-site / base', 'p2', 'base', { target: 1.3 }),
        ratioResult(decode, 'proto/decode-p3', 'decode b1: P3 lean + shared-input fusion / base', 'p3', 'base', { target: 1.3 }),
        ratioResult(decode, 'proto/decode-p1-speedup', 'decode b1: P1 pre-transposed base / library base', 'p1-base', 'base'),
        ratioResult(decode, 'proto/decode-p1-routed', 'decode b1: library routed on P1 base / P1 base', 'p1-routed', 'p1-base', { target: 1.3 }),
        ratioResult(decode, 'proto/decode-p1p2', 'decode b1: P2 on P1 base / P1 base', 'p1p2', 'p1-base', { target: 1.3 }),
        ratioResult(decode, 'proto/decode-p1p3', 'decode b1: P3 on P1 base / P1 base', 'p1p3', 'p1-base', { target: 1.3 }),
        ratioResult(decode, 'proto/decode-p1p4', 'decode b1: P4 on P1 base / P1 base', 'p1p4', 'p1-base', { target: 1.3 }),
      );
    } finally {
      for (const c of caches) c.dispose();
    }

    // --- prefill ---
    const p = sizes.prefill;
    const ids = randomIds(p.batch, p.tokens, modelOptions.vocabSize);
    const warmIds = randomIds(1, 8, modelOptions.vocabSize, 8);
    const prefillCase = (name: string, forward: (ids: number[][]) => tf.Tensor): Case => ({ name, run: () => forward(ids), warm: () => forward(warmIds) });
    const prefill = await compare(
      [
        prefillCase('base', (x) => base.forward({ ids: x, output: 'last-logits' })),
        prefillCase('routed', (x) => routed.forward({ ids: x, output: 'last-logits' })),
        prefillCase('p3', (x) => base.forward({ ids: x, output: 'last-logits', hooks: lean.groupedHooks() })),
        prefillCase('p4', (x) => base.forward({ ids: x, output: 'last-logits', hooks: lean.sparseGroupedHooks() })),
        prefillCase('p1-base', (x) => fast.model.forward({ ids: x, output: 'last-logits' })),
        prefillCase('p1-routed', (x) => routedOnFast.forward({ ids: x, output: 'last-logits' })),
        prefillCase('p1p2', (x) => fast.model.forward({ ids: x, output: 'last-logits', hooks: leanFast.perSiteHooks() })),
        prefillCase('p1p3', (x) => fast.model.forward({ ids: x, output: 'last-logits', hooks: leanFast.groupedHooks() })),
        prefillCase('p1p4', (x) => fast.model.forward({ ids: x, output: 'last-logits', hooks: leanFast.sparseGroupedHooks() })),
      ],
      p,
    );
    details['prefillSamplesMs'] = { wall: prefill.samples, cpu: prefill.cpuSamples };
    const what = `prefill ${p.batch}×${p.tokens}`;
    ratios.push(
      ratioResult(prefill, 'proto/prefill-routed', `${what}: library routed / base`, 'routed', 'base', { target: 1.15 }),
      ratioResult(prefill, 'proto/prefill-p3', `${what}: P3 / base`, 'p3', 'base', { target: 1.15 }),
      ratioResult(prefill, 'proto/prefill-p4', `${what}: P4 lean grouped / base`, 'p4', 'base', { target: 1.15 }),
      ratioResult(prefill, 'proto/prefill-p1-speedup', `${what}: P1 pre-transposed base / library base`, 'p1-base', 'base'),
      ratioResult(prefill, 'proto/prefill-p1-routed', `${what}: library routed on P1 base / P1 base`, 'p1-routed', 'p1-base', { target: 1.15 }),
      ratioResult(prefill, 'proto/prefill-p1p2', `${what}: P2 on P1 base / P1 base`, 'p1p2', 'p1-base', { target: 1.15 }),
      ratioResult(prefill, 'proto/prefill-p1p3', `${what}: P3 on P1 base / P1 base`, 'p1p3', 'p1-base', { target: 1.15 }),
      ratioResult(prefill, 'proto/prefill-p1p4', `${what}: P4 on P1 base / P1 base`, 'p1p4', 'p1-base', { target: 1.15 }),
    );
    for (const r of ratios) logRatio(r);
  } finally {
    lean.dispose();
    leanFast.dispose();
    routedOnFast.dispose();
    routedLayer.dispose();
    routed.dispose();
    fast.model.dispose();
    fast.dispose();
    base.dispose();
  }
  return {
    name: 'prototypes',
    description: 'Proposed src/ changes prototyped in benchmarks/: P1 pre-transposed base weights, P2 lean routed LoRA, P3 shared-input fusion; layer placement',
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: { model: modelOptions, experts: EXPERTS, k: K, rank: RANK, ...sizes, groups: GROUPS },
    ratios,
    details,
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

if (isMain(import.meta.url)) {
  const result = await run(parseArgs());
  console.log(`wrote ${writeResult(result)}`);
}
