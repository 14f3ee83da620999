/**
 * Builds the frozen Transformer from a checkpoint's tensors, and loads a Hugging Face model directory from
 * any FileSource (disk, URL, dropped files). Tensors are built in a tidy so a checkpoint that fails half-way
 * leaks nothing. The Node entry for paths (and llama2.c .bin files) is `load-model.ts`.
 */
import * as tf from '@tensorflow/tfjs';
import { CheckpointError } from '../../errors.js';
import type { FileSource } from '../../formats/file-source.js';
import type { FiniteOptions } from '../../formats/finite.js';
import type { TensorSource } from '../../formats/host-tensors.js';
import type { ModelConfig } from '../config.js';
import { buildGpt2Weights } from '../families/gpt2.js';
import { buildLlamaWeights } from '../families/llama.js';
import { Transformer } from '../transformer.js';
import { disposeWeights, type TransformerWeights } from '../weights.js';
import { readHfModelFrom } from './hf-model-source.js';
import { unusedTensors } from './strict-config.js';

export type CheckpointFormat = 'huggingface' | 'llama2c';

export interface LoadedModel {
  readonly model: Transformer;
  readonly format: CheckpointFormat;
  /** Where it was read from: the path, or the FileSource's origin (a URL, dropped files). */
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

/** Loads a Hugging Face model directory (config.json + safetensors) from a FileSource. */
export async function loadBaseModelFrom(files: FileSource, options: FiniteOptions = {}): Promise<LoadedModel> {
  const checkpoint = await readHfModelFrom(files, options);
  return { model: buildTransformer(checkpoint.config, checkpoint.source), format: 'huggingface', path: files.origin };
}
