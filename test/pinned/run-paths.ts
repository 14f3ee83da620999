// Every LoRA / routing execution path of the library, each as one function that builds its model
// deterministically, runs it, and returns plain numbers (no tensor leaves a function). paths.fixture.json
// holds what these functions returned with the implementation of commit 0ea9cf4 (generate.ts writes it);
// paths.test.ts recomputes them and compares, so a refactor of the execution paths must reproduce them.
//
// This is the ONE file to update when a public option or name changes: library code is reached only
// through the public entry points (src/index.ts, routers/index.ts) and the test helpers. Options this file
// depends on: AdaptedModel.create(base, spec, { routers }); forward/generate options `select` ('base',
// 'spec', `adapter`, `combine`, `adapters`, `weights`, `composition`), `routing` (`fusion`, `strategy`,
// `trace`, `routingMask`, `auxLosses`), `training`, `cache`, `output`, `mask`; spec fields
// (`kind`, `name`, `r`, `alpha`, `init`, `targets.sites`, `placement`, `reductionFactor`, route `experts`,
// `router.kind/k/temperature`, `nullExpert`, `granularity`, `placement`, `readLayer`, `strategy`);
// `namedVariables()`; RoutedRuntime `load` sources `peft` / `instance`, `select` (`adapter`, `combine`,
// `adapters`, `weights`, `routed`, 'base'), `batching.windowMs/maxBatchSize`, `batches$`; `mergeLora`
// entries `{ instance, weight }`; `writePeftAdapter`, `padLeft`, `causalLmLoss`, `globalNorm`.
//
// Weights: every trainable variable (adapters and routers) is overwritten after construction with values
// drawn here from a seeded generator, keyed by the variable's stable name (namedVariables(), the names
// checkpoints use). So the pinned outputs do not depend on how the library initialises (tf.randomUniform
// seeds, seed derivation), only on how it executes; routers get weights large enough (±1) that top-k
// choices have clear margins, and LoRA B is non-zero so every delta is visible. If a refactor changes a
// variable's layout (e.g. stores Aᵀ), change fillVariables to write the same logical values.
//
// Shape letters: B rows, T tokens, V vocabulary (32), D width (16).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../../routers/index.js';
import {
  AdaptedModel,
  RoutedRuntime,
  causalLmLoss,
  globalNorm,
  mergeLora,
  padLeft,
  writePeftAdapter,
  type AdapterInstance,
  type BatchEvent,
  type RoutingTraceEntry,
  type Selection,
  type SelectionInput,
  type Transformer,
} from '../../src/index.js';
import { tinyGpt2, tinyLlama } from '../helpers/tiny-models.js';

// ---------------------------------------------------------------------------------------------------------
// What a path returns

export interface PinnedTensor {
  readonly shape: number[];
  /** Row-major float32 values. */
  readonly values: number[];
}

/** One adapted output and the bare base's output for the same input (`key` names that input). */
export interface PinnedOutput {
  readonly logits: PinnedTensor;
  readonly base: PinnedTensor & { readonly key: string };
  /** True when no adapter acts on this output (a 'base' row of a mixed pass): its delta must be ~0. */
  readonly bare?: boolean;
}

export interface PinnedScalars {
  readonly values: number[];
  /** Allowed max|new − old| relative to max|old| of these values. */
  readonly rtol: number;
}

export interface PinnedCase {
  readonly outputs: Record<string, PinnedOutput>;
  /** Compared exactly (token ids, trace entries' experts). */
  readonly exact?: Record<string, unknown>;
  /** Compared relatively (losses, gradient norms, trace weights). */
  readonly scalars?: Record<string, PinnedScalars>;
}

export interface PinnedPath {
  /** What the path exercises. */
  readonly about: string;
  readonly run: () => Promise<PinnedCase>;
}

// ---------------------------------------------------------------------------------------------------------
// Deterministic inputs and weights

const routers = builtinRouters();
/** Weight seed of the tiny models (test/helpers/tiny-models.ts default, written out). */
const MODEL_SEED = 1234;
/** Seed of the values fillVariables writes. */
const FILL_SEED = 20250101;

