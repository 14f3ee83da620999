/**
 * Config fields that change what a model computes, read strictly: each is either implemented or refused by
 * name, so a checkpoint never loads silently wrong. Both config layouts of Hugging Face transformers are read
 * (4.x: `rope_theta`, `rope_scaling`; 5.x: `rope_parameters` with `rope_theta` and `rope_type`).
 */
import { ConfigError } from '../../errors.js';

type Json = Record<string, unknown>;

function refuse(origin: string, field: string, value: unknown, why: string, hint: string): never {
  throw new ConfigError(`config.json field ${field} = ${JSON.stringify(value)} is not supported: ${why}`, { path: `${origin}: ${field}`, hint });
}

function isRecord(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** θ of rotary embeddings from either layout (default 10000); refuses a rope type other than the default. */
export function ropeThetaFromHf(json: Json, origin: string): unknown {
  const parameters = json['rope_parameters'];
  const scaling = json['rope_scaling'];
  for (const [field, value] of [
    ['rope_parameters', parameters],
    ['rope_scaling', scaling],
  ] as const) {
    if (value === undefined || value === null) continue;
    if (!isRecord(value)) refuse(origin, field, value, 'expected an object', 'Use the config.json saved with the model');
    const type = value['rope_type'] ?? value['type'];
    if (type !== undefined && type !== 'default') {
      refuse(
        origin,
        `${field}.rope_type`,
        type,
        'only the default rotary embedding is implemented; this model would compute wrong positions',
        'Use a model with default RoPE',
      );
    }
    for (const key of ['factor', 'partial_rotary_factor']) {
      if (value[key] !== undefined && value[key] !== 1)
        refuse(origin, `${field}.${key}`, value[key], 'rotary scaling is not implemented', 'Use a model with default RoPE');
    }
  }
  const top = json['rope_theta'];
  const nested = isRecord(parameters) ? parameters['rope_theta'] : undefined;
  if (top !== undefined && nested !== undefined && top !== nested) {
    refuse(origin, 'rope_parameters.rope_theta', nested, `it disagrees with rope_theta = ${JSON.stringify(top)}`, 'Keep one rope_theta');
  }
  return top ?? nested ?? 10000;
}

/** Llama fields outside what the llama family implements (RMSNorm, SwiGLU, no biases, head width D / H). */
export function checkLlamaConfig(json: Json, origin: string): void {
  for (const field of ['attention_bias', 'mlp_bias']) {
    if (json[field] === true)
      refuse(origin, field, true, 'bias tensors in llama projections are not implemented', 'Use a llama checkpoint without projection biases');
  }
  const act = json['hidden_act'];
  if (act !== undefined && act !== 'silu') refuse(origin, 'hidden_act', act, "the llama FFN here is SwiGLU with 'silu'", "Use hidden_act 'silu'");
  const heads = json['num_attention_heads'];
  const dim = json['hidden_size'];
  const headDim = json['head_dim'];
  if (headDim !== undefined && headDim !== null && typeof heads === 'number' && typeof dim === 'number' && headDim !== dim / heads) {
    refuse(
      origin,
      'head_dim',
      headDim,
      `an explicit head width other than hidden_size / num_attention_heads = ${dim / heads} is not implemented`,
      'Use a model whose head_dim is hidden_size / num_attention_heads',
    );
  }
  if (json['partial_rotary_factor'] !== undefined && json['partial_rotary_factor'] !== 1) {
    refuse(
      origin,
      'partial_rotary_factor',
      json['partial_rotary_factor'],
      'partial rotary embeddings are not implemented',
      'Use a model with full rotary embeddings',
    );
  }
  for (const field of ['sliding_window', 'attention_chunk_size']) {
    const value = json[field];
    if (value !== undefined && value !== null && json['use_sliding_window'] !== false) {
      refuse(
        origin,
        field,
        value,
        'windowed attention is not implemented (every token attends to all earlier tokens)',
        `Remove ${field} only if the model was trained without it`,
      );
    }
  }
}

/** gpt2 fields outside what the gpt2 family implements (tanh-GELU, attention scaled by 1/√Dh). */
export function checkGpt2Config(json: Json, origin: string): void {
  const act = json['activation_function'];
  if (act !== undefined && act !== 'gelu_new' && act !== 'gelu_pytorch_tanh') {
    refuse(origin, 'activation_function', act, "only the tanh approximation of GELU ('gelu_new') is implemented", "Use activation_function 'gelu_new'");
  }
  if (json['scale_attn_by_inverse_layer_idx'] === true) {
    refuse(origin, 'scale_attn_by_inverse_layer_idx', true, 'scaling attention by 1/(layer+1) is not implemented', 'Use a gpt2 checkpoint without it');
  }
  if (json['scale_attn_weights'] === false) {
    refuse(origin, 'scale_attn_weights', false, 'attention here is always scaled by 1/√head_dim', 'Use a gpt2 checkpoint with scale_attn_weights true');
  }
}

/** Buffers some checkpoints carry that no computation reads (recomputed here): never an error. */
const IGNORED_BUFFERS = [/\.rotary_emb\.inv_freq$/, /\.attn\.(masked_)?bias$/];

/** Names of checkpoint tensors that the built model did not read (buffers listed above excepted). */
export function unusedTensors(all: Iterable<string>, used: ReadonlySet<string>, family: 'llama' | 'gpt2'): string[] {
  return [...all].filter((name) => !used.has(name) && !(family === 'gpt2' ? IGNORED_BUFFERS : IGNORED_BUFFERS.slice(0, 1)).some((re) => re.test(name)));
}
