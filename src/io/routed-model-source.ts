/**
 * Loading a routed-model directory from any FileSource (disk, URL, dropped files): the manifest, the
 * adapters (PEFT or native), the routers. The manifest is validated, every path it names must stay inside
 * the directory, the base must match, and every saved variable is assigned with its name, shape and
 * finiteness checked; PEFT files must agree with the spec's ranks and alphas. On disk, `routed-model-dir.ts`
 * resolves the directory's current version first and saves.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import type { ModelConfig } from '../base/config.js';
import type { Transformer } from '../base/transformer.js';
import { parseConfig } from '../config/parse.js';
import { CheckpointError, formatShape } from '../errors.js';
import type { AdapterInstance } from '../adapters/instance.js';
import { LoraModule } from '../adapters/lora/index.js';
import { checkSpecAgainstModel, parseAdaptedModelSpec } from '../compose/model-spec.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import { AdaptedModel } from '../model/adapted-model.js';
import { joinName, readJson, relativeInside, type FileSource } from '../formats/file-source.js';
import { assertFiniteTensor, type FiniteOptions } from '../formats/finite.js';
import { decodeFloat32 } from '../formats/safetensors-codec.js';
import { readSafetensorsFrom } from '../formats/safetensors-source.js';
import { readPeftAdapterFrom } from './peft-lora.js';

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

export function checkBase(reference: BaseReference, config: ModelConfig, manifestPath: string): void {
  const actual = baseReference(config);
  for (const key of ['family', 'vocabSize', 'dim', 'hiddenDim', 'nLayers', 'nHeads', 'nKvHeads'] as const) {
    if (reference[key] !== actual[key]) {
      throw new CheckpointError(
        `routed model was built for a base with ${key} ${JSON.stringify(reference[key])}, but this base has ${JSON.stringify(actual[key])}`,
        {
          path: manifestPath,
          hint: `Load it on the base it was trained on${reference.path === undefined ? '' : ` (${reference.path})`}`,
        },
      );
    }
  }
}

/** Assigns saved values to variables; every variable must be present with its shape and finite values, and nothing extra. */
export async function assignFromFile(files: FileSource, name: string, variables: ReadonlyMap<string, tf.Variable>, finite: FiniteOptions): Promise<void> {
  const file = files.path(name);
  const saved = await readSafetensorsFrom(files, name);
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
export function adapterVariables(model: AdaptedModel, name: string): Map<string, tf.Variable> {
  const prefix = `${name}/`;
  const out = new Map<string, tf.Variable>();
  for (const [key, v] of model.namedVariables()) if (key.startsWith(prefix)) out.set(key.slice(prefix.length), v);
  return out;
}

export function routerVariables(model: AdaptedModel): Map<string, tf.Variable> {
  const out = new Map<string, tf.Variable>();
  for (const route of model.routes) for (const [key, v] of route.namedVariables()) out.set(key, v);
  return out;
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

/** Reads and validates the manifest of a routed-model directory. */
export async function readRoutedManifestFrom(files: FileSource): Promise<RoutedModelManifest> {
  if (!(await files.exists(MANIFEST_FILE))) {
    throw new CheckpointError(`no ${MANIFEST_FILE} in the directory`, {
      path: files.origin,
      hint: 'Create one with `routed-peft init --model PATH --spec SPEC.json --out DIR`',
    });
  }
  const path = files.path(MANIFEST_FILE);
  return parseConfig(RoutedModelManifest, await readJson(files, MANIFEST_FILE, MANIFEST_FILE), path);
}

export interface LoadRoutedFromOptions extends LoadRoutedModelOptions {
  /** Called for every path the manifest names, after the name check (Node adds the symbolic-link check). */
  readonly checkPath?: (entry: string, details: { readonly file: string; readonly field: string }) => void;
}

/** Rebuilds a routed model on `base` from a routed-model directory read through `files`. */
export async function loadRoutedModelFrom(
  files: FileSource,
  base: Transformer,
  options: LoadRoutedFromOptions = {},
): Promise<{ model: AdaptedModel; manifest: RoutedModelManifest; warnings: string[] }> {
  const manifest = await readRoutedManifestFrom(files);
  const manifestPath = files.path(MANIFEST_FILE);
  checkBase(manifest.base, base.config, manifestPath);
  // Every path the manifest names must stay inside the directory (checked before anything is built).
  const inside = (entry: string, field: string): string => {
    const details = { file: manifestPath, field, origin: files.origin };
    const name = relativeInside(entry, details);
    options.checkPath?.(entry, details);
    return name;
  };
  const adapterDirs = new Map<string, string>();
  for (const [name, entry] of Object.entries(manifest.adapters)) adapterDirs.set(name, inside(entry.path, `adapters.${name}.path`));
  const routersName = manifest.routers === undefined ? undefined : inside(manifest.routers, 'routers');
  const spec = parseAdaptedModelSpec(manifest.spec, `${manifestPath} spec`);
  checkSpecAgainstModel(spec, base.config, `${manifestPath} spec`);
  const model = AdaptedModel.create(base, manifest.spec, options.routers === undefined ? {} : { routers: options.routers });
  const finite: FiniteOptions = { allowNonFinite: options.allowNonFinite };
  const warnings: string[] = [];
  try {
    for (const adapter of model.spec.adapters) {
      const entry = manifest.adapters[adapter.name];
      const dir = adapterDirs.get(adapter.name);
      if (entry === undefined || dir === undefined)
        throw new CheckpointError(`the manifest lists no files for adapter '${adapter.name}'`, { path: manifestPath });
      if (entry.format === 'peft') {
        const adapterFiles = files.sub(dir);
        const loaded = await readPeftAdapterFrom(adapterFiles, base, { name: adapter.name, ...finite });
        warnings.push(...loaded.warnings);
        try {
          checkPeftAgainstSpec(loaded.instance, model.adapters.get(adapter.name) as AdapterInstance, adapterFiles.path('adapter_config.json'));
          model.replaceAdapter(loaded.instance);
        } catch (error) {
          loaded.instance.dispose();
          throw error;
        }
      } else {
        await assignFromFile(files, joinName(dir, NATIVE_ADAPTER_FILE), adapterVariables(model, adapter.name), finite);
      }
    }
    const routers = routerVariables(model);
    if (routers.size > 0) {
      if (routersName === undefined) throw new CheckpointError('the spec routes but the manifest lists no router file', { path: manifestPath });
      await assignFromFile(files, routersName, routers, finite);
    }
  } catch (error) {
    model.dispose();
    throw error;
  }
  return { model, manifest, warnings };
}