/** 2 × 6 tokens, no padding: 12 rows (≤ 64: the host-routed fused path on wasm). */
const IDS = [
  [3, 7, 1, 9, 4, 2],
  [5, 11, 6, 8, 1, 13],
];
/** Left padded: row 1 has 2 padding tokens. */
const PADDED_IDS = [
  [3, 7, 1, 9, 4, 2],
  [0, 0, 5, 6, 8, 1],
];
const PADDED_MASK = [
  [1, 1, 1, 1, 1, 1],
  [0, 0, 1, 1, 1, 1],
];
/** A shorter padded batch for the traced variants (7 real tokens: 98 trace entries per forward). */
const SHORT_IDS = [
  [3, 7, 1, 9],
  [0, 5, 6, 8],
];
const SHORT_MASK = [
  [1, 1, 1, 1],
  [0, 1, 1, 1],
];
/** 3 × 22 = 66 rows (> 64 = HOST_ROUTING_MAX_ROWS = GATHER_SPREAD_MAX_ROWS: the many-rows path). */
const LONG_IDS = [0, 1, 2].map((b) => Array.from({ length: 22 }, (_, t) => (t * (5 + 2 * b) + 3 * b + 1) % 32));
/** Decode prompts of different lengths (left padded at prefill). */
const PROMPTS = [
  [3, 7, 1, 9],
  [5, 11],
];
const NEW_TOKENS = 6;

/** mulberry32: a small seeded generator of floats in [0, 1), independent of the library. */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** FNV-1a of a string, mixed with a seed. */
function hashName(seed: number, name: string): number {
  let hash = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return hash;
}

/**
 * Overwrites every trainable variable of the model with uniform values seeded by its stable name:
 * routers (`route…`) ±1; (IA)³ scales 1 ± 0.3; other vectors (biases) ±0.1; other matrices (LoRA A and B,
 * bottleneck projections) ±0.25.
 */
function fillVariables(model: AdaptedModel, seed = FILL_SEED): void {
  const kinds = new Map(model.spec.adapters.map((a) => [a.name, a.kind]));
  for (const [name, variable] of model.namedVariables()) {
    const random = mulberry32(hashName(seed, name));
    const adapterKind = kinds.get(name.split('/')[0] ?? '');
    const [center, scale] = name.startsWith('route') ? [0, 1] : adapterKind === 'ia3' ? [1, 0.3] : variable.rank === 1 ? [0, 0.1] : [0, 0.25];
    const values = new Float32Array(variable.size);
    for (let i = 0; i < values.length; i++) values[i] = center + scale * (2 * random() - 1);
    const value = tf.tensor(values, variable.shape, 'float32');
    variable.assign(value);
    value.dispose();
  }
}

function llama(): Transformer {
  return tinyLlama({ seed: MODEL_SEED });
}

function gpt2(): Transformer {
  return tinyGpt2({ seed: MODEL_SEED });
}

/** Builds an adapted model and fills its variables. */
function adapted(base: Transformer, spec: unknown): AdaptedModel {
  const model = AdaptedModel.create(base, spec, { routers });
  fillVariables(model);
  return model;
}

/** Reads a tensor to plain numbers and disposes it. */
function read(tensor: tf.Tensor): PinnedTensor {
  const values = Array.from(tensor.dataSync());
  const shape = [...tensor.shape];
  tensor.dispose();
  return { shape, values };
}

function baseLogits(base: Transformer, key: string, ids: number[][], mask?: number[][]): PinnedTensor & { key: string } {
  return { key, ...read(base.forward({ ids, ...(mask === undefined ? {} : { mask }) })) };
}

/** A trace as exact strings (where, which experts) and the experts' weights (compared with a tolerance). */
function traceParts(trace: readonly RoutingTraceEntry[]): { entries: string[]; weights: number[] } {
  return {
    entries: trace.map((e) => `${e.layer} ${e.site} r${e.route} b${e.batch} t${e.token} ${e.experts.join('+')}${e.dropped ? ' dropped' : ''}`),
    weights: trace.flatMap((e) => [...e.weights]),
  };
}

