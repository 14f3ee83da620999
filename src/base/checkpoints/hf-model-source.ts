/**
 * Hugging Face model directories from any FileSource (disk, URL, dropped files): config.json plus
 * model.safetensors, or shards listed by model.safetensors.index.json ({"weight_map": {name: file}}).
 * Tensors decode lazily, one at a time, as the family builder asks for them. Only safetensors are read: a
 * pickle (.bin/.pt) is refused, never evaluated.
 */
import { CheckpointError } from '../../errors.js';
import type { ModelConfig } from '../config.js';
import { gpt2ConfigFromHf } from '../families/gpt2.js';
import { llamaConfigFromHf } from '../families/llama.js';
import { readJson, type FileSource } from '../../formats/file-source.js';
import { assertFiniteTensor, type FiniteOptions } from '../../formats/finite.js';
import type { HostTensor, TensorSource } from '../../formats/host-tensors.js';
import { decodeFloat32, type SafetensorsEntry } from '../../formats/safetensors-codec.js';
import { readSafetensorsFrom } from '../../formats/safetensors-source.js';

export interface HfModelDirectory {
  readonly config: ModelConfig;
  readonly source: TensorSource;
  readonly rawConfig: Readonly<Record<string, unknown>>;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function modelConfigFromHf(json: unknown, origin: string): ModelConfig {
  if (!isRecord(json)) throw new CheckpointError('config.json is not a JSON object', { path: origin });
  const modelType = json['model_type'];
  if (modelType === 'llama') return llamaConfigFromHf(json, origin);
  if (modelType === 'gpt2') return gpt2ConfigFromHf(json, origin);
  throw new CheckpointError(`unsupported model_type ${JSON.stringify(modelType)} in config.json`, {
    path: origin,
    hint: "Supported families are 'llama' and 'gpt2'",
  });
}

/** Lists the safetensors files of a directory: the index's shards, or model.safetensors. */
async function safetensorsFiles(files: FileSource): Promise<string[]> {
  const indexName = 'model.safetensors.index.json';
  if (await files.exists(indexName)) {
    const index = await readJson(files, indexName, 'safetensors index');
    const weightMap = isRecord(index) ? index['weight_map'] : undefined;
    if (!isRecord(weightMap)) {
      throw new CheckpointError('model.safetensors.index.json has no "weight_map" object', { path: files.path(indexName) });
    }
    const shards = new Set<string>();
    for (const [name, file] of Object.entries(weightMap)) {
      // Shard names are plain file names in the directory; refuse anything that could escape it.
      if (typeof file !== 'string' || /[\\/]/.test(file) || !file.endsWith('.safetensors')) {
        throw new CheckpointError(`weight_map entry for '${name}' names ${JSON.stringify(file)}, not a .safetensors file in the directory`, {
          path: files.path(indexName),
        });
      }
      shards.add(file);
    }
    return [...shards];
  }
  if (await files.exists('model.safetensors')) return ['model.safetensors'];
  const pickles: string[] = [];
  for (const f of ['pytorch_model.bin', 'model.bin']) if (await files.exists(f)) pickles.push(f);
  throw new CheckpointError('no model.safetensors or model.safetensors.index.json in the model directory', {
    path: files.origin,
    hint:
      pickles.length > 0
        ? `Found ${pickles.join(', ')}: pickled PyTorch weights are never loaded (they can run code); convert them with safetensors' convert script`
        : 'Save the model with save_pretrained(..., safe_serialization=True)',
  });
}

/** Reads config.json and lists the tensors; each decodes lazily (and is checked for NaN/±Infinity unless allowed). */
export async function readHfModelFrom(files: FileSource, options: FiniteOptions = {}): Promise<HfModelDirectory> {
  const configPath = files.path('config.json');
  const rawConfig = await readJson(files, 'config.json', 'config.json');
  const config = modelConfigFromHf(rawConfig, configPath);
  const entries = new Map<string, { entry: SafetensorsEntry; file: string }>();
  for (const name of await safetensorsFiles(files)) {
    const parsed = await readSafetensorsFrom(files, name);
    const file = files.path(name);
    for (const [tensor, entry] of parsed.entries) {
      if (entries.has(tensor)) throw new CheckpointError(`tensor '${tensor}' appears in two shards`, { path: file });
      entries.set(tensor, { entry, file });
    }
  }
  const source: TensorSource = {
    origin: files.origin,
    has: (name) => entries.has(name),
    get: (name): HostTensor | undefined => {
      const found = entries.get(name);
      if (found === undefined) return undefined;
      const values = decodeFloat32(found.entry, { source: found.file });
      assertFiniteTensor(values, name, found.file, options);
      return { shape: found.entry.shape, values };
    },
    names: () => entries.keys(),
  };
  return { config, source, rawConfig: rawConfig as Record<string, unknown> };
}
