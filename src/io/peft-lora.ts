/**
 * Hugging Face PEFT LoRA adapters: read them (from any FileSource: disk, URL, dropped files) into
 * routed-peft LoRA modules, and encode our LoRA adapters so that `PeftModel.from_pretrained` loads them
 * unchanged (directories on disk: `peft-adapter.ts`) (facts from huggingface/peft
 * `tuners/lora/{config,layer}.py`, `utils/save_and_load.py`, `tuners/tuners_utils.py`).
 *
 * A directory holds `adapter_config.json` (see peft-config.ts) and `adapter_model.safetensors` (metadata
 * {"format":"pt"}), with one pair of tensors per adapted module:
 *
 *   base_model.model.<module path>.lora_A.weight   [r, in]
 *   base_model.model.<module path>.lora_B.weight   [out, r]
 *
 * Module paths are the Hugging Face ones: llama `model.layers.{i}.self_attn.{q,k,v,o}_proj`,
 * `model.layers.{i}.mlp.{gate,up,down}_proj`; gpt2 `transformer.h.{i}.attn.c_attn`, `….attn.c_proj`,
 * `….mlp.c_fc`, `….mlp.c_proj`. For gpt2's Conv1D layers in/out are read from the [in, out] weight, so the
 * A/B layout is the same as for a linear layer; `fan_in_fan_out: true` only changes how PEFT merges ΔW into
 * the transposed weight. The adapter delta is Δy = s·B·A·x with s = lora_alpha / r, or lora_alpha / √r
 * with `use_rslora` (PEFT LoraLayer.update_layer). The reader accepts keys with or without the
 * `base_model.model.` prefix and with an adapter name before `.weight` (`lora_A.default.weight`).
 *
 * gpt2's fused c_attn. PEFT puts ONE LoRA on c_attn (x [D] → q|k|v [3D]): A [R, D], B [3D, R], one scale s.
 * routed-peft has three sites q, k, v (c_attn is split at load), each with its own LoRA.
 *
 *  - Reading: B's rows split into B_q, B_k, B_v ([D, R] each) and A is shared: q gets (A, B_q, R, alpha),
 *    and so on. This is exact: Δq = s·B_q·A·x is exactly the q rows of s·B·A·x.
 *    When R = 3k and B is block-diagonal (the off-diagonal [D, k] blocks exactly zero, B not all zero),
 *    the adapter is really three independent rank-k LoRAs (the form this writer produces) and is read
 *    as such: q gets (A[0:k], B_q[:, 0:k], rank k) — also exact, since the zero blocks contribute nothing.
 *    The alpha is adjusted so the scale is unchanged: alpha/3 (plain) or alpha/√3 (rsLoRA).
 *  - Writing: if A_q, A_k and A_v are identical (e.g. an adapter read from PEFT), the compact form
 *    A = A_q [r, D], B = [B_q; B_k; B_v] [3D, r] with the same r and alpha is written. Otherwise three
 *    separate LoRAs become one LoRA of rank 3r:
 *        A = [A_q; A_k; A_v]                 [3r, D]
 *        B = blockdiag(B_q, B_k, B_v)         [3D, 3r]
 *    so B·A = blockdiag(B_q·A_q, B_k·A_k, B_v·A_v) stacked on the output side — exactly our three deltas.
 *    The scale must stay s: r' = 3r, so lora_alpha' = 3·alpha (plain, s = alpha/r = 3alpha/3r) or
 *    √3·alpha (rsLoRA, s = alpha/√r = √3·alpha/√(3r)). One LoRA has one rank and one alpha, so q, k and v
 *    must be adapted in the same layers with the same rank and alpha — otherwise writing fails with an
 *    error explaining why. (A written-out zero-B adapter has an all-zero B and reads back in the shared
 *    form, rank 3r: the same function, different variables.)
 *
 * gpt2's `c_proj` names both attn.c_proj (our attn.o) and mlp.c_proj (mlp.down), since PEFT matches the
 * last components of module paths. When only one of the two is adapted, target_modules is written as a
 * full regular expression (PEFT applies `re.fullmatch` to the module path) that also encodes the layers,
 * because PEFT refuses layers_to_transform with a regex.
 *
 * Per-module ranks and alphas are written as rank_pattern / alpha_pattern keyed by full module path
 * (PEFT's `get_pattern_key` matches `^(.*\.)?(key)$`), with r and lora_alpha the most common values.
 * The config holds only long-standing LoraConfig fields (all readable since PEFT 0.9, which crashes on
 * fields it does not know); newer fields take their defaults when PEFT loads it.
 *
 * Which tensors load follows PEFT: a module is adapted only if target_modules (and layers_to_transform)
 * select it; tensors for other modules are skipped with a warning, as PEFT ignores unexpected keys.
 * Modules that the targets imply but the file lacks are created with B = 0 (no effect), as PEFT leaves
 * them at their initialisation. A (layer, site) the targets do not select gets no module at all (rankPattern
 * 0); the writer uses that for adapters that leave some site of some layer empty (an AdaLoRA export whose
 * triplets there were all pruned): target_modules is then a regex naming exactly the adapted modules.
 */