/** Runs `fn` with a base and a model built on it, disposing both afterwards. */
async function withModel<T>(makeBase: () => Transformer, spec: unknown, fn: (base: Transformer, model: AdaptedModel) => T | Promise<T>): Promise<T> {
  const base = makeBase();
  try {
    const model = adapted(base, spec);
    try {
      return await fn(base, model);
    } finally {
      model.dispose();
    }
  } finally {
    base.dispose();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Specs

const LLAMA_SITES = ['attn.q', 'attn.k', 'attn.v', 'attn.o', 'mlp.gate', 'mlp.up', 'mlp.down'];

/** Four LoRA experts of ranks 2, 3, 4, 2 (different scales) on the given sites. */
function loraExperts(sites: string[] | 'all-linear'): Record<string, unknown>[] {
  const shapes: [number, number][] = [
    [2, 4],
    [3, 6],
    [4, 4],
    [2, 8],
  ];
  return shapes.map(([r, alpha], i) => ({ kind: 'lora', name: `e${i}`, r, alpha, init: 'random', targets: { sites } }));
}

interface RouteOptions {
  readonly nullExpert?: boolean;
  readonly strategy?: 'auto' | 'dense' | 'grouped';
  readonly granularity?: 'token' | 'sequence';
  readonly placement?: 'site' | 'layer' | 'model';
  readonly readLayer?: number;
  readonly k?: number;
  readonly temperature?: number;
  readonly sites?: string[] | 'all-linear';
}

/** A route over the four LoRA experts with a top-k router. */
function routedSpec(options: RouteOptions = {}): Record<string, unknown> {
  const adapters = loraExperts(options.sites ?? LLAMA_SITES);
  const { sites: _sites, k = 2, temperature, ...route } = options;
  return {
    seed: 11,
    adapters,
    composition: {
      kind: 'route',
      experts: adapters.map((a) => a.name),
      router: { kind: 'top-k', k, ...(temperature === undefined ? {} : { temperature }) },
      ...route,
    },
  };
}

type Fusion = boolean | 'device';

interface CallOptions {
  readonly fusion?: Fusion;
  readonly strategy?: 'dense' | 'grouped';
  readonly mask?: number[][];
  readonly trace?: RoutingTraceEntry[];
  readonly routingMask?: number[][];
  /** Pin this variant's routing trace too (entries exactly, weights within 1e-5). */
  readonly pinTrace?: boolean;
}

function adaptedLogits(model: AdaptedModel, ids: number[][], options: CallOptions = {}): PinnedTensor {
  const { mask, pinTrace: _pinTrace, ...routing } = options;
  return read(model.forward({ ids, ...(mask === undefined ? {} : { mask }), routing }));
}

/** One output per call variant on the same input, and the traces of the variants that ask for it. */
function routedCase(
  makeBase: () => Transformer,
  family: string,
  spec: unknown,
  ids: number[][],
  mask: number[][] | undefined,
  variants: Record<string, CallOptions>,
): Promise<PinnedCase> {
  return withModel(makeBase, spec, (base, model) => {
    const key = `${family}/${mask === undefined ? '' : 'padded-'}${ids.length}x${ids[0]?.length ?? 0}`;
    const baseOut = baseLogits(base, key, ids, mask);
    const outputs: Record<string, PinnedOutput> = {};
    const exact: Record<string, unknown> = {};
    const scalars: Record<string, PinnedScalars> = {};
    for (const [name, options] of Object.entries(variants)) {
      const trace: RoutingTraceEntry[] | undefined = options.pinTrace === true ? [] : undefined;
      outputs[name] = {
        logits: adaptedLogits(model, ids, { ...options, ...(mask === undefined ? {} : { mask }), ...(trace === undefined ? {} : { trace }) }),
        base: baseOut,
      };
      if (trace !== undefined) {
        const parts = traceParts(trace);
        exact[`${name}.trace`] = parts.entries;
        scalars[`${name}.traceWeights`] = { values: parts.weights, rtol: 1e-5 };
      }
    }
    return { outputs, ...(Object.keys(exact).length > 0 ? { exact, scalars } : {}) };
  });
}

// ---------------------------------------------------------------------------------------------------------
// Routed per-site token top-k over LoRA experts (k = 2, four experts of rank 2–4, all seven llama sites)

/** (a) fusion: false, strategy: 'dense' — the per-site dense fused-LoRA mixture (routed-layer.ts). */
export function routedPerSiteDense(): Promise<PinnedCase> {
  return routedCase(llama, 'llama', routedSpec(), IDS, undefined, { logits: { fusion: false, strategy: 'dense' } });
}

/** (b) strategy 'grouped' as a call option and in the spec — rows gathered per expert (routed-layer.ts). */
export async function routedGrouped(): Promise<PinnedCase> {
  const call = await routedCase(llama, 'llama', routedSpec(), IDS, undefined, { call: { strategy: 'grouped' } });
  const spec = await routedCase(llama, 'llama', routedSpec({ strategy: 'grouped' }), IDS, undefined, { spec: {} });
  return { outputs: { ...call.outputs, ...spec.outputs } };
}

/** (c) default fusion, 12 rows — shared-input groups routed on the host (fused-group.ts, host gating). */
export function routedFusedHost(): Promise<PinnedCase> {
  return routedCase(llama, 'llama', routedSpec(), IDS, undefined, { logits: {} });
}

/** (d) fusion: 'device', 12 rows — decided on the device, spread gathered per slot (fused-group.ts, LoRA bank slots). */
export function routedFusedDevice(): Promise<PinnedCase> {
  return routedCase(llama, 'llama', routedSpec(), IDS, undefined, { logits: { fusion: 'device' } });
}

/** (e) default fusion, 3 × 22 = 66 rows — the many-rows path: dense gates, per-site A and spread matmuls. */
export function routedManyRows(): Promise<PinnedCase> {
  return routedCase(llama, 'llama', routedSpec(), LONG_IDS, undefined, { logits: {} });
}

/** (f) left padding: host-fused (host mask), device-fused (device mask) and per-site. */
export function routedPadded(): Promise<PinnedCase> {
  return routedCase(llama, 'llama', routedSpec(), PADDED_IDS, PADDED_MASK, { host: {}, device: { fusion: 'device' }, perSite: { fusion: false } });
}

/** (g) a null expert (choice E−1 with no module): host-fused and per-site. */
export function routedNullExpert(): Promise<PinnedCase> {
  return routedCase(llama, 'llama', routedSpec({ nullExpert: true }), PADDED_IDS, PADDED_MASK, { host: {}, perSite: { fusion: false } });
}

/** (h) trace requested: host-fused, device-fused (dense gates read back) and per-site; entries pinned too. */
export function routedTrace(): Promise<PinnedCase> {
  return routedCase(llama, 'llama', routedSpec(), SHORT_IDS, SHORT_MASK, {
    host: { pinTrace: true },
    device: { fusion: 'device', pinTrace: true },
    perSite: { fusion: false, pinTrace: true },
  });
}

// ---------------------------------------------------------------------------------------------------------
// Other routes

/**
 * LoRA experts beside a bottleneck (block outputs) and an (IA)³ expert (k, v outputs, down input): the
 * per-point path (generic dense and grouped combine) at q/k/v, gate/up, down and the block outputs; attn.o,
 * where only LoRA acts, still takes the fused path.
 */
export function routedMixedKinds(): Promise<PinnedCase> {
  const spec = {
    seed: 12,
    adapters: [
      { kind: 'lora', name: 'l0', r: 2, alpha: 4, init: 'random', targets: { sites: LLAMA_SITES } },
      { kind: 'lora', name: 'l1', r: 3, alpha: 3, init: 'random', targets: { sites: ['attn.q', 'attn.v', 'mlp.up'] } },
      { kind: 'bottleneck', name: 'bn', reductionFactor: 4, placement: 'houlsby', init: 'random' },
      { kind: 'ia3', name: 'ia' },
    ],
    composition: { kind: 'route', experts: ['l0', 'l1', 'bn', 'ia'], router: { kind: 'top-k', k: 2 } },
  };
  return routedCase(llama, 'llama', spec, PADDED_IDS, PADDED_MASK, { dense: { pinTrace: true }, grouped: { strategy: 'grouped' } });
}

/** placement 'layer' (one router per layer, on the layer input). */
export function routedLayerPlacement(): Promise<PinnedCase> {
  return routedCase(llama, 'llama', routedSpec({ placement: 'layer' }), PADDED_IDS, PADDED_MASK, { logits: { pinTrace: true } });
}

/** placement 'model' with readLayer 1 (one decision from the hidden state entering layer 1; layer 0 unadapted). */
export function routedModelPlacement(): Promise<PinnedCase> {
  return routedCase(llama, 'llama', routedSpec({ placement: 'model', readLayer: 1, k: 1 }), PADDED_IDS, PADDED_MASK, { logits: { pinTrace: true } });
}

/** granularity 'sequence' (mean-pooled per-site decisions), without and with a routingMask. */
export function routedSequence(): Promise<PinnedCase> {
  const routingMask = [
    [1, 1, 1, 0, 0, 0],
    [0, 0, 1, 1, 0, 0],
  ];
  return routedCase(llama, 'llama', routedSpec({ granularity: 'sequence', temperature: 0.5 }), PADDED_IDS, PADDED_MASK, {
    plain: { pinTrace: true },
    routingMask: { routingMask },
  });
}

/** gpt2 (no gate site: the mlp group is `mlp.up` alone): host-fused, device-fused and per-site. */
export function gpt2Routed(): Promise<PinnedCase> {
  return routedCase(gpt2, 'gpt2', routedSpec({ sites: 'all-linear' }), PADDED_IDS, PADDED_MASK, {
    host: {},
    device: { fusion: 'device' },
    perSite: { fusion: false },
  });
}

// ---------------------------------------------------------------------------------------------------------
// Decoding with a KV cache

/** Last-column logits of every step, feeding `tokens` (per row) after the prompts: [steps, B, V]. */
function cachedSteps(
  base: Transformer,
  forward: (options: { ids: number[][]; mask: number[][]; cache: ReturnType<Transformer['newCache']> }) => tf.Tensor,
  tokens: number[][],
): PinnedTensor {
  const padded = padLeft(PROMPTS);
  const cache = base.newCache(PROMPTS.length);
  try {
    const steps = tokens[0]?.length ?? 0;
    const values: number[] = [];
    let ids = padded.ids;
    let mask = padded.mask;
    for (let s = 0; s < steps; s++) {
      values.push(...read(forward({ ids, mask, cache })).values); // [B, V]
      ids = tokens.map((row) => [row[s] as number]);
      mask = ids.map(() => [1]);
    }
    return { shape: [steps, PROMPTS.length, base.config.vocabSize], values };
  } finally {
    cache.dispose();
  }
}

function decodeCase(spec: unknown): Promise<PinnedCase> {
  return withModel(llama, spec, (base, model) => {
    const generated = model.generate(PROMPTS, { maxNewTokens: NEW_TOKENS, temperature: 0, eosId: null });
    const tokens = generated.map((row, b) => row.slice((PROMPTS[b] as number[]).length));
    const perSite = model.generate(PROMPTS, { maxNewTokens: NEW_TOKENS, temperature: 0, eosId: null, routing: { fusion: false } });
    const steps = cachedSteps(base, (o) => model.forward({ ...o, output: 'last-logits' }), tokens);
    const baseSteps = cachedSteps(base, (o) => base.forward({ ...o, output: 'last-logits' }), tokens);
    return {
      outputs: { steps: { logits: steps, base: { key: `llama/decode-${tokens.map((r) => r.join(',')).join(';')}`, ...baseSteps } } },
      exact: { tokens, perSiteTokens: perSite.map((row, b) => row.slice((PROMPTS[b] as number[]).length)) },
    };
  });
}

/** Greedy generate (6 tokens, KV cache) of the token top-k routed model, and each step's cached logits. */
export function decodeRouted(): Promise<PinnedCase> {
  return decodeCase(routedSpec());
}

/** The same for a sequence-level route: prefill decisions kept in the cache's routing memory. */
export function decodeSequence(): Promise<PinnedCase> {
  return decodeCase(routedSpec({ granularity: 'sequence', placement: 'layer' }));
}

// ---------------------------------------------------------------------------------------------------------
// Static compositions (AdaptedModel `select`)

const STATIC_SPEC = {
  seed: 13,
  adapters: [
    { kind: 'lora', name: 'a', r: 4, alpha: 8, init: 'random', targets: { sites: ['attn.q', 'attn.v', 'mlp.down'] } },
    { kind: 'lora', name: 'b', r: 2, alpha: 4, init: 'random', targets: { sites: ['attn.q', 'attn.k', 'mlp.up'] } },
    { kind: 'lora', name: 'c', r: 3, alpha: 6, init: 'random', targets: { sites: 'all-linear' } },
    { kind: 'bottleneck', name: 'bn', reductionFactor: 4, placement: 'houlsby', init: 'random' },
  ],
};

/** A single LoRA, stack, parallel, average with weights, a stack with a bottleneck, and the spec's default (all in parallel). */
export function staticCompositions(): Promise<PinnedCase> {
  return withModel(llama, STATIC_SPEC, (base, model) => {
    const baseOut = baseLogits(base, 'llama/padded-2x6', PADDED_IDS, PADDED_MASK);
    const selections: Record<string, SelectionInput> = {
      single: { adapter: 'a' },
      stack: { combine: 'stack', adapters: ['a', 'b'] },
      parallel: { combine: 'parallel', adapters: ['a', 'b', 'c'] },
      average: { combine: 'average', adapters: ['a', 'c'], weights: [0.3, -0.7] },
      stackBottleneck: { combine: 'stack', adapters: ['a', 'bn'] },
      nested: { composition: { kind: 'average', children: [{ kind: 'stack', children: ['bn', 'b'] }, 'c'] } }, // default weights 1/2
      default: 'spec',
    };
    const outputs: Record<string, PinnedOutput> = {};
    for (const [name, select] of Object.entries(selections)) {
      outputs[name] = { logits: read(model.forward({ ids: PADDED_IDS, mask: PADDED_MASK, select })), base: baseOut };
    }
    return { outputs };
  });
}

// ---------------------------------------------------------------------------------------------------------
// Merged LoRA

/** mergeLora of one adapter, and of two with weights: the merged view's logits. */
export function mergedLora(): Promise<PinnedCase> {
  return withModel(llama, STATIC_SPEC, (base, model) => {
    const instance = (name: string): AdapterInstance => model.adapters.get(name) as AdapterInstance;
    const baseOut = baseLogits(base, 'llama/padded-2x6', PADDED_IDS, PADDED_MASK);
    const outputs: Record<string, PinnedOutput> = {};
    const entries = {
      one: [{ instance: instance('c') }],
      two: [
        { instance: instance('a'), weight: 0.8 },
        { instance: instance('b'), weight: -0.5 },
      ],
    };
    for (const [name, list] of Object.entries(entries)) {
      const merged = mergeLora(base, list);
      try {
        outputs[name] = { logits: read(merged.forward({ ids: PADDED_IDS, mask: PADDED_MASK })), base: baseOut };
      } finally {
        merged.dispose();
      }
    }
    return { outputs };
  });
}

// ---------------------------------------------------------------------------------------------------------
// Training forward

/** training: true (dropout 0): logits, LM loss, aux loss, and gradients (global and per-variable norms). */
export function trainingForward(): Promise<PinnedCase> {
  return withModel(llama, routedSpec(), (base, model) => {
    const batch = { ids: PADDED_IDS, mask: PADDED_MASK, lossMask: PADDED_MASK };
    const logits = read(model.forward({ ids: PADDED_IDS, mask: PADDED_MASK, training: true }));
    const sink: tf.Scalar[] = [];
    const kept: tf.Tensor[] = [];
    const named = model.namedVariables();
    const stableName = new Map([...named].map(([name, v]) => [v.name, name]));
    try {
      const { value, grads } = tf.variableGrads(() => {
        const output = model.forward({ ids: PADDED_IDS, mask: PADDED_MASK, training: true, routing: { auxLosses: sink } });
        const task = causalLmLoss(output, batch);
        kept.push(tf.keep(task));
        return sink.length === 0 ? task : tf.add(task, tf.addN(sink));
      }, model.variables());
      kept.push(value, ...Object.values(grads));
      const norms = new Map<string, number>();
      for (const [tfName, grad] of Object.entries(grads)) {
        const name = stableName.get(tfName);
        if (name === undefined) throw new Error(`gradient for an unknown variable ${tfName}`);
        norms.set(name, globalNorm([grad]));
      }
      const names = [...named.keys()].sort();
      const first = (t: tf.Tensor | undefined): number => (t === undefined ? Number.NaN : (t.dataSync()[0] as number));
      return {
        outputs: { logits: { logits, base: baseLogits(base, 'llama/padded-2x6', PADDED_IDS, PADDED_MASK) } },
        exact: { auxLosses: sink.length, gradNames: names },
        scalars: {
          loss: { values: [first(value), first(kept[0])], rtol: 1e-5 },
          aux: { values: sink.map((s) => first(s)), rtol: 1e-5 },
          gradGlobalNorm: { values: [globalNorm(Object.values(grads))], rtol: 1e-5 },
          gradNorms: { values: names.map((n) => norms.get(n) ?? 0), rtol: 1e-4 },
        },
      };
    } finally {
      tf.dispose([...sink, ...kept]);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// Mixed-adapter batch (RoutedRuntime: batched LoRA + row-gathered routed group + bare base in one pass)

interface RuntimeRequest {
  readonly name: string;
  readonly select: Selection;
  readonly rows: number[][];
}

const RUNTIME_REQUESTS: readonly RuntimeRequest[] = [
  { name: 'adapterA', select: { adapter: 'a' }, rows: [[3, 7, 1, 9, 4]] },
  {
    name: 'adapterB',
    select: { adapter: 'b' },
    rows: [
      [5, 11, 6],
      [8, 1, 13, 2],
    ],
  },
  { name: 'parallelAC', select: { combine: 'parallel', adapters: ['a', 'c'] }, rows: [[4, 4, 9, 10]] },
  { name: 'averageBC', select: { combine: 'average', adapters: ['b', 'c'], weights: [0.3, 0.7] }, rows: [[12, 3, 5, 7, 9]] },
  { name: 'stackAB', select: { combine: 'stack', adapters: ['a', 'b'] }, rows: [[6, 2, 8]] },
  {
    name: 'routed',
    select: { routed: 'moe' },
    rows: [
      [3, 9, 14, 15, 7],
      [10, 4],
    ],
  },
  { name: 'base', select: 'base', rows: [[7, 7, 3]] },
];

/**
 * One forward pass whose rows select different PEFT LoRA adapters, static combinations, a routed model and
 * the bare base (mixed-hooks.ts + the LoRA bank), per request; and every request served alone.
 */
export function mixedBatch(): Promise<PinnedCase> {
  return withModel(
    llama,
    {
      seed: 14,
      adapters: ['a', 'b', 'c'].map((name, i) => ({
        kind: 'lora',
        name,
        r: 2 + i,
        alpha: 4,
        init: 'random',
        targets: { sites: i === 2 ? 'all-linear' : ['attn.q', 'attn.v', 'mlp.down'] },
      })),
    },
    async (base, source) => {
      const dir = await mkdtemp(join(tmpdir(), 'routed-peft-pinned-'));
      // The mixed runtime's window closes as soon as every request is in (maxBatchSize), or after 1 s: one
      // pass even on a loaded machine. The solo runtime runs each call at once in a pass of its own.
      const mixedRuntime = RoutedRuntime.create({ base, routers, batching: { windowMs: 1000, maxBatchSize: RUNTIME_REQUESTS.length } });
      const soloRuntime = RoutedRuntime.create({ base, routers, batching: { windowMs: 0, maxBatchSize: 1 } });
      try {
        for (const name of ['a', 'b', 'c']) await writePeftAdapter(join(dir, name), source.adapters.get(name) as AdapterInstance, base);
        for (const runtime of [mixedRuntime, soloRuntime]) {
          for (const name of ['a', 'b', 'c']) await runtime.load(name, { kind: 'peft', dir: join(dir, name) });
          await runtime.load('moe', { kind: 'instance', model: adapted(base, routedSpec()) }); // the runtime owns it
        }
        const call = async (runtime: RoutedRuntime, request: RuntimeRequest): Promise<PinnedTensor> => {
          const out = await runtime.forward(request.rows, { select: request.select });
          return { shape: [...out.shape], values: Array.from(out.logits) };
        };
        const events: BatchEvent[] = [];
        const subscription = mixedRuntime.batches$.subscribe((e) => events.push(e));
        const together = await Promise.all(RUNTIME_REQUESTS.map((request) => call(mixedRuntime, request)));
        subscription.unsubscribe();
        const solo: PinnedTensor[] = [];
        for (const request of RUNTIME_REQUESTS) solo.push(await call(soloRuntime, request));
        const outputs: Record<string, PinnedOutput> = {};
        RUNTIME_REQUESTS.forEach((request, i) => {
          const padded = padLeft(request.rows);
          const baseOut = baseLogits(base, `llama/runtime-${request.name}`, padded.ids, padded.mask);
          const bare = request.select === 'base';
          outputs[`mixed.${request.name}`] = { logits: together[i] as PinnedTensor, base: baseOut, ...(bare ? { bare } : {}) };
          outputs[`solo.${request.name}`] = { logits: solo[i] as PinnedTensor, base: baseOut, ...(bare ? { bare } : {}) };
        });
        // Pinned exactly: the mixed requests really shared one pass, one group per selection.
        const passes = events.map((e) => ({ kind: e.kind, requests: e.requests, rows: e.rows, groups: e.groups }));
        return { outputs, exact: { mixedPasses: passes } };
      } finally {
        for (const runtime of [mixedRuntime, soloRuntime]) {
          runtime.dispose();
          await runtime.idle();
        }
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
}

// ---------------------------------------------------------------------------------------------------------
// The registry of paths (the fixture's case names)

export const PATHS: Readonly<Record<string, PinnedPath>> = {
  'routed/per-site-dense': { about: "site-routed top-k LoRA, fusion: false, strategy: 'dense' (routed-layer.ts fused dense mixture)", run: routedPerSiteDense },
  'routed/grouped': { about: "strategy 'grouped' as call option and spec field (routed-layer.ts groupedDelta)", run: routedGrouped },
  'routed/fused-host': { about: 'default fusion, 12 rows: host-routed shared-input groups (fused-group.ts, host gating)', run: routedFusedHost },
  'routed/fused-device': { about: "fusion: 'device', 12 rows: device top-k, spread gathered per slot", run: routedFusedDevice },
  'routed/many-rows': { about: 'default fusion, 3×22 = 66 rows: device top-k through dense gates, per-site A/spread matmuls', run: routedManyRows },
  'routed/padded': { about: 'left padding: host mask (fused host), device mask (fused device), per-site', run: routedPadded },
  'routed/null-expert': { about: 'nullExpert: true, host-fused and per-site', run: routedNullExpert },
  'routed/trace': { about: 'trace requested: host-fused, device-fused (dense gates read back), per-site; entries and weights pinned', run: routedTrace },
  'routed/mixed-kinds': {
    about: 'LoRA + bottleneck + (IA)³ experts: non-fused per-point path (dense and grouped combine; attn.o stays fused), with trace',
    run: routedMixedKinds,
  },
  'routed/layer-placement': { about: "placement: 'layer' (per-layer routers at beginLayer), with trace", run: routedLayerPlacement },
  'routed/model-placement': { about: "placement: 'model', readLayer: 1, k = 1, with trace", run: routedModelPlacement },
  'routed/sequence': { about: "granularity: 'sequence' (pooled decisions), without and with routingMask, with trace", run: routedSequence },
  'routed/gpt2': { about: 'gpt2 tiny model (no gate site): host-fused, device-fused, per-site', run: gpt2Routed },
  'decode/routed': { about: 'greedy generate of 6 tokens with KV cache (fused and per-site tokens) + each cached step’s last logits', run: decodeRouted },
  'decode/sequence': { about: 'the same for a sequence-level layer route (routing memory in the KV cache)', run: decodeSequence },
  'static/compositions': {
    about: 'use: single LoRA, stack, parallel, average with weights, stack with bottleneck, nested, spec default',
    run: staticCompositions,
  },
  'merged/lora': { about: 'mergeLora of one adapter and of two weighted adapters (merged Transformer view)', run: mergedLora },
  'train/routed': { about: 'training forward (dropout 0) of the routed model: logits, LM + aux loss, gradient norms', run: trainingForward },
  'runtime/mixed-batch': {
    about: 'RoutedRuntime: one pass mixing adapters, combinations, a routed model and the base (batched LoRA + row groups); and each solo',
    run: mixedBatch,
  },
};
