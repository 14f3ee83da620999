// Hugging Face model directories: tiny llama/gpt2 checkpoints in every layout (single file, sharded,
// `transformer.` prefix) load and agree; the real llama2.c checkpoint converted to HF llama by this test
// (its own reader and HF's q/k permutation) gives the same logits as the llama2.c loader; and every
// malformed input is a CheckpointError carrying its path.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { loadBaseModel } from '../../src/base/checkpoints/load-model.js';
import type { Transformer } from '../../src/base/transformer.js';
import { listWeightTensors } from '../../src/base/weights.js';
import { CheckpointError } from '../../src/errors.js';
import { writeSafetensorsFile, type TensorToWrite } from '../../src/formats/safetensors.js';
import { expectClose, expectNoLeak } from '../helpers/tensor-asserts.js';
import { SHARED_MODELS_SKIP_NOTE, hasSharedModels, stories260kPath, tinyGpt2, tinyLlama, writeTinyGpt2Dir, writeTinyLlamaDir } from '../helpers/tiny-models.js';

let root: string;
let counter = 0;
const freshDir = (name: string): string => join(root, `${counter++}-${name}`);

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'routed-peft-hf-dir-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const SEQUENCES = [
  [1, 5, 9, 30, 2, 7],
  [3, 3, 3, 0, 31, 12],
];

/** Full logits [B, T, V] as a flat array, with the shape checked. */
function logitsOf(model: Transformer, ids: number[][]): Float32Array {
  const out = model.forward({ ids });
  try {
    expect(out.shape).toEqual([ids.length, ids[0]?.length, model.config.vocabSize]);
    return out.dataSync() as Float32Array;
  } finally {
    out.dispose();
  }
}

async function load(dir: string): Promise<Transformer> {
  const loaded = await loadBaseModel(dir);
  expect(loaded.format).toBe('huggingface');
  return loaded.model;
}

/** Loads each directory, returns their logits on SEQUENCES, and disposes the models. */
async function logitsOfDirs(dirs: string[]): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const dir of dirs) {
    const model = await load(dir);
    out.push(logitsOf(model, SEQUENCES));
    model.dispose();
  }
  return out;
}

