/**
 * llama2.c legacy checkpoints (.bin, "version 0" of karpathy/llama2.c's export): seven little-endian int32
 * (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means the
 * classifier is stored separately), then float32 arrays: token embedding [V, D], attention RMSNorm [L, D],
 * wq [L, D, D], wk [L, KVD, D], wv [L, KVD, D], wo [L, D, D], FFN RMSNorm [L, D], w1 [L, F, D], w2 [L, D, F],
 * w3 [L, F, D], final RMSNorm [D], two RoPE tables [seq_len, Dh/2] (ignored: recomputed), and the classifier
 * [V, D] only when unshared.
 *
 * Tensors come out under Hugging Face llama names, with wq/wk rows permuted from llama2.c's adjacent-pair
 * RoPE layout into HF's rotate-half layout (the inverse of what HF's converter undoes), so the one llama
 * builder and one RoPE serve both formats.
 */
import { readFile } from 'node:fs/promises';
import { CheckpointError } from '../../errors.js';
import type { ModelConfig } from '../config.js';
import { parseConfig } from '../../config/parse.js';
import { ModelConfig as ModelConfigSchema } from '../config.js';
import { assertFiniteTensor, type FiniteOptions } from '../../formats/finite.js';
import { mapSource, type HostTensor, type TensorSource } from '../../formats/host-tensors.js';

const HEADER_BYTES = 7 * 4;

export interface Llama2cCheckpoint {
  readonly config: ModelConfig;
  readonly source: TensorSource;
}

/**
 * Reorders the rows of a q or k projection [heads·Dh, D] from adjacent-pair rotary layout (rows 2i, 2i+1
 * rotate together) to rotate-half layout (rows i, i + Dh/2 rotate together), head by head.
 */
export function adjacentPairsToRotateHalf(values: Float32Array, heads: number, headDim: number, inputs: number): Float32Array {
  const out = new Float32Array(values.length);
  const half = headDim / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      const even = (h * headDim + 2 * i) * inputs;
      const odd = (h * headDim + 2 * i + 1) * inputs;
      out.set(values.subarray(even, even + inputs), (h * headDim + i) * inputs);
      out.set(values.subarray(odd, odd + inputs), (h * headDim + half + i) * inputs);
    }
  }
  return out;
}

