// Tiny llama and gpt2 models with seeded random weights, in exact Hugging Face naming and layout, either
// written as a model directory (config.json + safetensors, optionally sharded) or built in memory; and the
// paths of the real checkpoint in ../shared/models (absent in a user's clone: tests skip without it).
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildTransformer } from '../../src/base/checkpoints/load-model.js';
import { seededRandom } from '../../src/base/sampling.js';
import type { Transformer } from '../../src/base/transformer.js';
import { modelConfigFromHf } from '../../src/base/checkpoints/hf-model-dir.js';
import { mapSource, type HostTensor } from '../../src/formats/host-tensors.js';
import { writeSafetensorsFile, type TensorToWrite } from '../../src/formats/safetensors.js';

// ---------------------------------------------------------------------------------------------------------
// The real checkpoint

/** ../shared/models relative to the repository root (this file is test/helpers/tiny-models.ts). */
export const sharedModelsDir = fileURLToPath(new URL('../../../shared/models/', import.meta.url));
export const stories260kPath = join(sharedModelsDir, 'stories260K.bin');
export const tok512Path = join(sharedModelsDir, 'tok512.bin');
export const sharedModelsReadmePath = join(sharedModelsDir, 'README.md');
/** True when the real checkpoint and its tokenizer are present. */
export const hasSharedModels = existsSync(sharedModelsDir) && existsSync(stories260kPath) && existsSync(tok512Path);
/** Suffix for the name of a describe that skips without the real checkpoint, so the skip says why. */
export const SHARED_MODELS_SKIP_NOTE = hasSharedModels ? '' : ` — SKIPPED: ${sharedModelsDir} not found (real-checkpoint tests need ../shared/models)`;

// ---------------------------------------------------------------------------------------------------------
// Tiny checkpoints

/** A checkpoint in Hugging Face form: config.json contents and tensors by HF name, in HF layout and order. */
export interface HfCheckpoint {
  readonly config: Record<string, unknown>;
  readonly tensors: Map<string, HostTensor>;
}

export interface TinyModelOptions {
  /** Seed of the weight generator (default 1234). The same seed gives the same weights in every layout. */
  readonly seed?: number;
  /** D (default 16). */
  readonly dim?: number;
  /** Layers (default 2). */
  readonly nLayers?: number;
  /** Query heads (default 4). */
  readonly nHeads?: number;
  /** Vocabulary (default 32). */
  readonly vocabSize?: number;
  /** Longest sequence (default 64). */
  readonly maxSeqLen?: number;
  /** FFN width (llama default 40; gpt2 default 4·D, written as n_inner: null). */
  readonly hiddenDim?: number;
  /** Extra or overriding config.json fields (applied last). */
  readonly config?: Record<string, unknown>;
  /** Tensor names (final names, prefix included) to leave out. */
  readonly omit?: readonly string[];
  /** Tensors to replace or add (final names), e.g. a mis-shaped one. */
  readonly replace?: Readonly<Record<string, HostTensor>>;
}

export interface TinyLlamaOptions extends TinyModelOptions {
  /** Key/value heads (default 2: grouped-query attention). */
  readonly nKvHeads?: number;
  /** Default false (Hugging Face's default): lm_head.weight is written. */
  readonly tieWordEmbeddings?: boolean;
}

export interface TinyGpt2Options extends TinyModelOptions {
  /** Prefix every tensor name with `transformer.`, as GPT2LMHeadModel.save_pretrained does. */
  readonly transformerPrefix?: boolean;
}

export interface WriteOptions {
  /** Number of shard files (≥ 2) listed by model.safetensors.index.json; default: one model.safetensors. */
  readonly shards?: number;
  /** Storage dtype (default F32; F16/BF16 narrow the weights, so logits change slightly). */
  readonly dtype?: 'F32' | 'F16' | 'BF16';
}

export interface WrittenModelDir {
  readonly dir: string;
  readonly config: Record<string, unknown>;
  readonly tensors: Map<string, HostTensor>;
  /** Safetensors files written, relative to dir. */
  readonly files: string[];
}

/** Draws tensors from one seeded stream in a fixed order. */
class WeightGenerator {
  private readonly random: () => number;
  constructor(seed: number) {
    this.random = seededRandom(seed);
  }
  /** Uniform in [center − scale, center + scale). */
  uniform(shape: readonly number[], scale: number, center = 0): HostTensor {
    const size = shape.reduce((p, d) => p * d, 1);
    const values = new Float32Array(size);
    for (let i = 0; i < size; i++) values[i] = center + scale * (2 * this.random() - 1);
    return { shape: [...shape], values };
  }
  /** A linear weight [out, in] with variance ≈ 1/in. */
  linear(out: number, inputs: number): HostTensor {
    return this.uniform([out, inputs], Math.sqrt(3 / inputs));
  }
  norm(size: number): HostTensor {
    return this.uniform([size], 0.1, 1);
  }
}