import * as tf from '@tensorflow/tfjs';
import { LoraModule, loraScale } from '../adapters/lora/index.js';
import { patternOverride } from '../adapters/patterns.js';
import { AdapterSpec } from '../adapters/registry.js';
import type { ModelConfig } from '../base/config.js';
import { LLAMA_SITE_MODULES } from '../base/families/llama.js';
import { siteShape } from '../base/site-shape.js';
import { FAMILY_SITES, type ModelFamily, type SiteName } from '../base/sites.js';
import { createAdapter, type AdapterInstance } from '../adapters/instance.js';
import { parseConfig } from '../config/parse.js';
import { RegexError, compileSafeRegex, type SafeRegex } from '../config/safe-regex.js';
import { CheckpointError, ConfigError, formatShape } from '../errors.js';
import { assertFiniteTensor, type FiniteOptions } from '../formats/finite.js';
import { readJson, type FileSource } from '../formats/file-source.js';
import { PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, parsePeftLoraConfig, type PeftLoraConfig } from './peft-config.js';
import { decodeFloat32, serializeSafetensors, type TensorToWrite } from '../formats/safetensors-codec.js';
import { readSafetensorsFrom } from '../formats/safetensors-source.js';

export { PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE } from './peft-config.js';

// ---------------------------------------------------------------------------------------------------------
// Module names

/** A module PEFT can adapt in one layer: its path relative to the layer, its last path component, and the
 * sites it covers in output-row order (gpt2's c_attn covers q, k, v). */
interface FamilyModule {
  readonly rel: string;
  readonly short: string;
  readonly sites: readonly SiteName[];
}

const LLAMA_MODULES: readonly FamilyModule[] = FAMILY_SITES.llama.map((site) => {
  const rel = LLAMA_SITE_MODULES[site];
  return { rel, short: rel.slice(rel.lastIndexOf('.') + 1), sites: [site] };
});

const GPT2_MODULES: readonly FamilyModule[] = [
  { rel: 'attn.c_attn', short: 'c_attn', sites: ['attn.q', 'attn.k', 'attn.v'] },
  { rel: 'attn.c_proj', short: 'c_proj', sites: ['attn.o'] },
  { rel: 'mlp.c_fc', short: 'c_fc', sites: ['mlp.up'] },
  { rel: 'mlp.c_proj', short: 'c_proj', sites: ['mlp.down'] },
];

const FAMILY_MODULES: Readonly<Record<ModelFamily, readonly FamilyModule[]>> = { llama: LLAMA_MODULES, gpt2: GPT2_MODULES };

/** Path of layer i's module list in the Hugging Face causal-LM model (what PEFT's module names start with). */
const LAYER_PREFIX: Readonly<Record<ModelFamily, string>> = { llama: 'model.layers.', gpt2: 'transformer.h.' };

/** Key prefix PEFT adds (PeftModel.base_model = LoraModel, whose .model is the HF model). */
const KEY_PREFIX = 'base_model.model.';

function modulePath(family: ModelFamily, layer: number, module: FamilyModule): string {
  return `${LAYER_PREFIX[family]}${layer}.${module.rel}`;
}

/** [out, in] of a PEFT module: in from its first site, out the sum over its sites (3D for c_attn). */
function moduleWidths(config: ModelConfig, module: FamilyModule): { inFeatures: number; outFeatures: number; siteOuts: number[] } {
  const siteOuts = module.sites.map((s) => siteShape(config, s)[0]);
  const first = module.sites[0] as SiteName;
  return { inFeatures: siteShape(config, first)[1], outFeatures: siteOuts.reduce((a, b) => a + b, 0), siteOuts };
}