describe('tiny Hugging Face directories', () => {
  test('llama (GQA) loads with its config and gives finite [B, T, V] logits equal to the in-memory build', async () => {
    const dir = freshDir('llama');
    await writeTinyLlamaDir(dir);
    const model = await load(dir);
    expect(model.config).toMatchObject({
      family: 'llama',
      dim: 16,
      nLayers: 2,
      nHeads: 4,
      nKvHeads: 2,
      vocabSize: 32,
      maxSeqLen: 64,
      hiddenDim: 40,
      tiedEmbeddings: false,
      normEps: 1e-5,
    });
    expect(model.weights.tiedHead).toBe(false);
    const fromDir = logitsOf(model, SEQUENCES);
    expect(fromDir.every(Number.isFinite)).toBe(true);
    expect(new Set(fromDir).size).toBeGreaterThan(100); // not degenerate
    model.dispose();
    const inMemory = tinyLlama();
    expect(logitsOf(inMemory, SEQUENCES)).toEqual(fromDir); // F32 round trip through safetensors is exact
    inMemory.dispose();
  });

  test('gpt2 loads (Conv1D [in, out] weights, fused c_attn) and gives finite [B, T, V] logits equal to the in-memory build', async () => {
    const dir = freshDir('gpt2');
    await writeTinyGpt2Dir(dir);
    const model = await load(dir);
    expect(model.config).toMatchObject({
      family: 'gpt2',
      dim: 16,
      nLayers: 2,
      nHeads: 4,
      nKvHeads: 4,
      vocabSize: 32,
      maxSeqLen: 64,
      hiddenDim: 64,
      tiedEmbeddings: true,
    });
    expect(model.weights.tiedHead).toBe(true);
    expect(model.weights.head.arraySync()).toEqual(model.weights.tokenEmbedding.transpose().arraySync()); // [D, V] copy
    const fromDir = logitsOf(model, SEQUENCES);
    expect(fromDir.every(Number.isFinite)).toBe(true);
    expect(new Set(fromDir).size).toBeGreaterThan(100);
    model.dispose();
    const inMemory = tinyGpt2();
    expect(logitsOf(inMemory, SEQUENCES)).toEqual(fromDir);
    inMemory.dispose();
  });

  test('gpt2 splits c_attn into q, k, v and keeps Conv1D weights [in, out], the layout sites store', () => {
    const model = tinyGpt2();
    const layer = model.weights.layers[0];
    expect(layer?.sites['attn.q']?.weight.shape).toEqual([16, 16]);
    expect(layer?.sites['mlp.up']?.weight.shape).toEqual([16, 64]);
    expect(layer?.sites['mlp.down']?.weight.shape).toEqual([64, 16]);
    model.dispose();
  });

  test('llama: sharded (index.json) and single-file layouts give identical logits; tied embeddings load without lm_head', async () => {
    const single = freshDir('llama-single');
    const sharded = freshDir('llama-sharded');
    await writeTinyLlamaDir(single, { seed: 7 });
    const written = await writeTinyLlamaDir(sharded, { seed: 7, shards: 3 });
    expect(written.files).toHaveLength(3);
    const [a, b] = await logitsOfDirs([single, sharded]);
    expect(b).toEqual(a);

    const tied = freshDir('llama-tied');
    const tiedWritten = await writeTinyLlamaDir(tied, { seed: 7, tieWordEmbeddings: true, shards: 2 });
    expect(tiedWritten.tensors.has('lm_head.weight')).toBe(false);
    const model = await load(tied);
    expect(model.weights.tiedHead).toBe(true);
    expect(model.weights.head.arraySync()).toEqual(model.weights.tokenEmbedding.transpose().arraySync()); // [D, V] copy
    expect(logitsOf(model, SEQUENCES).every(Number.isFinite)).toBe(true);
    model.dispose();
  });

  test('gpt2: sharded and `transformer.`-prefixed layouts give logits identical to the single-file one', async () => {
    const single = freshDir('gpt2-single');
    const sharded = freshDir('gpt2-sharded');
    const prefixed = freshDir('gpt2-prefixed');
    const both = freshDir('gpt2-prefixed-sharded');
    await writeTinyGpt2Dir(single, { seed: 9 });
    await writeTinyGpt2Dir(sharded, { seed: 9, shards: 4 });
    const p = await writeTinyGpt2Dir(prefixed, { seed: 9, transformerPrefix: true });
    expect([...p.tensors.keys()].every((n) => n.startsWith('transformer.'))).toBe(true);
    await writeTinyGpt2Dir(both, { seed: 9, transformerPrefix: true, shards: 2 });
    const [a, ...rest] = await logitsOfDirs([single, sharded, prefixed, both]);
    for (const other of rest) expect(other).toEqual(a);
  });

  test('F16-stored weights are widened and give logits close to the F32 ones', async () => {
    const f32 = freshDir('llama-f32');
    const f16 = freshDir('llama-f16');
    await writeTinyLlamaDir(f32, { seed: 3 });
    await writeTinyLlamaDir(f16, { seed: 3, dtype: 'F16' });
    const [a, b] = await logitsOfDirs([f32, f16]);
    expectClose(b as Float32Array, a as Float32Array, { rtol: 2e-2, atol: 2e-2, label: 'F16 vs F32 logits' });
  });
});

// -------------------------------------------------------------------------------------------------------
// llama2.c ↔ Hugging Face

interface RawLlama2c {
  header: { dim: number; hidden: number; layers: number; heads: number; kvHeads: number; vocab: number; seqLen: number };
  /** Arrays in file order, each [L, ...] flattened. */
  arrays: Record<'embed' | 'attnNorm' | 'wq' | 'wk' | 'wv' | 'wo' | 'ffnNorm' | 'w1' | 'w2' | 'w3' | 'finalNorm', Float32Array>;
}

