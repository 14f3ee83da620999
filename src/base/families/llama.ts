/**
 * The llama family: Hugging Face config and weight names → ModelConfig and frozen tensors.
 * Names (transformers `models/llama/modeling_llama.py`): model.embed_tokens.weight, model.layers.{i}.self_attn.{q,k,v,o}_proj.weight,
 * model.layers.{i}.mlp.{gate,up,down}_proj.weight, model.layers.{i}.{input,post_attention}_layernorm.weight,
 * model.norm.weight, lm_head.weight (absent when tied).
 */
import * as tf from '@tensorflow/tfjs';
import { parseConfig } from '../../config/parse.js';
import { checkLlamaConfig, ropeThetaFromHf } from '../checkpoints/strict-config.js';
import { takeTensor, type TensorSource } from '../../formats/host-tensors.js';
import { ModelConfig } from '../config.js';
import { siteShape } from '../site-shape.js';
import type { SiteName } from '../sites.js';
import type { LayerWeights, LinearWeights, TransformerWeights } from '../weights.js';

/** Hugging Face module path of each site, relative to `model.layers.{i}.`. */
export const LLAMA_SITE_MODULES: Readonly<Record<SiteName, string>> = {
  'attn.q': 'self_attn.q_proj',
  'attn.k': 'self_attn.k_proj',
  'attn.v': 'self_attn.v_proj',
  'attn.o': 'self_attn.o_proj',
  'mlp.gate': 'mlp.gate_proj',
  'mlp.up': 'mlp.up_proj',
  'mlp.down': 'mlp.down_proj',
};

export function llamaConfigFromHf(json: Record<string, unknown>, origin: string): ModelConfig {
  checkLlamaConfig(json, origin);
  const heads = json['num_attention_heads'];
  return parseConfig(
    ModelConfig,
    {
      family: 'llama',
      vocabSize: json['vocab_size'],
      dim: json['hidden_size'],
      hiddenDim: json['intermediate_size'],
      nLayers: json['num_hidden_layers'],
      nHeads: heads,
      nKvHeads: json['num_key_value_heads'] ?? heads,
      maxSeqLen: json['max_position_embeddings'] ?? 2048,
      normEps: json['rms_norm_eps'] ?? 1e-6,
      ropeTheta: ropeThetaFromHf(json, origin),
      tiedEmbeddings: json['tie_word_embeddings'] ?? false,
      ...(typeof json['bos_token_id'] === 'number' ? { bosId: json['bos_token_id'] } : {}),
      ...(typeof json['eos_token_id'] === 'number' ? { eosId: json['eos_token_id'] } : {}),
    },
    `${origin} config.json`,
  );
}

export function buildLlamaWeights(config: ModelConfig, source: TensorSource): TransformerWeights {
  const { dim, vocabSize } = config;
  const matrix = (name: string, shape: [number, number]): tf.Tensor2D => tf.tensor2d(takeTensor(source, name, shape).values, shape);
  /** A Hugging Face linear weight [O, I], stored [I, O] (see weights.ts). */
  const linear = (name: string, shape: [number, number]): tf.Tensor2D => tf.transpose(matrix(name, shape));
  const vector = (name: string): tf.Tensor1D => tf.tensor1d(takeTensor(source, name, [dim]).values);

  const tokenEmbedding = matrix('model.embed_tokens.weight', [vocabSize, dim]);
  const layers: LayerWeights[] = [];
  for (let i = 0; i < config.nLayers; i++) {
    const prefix = `model.layers.${i}.`;
    const sites: Partial<Record<SiteName, LinearWeights>> = {};
    for (const [site, module] of Object.entries(LLAMA_SITE_MODULES) as [SiteName, string][]) {
      sites[site] = { weight: linear(`${prefix}${module}.weight`, siteShape(config, site)) };
    }
    layers.push({
      attnNorm: { weight: vector(`${prefix}input_layernorm.weight`) },
      mlpNorm: { weight: vector(`${prefix}post_attention_layernorm.weight`) },
      sites,
    });
  }
  const finalNorm = { weight: vector('model.norm.weight') };
  const tiedHead = config.tiedEmbeddings && !source.has('lm_head.weight');
  const head = tiedHead ? tf.transpose(tokenEmbedding) : linear('lm_head.weight', [vocabSize, dim]); // [D, V]
  return { tokenEmbedding, layers, finalNorm, head, tiedHead };
}