/** Parses a module path (no `base_model.model.` prefix) of the family; gpt2 paths may omit `transformer.`. */
function parseModulePath(family: ModelFamily, path: string): { layer: number; module: FamilyModule } | undefined {
  const match = family === 'llama' ? /^model\.layers\.(\d+)\.(.+)$/.exec(path) : /^(?:transformer\.)?h\.(\d+)\.(.+)$/.exec(path);
  if (match === null) return undefined;
  const module = FAMILY_MODULES[family].find((m) => m.rel === match[2]);
  if (module === undefined) return undefined;
  return { layer: Number(match[1]), module };
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Compiles a PEFT (Python) regex for a full match on the linear-time RE2 engine (adapter files are untrusted:
 * a catastrophic pattern such as `(a+)+$` must not hang the loader); undefined when RE2 cannot compile it
 * (Python-only syntax, backreferences, lookaround, or longer than MAX_REGEX_SOURCE).
 */
function fullMatchRegex(source: string): SafeRegex | undefined {
  try {
    return compileSafeRegex(source, { what: 'target_modules regex' });
  } catch (error) {
    if (error instanceof RegexError) return undefined;
    throw error;
  }
}

/** PEFT's list matching (check_target_module_exists): the path equals an entry or ends with `.entry`. */
function listSelects(entries: readonly string[], path: string): boolean {
  return entries.some((t) => path === t || path.endsWith(`.${t}`));
}

/**
 * The sites a PEFT `target_modules` value adapts in a model of `family` (for the CLI). Entries are matched
 * as PEFT matches them against module paths (`model.layers.{i}.self_attn.q_proj`,
 * `transformer.h.{i}.attn.c_attn`, …) of layers 0 .. nLayers − 1 (default 64): a list entry must equal a
 * path or its last components, a string is a full-match regular expression, and "all-linear" takes every
 * site. gpt2's c_attn gives q, k and v; its c_proj gives attn.o and mlp.down. Throws ConfigError for an
 * entry that matches no module, naming the entry and listing the family's module names.
 */
export function peftTargetsToSites(targetModules: string | readonly string[], family: ModelFamily, options: { readonly nLayers?: number } = {}): SiteName[] {
  const nLayers = options.nLayers ?? 64;
  const modules = FAMILY_MODULES[family];
  const names = [...new Set(modules.map((m) => m.short))].join(', ');
  const chosen = new Set<SiteName>();
  const paths: { path: string; module: FamilyModule }[] = [];
  for (let layer = 0; layer < nLayers; layer++) for (const module of modules) paths.push({ path: modulePath(family, layer, module), module });

  if (typeof targetModules === 'string') {
    if (targetModules.toLowerCase() === 'all-linear') return [...FAMILY_SITES[family]];
    const regex = fullMatchRegex(targetModules);
    if (regex === undefined) {
      throw new RegexError(`target_modules ${JSON.stringify(targetModules.slice(0, 200))} is not a regular expression the linear-time engine can compile`, {
        path: 'target_modules',
        hint: 'Use a list of module names, or a regex without backreferences, lookaround or Python-only syntax',
      });
    }
    for (const { path, module } of paths) if (regex.fullMatch(path)) for (const s of module.sites) chosen.add(s);
    if (chosen.size === 0) {
      throw new ConfigError(`target_modules regex ${JSON.stringify(targetModules)} matches no module of a ${family} model`, {
        path: 'target_modules',
        hint: `PEFT matches the regex against full module paths such as ${modulePath(family, 0, modules[0] as FamilyModule)}`,
      });
    }
  } else {
    targetModules.forEach((entry, i) => {
      const hits = paths.filter(({ path }) => listSelects([entry], path));
      if (hits.length === 0) {
        throw new ConfigError(`target_modules entry ${JSON.stringify(entry)} matches no module of a ${family} model`, {
          path: `target_modules[${i}]`,
          hint: `Adaptable ${family} modules: ${names}`,
        });
      }
      for (const { module } of hits) for (const s of module.sites) chosen.add(s);
    });
  }
  return FAMILY_SITES[family].filter((s) => chosen.has(s));
}

/** PEFT's get_pattern_key: the first key with `^(.*\.)?(key)$` matching the module path (run on RE2; compiled once per key). */
function peftPatternValue<T>(patterns: Readonly<Record<string, T>>, path: string, file: string, field: string, cache: Map<string, SafeRegex>): T | undefined {
  for (const [key, value] of Object.entries(patterns)) {
    let regex = cache.get(key);
    if (regex === undefined) {
      try {
        regex = compileSafeRegex(`(.*\\.)?(${key})`, { what: `${field} key` });
      } catch (cause) {
        throw new CheckpointError(`${field} key ${JSON.stringify(key.slice(0, 200))} is not a regular expression the linear-time engine can compile`, {
          path: file,
          hint: 'Use module paths such as model.layers.0.self_attn.q_proj as keys (no backreferences or lookaround)',
          cause,
        });
      }
      cache.set(key, regex);
    }
    if (regex.fullMatch(path)) return value;
  }
  return undefined;
}

/** The most frequent value; ties go to the one seen first. */
function mostCommon(values: readonly number[]): number {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let best = values[0] as number;
  for (const [v, c] of counts) if (c > (counts.get(best) ?? 0)) best = v;
  return best;
}

/** Removes floating-point dust from a derived alpha (8.000000000000002 → 8). */
function tidyNumber(x: number): number {
  return Number(x.toPrecision(15));
}

// ---------------------------------------------------------------------------------------------------------
// Writing

/** What writePeftAdapter wrote. */
export interface PeftWriteResult {
  /** adapter_config.json contents. */
  readonly config: Readonly<Record<string, unknown>>;
  /** Tensor names in adapter_model.safetensors, in file order. */
  readonly tensorNames: readonly string[];
}

export interface WritePeftOptions {
  /** Written as base_model_name_or_path (PEFT uses it to find the base model); default null. */
  readonly baseModelName?: string;
}

/** One LoRA as PEFT sees it. */
interface PeftModuleValues {
  readonly path: string;
  readonly rank: number;
  readonly alpha: number;
  readonly a: Float32Array; // [r, in]
  readonly b: Float32Array; // [out, r]
  readonly inFeatures: number;
  readonly outFeatures: number;
}

interface OurModule {
  readonly layer: number;
  readonly site: SiteName;
  readonly rank: number;
  readonly alpha: number;
  readonly a: Float32Array; // [r, I]
  readonly b: Float32Array; // [O, r]
  readonly inFeatures: number;
  readonly outFeatures: number;
}

function sameValues(x: Float32Array, y: Float32Array): boolean {
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** Fuses our q, k, v LoRAs of one gpt2 layer into one PEFT LoRA on c_attn (see the file header). */
function fuseQkv(path: string, parts: readonly OurModule[], rslora: boolean): PeftModuleValues {
  const [q, k, v] = parts as [OurModule, OurModule, OurModule];
  const r = q.rank;
  const D = q.inFeatures;
  const outs = parts.map((p) => p.outFeatures);
  const outTotal = outs.reduce((s, o) => s + o, 0);
  if (sameValues(q.a, k.a) && sameValues(q.a, v.a)) {
    const b = new Float32Array(outTotal * r); // [3D, r] = [B_q; B_k; B_v]
    let row = 0;
    for (const p of parts) {
      b.set(p.b, row * r);
      row += p.outFeatures;
    }
    return { path, rank: r, alpha: q.alpha, a: q.a, b, inFeatures: D, outFeatures: outTotal };
  }
  const R = 3 * r;
  const a = new Float32Array(R * D); // [3r, D] = [A_q; A_k; A_v]
  parts.forEach((p, i) => a.set(p.a, i * r * D));
  const b = new Float32Array(outTotal * R); // [3D, 3r] block-diagonal
  let row0 = 0;
  parts.forEach((p, i) => {
    for (let row = 0; row < p.outFeatures; row++) {
      b.set(p.b.subarray(row * r, (row + 1) * r), (row0 + row) * R + i * r);
    }
    row0 += p.outFeatures;
  });
  // Same scale with rank 3r: alpha/r = 3alpha/(3r); alpha/√r = √3·alpha/√(3r).
  const alpha = rslora ? q.alpha * Math.sqrt(3) : 3 * q.alpha;
  return { path, rank: R, alpha, a, b, inFeatures: D, outFeatures: outTotal };
}

/** Sorts object keys recursively, as Python's json.dumps(sort_keys=True) does. */
function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (typeof value === 'object' && value !== null) {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(value).sort()) out[key] = sortKeys((value as Record<string, unknown>)[key]);
    return out;
  }
  return value;
}