/** Reads a llama2.c legacy checkpoint with a shared classifier, without the project's reader. */
async function readRawLlama2c(path: string): Promise<RawLlama2c> {
  const bytes = await readFile(path);
  const ints = new Int32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + 28));
  const [dim, hidden, layers, heads, kvHeads, vocab, seqLen] = Array.from(ints) as [number, number, number, number, number, number, number];
  expect(vocab).toBeGreaterThan(0); // shared classifier
  const kvDim = (dim / heads) * kvHeads;
  const floats = new Float32Array(bytes.buffer.slice(bytes.byteOffset + 28, bytes.byteOffset + bytes.byteLength));
  let at = 0;
  const take = (n: number): Float32Array => {
    const out = floats.slice(at, at + n);
    at += n;
    return out;
  };
  const arrays = {
    embed: take(vocab * dim),
    attnNorm: take(layers * dim),
    wq: take(layers * dim * dim),
    wk: take(layers * kvDim * dim),
    wv: take(layers * kvDim * dim),
    wo: take(layers * dim * dim),
    ffnNorm: take(layers * dim),
    w1: take(layers * hidden * dim),
    w2: take(layers * dim * hidden),
    w3: take(layers * hidden * dim),
    finalNorm: take(dim),
  };
  const ropeFloats = seqLen * (dim / heads); // two [seq_len, head_size/2] tables
  expect(floats.length - at).toBe(ropeFloats);
  return { header: { dim, hidden, layers, heads, kvHeads, vocab, seqLen }, arrays };
}

/**
 * Hugging Face's convert_llama_weights_to_hf.py `permute(w, n_heads, dim1, dim2)`:
 * w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2), written as an
 * explicit 4-d index map: out[h][j][i][:] = in[h][i][j][:] with i < dim1/n_heads/2, j ∈ {0, 1}.
 */
function hfPermute(w: Float32Array, nHeads: number, dim1: number, dim2: number): Float32Array {
  const half = dim1 / nHeads / 2;
  const out = new Float32Array(dim1 * dim2);
  for (let h = 0; h < nHeads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const src = ((h * half + i) * 2 + j) * dim2; // view index [h, i, j]
        const dst = ((h * 2 + j) * half + i) * dim2; // transposed index [h, j, i]
        for (let c = 0; c < dim2; c++) out[dst + c] = w[src + c] as number;
      }
    }
  }
  return out;
}

