/**
 * A random llama-architecture base model built in memory for benchmarks: Hugging Face tensor names and
 * [out, in] layouts (see src/base/families/llama.ts), fed through the library's own config parser and
 * family builder (buildTransformer), so the benchmarked Transformer is exactly what a checkpoint load
 * produces. Weights are seeded uniform with variance ≈ 1/in (timings do not depend on the values; this
 * only keeps activations finite).
 *
 * Shape letters: V vocabulary, D width, F FFN width, Hk key/value heads, Dh head width.
 */
import { buildTransformer } from '../../src/base/checkpoints/load-model.js';
import { seededRandom } from '../../src/base/sampling.js';
import type { Transformer } from '../../src/base/transformer.js';
import { llamaConfigFromHf } from '../../src/base/families/llama.js';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { mapSource, type HostTensor } from '../../src/formats/host-tensors.js';
import { writeSafetensorsFile } from '../../src/formats/safetensors.js';

export interface RandomLlamaOptions {
  readonly dim: number; // D
  readonly nLayers: number;
  readonly nHeads: number; // H
  readonly nKvHeads: number; // Hk
  readonly hiddenDim: number; // F
  readonly vocabSize: number; // V
  readonly maxSeqLen: number;
  readonly seed?: number;
}

/** The benchmark base of the issue: d=512, 8 layers, 8 heads (8 kv heads), F=1376, V=4096, 256 positions. */
export const BENCH_MODEL: RandomLlamaOptions = { dim: 512, nLayers: 8, nHeads: 8, nKvHeads: 8, hiddenDim: 1376, vocabSize: 4096, maxSeqLen: 256 };

/** A small base for --quick smoke runs (same architecture, a fraction of the work). */
export const QUICK_MODEL: RandomLlamaOptions = { dim: 128, nLayers: 2, nHeads: 4, nKvHeads: 4, hiddenDim: 344, vocabSize: 512, maxSeqLen: 256 };

/** The HF checkpoint (config.json contents + tensors by HF name) of a random llama. */
export function randomLlamaCheckpoint(options: RandomLlamaOptions): { config: Record<string, unknown>; tensors: Map<string, HostTensor> } {
  const { dim, nLayers, nHeads, nKvHeads, hiddenDim, vocabSize } = options;
  const kvDim = (dim / nHeads) * nKvHeads;
  const random = seededRandom(options.seed ?? 1234);
  const uniform = (shape: readonly number[], scale: number, center = 0): HostTensor => {
    const size = shape.reduce((p, d) => p * d, 1);
    const values = new Float32Array(size);
    for (let i = 0; i < size; i++) values[i] = center + scale * (2 * random() - 1);
    return { shape: [...shape], values };
  };
  const linear = (out: number, inputs: number): HostTensor => uniform([out, inputs], Math.sqrt(3 / inputs)); // [O, I]
  const norm = (): HostTensor => uniform([dim], 0.1, 1); // [D]
  const tensors = new Map<string, HostTensor>();
  tensors.set('model.embed_tokens.weight', uniform([vocabSize, dim], 1)); // [V, D]
  for (let i = 0; i < nLayers; i++) {
    const p = `model.layers.${i}.`;
    tensors.set(`${p}self_attn.q_proj.weight`, linear(dim, dim));
    tensors.set(`${p}self_attn.k_proj.weight`, linear(kvDim, dim));
    tensors.set(`${p}self_attn.v_proj.weight`, linear(kvDim, dim));
    tensors.set(`${p}self_attn.o_proj.weight`, linear(dim, dim));
    tensors.set(`${p}mlp.gate_proj.weight`, linear(hiddenDim, dim));
    tensors.set(`${p}mlp.up_proj.weight`, linear(hiddenDim, dim));
    tensors.set(`${p}mlp.down_proj.weight`, linear(dim, hiddenDim));
    tensors.set(`${p}input_layernorm.weight`, norm());
    tensors.set(`${p}post_attention_layernorm.weight`, norm());
  }
  tensors.set('model.norm.weight', norm());
  tensors.set('lm_head.weight', linear(vocabSize, dim)); // [V, D]
  const config: Record<string, unknown> = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: dim,
    intermediate_size: hiddenDim,
    num_hidden_layers: nLayers,
    num_attention_heads: nHeads,
    num_key_value_heads: nKvHeads,
    vocab_size: vocabSize,
    max_position_embeddings: options.maxSeqLen,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
  };
  return { config, tensors };
}

/** Builds the random llama on the active tfjs backend. The caller disposes it. */
export function randomLlama(options: RandomLlamaOptions): Transformer {
  const { config, tensors } = randomLlamaCheckpoint(options);
  return buildTransformer(llamaConfigFromHf(config, 'random-llama'), mapSource('random-llama (in memory)', tensors));
}

/** Deterministic token ids [B][T] in [0, V) (not special: no padding, all real). */
export function randomIds(batch: number, tokens: number, vocabSize: number, seed = 7): number[][] {
  const random = seededRandom(seed);
  return Array.from({ length: batch }, () => Array.from({ length: tokens }, () => Math.floor(random() * vocabSize)));
}

/** Writes the random llama as a Hugging Face model directory (config.json + model.safetensors), for loaders that read paths. */
export async function writeRandomLlamaDir(dir: string, options: RandomLlamaOptions): Promise<string> {
  const { config, tensors } = randomLlamaCheckpoint(options);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
  const entries = [...tensors].map(([name, t]) => [name, { dtype: 'F32' as const, shape: t.shape, data: t.values }] as const);
  await writeSafetensorsFile(join(dir, 'model.safetensors'), new Map(entries), { format: 'pt' });
  return dir;
}