/** The two files of a PEFT adapter directory, ready to write. */
export interface EncodedPeftAdapter extends PeftWriteResult {
  /** adapter_config.json's text. */
  readonly configJson: string;
  /** adapter_model.safetensors' bytes. */
  readonly weights: Uint8Array;
}

/**
 * Encodes a LoRA adapter as PEFT's adapter_config.json + adapter_model.safetensors. Throws ConfigError when
 * the adapter is not a LoRA, was built for another model, or (gpt2) cannot be expressed on the fused c_attn.
 */
export async function encodePeftAdapter(
  adapter: AdapterInstance,
  model: { readonly config: ModelConfig },
  options: WritePeftOptions = {},
): Promise<EncodedPeftAdapter> {
  const spec = adapter.spec;
  if (spec.kind !== 'lora') {
    throw new ConfigError(`adapter ${JSON.stringify(adapter.name)} is a ${spec.kind} adapter; only LoRA adapters can be saved in PEFT format`, {
      hint: 'Save other adapter kinds with the routed-peft checkpoint format',
    });
  }
  const config = model.config;
  const family = config.family;
  const where = `adapter ${adapter.name}`;

  const ours: OurModule[] = [];
  for (const module of adapter.modules.values()) {
    if (!(module instanceof LoraModule)) throw new ConfigError(`${where}: module at layer ${module.layer} is not a LoRA module`);
    const site = module.site;
    const [outFeatures, inFeatures] = siteShape(config, site);
    if (module.a.shape[1] !== inFeatures || module.b.shape[0] !== outFeatures || module.layer >= config.nLayers) {
      throw new ConfigError(
        `${where}: the LoRA at layer ${module.layer} ${site} has A ${formatShape(module.a.shape)} and B ${formatShape(module.b.shape)}, which do not fit this ${family} model (site [out, in] = ${formatShape([outFeatures, inFeatures])})`,
        { hint: 'Pass the model the adapter was created for' },
      );
    }
    const alpha = patternOverride(spec.alphaPattern, module.layer, site, `${where}.alphaPattern`) ?? spec.alpha;
    ours.push({
      layer: module.layer,
      site,
      rank: module.rank,
      alpha,
      a: Float32Array.from(await module.a.data()),
      b: Float32Array.from(await module.b.data()),
      inFeatures,
      outFeatures,
    });
  }
  if (ours.length === 0) throw new ConfigError(`${where} has no modules to save`);
  const siteOrder = FAMILY_SITES[family];
  ours.sort((x, y) => x.layer - y.layer || siteOrder.indexOf(x.site) - siteOrder.indexOf(y.site));

  // One PEFT module per our module, except gpt2's q, k, v which fuse into c_attn.
  const peft: PeftModuleValues[] = [];
  const layers = [...new Set(ours.map((m) => m.layer))].sort((x, y) => x - y);
  const sites = siteOrder.filter((s) => ours.some((m) => m.site === s));
  for (const layer of layers) {
    const inLayer = ours.filter((m) => m.layer === layer);
    for (const module of FAMILY_MODULES[family]) {
      const parts = module.sites.map((s) => inLayer.find((m) => m.site === s));
      const present = parts.filter((p): p is OurModule => p !== undefined);
      if (present.length === 0) continue;
      const path = modulePath(family, layer, module);
      if (present.length === 1 && module.sites.length === 1) {
        const p = present[0] as OurModule;
        peft.push({ path, rank: p.rank, alpha: p.alpha, a: p.a, b: p.b, inFeatures: p.inFeatures, outFeatures: p.outFeatures });
        continue;
      }
      const missing = module.sites.filter((_, i) => parts[i] === undefined);
      if (missing.length > 0) {
        throw new ConfigError(
          `${where} adapts ${present.map((p) => p.site).join(', ')} but not ${missing.join(', ')} in layer ${layer}: gpt2 computes q, k and v with one fused Conv1D (${module.rel}), and a PEFT LoRA on it always changes all three`,
          { hint: 'Target attn.q, attn.k and attn.v together (e.g. sites ["attn.q", "attn.k", "attn.v"]) to save a gpt2 LoRA in PEFT format' },
        );
      }
      const ranks = present.map((p) => p.rank);
      const alphas = present.map((p) => p.alpha);
      if (new Set(ranks).size > 1 || new Set(alphas).size > 1) {
        throw new ConfigError(
          `${where} gives q, k, v of layer ${layer} ranks ${ranks.join('/')} and alphas ${alphas.join('/')}: PEFT stores one LoRA, with one rank and one alpha, on gpt2's fused ${module.rel}`,
          { hint: 'Use the same rank and alpha for attn.q, attn.k and attn.v (rankPattern / alphaPattern must not tell them apart)' },
        );
      }
      peft.push(fuseQkv(path, present, spec.rslora));
    }
  }

  const r = mostCommon(peft.map((m) => m.rank));
  const loraAlpha = mostCommon(peft.map((m) => m.alpha));
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  for (const m of peft) {
    if (m.rank !== r) rankPattern[m.path] = m.rank;
    if (m.alpha !== loraAlpha) alphaPattern[m.path] = m.alpha;
  }

  // target_modules: last components (a list) unless gpt2's ambiguous c_proj forces a regex.
  const allLayers = layers.length === config.nLayers;
  const usedModules = FAMILY_MODULES[family].filter((m) => m.sites.some((s) => sites.includes(s)));
  const shorts = [...new Set(usedModules.map((m) => m.short))];
  const ambiguous = shorts.some((short) => FAMILY_MODULES[family].some((m) => m.short === short && !usedModules.includes(m)));
  // Not every used module in every layer (an AdaLoRA export with a fully pruned site): a regex naming exactly
  // the adapted modules of each layer, so PEFT creates no module the file has no tensors for.
  const present = new Set(peft.map((m) => m.path));
  const rectangular = layers.every((layer) => usedModules.every((m) => present.has(modulePath(family, layer, m))));
  let targetModules: string | string[];
  let layersToTransform: number[] | null = null;
  if (!rectangular) {
    const perLayer = layers.map((layer) => {
      const rels = usedModules.filter((m) => present.has(modulePath(family, layer, m))).map((m) => escapeRegExp(m.rel));
      return `${layer}\\.(?:${rels.join('|')})`;
    });
    targetModules = `${escapeRegExp(LAYER_PREFIX[family])}(?:${perLayer.join('|')})`;
  } else if (ambiguous) {
    const layerPart = allLayers ? '\\d+' : `(?:${layers.join('|')})`;
    targetModules = `${escapeRegExp(LAYER_PREFIX[family])}${layerPart}\\.(?:${usedModules.map((m) => escapeRegExp(m.rel)).join('|')})`;
  } else {
    targetModules = shorts;
    if (!allLayers) layersToTransform = layers;
  }

  const peftConfig = sortKeys({
    alpha_pattern: alphaPattern,
    auto_mapping: null,
    base_model_name_or_path: options.baseModelName ?? null,
    bias: 'none',
    fan_in_fan_out: family === 'gpt2',
    inference_mode: true,
    init_lora_weights: true,
    layers_pattern: null,
    layers_to_transform: layersToTransform,
    lora_alpha: loraAlpha,
    lora_dropout: spec.dropout,
    modules_to_save: null,
    peft_type: 'LORA',
    r,
    rank_pattern: rankPattern,
    revision: null,
    target_modules: targetModules,
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: spec.rslora,
  }) as Record<string, unknown>;

  const tensors = new Map<string, TensorToWrite>();
  for (const m of peft) {
    tensors.set(`${KEY_PREFIX}${m.path}.lora_A.weight`, { dtype: 'F32', shape: [m.rank, m.inFeatures], data: m.a });
    tensors.set(`${KEY_PREFIX}${m.path}.lora_B.weight`, { dtype: 'F32', shape: [m.outFeatures, m.rank], data: m.b });
  }
  const names = [...tensors.keys()].sort();
  const bytes = serializeSafetensors(new Map(names.map((n) => [n, tensors.get(n) as TensorToWrite])), { format: 'pt' });
  return { config: peftConfig, tensorNames: names, configJson: JSON.stringify(peftConfig, null, 2), weights: bytes };
}