/** Writes the raw llama2.c arrays as an HF llama directory; `permute: false` skips the q/k permutation. */
async function writeConvertedLlama(dir: string, raw: RawLlama2c, permute: boolean): Promise<void> {
  const { dim, hidden, layers, heads, kvHeads, vocab, seqLen } = raw.header;
  const kvDim = (dim / heads) * kvHeads;
  const a = raw.arrays;
  const slice = (arr: Float32Array, layer: number, size: number): Float32Array => arr.slice(layer * size, (layer + 1) * size);
  const tensors = new Map<string, TensorToWrite>();
  const put = (name: string, shape: number[], data: Float32Array): void => {
    tensors.set(name, { dtype: 'F32', shape, data });
  };
  put('model.embed_tokens.weight', [vocab, dim], a.embed);
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}.`;
    const wq = slice(a.wq, l, dim * dim);
    const wk = slice(a.wk, l, kvDim * dim);
    put(`${p}self_attn.q_proj.weight`, [dim, dim], permute ? hfPermute(wq, heads, dim, dim) : wq);
    put(`${p}self_attn.k_proj.weight`, [kvDim, dim], permute ? hfPermute(wk, kvHeads, kvDim, dim) : wk);
    put(`${p}self_attn.v_proj.weight`, [kvDim, dim], slice(a.wv, l, kvDim * dim));
    put(`${p}self_attn.o_proj.weight`, [dim, dim], slice(a.wo, l, dim * dim));
    put(`${p}mlp.gate_proj.weight`, [hidden, dim], slice(a.w1, l, hidden * dim));
    put(`${p}mlp.down_proj.weight`, [dim, hidden], slice(a.w2, l, dim * hidden));
    put(`${p}mlp.up_proj.weight`, [hidden, dim], slice(a.w3, l, hidden * dim));
    put(`${p}input_layernorm.weight`, [dim], slice(a.attnNorm, l, dim));
    put(`${p}post_attention_layernorm.weight`, [dim], slice(a.ffnNorm, l, dim));
  }
  put('model.norm.weight', [dim], a.finalNorm);
  await mkdir(dir, { recursive: true });
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: dim,
    intermediate_size: hidden,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    vocab_size: vocab,
    max_position_embeddings: seqLen,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
    hidden_act: 'silu',
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'float32',
  };
  await writeFile(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  await writeSafetensorsFile(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
}

describe.skipIf(!hasSharedModels)(`llama2.c stories260K.bin ↔ Hugging Face llama conversion${SHARED_MODELS_SKIP_NOTE}`, () => {
  const sequences = [[1], [1, 403, 407, 261, 378, 429, 22, 284], [1, 2, 13, 0, 511, 100, 200, 300, 400, 500]];

  test('HF permute moves row 2i+j of each head to j·Dh/2 + i', () => {
    // 1 head, Dh = 4, 1 column: rows [r0, r1, r2, r3] → [r0, r2, r1, r3].
    expect(Array.from(hfPermute(new Float32Array([0, 1, 2, 3]), 1, 4, 1))).toEqual([0, 2, 1, 3]);
    // 2 heads of width 4, 2 columns.
    const w = Float32Array.from({ length: 16 }, (_, i) => i);
    expect(Array.from(hfPermute(w, 2, 8, 2))).toEqual([0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]);
  });

  test('the converted HF directory gives the llama2.c loader’s logits (rtol 1e-4); unpermuted q/k do not', async () => {
    const raw = await readRawLlama2c(stories260kPath);
    expect(raw.header).toEqual({ dim: 64, hidden: 172, layers: 5, heads: 8, kvHeads: 4, vocab: 512, seqLen: 512 });
    const converted = freshDir('stories260k-hf');
    const unpermuted = freshDir('stories260k-hf-unpermuted');
    await writeConvertedLlama(converted, raw, true);
    await writeConvertedLlama(unpermuted, raw, false);

    const fromBin = (await loadBaseModel(stories260kPath)).model;
    const fromHf = await load(converted);
    const wrong = await load(unpermuted);
    expect(fromHf.config).toEqual(fromBin.config);
    try {
      for (const ids of sequences) {
        const expected = logitsOf(fromBin, [ids]);
        expectClose(logitsOf(fromHf, [ids]), expected, { rtol: 1e-4, atol: 1e-5, label: `logits of ${JSON.stringify(ids)}` });
        if (ids.length > 1) {
          // Without the permutation RoPE rotates the wrong pairs: the test can tell.
          expect(() => expectClose(logitsOf(wrong, [ids]), expected, { rtol: 1e-4, atol: 1e-5 })).toThrow(/max abs diff/);
        }
      }
    } finally {
      fromBin.dispose();
      fromHf.dispose();
      wrong.dispose();
    }
  });

  test('a truncated copy of stories260K.bin is a CheckpointError with the path', async () => {
    const bytes = await readFile(stories260kPath);
    const truncated = join(root, 'stories260K-truncated.bin');
    await writeFile(truncated, bytes.subarray(0, bytes.byteLength - 1000));
    const error = await loadBaseModel(truncated).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CheckpointError);
    expect((error as CheckpointError).path).toBe(truncated);
    expect((error as Error).message).toContain(truncated);
    expect((error as Error).message).toMatch(/truncated/);
  });
});

// -------------------------------------------------------------------------------------------------------
// Errors

async function loadError(path: string): Promise<CheckpointError> {
  const error = await expectNoLeak(() =>
    loadBaseModel(path).then(
      (loaded) => {
        loaded.model.dispose();
        throw new Error(`expected loading ${path} to fail`);
      },
      (e: unknown) => e,
    ),
  );
  expect(error).toBeInstanceOf(CheckpointError);
  return error as CheckpointError;
}

describe('malformed checkpoints are CheckpointErrors that name the path', () => {
  test('unknown model_type', async () => {
    const dir = freshDir('bert');
    await writeTinyLlamaDir(dir, { config: { model_type: 'bert' } });
    const error = await loadError(dir);
    expect(error.path).toBe(join(resolve(dir), 'config.json'));
    expect(error.message).toMatch(/"bert"/);
  });

  test('missing tensor: the message names it; nothing leaks from the half-built model', async () => {
    const dir = freshDir('missing');
    await writeTinyLlamaDir(dir, { omit: ['model.layers.1.mlp.up_proj.weight'] });
    const error = await loadError(dir);
    expect(error.path).toBe(resolve(dir));
    expect(error.message).toContain("'model.layers.1.mlp.up_proj.weight'");
    expect(error.message).toContain('[40, 16]');

    const gpt2 = freshDir('missing-gpt2');
    await writeTinyGpt2Dir(gpt2, { transformerPrefix: true, omit: ['transformer.ln_f.bias'] });
    const gpt2Error = await loadError(gpt2);
    expect(gpt2Error.message).toContain("'transformer.ln_f.bias'");
  });

  test('llama without lm_head and without tie_word_embeddings is a missing lm_head.weight', async () => {
    const dir = freshDir('no-head');
    await writeTinyLlamaDir(dir, { omit: ['lm_head.weight'] });
    expect((await loadError(dir)).message).toContain("'lm_head.weight'");
  });

  test('mis-shaped tensor: the message names it and both shapes', async () => {
    const dir = freshDir('misshaped');
    await writeTinyLlamaDir(dir, { replace: { 'model.layers.0.self_attn.k_proj.weight': { shape: [16, 16], values: new Float32Array(256) } } });
    const error = await loadError(dir);
    expect(error.path).toBe(resolve(dir));
    expect(error.message).toContain("'model.layers.0.self_attn.k_proj.weight'");
    expect(error.message).toContain('[16, 16]'); // found
    expect(error.message).toContain('[8, 16]'); // implied by 2 kv heads of width 4

    const gpt2 = freshDir('misshaped-gpt2');
    // A c_attn saved as a linear [3D, D] instead of Conv1D [D, 3D].
    await writeTinyGpt2Dir(gpt2, { replace: { 'h.1.attn.c_attn.weight': { shape: [48, 16], values: new Float32Array(768) } } });
    const gpt2Error = await loadError(gpt2);
    expect(gpt2Error.message).toContain("'h.1.attn.c_attn.weight'");
    expect(gpt2Error.message).toContain('[48, 16]');
    expect(gpt2Error.message).toContain('[16, 48]');
  });

  test('missing config.json', async () => {
    const dir = freshDir('no-config');
    await writeTinyLlamaDir(dir);
    await rm(join(dir, 'config.json'));
    const error = await loadError(dir);
    expect(error.path).toBe(join(resolve(dir), 'config.json'));
  });

  test('pickle-only directory is refused, and the hint names the pickle', async () => {
    const dir = freshDir('pickle');
    const written = await writeTinyLlamaDir(dir);
    await rm(join(dir, 'model.safetensors'));
    await writeFile(join(dir, 'pytorch_model.bin'), Buffer.from('PK\u0003\u0004 not really a pickle'));
    const error = await loadError(dir);
    expect(written.files).toEqual(['model.safetensors']);
    expect(error.path).toBe(resolve(dir));
    expect(error.message).toContain('pytorch_model.bin');
  });

  test('a shard listed by the index but absent', async () => {
    const dir = freshDir('lost-shard');
    const written = await writeTinyGpt2Dir(dir, { shards: 2 });
    const lost = join(dir, written.files[1] as string);
    await rm(lost);
    const error = await loadError(dir);
    expect(error.path).toBe(lost);
  });

  test('truncated llama2.c file (synthetic)', async () => {
    // Header of a tiny model (dim 8, hidden 16, 1 layer, 2/1 heads, vocab 4, seq 4) and far too few floats.
    const header = new Int32Array([8, 16, 1, 2, 1, 4, 4]);
    const path = join(root, 'tiny-truncated.bin');
    await writeFile(path, Buffer.concat([Buffer.from(header.buffer), Buffer.from(new Float32Array(50).buffer)]));
    const error = await loadError(path);
    expect(error.path).toBe(path);
    const headerOnly = join(root, 'header-only.bin');
    await writeFile(headerOnly, Buffer.from(header.buffer).subarray(0, 20));
    expect((await loadError(headerOnly)).path).toBe(headerOnly);
  });
});

test('loading and disposing a model returns numTensors to where it was', async () => {
  const dir = freshDir('leak');
  await writeTinyGpt2Dir(dir);
  await expectNoLeak(async () => {
    const before = tf.memory().numTensors;
    const model = await load(dir);
    // Exactly the weights stay alive: 16 per gpt2 layer, wte, wpe, ln_f weight and bias, and the tied
    // head's transposed copy (no RoPE).
    expect(listWeightTensors(model.weights)).toHaveLength(2 * 16 + 5);
    expect(tf.memory().numTensors - before).toBe(2 * 16 + 5);
    model.dispose();
  });
});
