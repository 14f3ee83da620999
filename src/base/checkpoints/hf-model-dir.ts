/**
 * Hugging Face model directories: config.json plus model.safetensors, or shards listed by
 * model.safetensors.index.json ({"weight_map": {name: file}}). Tensors decode lazily, one at a time, as the
 * family builder asks for them. Only safetensors are read: a pickle (.bin/.pt) is refused, never evaluated.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { CheckpointError } from '../../errors.js';
import type { ModelConfig } from '../config.js';
import { gpt2ConfigFromHf } from '../families/gpt2.js';
import { llamaConfigFromHf } from '../families/llama.js';
import { assertFiniteTensor, type FiniteOptions } from '../../formats/finite.js';
import type { HostTensor, TensorSource } from '../../formats/host-tensors.js';
import { decodeFloat32, readSafetensorsFile, type SafetensorsEntry } from '../../formats/safetensors.js';

export interface HfModelDirectory {
  readonly config: ModelConfig;
  readonly source: TensorSource;
  readonly rawConfig: Readonly<Record<string, unknown>>;
}

/** Reads and parses a JSON file (a leading UTF-8 BOM is skipped); errors are CheckpointErrors naming the file. */
export async function readJsonFile(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    throw new CheckpointError(`cannot read ${what}: ${(cause as Error).message}`, { path, cause });
  }
  // A UTF-8 byte-order mark (Windows editors write one) is not part of the JSON; datasets accept it too.
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  try {
    return JSON.parse(text) as unknown;
  } catch (cause) {
    throw new CheckpointError(`${what} is not valid JSON: ${(cause as Error).message}`, { path, cause });
  }
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
async function safetensorsFiles(dir: string): Promise<string[]> {
  const indexPath = join(dir, 'model.safetensors.index.json');
  if (existsSync(indexPath)) {
    const index = await readJsonFile(indexPath, 'safetensors index');
    const weightMap = isRecord(index) ? index['weight_map'] : undefined;
    if (!isRecord(weightMap)) {
      throw new CheckpointError('model.safetensors.index.json has no "weight_map" object', { path: indexPath });
    }
    const files = new Set<string>();
    for (const [name, file] of Object.entries(weightMap)) {
      // Shard names are plain file names in the directory; refuse anything that could escape it.
      if (typeof file !== 'string' || basename(file) !== file || !file.endsWith('.safetensors')) {
        throw new CheckpointError(`weight_map entry for '${name}' names ${JSON.stringify(file)}, not a .safetensors file in the directory`, {
          path: indexPath,
        });
      }
      files.add(file);
    }
    return [...files].map((f) => join(dir, f));
  }
  const single = join(dir, 'model.safetensors');
  if (existsSync(single)) return [single];
  const pickles = ['pytorch_model.bin', 'model.bin'].filter((f) => existsSync(join(dir, f)));
  throw new CheckpointError('no model.safetensors or model.safetensors.index.json in the model directory', {
    path: dir,
    hint:
      pickles.length > 0
        ? `Found ${pickles.join(', ')}: pickled PyTorch weights are never loaded (they can run code); convert them with safetensors' convert script`
        : 'Save the model with save_pretrained(..., safe_serialization=True)',
  });
}

/** Reads config.json and lists the tensors; each decodes lazily (and is checked for NaN/±Infinity unless allowed). */
export async function readHfModelDirectory(path: string, options: FiniteOptions = {}): Promise<HfModelDirectory> {
  const dir = resolve(path);
  const configPath = join(dir, 'config.json');
  const rawConfig = await readJsonFile(configPath, 'config.json');
  const config = modelConfigFromHf(rawConfig, configPath);
  const entries = new Map<string, { entry: SafetensorsEntry; file: string }>();
  for (const file of await safetensorsFiles(dir)) {
    const parsed = await readSafetensorsFile(file);
    for (const [name, entry] of parsed.entries) {
      if (entries.has(name)) throw new CheckpointError(`tensor '${name}' appears in two shards`, { path: file });
      entries.set(name, { entry, file });
    }
  }
  const source: TensorSource = {
    origin: dir,
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

/** True when `path` looks like a Hugging Face model directory (or a config.json inside one). */
export function isHfModelPath(path: string): boolean {
  return existsSync(join(path, 'config.json')) || (basename(path) === 'config.json' && existsSync(dirname(path)));
}