function finish(config: Record<string, unknown>, tensors: Map<string, HostTensor>, options: TinyModelOptions): HfCheckpoint {
  for (const name of options.omit ?? []) tensors.delete(name);
  for (const [name, tensor] of Object.entries(options.replace ?? {})) tensors.set(name, tensor);
  return { config: { ...config, ...options.config }, tensors };
}

/** A tiny llama (GQA by default) as config.json contents + HF-named tensors ([out, in] linear weights). */
export function tinyLlamaCheckpoint(options: TinyLlamaOptions = {}): HfCheckpoint {
  const dim = options.dim ?? 16;
  const nLayers = options.nLayers ?? 2;
  const nHeads = options.nHeads ?? 4;
  const nKvHeads = options.nKvHeads ?? 2;
  const vocab = options.vocabSize ?? 32;
  const hidden = options.hiddenDim ?? 40;
  const tied = options.tieWordEmbeddings ?? false;
  const kvDim = (dim / nHeads) * nKvHeads;
  const gen = new WeightGenerator(options.seed ?? 1234);
  const tensors = new Map<string, HostTensor>();
  tensors.set('model.embed_tokens.weight', gen.uniform([vocab, dim], 1));
  for (let i = 0; i < nLayers; i++) {
    const p = `model.layers.${i}.`;
    tensors.set(`${p}self_attn.q_proj.weight`, gen.linear(dim, dim));
    tensors.set(`${p}self_attn.k_proj.weight`, gen.linear(kvDim, dim));
    tensors.set(`${p}self_attn.v_proj.weight`, gen.linear(kvDim, dim));
    tensors.set(`${p}self_attn.o_proj.weight`, gen.linear(dim, dim));
    tensors.set(`${p}mlp.gate_proj.weight`, gen.linear(hidden, dim));
    tensors.set(`${p}mlp.up_proj.weight`, gen.linear(hidden, dim));
    tensors.set(`${p}mlp.down_proj.weight`, gen.linear(dim, hidden));
    tensors.set(`${p}input_layernorm.weight`, gen.norm(dim));
    tensors.set(`${p}post_attention_layernorm.weight`, gen.norm(dim));
  }
  tensors.set('model.norm.weight', gen.norm(dim));
  const head = gen.linear(vocab, dim); // drawn even when tied, so tying does not shift the other weights
  if (!tied) tensors.set('lm_head.weight', head);
  const config: Record<string, unknown> = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: dim,
    intermediate_size: hidden,
    num_hidden_layers: nLayers,
    num_attention_heads: nHeads,
    num_key_value_heads: nKvHeads,
    vocab_size: vocab,
    max_position_embeddings: options.maxSeqLen ?? 64,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: tied,
    hidden_act: 'silu',
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'float32',
  };
  return finish(config, tensors, options);
}

/** A tiny gpt2 as config.json contents + HF-named tensors (Conv1D weights [in, out], c_attn fused [D, 3D]). */
export function tinyGpt2Checkpoint(options: TinyGpt2Options = {}): HfCheckpoint {
  const dim = options.dim ?? 16;
  const nLayers = options.nLayers ?? 2;
  const nHeads = options.nHeads ?? 4;
  const vocab = options.vocabSize ?? 32;
  const positions = options.maxSeqLen ?? 64;
  const hidden = options.hiddenDim ?? 4 * dim;
  const gen = new WeightGenerator(options.seed ?? 1234);
  const p = options.transformerPrefix === true ? 'transformer.' : '';
  const tensors = new Map<string, HostTensor>();
  /** Conv1D weight [in, out]. */
  const conv1d = (inputs: number, outputs: number): HostTensor => gen.uniform([inputs, outputs], Math.sqrt(3 / inputs));
  const bias = (size: number): HostTensor => gen.uniform([size], 0.1);
  tensors.set(`${p}wte.weight`, gen.uniform([vocab, dim], 1));
  tensors.set(`${p}wpe.weight`, gen.uniform([positions, dim], 0.5));
  for (let i = 0; i < nLayers; i++) {
    const h = `${p}h.${i}.`;
    tensors.set(`${h}ln_1.weight`, gen.norm(dim));
    tensors.set(`${h}ln_1.bias`, bias(dim));
    tensors.set(`${h}attn.c_attn.weight`, conv1d(dim, 3 * dim));
    tensors.set(`${h}attn.c_attn.bias`, bias(3 * dim));
    tensors.set(`${h}attn.c_proj.weight`, conv1d(dim, dim));
    tensors.set(`${h}attn.c_proj.bias`, bias(dim));
    tensors.set(`${h}ln_2.weight`, gen.norm(dim));
    tensors.set(`${h}ln_2.bias`, bias(dim));
    tensors.set(`${h}mlp.c_fc.weight`, conv1d(dim, hidden));
    tensors.set(`${h}mlp.c_fc.bias`, bias(hidden));
    tensors.set(`${h}mlp.c_proj.weight`, conv1d(hidden, dim));
    tensors.set(`${h}mlp.c_proj.bias`, bias(dim));
  }
  tensors.set(`${p}ln_f.weight`, gen.norm(dim));
  tensors.set(`${p}ln_f.bias`, bias(dim));
  const config: Record<string, unknown> = {
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    n_embd: dim,
    n_head: nHeads,
    n_layer: nLayers,
    n_positions: positions,
    n_ctx: positions,
    n_inner: options.hiddenDim === undefined ? null : hidden,
    vocab_size: vocab,
    layer_norm_epsilon: 1e-5,
    activation_function: 'gelu_new',
    bos_token_id: vocab - 1,
    eos_token_id: vocab - 1,
    torch_dtype: 'float32',
  };
  return finish(config, tensors, options);
}

