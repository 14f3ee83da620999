/**
 * One entry point for every checkpoint format: a Hugging Face directory (llama or gpt2, safetensors) or a
 * llama2.c legacy .bin file. Returns the frozen Transformer; tensors are built in a tidy so a checkpoint that
 * fails half-way leaks nothing.
 */
import { existsSync, statSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { CheckpointError } from '../../errors.js';
import type { FiniteOptions } from '../../formats/finite.js';
import type { TensorSource } from '../../formats/host-tensors.js';
import { readHfModelDirectory } from './hf-model-dir.js';
import { readLlama2cCheckpoint } from './llama2c-checkpoint.js';
import type { ModelConfig } from '../config.js';
import { buildGpt2Weights } from '../families/gpt2.js';
import { buildLlamaWeights } from '../families/llama.js';
import { Transformer } from '../transformer.js';
import { disposeWeights, type TransformerWeights } from '../weights.js';
import { unusedTensors } from './strict-config.js';

export type CheckpointFormat = 'huggingface' | 'llama2c';

export interface LoadedModel {
  readonly model: Transformer;
  readonly format: CheckpointFormat;
  readonly path: string;
}

export function buildTransformer(config: ModelConfig, source: TensorSource): Transformer {
  const used = new Set<string>();
  const reading: TensorSource = {
    ...source,
    get: (name) => {
      used.add(name);
      return source.get(name);
    },
  };
  const weights = tf.tidy(() => {
    const built = config.family === 'llama' ? buildLlamaWeights(config, reading) : buildGpt2Weights(config, reading);
    return built as unknown as tf.TensorContainer;
  }) as unknown as TransformerWeights;
  const unused = unusedTensors(source.names(), used, config.family);
  if (unused.length > 0) {
    disposeWeights(weights);
    throw new CheckpointError(
      `${unused.length} checkpoint tensor(s) are not used by the ${config.family} model: ${unused.slice(0, 8).join(', ')}${unused.length > 8 ? ', …' : ''}`,
      {
        path: source.origin,
        hint: 'The checkpoint holds weights this family does not compute with (biases, extra layers, another architecture); loading it would silently drop them',
      },
    );
  }
  return new Transformer(config, weights);
}

export function detectCheckpointFormat(path: string): CheckpointFormat {
  if (!existsSync(path)) {
    throw new CheckpointError('model path does not exist', { path, hint: 'Pass a Hugging Face model directory or a llama2.c .bin file' });
  }
  if (statSync(path).isDirectory()) return 'huggingface';
  if (path.endsWith('.bin')) return 'llama2c';
  throw new CheckpointError('cannot tell the checkpoint format', {
    path,
    hint: 'Pass a Hugging Face model directory (config.json + model.safetensors) or a llama2.c .bin file',
  });
}

/** Loads a base model; weights holding NaN or ±Infinity are refused unless `options.allowNonFinite`. */
export async function loadBaseModel(path: string, options: FiniteOptions = {}): Promise<LoadedModel> {
  const format = detectCheckpointFormat(path);
  const checkpoint = format === 'llama2c' ? await readLlama2cCheckpoint(path, options) : await readHfModelDirectory(path, options);
  return { model: buildTransformer(checkpoint.config, checkpoint.source), format, path };
}
