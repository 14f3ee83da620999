/**
 * The routed-model directory: everything needed to rebuild an AdaptedModel on its base.
 *
 *   routed-peft.json          manifest: format, version, the base it was built for, the spec, file list
 *   adapters/<name>/          LoRA experts as PEFT adapters (adapter_config.json + adapter_model.safetensors);
 *                             other kinds as adapter.safetensors (variables by `<layer>|<point>/<i>`)
 *   routers.safetensors       router variables by `route<i>/<router key>/<j>`
 *
 * Saving writes a temporary sibling directory and swaps it in, the manifest last, so an interrupted save
 * leaves the previous directory intact. Loading validates the manifest, checks the base matches, builds the
 * model from the spec and assigns every saved variable, checking names and shapes.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import type { ModelConfig } from '../base/config.js';
import type { Transformer } from '../base/transformer.js';
import { parseConfig } from '../config/parse.js';
import { CheckpointError, ConfigError, formatShape } from '../errors.js';
import type { AdapterInstance } from '../adapters/instance.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import { AdaptedModel } from '../model/adapted-model.js';
import { replaceDirectoryAtomic, writeFileAtomic } from '../formats/atomic-write.js';
import { readJsonFile } from '../base/checkpoints/hf-model-dir.js';
import { readPeftAdapter, writePeftAdapter } from './peft-adapter.js';
import { decodeFloat32, readSafetensorsFile, writeSafetensorsFile, type TensorToWrite } from '../formats/safetensors.js';

export const MANIFEST_FILE = 'routed-peft.json';
export const ROUTERS_FILE = 'routers.safetensors';
export const NATIVE_ADAPTER_FILE = 'adapter.safetensors';

/** The architecture facts a routed model depends on; a base that differs cannot host it. */
export const BaseReference = z
  .object({
    family: z.enum(['llama', 'gpt2']),
    vocabSize: z.number().int(),
    dim: z.number().int(),
    hiddenDim: z.number().int(),
    nLayers: z.number().int(),
    nHeads: z.number().int(),
    nKvHeads: z.number().int(),
    /** Where the base was loaded from when the directory was written (informational). */
    path: z.string().optional(),
  })
  .strict();
export type BaseReference = z.infer<typeof BaseReference>;

export const RoutedModelManifest = z
  .object({
    format: z.literal('routed-peft'),
    version: z.literal(1),
    base: BaseReference,
    /** The AdaptedModelSpec, validated again when the model is built. */
    spec: z.record(z.string(), z.unknown()),
    adapters: z.record(z.string(), z.object({ path: z.string(), format: z.enum(['peft', 'native']) }).strict()),
    routers: z.string().optional(),
  })
  .strict();
export type RoutedModelManifest = z.infer<typeof RoutedModelManifest>;

export function baseReference(config: ModelConfig, path?: string): BaseReference {
  const { family, vocabSize, dim, hiddenDim, nLayers, nHeads, nKvHeads } = config;
  return { family, vocabSize, dim, hiddenDim, nLayers, nHeads, nKvHeads, ...(path === undefined ? {} : { path }) };
}

function checkBase(reference: BaseReference, config: ModelConfig, dir: string): void {
  const actual = baseReference(config);
  for (const key of ['family', 'vocabSize', 'dim', 'hiddenDim', 'nLayers', 'nHeads', 'nKvHeads'] as const) {
    if (reference[key] !== actual[key]) {
      throw new CheckpointError(
        `routed model was built for a base with ${key} ${JSON.stringify(reference[key])}, but this base has ${JSON.stringify(actual[key])}`,
        {
          path: join(dir, MANIFEST_FILE),
          hint: `Load it on the base it was trained on${reference.path === undefined ? '' : ` (${reference.path})`}`,
        },
      );
    }
  }
}

function variablesToWrite(variables: ReadonlyMap<string, tf.Variable>): Map<string, TensorToWrite> {
  const out = new Map<string, TensorToWrite>();
  for (const [name, v] of variables) out.set(name, { dtype: 'F32', shape: v.shape, data: v.dataSync() as Float32Array });
  return out;
}

/** Assigns saved values to variables; every variable must be present with its shape, and nothing extra. */
async function assignFromFile(file: string, variables: ReadonlyMap<string, tf.Variable>): Promise<void> {
  const saved = await readSafetensorsFile(file);
  for (const name of saved.entries.keys()) {
    if (!variables.has(name)) throw new CheckpointError(`unexpected tensor '${name}'`, { path: file, hint: 'The file does not belong to this spec' });
  }
  for (const [name, variable] of variables) {
    const entry = saved.entries.get(name);
    if (entry === undefined) throw new CheckpointError(`missing tensor '${name}'`, { path: file });
    const same = entry.shape.length === variable.shape.length && entry.shape.every((d, i) => d === variable.shape[i]);
    if (!same)
      throw new CheckpointError(`tensor '${name}' has shape ${formatShape(entry.shape)} but the model expects ${formatShape(variable.shape)}`, { path: file });
    const values = decodeFloat32(entry, { source: file });
    tf.tidy(() => variable.assign(tf.tensor(values, variable.shape)));
  }
}