/** Writes config.json and the tensors (one model.safetensors, or shards + model.safetensors.index.json). */
export async function writeHfModelDir(dir: string, checkpoint: HfCheckpoint, options: WriteOptions = {}): Promise<WrittenModelDir> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), `${JSON.stringify(checkpoint.config, null, 2)}\n`);
  const dtype = options.dtype ?? 'F32';
  const toWrite = (t: HostTensor): TensorToWrite => ({ dtype, shape: t.shape, data: t.values });
  const entries = [...checkpoint.tensors];
  const shards = options.shards ?? 1;
  if (shards <= 1) {
    await writeSafetensorsFile(join(dir, 'model.safetensors'), new Map(entries.map(([n, t]) => [n, toWrite(t)])), { format: 'pt' });
    return { dir, ...checkpoint, files: ['model.safetensors'] };
  }
  const pad = (n: number): string => String(n).padStart(5, '0');
  const perShard = Math.ceil(entries.length / shards);
  const files: string[] = [];
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  for (let s = 0; s < shards; s++) {
    const file = `model-${pad(s + 1)}-of-${pad(shards)}.safetensors`;
    const chunk = entries.slice(s * perShard, (s + 1) * perShard);
    for (const [name, t] of chunk) {
      weightMap[name] = file;
      totalSize += t.values.length * (dtype === 'F32' ? 4 : 2);
    }
    await writeSafetensorsFile(join(dir, file), new Map(chunk.map(([n, t]) => [n, toWrite(t)])), { format: 'pt' });
    files.push(file);
  }
  const index = { metadata: { total_size: totalSize }, weight_map: weightMap };
  await writeFile(join(dir, 'model.safetensors.index.json'), `${JSON.stringify(index, null, 2)}\n`);
  return { dir, ...checkpoint, files };
}

/** Writes a tiny Hugging Face llama directory (config.json + model.safetensors, or shards). */
export function writeTinyLlamaDir(dir: string, options: TinyLlamaOptions & WriteOptions = {}): Promise<WrittenModelDir> {
  return writeHfModelDir(dir, tinyLlamaCheckpoint(options), options);
}

/** Writes a tiny Hugging Face gpt2 directory (config.json + model.safetensors, or shards). */
export function writeTinyGpt2Dir(dir: string, options: TinyGpt2Options & WriteOptions = {}): Promise<WrittenModelDir> {
  return writeHfModelDir(dir, tinyGpt2Checkpoint(options), options);
}

/** Builds a Transformer from an in-memory HF checkpoint, through the same config parser and family builder. */
export function buildFromCheckpoint(checkpoint: HfCheckpoint, origin: string): Transformer {
  const config = modelConfigFromHf(checkpoint.config, `${origin} config.json`);
  return buildTransformer(config, mapSource(origin, checkpoint.tensors));
}

/** The tiny llama, built in memory (same weights as writeTinyLlamaDir with the same options). Dispose it. */
export function tinyLlama(options: TinyLlamaOptions = {}): Transformer {
  return buildFromCheckpoint(tinyLlamaCheckpoint(options), 'tiny-llama (in memory)');
}

/** The tiny gpt2, built in memory (same weights as writeTinyGpt2Dir with the same options). Dispose it. */
export function tinyGpt2(options: TinyGpt2Options = {}): Transformer {
  return buildFromCheckpoint(tinyGpt2Checkpoint(options), 'tiny-gpt2 (in memory)');
}
