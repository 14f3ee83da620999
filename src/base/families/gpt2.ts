/**
 * The gpt2 family: Hugging Face config and weight names → ModelConfig and frozen tensors.
 * Names (transformers `models/gpt2/modeling_gpt2.py`): wte.weight [V, D], wpe.weight [P, D], h.{i}.ln_1, h.{i}.attn.c_attn ([D, 3D] Conv1D,
 * q|k|v along the output), h.{i}.attn.c_proj, h.{i}.ln_2, h.{i}.mlp.c_fc, h.{i}.mlp.c_proj, ln_f; optionally
 * prefixed by `transformer.`. Conv1D weights are [in, out], the layout sites store (weights.ts); c_attn
 * is split by columns into the q, k and v sites.
 */
import * as tf from '@tensorflow/tfjs';
import { parseConfig } from '../../config/parse.js';
import { checkGpt2Config } from '../checkpoints/strict-config.js';
import { takeTensor, type TensorSource } from '../../formats/host-tensors.js';
import { ModelConfig } from '../config.js';
import type { LayerWeights, NormWeights, TransformerWeights } from '../weights.js';

export function gpt2ConfigFromHf(json: Record<string, unknown>, origin: string): ModelConfig {
  checkGpt2Config(json, origin);
  const dim = json['n_embd'];
  const heads = json['n_head'];
  return parseConfig(
    ModelConfig,
    {
      family: 'gpt2',
      vocabSize: json['vocab_size'],
      dim,
      hiddenDim: json['n_inner'] ?? (typeof dim === 'number' ? 4 * dim : undefined),
      nLayers: json['n_layer'],
      nHeads: heads,
      nKvHeads: heads,
      maxSeqLen: json['n_positions'] ?? json['n_ctx'],
      normEps: json['layer_norm_epsilon'] ?? 1e-5,
      tiedEmbeddings: true,
      ...(typeof json['bos_token_id'] === 'number' ? { bosId: json['bos_token_id'] } : {}),
      ...(typeof json['eos_token_id'] === 'number' ? { eosId: json['eos_token_id'] } : {}),
    },
    `${origin} config.json`,
  );
}

/** gpt2 checkpoints saved from GPT2LMHeadModel prefix every name with `transformer.`; accept both. */
export function gpt2NamePrefix(source: TensorSource): string {
  return source.has('transformer.wte.weight') ? 'transformer.' : '';
}

export function buildGpt2Weights(config: ModelConfig, source: TensorSource): TransformerWeights {
  const { dim, hiddenDim, vocabSize } = config;
  const p = gpt2NamePrefix(source);
  const vector = (name: string, size: number): tf.Tensor1D => tf.tensor1d(takeTensor(source, name, [size]).values);
  const norm = (name: string): NormWeights => ({ weight: vector(`${name}.weight`, dim), bias: vector(`${name}.bias`, dim) });
  /** A Conv1D weight [in, out], as sites store it. */
  const conv1d = (name: string, inputs: number, outputs: number): tf.Tensor2D =>
    tf.tensor2d(takeTensor(source, name, [inputs, outputs]).values, [inputs, outputs]);

  const tokenEmbedding = tf.tensor2d(takeTensor(source, `${p}wte.weight`, [vocabSize, dim]).values, [vocabSize, dim]);
  const positionEmbedding = tf.tensor2d(takeTensor(source, `${p}wpe.weight`, [config.maxSeqLen, dim]).values, [config.maxSeqLen, dim]);
  const layers: LayerWeights[] = [];
  for (let i = 0; i < config.nLayers; i++) {
    const h = `${p}h.${i}.`;
    const qkv = conv1d(`${h}attn.c_attn.weight`, dim, 3 * dim); // [D, 3D] columns: q, then k, then v
    const qkvBias = takeTensor(source, `${h}attn.c_attn.bias`, [3 * dim]).values;
    const part = (index: number): { weight: tf.Tensor2D; bias: tf.Tensor1D } => ({
      weight: tf.slice(qkv, [0, index * dim], [dim, dim]), // [D, D]
      bias: tf.tensor1d(qkvBias.subarray(index * dim, (index + 1) * dim)),
    });
    layers.push({
      attnNorm: norm(`${h}ln_1`),
      mlpNorm: norm(`${h}ln_2`),
      sites: {
        'attn.q': part(0),
        'attn.k': part(1),
        'attn.v': part(2),
        'attn.o': { weight: conv1d(`${h}attn.c_proj.weight`, dim, dim), bias: vector(`${h}attn.c_proj.bias`, dim) },
        'mlp.up': {
          weight: conv1d(`${h}mlp.c_fc.weight`, dim, hiddenDim),
          bias: vector(`${h}mlp.c_fc.bias`, hiddenDim),
        },
        'mlp.down': {
          weight: conv1d(`${h}mlp.c_proj.weight`, hiddenDim, dim),
          bias: vector(`${h}mlp.c_proj.bias`, dim),
        },
      },
    });
  }
  return { tokenEmbedding, positionEmbedding, layers, finalNorm: norm(`${p}ln_f`), head: tf.transpose(tokenEmbedding), tiedHead: true }; // head [D, V]
}
