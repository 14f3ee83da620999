/**
 * One entry point for every checkpoint format: a Hugging Face directory (llama or gpt2, safetensors) or a
 * llama2.c legacy .bin file. Returns the frozen Transformer; tensors are built in a tidy so a checkpoint that
 * fails half-way leaks nothing.
 */
import { existsSync, statSync } from 'node:fs';
import { CheckpointError } from '../../errors.js';
import type { FiniteOptions } from '../../formats/finite.js';
import { readHfModelDirectory } from './hf-model-dir.js';
import { readLlama2cCheckpoint } from './llama2c-checkpoint.js';
import { buildTransformer, type CheckpointFormat, type LoadedModel } from './load-model-source.js';

export { buildTransformer, loadBaseModelFrom, type CheckpointFormat, type LoadedModel } from './load-model-source.js';

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
