// Config fields that change what a model computes are implemented or refused by name (src/base/checkpoints/
// strict-config.ts): both rope_theta layouts give the same model; rope scaling, biases, an explicit head width,
// another activation, windowed attention and gpt2's layer-wise attention scaling are refused naming the field
// and value; a checkpoint tensor the model does not use is an error listing it (rotary and mask buffers excepted).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { loadBaseModel } from '../../src/base/checkpoints/load-model.js';
import { CheckpointError, ConfigError } from '../../src/errors.js';
import { writeTinyGpt2Dir, writeTinyLlamaDir } from '../helpers/tiny-models.js';

let root: string;
let n = 0;
const fresh = (): string => join(root, `m${n++}`);

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'routed-peft-strict-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function logits(dir: string): Promise<Float32Array> {
  const { model } = await loadBaseModel(dir);
  const out = model.forward({ ids: [[1, 2, 3, 4, 5, 6]] });
  const values = out.dataSync() as Float32Array;
  out.dispose();
  model.dispose();
  return values;
}

describe('strict config reading', () => {
  test('rope_theta in the transformers 5 layout (rope_parameters) is read, and equals the 4.x layout', async () => {
    const v4 = await writeTinyLlamaDir(fresh(), { config: { rope_theta: 500000 } });
    const v5 = await writeTinyLlamaDir(fresh(), { config: { rope_theta: undefined, rope_parameters: { rope_type: 'default', rope_theta: 500000 } } });
    const plain = await writeTinyLlamaDir(fresh(), { config: { rope_theta: 10000 } });
    const a = await logits(v4.dir);
    expect(Array.from(await logits(v5.dir))).toEqual(Array.from(a));
    // θ really is read: 10000 gives other logits.
    expect(Array.from(await logits(plain.dir))).not.toEqual(Array.from(a));
    const conflicting = await writeTinyLlamaDir(fresh(), { config: { rope_theta: 10000, rope_parameters: { rope_type: 'default', rope_theta: 500000 } } });
    await expect(loadBaseModel(conflicting.dir)).rejects.toThrow(/rope_parameters\.rope_theta = 500000.*disagrees/);
  });

  test.each([
    [{ rope_scaling: { rope_type: 'llama3', factor: 8 } }, /rope_scaling\.rope_type = "llama3"/],
    [{ rope_scaling: { type: 'linear', factor: 2 } }, /rope_scaling\.rope_type = "linear"/],
    [{ rope_parameters: { rope_type: 'yarn', rope_theta: 10000, factor: 4 } }, /rope_parameters\.rope_type = "yarn"/],
    [{ attention_bias: true }, /attention_bias = true/],
    [{ mlp_bias: true }, /mlp_bias = true/],
    [{ head_dim: 8 }, /head_dim = 8/],
    [{ hidden_act: 'gelu' }, /hidden_act = "gelu"/],
    [{ sliding_window: 4 }, /sliding_window = 4/],
  ])('llama %j is refused by name', async (fields, message) => {
    const written = await writeTinyLlamaDir(fresh(), { config: fields });
    const start = tf.memory().numTensors;
    await expect(loadBaseModel(written.dir)).rejects.toThrow(ConfigError);
    await expect(loadBaseModel(written.dir)).rejects.toThrow(message);
    expect(tf.memory().numTensors).toBe(start);
  });

  test('fields at their implemented values load', async () => {
    const written = await writeTinyLlamaDir(fresh(), {
      config: { attention_bias: false, mlp_bias: false, hidden_act: 'silu', head_dim: 4, rope_scaling: null, sliding_window: null },
    });
    expect((await logits(written.dir)).length).toBeGreaterThan(0);
  });

  test.each([
    [{ activation_function: 'gelu' }, /activation_function = "gelu"/],
    [{ activation_function: 'relu' }, /activation_function = "relu"/],
    [{ scale_attn_by_inverse_layer_idx: true }, /scale_attn_by_inverse_layer_idx = true/],
    [{ scale_attn_weights: false }, /scale_attn_weights = false/],
  ])('gpt2 %j is refused by name', async (fields, message) => {
    const written = await writeTinyGpt2Dir(fresh(), { config: fields });
    await expect(loadBaseModel(written.dir)).rejects.toThrow(message);
  });

  test('a checkpoint tensor no part of the model uses is an error listing it; rotary and mask buffers are not', async () => {
    const extra = { shape: [16], values: new Float32Array(16) };
    const unused = await writeTinyLlamaDir(fresh(), { replace: { 'model.layers.0.self_attn.q_proj.bias': extra } });
    const start = tf.memory().numTensors;
    await expect(loadBaseModel(unused.dir)).rejects.toThrow(CheckpointError);
    await expect(loadBaseModel(unused.dir)).rejects.toThrow(/not used by the llama model: model\.layers\.0\.self_attn\.q_proj\.bias/);
    expect(tf.memory().numTensors).toBe(start);
    const buffers = await writeTinyLlamaDir(fresh(), {
      replace: { 'model.layers.0.self_attn.rotary_emb.inv_freq': { shape: [2], values: new Float32Array(2) } },
    });
    expect((await logits(buffers.dir)).length).toBeGreaterThan(0);
    const gpt2Mask = await writeTinyGpt2Dir(fresh(), { replace: { 'h.0.attn.bias': { shape: [1, 1, 4, 4], values: new Float32Array(16) } } });
    expect((await logits(gpt2Mask.dir)).length).toBeGreaterThan(0);
  });
});
