/**
 * The routed-model directory: everything needed to rebuild an AdaptedModel on its base.
 *
 *   routed-peft.json          manifest: format, version, the base it was built for, the spec, file list
 *   adapters/<name>/          LoRA experts as PEFT adapters (adapter_config.json + adapter_model.safetensors);
 *                             other kinds as adapter.safetensors (variables by `<layer>|<point>/<i>`); an
 *                             AdaLoRA adapter also gets adalora-ranks.json and lora/, its plain-LoRA
 *                             export (io/adalora-outputs.ts)
 *   routers.safetensors       router variables by `route<i>/<router key>/<j>`
 *
 * Saving writes a complete new version beside the current one (the manifest last) and swaps it in with one
 * atomic rename of a symbolic link (formats/versioned-dir.ts), so every reader, at every moment, finds the
 * previous or the new content. Loading validates the manifest, requires every path it names to stay inside
 * the directory, checks the base matches, builds the model from the spec and assigns every saved variable,
 * checking names, shapes, finiteness, and that PEFT files agree with the spec's ranks and alphas.
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
import { LoraModule } from '../adapters/lora/index.js';
import { writeAdaloraOutputs } from './adalora-outputs.js';
import { checkSpecAgainstModel, parseAdaptedModelSpec } from '../compose/model-spec.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import { AdaptedModel } from '../model/adapted-model.js';
import { writeFileAtomic } from '../formats/atomic-write.js';
import { assertFiniteTensor, type FiniteOptions } from '../formats/finite.js';
import { resolveInside } from '../formats/paths.js';
import { replaceDirectoryVersioned, resolveVersionedDirectory, type SaveStep } from '../formats/versioned-dir.js';
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
    adapters: z.record(z.string(), z.object({ path: z.string().min(1).max(4096), format: z.enum(['peft', 'native']) }).strict()),
    routers: z.string().min(1).max(4096).optional(),
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

/** Assigns saved values to variables; every variable must be present with its shape and finite values, and nothing extra. */
async function assignFromFile(file: string, variables: ReadonlyMap<string, tf.Variable>, finite: FiniteOptions): Promise<void> {
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
    assertFiniteTensor(values, name, file, finite);
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
      if (adapter.kind === 'adalora')
        await writeAdaloraOutputs(join(dir, path), instance, model.base, options.basePath === undefined ? {} : { baseModelName: options.basePath });
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

/**
 * Saves a routed model directory atomically: readers see the previous or the new directory, never neither
 * (see formats/versioned-dir.ts). `onStep` is a test hook called at every step of the swap.
 */
export async function saveRoutedModel(
  dir: string,
  model: AdaptedModel,
  options: { readonly basePath?: string; readonly onStep?: SaveStep } = {},
): Promise<RoutedModelManifest> {
  let manifest: RoutedModelManifest | undefined;
  await replaceDirectoryVersioned(
    dir,
    async (tmp) => {
      manifest = await writeRoutedModelContent(tmp, model, options.basePath === undefined ? {} : { basePath: options.basePath });
    },
    { onStep: options.onStep },
  );
  return manifest as RoutedModelManifest;
}

/**
 * The directory to read for `dir`: its current version (or, while an interrupted save of an old-style
 * directory left it missing, the newest complete sibling). Readers resolve once and read everything there.
 */
export function resolveRoutedModelDir(dir: string): string {
  return resolveVersionedDirectory(dir, (candidate) => existsSync(join(candidate, MANIFEST_FILE)));
}

export async function readRoutedModelManifest(dir: string): Promise<RoutedModelManifest> {
  dir = resolveRoutedModelDir(dir);
  const path = join(dir, MANIFEST_FILE);
  if (!existsSync(path)) {
    throw new CheckpointError(`no ${MANIFEST_FILE} in the directory`, {
      path: dir,
      hint: 'Create one with `routed-peft init --model PATH --spec SPEC.json --out DIR`',
    });
  }
  return parseConfig(RoutedModelManifest, await readJsonFile(path, MANIFEST_FILE), path);
}

/**
 * Checks that a LoRA read from PEFT files has the modules, ranks and scales the manifest's spec built: a
 * manifest whose r / alpha disagree with its adapter files is refused rather than silently using either.
 */
function checkPeftAgainstSpec(loaded: AdapterInstance, expected: AdapterInstance, file: string): void {
  for (const [key, module] of expected.modules) {
    const got = loaded.modules.get(key);
    if (!(module instanceof LoraModule) || !(got instanceof LoraModule)) continue;
    const where = `adapter ${JSON.stringify(expected.name)} at layer ${module.layer} ${module.site}`;
    if (got.rank !== module.rank) {
      throw new CheckpointError(`${where}: the PEFT files hold rank ${got.rank}, but the manifest's spec says ${module.rank}`, {
        path: file,
        hint: 'The manifest and the adapter files disagree (edited or mixed up); save the model again, or fix r / rankPattern in the manifest',
      });
    }
    if (Math.abs(got.scale - module.scale) > 1e-6 * Math.abs(module.scale)) {
      throw new CheckpointError(`${where}: the PEFT files give scale ${got.scale} (lora_alpha / r), but the manifest's spec gives ${module.scale}`, {
        path: file,
        hint: 'The manifest and the adapter files disagree (edited or mixed up); save the model again, or fix alpha / alphaPattern / rslora in the manifest',
      });
    }
  }
}

export interface LoadRoutedModelOptions extends FiniteOptions {
  readonly routers?: RouterRegistry | undefined;
}

/** Rebuilds a routed model on `base` from its directory. */
export async function loadRoutedModel(
  dir: string,
  base: Transformer,
  options: LoadRoutedModelOptions = {},
): Promise<{ model: AdaptedModel; manifest: RoutedModelManifest; warnings: string[] }> {
  const root = resolveRoutedModelDir(dir);
  const manifest = await readRoutedModelManifest(root);
  const manifestPath = join(root, MANIFEST_FILE);
  checkBase(manifest.base, base.config, root);
  // Every path the manifest names must stay inside the directory (checked before anything is built).
  const adapterDirs = new Map<string, string>();
  for (const [name, entry] of Object.entries(manifest.adapters)) {
    adapterDirs.set(name, resolveInside(root, entry.path, { file: manifestPath, field: `adapters.${name}.path` }));
  }
  const routersPath = manifest.routers === undefined ? undefined : resolveInside(root, manifest.routers, { file: manifestPath, field: 'routers' });
  const spec = parseAdaptedModelSpec(manifest.spec, `${manifestPath} spec`);
  checkSpecAgainstModel(spec, base.config, `${manifestPath} spec`);
  const model = AdaptedModel.create(base, manifest.spec, options.routers === undefined ? {} : { routers: options.routers });
  const finite: FiniteOptions = { allowNonFinite: options.allowNonFinite };
  const warnings: string[] = [];
  try {
    for (const adapter of model.spec.adapters) {
      const entry = manifest.adapters[adapter.name];
      const path = adapterDirs.get(adapter.name);
      if (entry === undefined || path === undefined)
        throw new CheckpointError(`the manifest lists no files for adapter '${adapter.name}'`, { path: manifestPath });
      if (entry.format === 'peft') {
        const loaded = await readPeftAdapter(path, base, { name: adapter.name, ...finite });
        warnings.push(...loaded.warnings);
        try {
          checkPeftAgainstSpec(loaded.instance, model.adapters.get(adapter.name) as AdapterInstance, join(path, 'adapter_config.json'));
          model.replaceAdapter(loaded.instance);
        } catch (error) {
          loaded.instance.dispose();
          throw error;
        }
      } else {
        await assignFromFile(join(path, NATIVE_ADAPTER_FILE), adapterVariables(model, adapter.name), finite);
      }
    }
    const routers = routerVariables(model);
    if (routers.size > 0) {
      if (routersPath === undefined) throw new CheckpointError('the spec routes but the manifest lists no router file', { path: manifestPath });
      await assignFromFile(routersPath, routers, finite);
    }
  } catch (error) {
    model.dispose();
    throw error;
  }
  return { model, manifest, warnings };
}