export function parseLlama2cCheckpoint(bytes: Uint8Array, origin: string, options: FiniteOptions = {}): Llama2cCheckpoint {
  if (bytes.byteLength < HEADER_BYTES) {
    throw new CheckpointError(`llama2.c checkpoint is ${bytes.byteLength} bytes, shorter than its 28-byte header`, { path: origin });
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const header = Array.from({ length: 7 }, (_, i) => view.getInt32(i * 4, true));
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, signedVocab, seqLen] = header as [number, number, number, number, number, number, number];
  const sharedClassifier = signedVocab > 0;
  const vocabSize = Math.abs(signedVocab);
  const config = parseConfig(
    ModelConfigSchema,
    {
      family: 'llama',
      vocabSize,
      dim,
      hiddenDim,
      nLayers,
      nHeads,
      nKvHeads,
      maxSeqLen: seqLen,
      normEps: 1e-5,
      ropeTheta: 10000,
      tiedEmbeddings: sharedClassifier,
      bosId: 1,
      eosId: 2,
    },
    `${origin} header`,
  );
  const headDim = dim / nHeads;
  const kvDim = nKvHeads * headDim;

  // Float counts of every section, in file order.
  const sections: [string, number][] = [
    ['embed', vocabSize * dim],
    ['attnNorm', nLayers * dim],
    ['wq', nLayers * dim * dim],
    ['wk', nLayers * kvDim * dim],
    ['wv', nLayers * kvDim * dim],
    ['wo', nLayers * dim * dim],
    ['ffnNorm', nLayers * dim],
    ['w1', nLayers * hiddenDim * dim],
    ['w2', nLayers * dim * hiddenDim],
    ['w3', nLayers * hiddenDim * dim],
    ['finalNorm', dim],
    ['ropeTables', seqLen * headDim],
  ];
  if (!sharedClassifier) sections.push(['classifier', vocabSize * dim]);
  const expectedFloats = sections.reduce((sum, [, n]) => sum + n, 0);
  const dataBytes = bytes.byteLength - HEADER_BYTES;
  if (dataBytes !== expectedFloats * 4) {
    throw new CheckpointError(
      `llama2.c checkpoint holds ${dataBytes} bytes of weights but its header (dim ${dim}, hidden ${hiddenDim}, layers ${nLayers}, heads ${nHeads}/${nKvHeads}, vocab ${signedVocab}, seq ${seqLen}) implies ${expectedFloats * 4}`,
      { path: origin, hint: 'The file is truncated or not a legacy (version 0) llama2.c export' },
    );
  }
  // Copy once into an aligned buffer so every section is a Float32Array view.
  const floats = new Float32Array(expectedFloats);
  new Uint8Array(floats.buffer).set(bytes.subarray(HEADER_BYTES));
  const section = new Map<string, Float32Array>();
  let offset = 0;
  for (const [name, count] of sections) {
    const values = floats.subarray(offset, offset + count);
    // The RoPE tables are recomputed, never read; every other section is a weight and must be finite.
    if (name !== 'ropeTables') assertFiniteTensor(values, `${name} (llama2.c section)`, origin, options);
    section.set(name, values);
    offset += count;
  }
  const get = (name: string): Float32Array => section.get(name) as Float32Array;
  const perLayer = (name: string, layer: number, size: number): Float32Array => get(name).subarray(layer * size, (layer + 1) * size);

  const tensors = new Map<string, HostTensor>();
  const put = (name: string, shape: number[], values: Float32Array): void => {
    tensors.set(name, { shape, values });
  };
  put('model.embed_tokens.weight', [vocabSize, dim], get('embed'));
  for (let l = 0; l < nLayers; l++) {
    const p = `model.layers.${l}.`;
    put(`${p}input_layernorm.weight`, [dim], perLayer('attnNorm', l, dim));
    put(`${p}self_attn.q_proj.weight`, [dim, dim], adjacentPairsToRotateHalf(perLayer('wq', l, dim * dim), nHeads, headDim, dim));
    put(`${p}self_attn.k_proj.weight`, [kvDim, dim], adjacentPairsToRotateHalf(perLayer('wk', l, kvDim * dim), nKvHeads, headDim, dim));
    put(`${p}self_attn.v_proj.weight`, [kvDim, dim], perLayer('wv', l, kvDim * dim));
    put(`${p}self_attn.o_proj.weight`, [dim, dim], perLayer('wo', l, dim * dim));
    put(`${p}post_attention_layernorm.weight`, [dim], perLayer('ffnNorm', l, dim));
    put(`${p}mlp.gate_proj.weight`, [hiddenDim, dim], perLayer('w1', l, hiddenDim * dim));
    put(`${p}mlp.down_proj.weight`, [dim, hiddenDim], perLayer('w2', l, dim * hiddenDim));
    put(`${p}mlp.up_proj.weight`, [hiddenDim, dim], perLayer('w3', l, hiddenDim * dim));
  }
  put('model.norm.weight', [dim], get('finalNorm'));
  if (!sharedClassifier) put('lm_head.weight', [vocabSize, dim], get('classifier'));
  return { config, source: mapSource(origin, tensors) };
}

export async function readLlama2cCheckpoint(path: string, options: FiniteOptions = {}): Promise<Llama2cCheckpoint> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (cause) {
    throw new CheckpointError(`cannot read llama2.c checkpoint: ${(cause as Error).message}`, { path, cause });
  }
  return parseLlama2cCheckpoint(bytes, path, options);
}
