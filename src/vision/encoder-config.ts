/**
 * The architecture of a vision encoder, read strictly from a Hugging Face ViT config.json (`model_type`
 * "vit"): every field that changes what the encoder computes is implemented or refused by name.
 */
import { z } from 'zod';
import type { ModelConfig } from '../base/config.js';
import { parseConfig } from '../config/parse.js';
import { CheckpointError, ConfigError } from '../errors.js';

export const VisionConfig = z
  .object({
    /** S: images are S×S pixels. */
    imageSize: z.number().int().positive().max(1024),
    /** p: square patches of p×p pixels; S must be a multiple of p. */
    patchSize: z.number().int().positive().max(256),
    /** C: colour channels (3: RGB). */
    channels: z.literal(3),
    /** Dv: the encoder's width. */
    dim: z.number().int().positive().max(4096),
    nLayers: z.number().int().positive().max(64),
    nHeads: z.number().int().positive().max(64),
    /** Fv: FFN width. */
    hiddenDim: z.number().int().positive().max(16_384),
    normEps: z.number().positive(),
    activation: z.enum(['gelu', 'gelu-tanh']),
    /** Biases on q, k, v (ViT's qkv_bias). */
    qkvBias: z.boolean(),
  })
  .strict()
  .readonly()
  .superRefine((c, ctx) => {
    if (c.imageSize % c.patchSize !== 0)
      ctx.addIssue({ code: 'custom', path: ['patchSize'], message: `image size ${c.imageSize} is not a multiple of the patch size ${c.patchSize}` });
    if (c.dim % c.nHeads !== 0) ctx.addIssue({ code: 'custom', path: ['nHeads'], message: `width ${c.dim} is not divisible by ${c.nHeads} heads` });
  });
export type VisionConfig = z.infer<typeof VisionConfig>;

/** N: patches per image. */
export function patchCount(config: VisionConfig): number {
  return (config.imageSize / config.patchSize) ** 2;
}

function refuse(origin: string, field: string, value: unknown, why: string): never {
  throw new ConfigError(`config.json field ${field} = ${JSON.stringify(value)} is not supported: ${why}`, {
    path: `${origin}: ${field}`,
    hint: 'Use a ViT encoder with the layout this library implements (pre-norm layers, a class token, learned positions)',
  });
}

/** ViT config.json → VisionConfig; refuses what the encoder does not implement. */
export function visionConfigFromHf(json: unknown, origin: string): VisionConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new CheckpointError('config.json is not a JSON object', { path: origin });
  const c = json as Record<string, unknown>;
  if (c['model_type'] !== 'vit') {
    throw new CheckpointError(`unsupported vision model_type ${JSON.stringify(c['model_type'])} in config.json`, {
      path: origin,
      hint: "The vision encoder reads Hugging Face ViT directories (model_type 'vit')",
    });
  }
  const act = c['hidden_act'] ?? 'gelu';
  if (act !== 'gelu' && act !== 'gelu_new' && act !== 'gelu_pytorch_tanh')
    refuse(origin, 'hidden_act', act, "only 'gelu' and its tanh approximation are implemented");
  if (c['num_channels'] !== undefined && c['num_channels'] !== 3) refuse(origin, 'num_channels', c['num_channels'], 'images are decoded as RGB (3 channels)');
  const numbers = (field: string): unknown => c[field];
  return parseConfig(
    VisionConfig,
    {
      imageSize: numbers('image_size'),
      patchSize: numbers('patch_size'),
      channels: 3,
      dim: numbers('hidden_size'),
      nLayers: numbers('num_hidden_layers'),
      nHeads: numbers('num_attention_heads'),
      hiddenDim: numbers('intermediate_size'),
      normEps: c['layer_norm_eps'] ?? 1e-12,
      activation: act === 'gelu' ? 'gelu' : 'gelu-tanh',
      qkvBias: c['qkv_bias'] ?? true,
    },
    `${origin} config.json`,
  );
}

/** VisionConfig → a ViT config.json (what the pretraining script writes). */
export function visionConfigToHf(config: VisionConfig): Record<string, unknown> {
  return {
    architectures: ['ViTModel'],
    model_type: 'vit',
    image_size: config.imageSize,
    patch_size: config.patchSize,
    num_channels: config.channels,
    hidden_size: config.dim,
    num_hidden_layers: config.nLayers,
    num_attention_heads: config.nHeads,
    intermediate_size: config.hiddenDim,
    layer_norm_eps: config.normEps,
    hidden_act: config.activation === 'gelu' ? 'gelu' : 'gelu_new',
    qkv_bias: config.qkvBias,
    torch_dtype: 'float32',
  };
}

/**
 * The encoder as adapters see it: its layers have the sites of a gpt2 layer (q, k, v, o, up, down; pre-norm,
 * biases, a GELU FFN), so every adapter kind attaches to them unchanged. Sequence length: the class token and
 * the N patches.
 */
export function visionAdapterConfig(config: VisionConfig): ModelConfig {
  return {
    family: 'gpt2',
    vocabSize: 1,
    dim: config.dim,
    hiddenDim: config.hiddenDim,
    nLayers: config.nLayers,
    nHeads: config.nHeads,
    nKvHeads: config.nHeads,
    maxSeqLen: patchCount(config) + 1,
    normEps: config.normEps,
    ropeTheta: 10000,
    tiedEmbeddings: true,
  };
}