/** Native variables of one adapter, keyed `<layer>|<point>/<i>`. */
function adapterVariables(model: AdaptedModel, name: string): Map<string, tf.Variable> {
  const prefix = `${name}/`;
  const out = new Map<string, tf.Variable>();
  for (const [key, v] of model.namedVariables()) if (key.startsWith(prefix)) out.set(key.slice(prefix.length), v);
  return out;
}

function routerVariables(model: AdaptedModel): Map<string, tf.Variable> {
  const out = new Map<string, tf.Variable>();
  for (const route of model.routes) for (const [key, v] of route.namedVariables()) out.set(key, v);
  return out;
}

/**
 * Writes a LoRA adapter in PEFT format when PEFT can represent it; returns false when it cannot (e.g. a gpt2
 * LoRA on q and v only: PEFT's LoRA on the fused c_attn always changes q, k and v), so the caller saves it
 * natively instead — a save never fails for a model that runs.
 */
async function tryWritePeft(dir: string, instance: AdapterInstance, model: AdaptedModel, basePath: string | undefined): Promise<boolean> {
  try {
    await writePeftAdapter(dir, instance, model.base, basePath === undefined ? {} : { baseModelName: basePath });
    return true;
  } catch (error) {
    if (error instanceof ConfigError) return false;
    throw error;
  }
}

/** Writes the directory's content into `dir` (which must exist). The manifest is written last. */
export async function writeRoutedModelContent(dir: string, model: AdaptedModel, options: { readonly basePath?: string } = {}): Promise<RoutedModelManifest> {
  const adapters: RoutedModelManifest['adapters'] = {};
  await mkdir(join(dir, 'adapters'), { recursive: true });
  for (const adapter of model.spec.adapters) {
    const instance = model.adapters.get(adapter.name);
    if (instance === undefined) continue;
    const path = `adapters/${adapter.name}`;
    if (adapter.kind === 'lora' && (await tryWritePeft(join(dir, path), instance, model, options.basePath))) {
      adapters[adapter.name] = { path, format: 'peft' };
    } else {
      await mkdir(join(dir, path), { recursive: true });
      await writeSafetensorsFile(join(dir, path, NATIVE_ADAPTER_FILE), variablesToWrite(adapterVariables(model, adapter.name)));
      adapters[adapter.name] = { path, format: 'native' };
    }
  }
  const routers = routerVariables(model);
  if (routers.size > 0) await writeSafetensorsFile(join(dir, ROUTERS_FILE), variablesToWrite(routers));
  const manifest: RoutedModelManifest = {
    format: 'routed-peft',
    version: 1,
    base: baseReference(model.base.config, options.basePath),
    spec: JSON.parse(JSON.stringify(model.spec)) as Record<string, unknown>,
    adapters,
    ...(routers.size > 0 ? { routers: ROUTERS_FILE } : {}),
  };
  await writeFileAtomic(join(dir, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
  return manifest;
}

/** Saves a routed model directory atomically (the previous directory survives an interrupted save). */
export async function saveRoutedModel(dir: string, model: AdaptedModel, options: { readonly basePath?: string } = {}): Promise<RoutedModelManifest> {
  let manifest: RoutedModelManifest | undefined;
  await replaceDirectoryAtomic(dir, async (tmp) => {
    manifest = await writeRoutedModelContent(tmp, model, options);
  });
  return manifest as RoutedModelManifest;
}

export async function readRoutedModelManifest(dir: string): Promise<RoutedModelManifest> {
  const path = join(dir, MANIFEST_FILE);
  if (!existsSync(path)) {
    throw new CheckpointError(`no ${MANIFEST_FILE} in the directory`, {
      path: dir,
      hint: 'Create one with `routed-peft init --model PATH --spec SPEC.json --out DIR`',
    });
  }
  return parseConfig(RoutedModelManifest, await readJsonFile(path, MANIFEST_FILE), path);
}

/** Rebuilds a routed model on `base` from its directory. */
export async function loadRoutedModel(
  dir: string,
  base: Transformer,
  options: { readonly routers?: RouterRegistry } = {},
): Promise<{ model: AdaptedModel; manifest: RoutedModelManifest; warnings: string[] }> {
  const manifest = await readRoutedModelManifest(dir);
  checkBase(manifest.base, base.config, dir);
  const model = AdaptedModel.create(base, manifest.spec, options);
  const warnings: string[] = [];
  try {
    for (const adapter of model.spec.adapters) {
      const entry = manifest.adapters[adapter.name];
      if (entry === undefined) throw new CheckpointError(`the manifest lists no files for adapter '${adapter.name}'`, { path: join(dir, MANIFEST_FILE) });
      const path = join(dir, entry.path);
      if (entry.format === 'peft') {
        const loaded = await readPeftAdapter(path, base, { name: adapter.name });
        warnings.push(...loaded.warnings);
        model.replaceAdapter(loaded.instance);
      } else {
        await assignFromFile(join(path, NATIVE_ADAPTER_FILE), adapterVariables(model, adapter.name));
      }
    }
    const routers = routerVariables(model);
    if (routers.size > 0) {
      if (manifest.routers === undefined)
        throw new CheckpointError('the spec routes but the manifest lists no router file', { path: join(dir, MANIFEST_FILE) });
      await assignFromFile(join(dir, manifest.routers), routers);
    }
  } catch (error) {
    model.dispose();
    throw error;
  }
  return { model, manifest, warnings };
}
