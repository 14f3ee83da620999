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
 * previous or the new content. Loading (`routed-model-source.ts`, from any FileSource) validates the
 * manifest, requires every path it names to stay inside the directory (here also after following symbolic
 * links), checks the base matches, builds the model from the spec and assigns every saved variable,
 * checking names, shapes, finiteness, and that PEFT files agree with the spec's ranks and alphas.
 */
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type * as tf from '@tensorflow/tfjs';
import type { Transformer } from '../base/transformer.js';
import { ConfigError } from '../errors.js';
import type { AdapterInstance } from '../adapters/instance.js';
import type { AdaptedModel } from '../model/adapted-model.js';
import { writeAdaloraOutputs } from './adalora-outputs.js';
import { writeFileAtomic } from '../formats/atomic-write.js';
import { directoryFiles } from '../formats/node-files.js';
import { resolveInside } from '../formats/paths.js';
import { replaceDirectoryVersioned, resolveVersionedDirectory, type SaveStep } from '../formats/versioned-dir.js';
import { writePeftAdapter } from './peft-adapter.js';
import { readHostTensors } from '../formats/host-tensors.js';
import { writeSafetensorsFile, type TensorToWrite } from '../formats/safetensors.js';
import {
  MANIFEST_FILE,
  NATIVE_ADAPTER_FILE,
  ROUTERS_FILE,
  adapterVariables,
  baseReference,
  loadRoutedModelFrom,
  readRoutedManifestFrom,
  routerVariables,
  type LoadRoutedModelOptions,
  type RoutedModelManifest,
} from './routed-model-source.js';

export * from './routed-model-source.js';

/** Host copies of the variables (formats/host-tensors.ts readHostTensors), as safetensors entries. */
export async function variablesToWrite(variables: ReadonlyMap<string, tf.Variable>): Promise<Map<string, TensorToWrite>> {
  const host = await readHostTensors(variables);
  return new Map([...host].map(([name, t]) => [name, { dtype: 'F32', shape: t.shape, data: t.values }]));
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
      await writeSafetensorsFile(join(dir, path, NATIVE_ADAPTER_FILE), await variablesToWrite(adapterVariables(model, adapter.name)));
      if (adapter.kind === 'adalora')
        await writeAdaloraOutputs(join(dir, path), instance, model.base, options.basePath === undefined ? {} : { baseModelName: options.basePath });
      adapters[adapter.name] = { path, format: 'native' };
    }
  }
  const routers = routerVariables(model);
  if (routers.size > 0) await writeSafetensorsFile(join(dir, ROUTERS_FILE), await variablesToWrite(routers));
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
  return readRoutedManifestFrom(directoryFiles(resolveRoutedModelDir(dir)));
}

/** Rebuilds a routed model on `base` from its directory. */
export async function loadRoutedModel(
  dir: string,
  base: Transformer,
  options: LoadRoutedModelOptions = {},
): Promise<{ model: AdaptedModel; manifest: RoutedModelManifest; warnings: string[] }> {
  const root = resolveRoutedModelDir(dir);
  return loadRoutedModelFrom(directoryFiles(root), base, {
    ...options,
    // Beyond the name check: a symbolic link inside the directory must not lead out of it.
    checkPath: (entry, details) => void resolveInside(root, entry, details),
  });
}