// ---------------------------------------------------------------------------------------------------------
// Reading

export interface ReadPeftOptions extends FiniteOptions {
  /** Name of the created adapter; default: the directory's name (characters outside [A-Za-z0-9_.-] become -). */
  readonly name?: string;
}

export interface ReadPeftResult {
  /** The adapter, with LoRA modules holding the file's values. The caller disposes it. */
  readonly instance: AdapterInstance;
  /** Ignored config fields, skipped tensors, and other things a user should hear about (one line each). */
  readonly warnings: string[];
  readonly config: PeftLoraConfig;
}

interface TensorPair {
  readonly path: string;
  readonly layer: number;
  readonly module: FamilyModule;
  a?: string;
  b?: string;
}

const TENSOR_KEY = /^(.+)\.lora_(A|B)(?:\.([^.]+))?\.weight$/;

function describeKnownPaths(family: ModelFamily): string {
  return FAMILY_MODULES[family].map((m) => `${LAYER_PREFIX[family]}{i}.${m.rel}`).join(', ');
}

/** Does the config's target_modules / layers_to_transform select this module (PEFT check_target_module_exists)? */
function configSelects(config: PeftLoraConfig, path: string, layer: number, regex: SafeRegex | undefined): boolean {
  const targets = config.target_modules;
  if (targets === null) return true;
  if (typeof targets === 'string') {
    if (targets.toLowerCase() === 'all-linear') return true;
    return regex === undefined ? true : regex.fullMatch(path);
  }
  if (targets.includes(path)) return true;
  if (!listSelects(targets, path)) return false;
  const layersToTransform = config.layers_to_transform;
  if (layersToTransform === null || (Array.isArray(layersToTransform) && layersToTransform.length === 0)) return true;
  return typeof layersToTransform === 'number' ? layer === layersToTransform : layersToTransform.includes(layer);
}

function isBlockDiagonal(b: Float32Array, rowsPerBlock: readonly number[], cols: number, colsPerBlock: number): boolean {
  let row0 = 0;
  let anyNonZero = false;
  for (let i = 0; i < rowsPerBlock.length; i++) {
    const rows = rowsPerBlock[i] as number;
    for (let row = row0; row < row0 + rows; row++) {
      for (let col = 0; col < cols; col++) {
        const value = b[row * cols + col] as number;
        const onDiagonal = Math.floor(col / colsPerBlock) === i;
        if (onDiagonal) anyNonZero ||= value !== 0;
        else if (value !== 0) return false;
      }
    }
    row0 += rows;
  }
  return anyNonZero;
}

/** Splits one PEFT LoRA on a module into our per-site modules (only c_attn has several sites). */
function splitModule(
  pair: TensorPair,
  rank: number,
  alpha: number,
  a: Float32Array,
  b: Float32Array,
  widths: { inFeatures: number; siteOuts: number[] },
  rslora: boolean,
): OurModule[] {
  const { module, layer } = pair;
  const I = widths.inFeatures;
  if (module.sites.length === 1) {
    return [{ layer, site: module.sites[0] as SiteName, rank, alpha, a, b, inFeatures: I, outFeatures: widths.siteOuts[0] as number }];
  }
  const n = module.sites.length;
  const out: OurModule[] = [];
  if (rank % n === 0 && isBlockDiagonal(b, widths.siteOuts, rank, rank / n)) {
    // n independent rank-k LoRAs written as one block-diagonal LoRA: take them apart, same scale.
    const k = rank / n;
    const partAlpha = tidyNumber(rslora ? alpha / Math.sqrt(n) : alpha / n);
    let row0 = 0;
    module.sites.forEach((site, i) => {
      const O = widths.siteOuts[i] as number;
      const partA = a.slice(i * k * I, (i + 1) * k * I); // [k, I]
      const partB = new Float32Array(O * k); // [O, k]
      for (let row = 0; row < O; row++) partB.set(b.subarray((row0 + row) * rank + i * k, (row0 + row) * rank + (i + 1) * k), row * k);
      out.push({ layer, site, rank: k, alpha: partAlpha, a: partA, b: partB, inFeatures: I, outFeatures: O });
      row0 += O;
    });
    return out;
  }
  // Shared A, B split by output rows.
  let row0 = 0;
  module.sites.forEach((site, i) => {
    const O = widths.siteOuts[i] as number;
    out.push({ layer, site, rank, alpha, a, b: b.slice(row0 * rank, (row0 + O) * rank), inFeatures: I, outFeatures: O });
    row0 += O;
  });
  return out;
}

function sanitizeName(name: string): string {
  const cleaned = name.replace(/[^A-Za-z0-9_.-]+/g, '-').slice(0, 100);
  return cleaned === '' || cleaned === '.' || cleaned === '..' ? 'peft-adapter' : cleaned;
}

/**
 * Site-level override patterns: a site whose modules all share one value ≠ the default gets a site key
 * (`attn.v`); a site with mixed values gets layer keys (`layers.3.attn.v`) where they differ.
 */
function overridePatterns(modules: readonly OurModule[], value: (m: OurModule) => number, fallback: number): Record<string, number> {
  const pattern: Record<string, number> = {};
  const bySite = new Map<SiteName, OurModule[]>();
  for (const m of modules) bySite.set(m.site, [...(bySite.get(m.site) ?? []), m]);
  for (const [site, list] of bySite) {
    const values = new Set(list.map(value));
    if (values.size === 1) {
      const only = value(list[0] as OurModule);
      if (only !== fallback) pattern[site] = only;
      continue;
    }
    for (const m of list) if (value(m) !== fallback) pattern[`layers.${m.layer}.${site}`] = value(m);
  }
  return pattern;
}

/**
 * Reads a PEFT LoRA adapter directory (a FileSource: disk, URL, dropped files) into an AdapterInstance of
 * LoRA modules for `model`. Every tensor is checked against the base model's widths and the config's ranks;
 * errors are CheckpointErrors naming the file, the tensor, and both shapes where shapes disagree. The
 * adapter's default name is `options.name`, else `defaultName`.
 */
export async function readPeftAdapterFrom(
  files: FileSource,
  model: { readonly config: ModelConfig },
  options: ReadPeftOptions & { readonly defaultName?: string } = {},
): Promise<ReadPeftResult> {
  const configPath = files.path(PEFT_CONFIG_FILE);
  const weightsPath = files.path(PEFT_WEIGHTS_FILE);
  if (!(await files.exists(PEFT_CONFIG_FILE))) {
    throw new CheckpointError(`the adapter directory has no ${PEFT_CONFIG_FILE}`, {
      path: configPath,
      hint: 'A PEFT adapter directory holds adapter_config.json and adapter_model.safetensors',
    });
  }
  const { config, warnings } = parsePeftLoraConfig(await readJson(files, PEFT_CONFIG_FILE, PEFT_CONFIG_FILE), configPath);
  if (!(await files.exists(PEFT_WEIGHTS_FILE))) {
    const pickle = await files.exists('adapter_model.bin');
    throw new CheckpointError(`the adapter directory has no ${PEFT_WEIGHTS_FILE}`, {
      path: weightsPath,
      hint: pickle
        ? 'Only safetensors are read (adapter_model.bin is a pickle and is never loaded); re-save it with save_pretrained(..., safe_serialization=True)'
        : 'A PEFT adapter directory holds adapter_config.json and adapter_model.safetensors',
    });
  }
  const file = await readSafetensorsFrom(files, PEFT_WEIGHTS_FILE);

  const base = model.config;
  const family = base.family;
  if (config.fan_in_fan_out !== (family === 'gpt2')) {
    warnings.push(
      `${configPath}: fan_in_fan_out is ${config.fan_in_fan_out} but ${family} uses ${family === 'gpt2' ? 'Conv1D [in, out]' : 'Linear [out, in]'} weights; PEFT corrects it to ${family === 'gpt2'} (it does not change lora_A / lora_B)`,
    );
  }
  const targetRegex =
    typeof config.target_modules === 'string' && config.target_modules.toLowerCase() !== 'all-linear' ? fullMatchRegex(config.target_modules) : undefined;
  if (typeof config.target_modules === 'string' && config.target_modules.toLowerCase() !== 'all-linear' && targetRegex === undefined) {
    warnings.push(
      `${configPath}: target_modules regex ${JSON.stringify(config.target_modules.slice(0, 200))} cannot be compiled by the linear-time regex engine (backreferences, lookaround or Python-only syntax); every tensor in the file is loaded`,
    );
  }

  // 1. Map every tensor name to (module path, A or B).
  const pairs = new Map<string, TensorPair>();
  const adapterNames = new Set<string>();
  for (const name of file.entries.keys()) {
    const stripped = name.startsWith(KEY_PREFIX) ? name.slice(KEY_PREFIX.length) : name;
    const match = TENSOR_KEY.exec(stripped);
    const parsed = match === null ? undefined : parseModulePath(family, match[1] as string);
    if (match === null || parsed === undefined) {
      const dora = name.includes('lora_magnitude_vector');
      throw new CheckpointError(`cannot map tensor ${JSON.stringify(name)} to a LoRA on a ${family} site`, {
        path: weightsPath,
        hint: dora
          ? 'lora_magnitude_vector belongs to DoRA, which is not supported'
          : `Expected [base_model.model.]<module>.lora_A.weight / .lora_B.weight with <module> one of ${describeKnownPaths(family)}`,
      });
    }
    if (match[3] !== undefined) adapterNames.add(match[3]);
    const canonical = modulePath(family, parsed.layer, parsed.module);
    if (parsed.layer >= base.nLayers) {
      throw new CheckpointError(`tensor ${JSON.stringify(name)} is for layer ${parsed.layer}, but the base model has ${base.nLayers} layers`, {
        path: weightsPath,
        hint: 'Load the adapter onto the base model it was trained on',
      });
    }
    const pair = pairs.get(canonical) ?? { path: canonical, layer: parsed.layer, module: parsed.module };
    const part = match[2] === 'A' ? 'a' : 'b';
    const previous = pair[part];
    if (previous !== undefined) {
      throw new CheckpointError(`tensors ${JSON.stringify(previous)} and ${JSON.stringify(name)} are both lora_${match[2]} of ${canonical}`, {
        path: weightsPath,
        hint: 'Keep one adapter per file',
      });
    }
    pair[part] = name;
    pairs.set(canonical, pair);
  }
  if (adapterNames.size > 1) {
    throw new CheckpointError(`tensors name several adapters (${[...adapterNames].join(', ')})`, {
      path: weightsPath,
      hint: 'Save each adapter in its own directory',
    });
  }
  if (pairs.size === 0) {
    throw new CheckpointError(`${PEFT_WEIGHTS_FILE} holds no LoRA tensors`, { path: weightsPath });
  }

  // 2. Check pairs and shapes, decode, and split into our sites.
  const modules: OurModule[] = [];
  const rankCache = new Map<string, SafeRegex>();
  const alphaCache = new Map<string, SafeRegex>();
  const ordered = [...pairs.values()].sort((x, y) => x.layer - y.layer || FAMILY_MODULES[family].indexOf(x.module) - FAMILY_MODULES[family].indexOf(y.module));
  for (const pair of ordered) {
    if (pair.a === undefined || pair.b === undefined) {
      const have = (pair.a ?? pair.b) as string;
      const wanted = pair.a === undefined ? 'lora_A' : 'lora_B';
      throw new CheckpointError(`tensor ${JSON.stringify(have)} has no matching ${wanted} for ${pair.path}`, {
        path: weightsPath,
        hint: 'Every adapted module needs both lora_A and lora_B; the file is incomplete',
      });
    }
    if (!configSelects(config, pair.path, pair.layer, targetRegex)) {
      warnings.push(
        `${weightsPath}: skipped ${pair.path}: ${PEFT_CONFIG_FILE}'s target_modules / layers_to_transform do not select it (PEFT ignores these tensors too)`,
      );
      continue;
    }
    const widths = moduleWidths(base, pair.module);
    const rank = peftPatternValue(config.rank_pattern, pair.path, configPath, 'rank_pattern', rankCache) ?? config.r;
    const alpha = peftPatternValue(config.alpha_pattern, pair.path, configPath, 'alpha_pattern', alphaCache) ?? config.lora_alpha;
    const aEntry = file.entries.get(pair.a);
    const bEntry = file.entries.get(pair.b);
    if (aEntry === undefined || bEntry === undefined) throw new Error('unreachable: tensor listed but missing');
    const check = (key: string, actual: readonly number[], expected: readonly number[], layout: string): void => {
      if (actual.length === expected.length && actual.every((d, i) => d === expected[i])) return;
      throw new CheckpointError(
        `tensor ${JSON.stringify(key)} has shape ${formatShape(actual)}, but ${formatShape(expected)} is expected for ${pair.path} (${layout}; in = ${widths.inFeatures}, out = ${widths.outFeatures} from the base model, r = ${rank} from ${PEFT_CONFIG_FILE})`,
        { path: weightsPath, hint: 'Load the adapter onto the base model it was trained on, with its own adapter_config.json' },
      );
    };
    check(pair.a, aEntry.shape, [rank, widths.inFeatures], 'lora_A is [r, in]');
    check(pair.b, bEntry.shape, [widths.outFeatures, rank], 'lora_B is [out, r]');
    const a = decodeFloat32(aEntry, { source: weightsPath });
    const b = decodeFloat32(bEntry, { source: weightsPath });
    assertFiniteTensor(a, pair.a, weightsPath, options);
    assertFiniteTensor(b, pair.b, weightsPath, options);
    modules.push(...splitModule(pair, rank, alpha, a, b, widths, config.use_rslora));
  }
  if (modules.length === 0) {
    throw new CheckpointError(`no tensor in ${PEFT_WEIGHTS_FILE} belongs to a module that ${PEFT_CONFIG_FILE} targets`, {
      path: weightsPath,
      hint: 'Check target_modules and layers_to_transform in adapter_config.json',
    });
  }

  // 3. One LoraConfig covering the loaded (layer, site)s; per-site ranks and alphas as patterns.
  const siteOrder = FAMILY_SITES[family];
  const sites = siteOrder.filter((s) => modules.some((m) => m.site === s));
  const layers = [...new Set(modules.map((m) => m.layer))].sort((x, y) => x - y);
  const r = mostCommon(modules.map((m) => m.rank));
  const alpha = mostCommon(modules.map((m) => m.alpha));
  const missing: string[] = [];
  /** (layer, site)s inside the loaded rectangle whose module the config does not target: no module there (rank 0). */
  const absent: string[] = [];
  for (const layer of layers) {
    for (const site of sites) {
      if (modules.some((m) => m.layer === layer && m.site === site)) continue;
      const owner = FAMILY_MODULES[family].find((m) => m.sites.includes(site)) as FamilyModule;
      if (configSelects(config, modulePath(family, layer, owner), layer, targetRegex)) missing.push(`layers.${layer}.${site}`);
      else absent.push(`layers.${layer}.${site}`);
    }
  }
  if (missing.length > 0) {
    warnings.push(`${weightsPath}: no tensors for ${missing.join(', ')}; these modules are created with B = 0 (no effect)`);
  }
  const spec = parseConfig(
    AdapterSpec,
    {
      kind: 'lora',
      name: options.name ?? sanitizeName(options.defaultName ?? 'peft-adapter'),
      targets: { sites, layers: layers.length === base.nLayers ? 'all' : layers },
      r,
      alpha,
      dropout: config.lora_dropout,
      rslora: config.use_rslora,
      rankPattern: { ...overridePatterns(modules, (m) => m.rank, r), ...Object.fromEntries(absent.map((key) => [key, 0])) },
      alphaPattern: overridePatterns(modules, (m) => m.alpha, alpha),
      init: 'zero-b',
    },
    'PEFT adapter',
  );

  // 4. Create the modules and load the values.
  const instance = createAdapter(spec, base, 0, 'PEFT adapter');
  try {
    for (const m of modules) {
      const module = instance.module(m.layer, { kind: 'site-output', site: m.site });
      if (!(module instanceof LoraModule)) throw new Error(`internal: no LoRA module at layer ${m.layer} ${m.site}`);
      const expectedScale = loraScale(m.alpha, m.rank, config.use_rslora);
      if (module.rank !== m.rank || Math.abs(module.scale - expectedScale) > 1e-12 * Math.abs(expectedScale)) {
        throw new Error(`internal: module at layer ${m.layer} ${m.site} has rank ${module.rank} scale ${module.scale}, expected ${m.rank} / ${expectedScale}`);
      }
      tf.tidy(() => {
        module.a.assign(tf.tensor2d(m.a, [m.rank, m.inFeatures]));
        module.b.assign(tf.tensor2d(m.b, [m.outFeatures, m.rank]));
      });
    }
  } catch (error) {
    instance.dispose();
    throw error;
  }
  return { instance, warnings, config };
}
