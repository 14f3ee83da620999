/**
 * The multimodal model directory: everything needed to rebuild a MultimodalModel on its language model and
 * its vision encoder.
 *
 *   routed-peft-multimodal.json  manifest: format, version, the language base and the vision encoder it was
 *                                built for, the multimodal spec, the task names by id, its file list
 *   language/                    the language model's routed-model directory (routed-model-dir.ts): its
 *                                adapters (LoRA in PEFT format) and routers, loadable on its own
 *   multimodal.safetensors       the projector (`projector/W1…b2`) and the vision adapters
 *                                (`vision/<adapter>/<layer>|<point>/<i>`)
 *
 * The encoder's weights are not copied: the manifest records its architecture and a SHA-256 of its weights,
 * because the projector is trained against those exact weights; loading on another encoder, even one of
 * the same shape, is refused. Saving writes a complete new version and swaps it in atomically
 * (formats/versioned-dir.ts), the manifest last; loading validates the manifest, keeps every path it names
 * inside the directory, checks both bases, builds the model from the spec and assigns every saved variable
 * with its name, shape and finiteness checked.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import type { Transformer } from '../base/transformer.js';
import { parseConfig } from '../config/parse.js';
import { CheckpointError } from '../errors.js';
import { writeFileAtomic } from '../formats/atomic-write.js';
import { type FileSource, readJson, relativeInside } from '../formats/file-source.js';
import { readHostTensors } from '../formats/host-tensors.js';
import { directoryFiles } from '../formats/node-files.js';
import { resolveInside } from '../formats/paths.js';
import { writeSafetensorsFile } from '../formats/safetensors.js';
import { replaceDirectoryVersioned, resolveVersionedDirectory, type SaveStep } from '../formats/versioned-dir.js';
import { MultimodalModel } from '../model/multimodal-model.js';
import { VisionConfig } from '../vision/encoder-config.js';
import { type VisionEncoder, listVisionTensors } from '../vision/encoder.js';
import {
  BaseReference,
  MANIFEST_FILE,
  type LoadRoutedModelOptions,
  assignFromFile,
  baseReference,
  checkBase,
  loadRoutedModelFrom,
  variablesToWrite,
  writeRoutedModelContent,
} from './routed-model-dir.js';

export const MULTIMODAL_MANIFEST_FILE = 'routed-peft-multimodal.json';
export const LANGUAGE_DIR = 'language';
export const MULTIMODAL_VARIABLES_FILE = 'multimodal.safetensors';

/** The vision encoder a multimodal model was trained with: its architecture and a hash of its weights. */
export const VisionReference = z
  .object({
    config: VisionConfig,
    /** SHA-256 over the encoder's weights (names, shapes, float32 bytes), hex. */
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    /** Where the encoder was loaded from when the directory was written (informational). */
    path: z.string().optional(),
  })
  .strict();
export type VisionReference = z.infer<typeof VisionReference>;

export const MultimodalManifest = z
  .object({
    format: z.literal('routed-peft-multimodal'),
    version: z.literal(1),
    base: BaseReference,
    vision: VisionReference,
    /** The MultimodalSpec, validated again when the model is built. */
    spec: z.record(z.string(), z.unknown()),
    /** The language model's routed-model directory. */
    language: z.string().min(1).max(4096),
    /** Projector and vision-adapter variables. */
    variables: z.string().min(1).max(4096),
    /** Task names by id of the training data, so evaluation maps names to the ids routers were trained with. */
    tasks: z.array(z.string()).optional(),
  })
  .strict();
export type MultimodalManifest = z.infer<typeof MultimodalManifest>;

/** SHA-256 of the encoder's weights, in their fixed order (read with `await data()`: every backend). */
export async function visionWeightsHash(encoder: VisionEncoder): Promise<string> {
  const host = await readHostTensors(listVisionTensors(encoder.weights).map((t, i) => [String(i), t] as const));
  const hash = createHash('sha256');
  for (const [name, t] of host) {
    hash.update(`${name}:${t.shape.join('x')};`);
    hash.update(new Uint8Array(t.values.buffer, t.values.byteOffset, t.values.byteLength));
  }
  return hash.digest('hex');
}

async function visionReference(encoder: VisionEncoder, path: string | undefined): Promise<VisionReference> {
  return { config: { ...encoder.config }, sha256: await visionWeightsHash(encoder), ...(path === undefined ? {} : { path }) };
}

/** Refuses an encoder other than the one the directory was trained with: another architecture, or other weights. */
async function checkVision(reference: VisionReference, encoder: VisionEncoder, manifestPath: string): Promise<void> {
  const where = reference.path === undefined ? '' : ` (${reference.path})`;
  for (const key of Object.keys(reference.config) as (keyof VisionConfig)[]) {
    if (reference.config[key] !== encoder.config[key]) {
      throw new CheckpointError(
        `multimodal model was trained with a vision encoder with ${key} ${JSON.stringify(reference.config[key])}, but this encoder has ${JSON.stringify(encoder.config[key])}`,
        { path: manifestPath, hint: `Load it with the vision encoder it was trained with${where}` },
      );
    }
  }
  const actual = await visionWeightsHash(encoder);
  if (actual !== reference.sha256) {
    throw new CheckpointError(
      `this vision encoder's weights (sha256 ${actual.slice(0, 12)}…) are not the ones the multimodal model was trained with (sha256 ${reference.sha256.slice(0, 12)}…)`,
      { path: manifestPath, hint: `The projector only fits the encoder it was trained with; load that one${where}, or train again on this one` },
    );
  }
}

/** The projector's and the vision adapters' variables: the model's own, beyond the language model's. */
export function multimodalVariables(model: MultimodalModel): Map<string, tf.Variable> {
  const language = model.language.namedVariables();
  return new Map([...model.namedVariables()].filter(([name]) => !language.has(name)));
}

export interface SaveMultimodalOptions {
  /** Recorded as where the language base was loaded from. */
  readonly basePath?: string;
  /** Recorded as where the vision encoder was loaded from. */
  readonly visionPath?: string;
  /** Task names by id of the training data. */
  readonly tasks?: readonly string[];
  /** Test hook, called at every step of the swap. */
  readonly onStep?: SaveStep;
}

/** Saves a multimodal model directory atomically: readers see the previous or the new directory, never neither. */
export async function saveMultimodalModel(dir: string, model: MultimodalModel, options: SaveMultimodalOptions = {}): Promise<MultimodalManifest> {
  const vision = await visionReference(model.encoder, options.visionPath);
  let manifest: MultimodalManifest | undefined;
  await replaceDirectoryVersioned(
    dir,
    async (tmp) => {
      await mkdir(join(tmp, LANGUAGE_DIR));
      await writeRoutedModelContent(join(tmp, LANGUAGE_DIR), model.language, options.basePath === undefined ? {} : { basePath: options.basePath });
      await writeSafetensorsFile(join(tmp, MULTIMODAL_VARIABLES_FILE), await variablesToWrite(multimodalVariables(model)));
      manifest = {
        format: 'routed-peft-multimodal',
        version: 1,
        base: baseReference(model.base.config, options.basePath),
        vision,
        spec: JSON.parse(JSON.stringify(model.spec)) as Record<string, unknown>,
        language: LANGUAGE_DIR,
        variables: MULTIMODAL_VARIABLES_FILE,
        ...(options.tasks === undefined ? {} : { tasks: [...options.tasks] }),
      };
      await writeFileAtomic(join(tmp, MULTIMODAL_MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
    },
    { onStep: options.onStep },
  );
  return manifest as MultimodalManifest;
}

/** The current version of a multimodal directory (see formats/versioned-dir.ts). */
export function resolveMultimodalModelDir(dir: string): string {
  return resolveVersionedDirectory(dir, (candidate) => existsSync(join(candidate, MULTIMODAL_MANIFEST_FILE)));
}

/** Whether `dir` holds a multimodal model directory (rather than a routed-model directory). */
export function isMultimodalModelDir(dir: string): boolean {
  return existsSync(join(resolveMultimodalModelDir(dir), MULTIMODAL_MANIFEST_FILE));
}

async function readManifest(files: FileSource): Promise<MultimodalManifest> {
  if (!(await files.exists(MULTIMODAL_MANIFEST_FILE))) {
    const routed = await files.exists(MANIFEST_FILE);
    throw new CheckpointError(`no ${MULTIMODAL_MANIFEST_FILE} in the directory${routed ? ` (it holds ${MANIFEST_FILE}: a text-only routed model)` : ''}`, {
      path: files.origin,
      hint: routed
        ? 'Load a routed-model directory without a vision encoder (AdaptedModel / loadRoutedModel; on the CLI, without --vision)'
        : 'Write one with saveMultimodalModel, or `routed-peft train --vision DIR --spec SPEC.json --out DIR`',
    });
  }
  return parseConfig(MultimodalManifest, await readJson(files, MULTIMODAL_MANIFEST_FILE, MULTIMODAL_MANIFEST_FILE), files.path(MULTIMODAL_MANIFEST_FILE));
}

export async function readMultimodalManifest(dir: string): Promise<MultimodalManifest> {
  return readManifest(directoryFiles(resolveMultimodalModelDir(dir)));
}

/** Rebuilds a multimodal model on `base` and `encoder` from its directory. */
export async function loadMultimodalModel(
  dir: string,
  base: Transformer,
  encoder: VisionEncoder,
  options: LoadRoutedModelOptions = {},
): Promise<{ model: MultimodalModel; manifest: MultimodalManifest; warnings: string[] }> {
  const root = resolveMultimodalModelDir(dir);
  const files = directoryFiles(root);
  const manifest = await readManifest(files);
  const manifestPath = files.path(MULTIMODAL_MANIFEST_FILE);
  checkBase(manifest.base, base.config, manifestPath);
  await checkVision(manifest.vision, encoder, manifestPath);
  const inside = (entry: string, field: string): string => {
    const details = { file: manifestPath, field, origin: files.origin };
    const name = relativeInside(entry, details);
    resolveInside(root, entry, details); // a symbolic link inside the directory must not lead out of it
    return name;
  };
  const languageName = inside(manifest.language, 'language');
  const variablesName = inside(manifest.variables, 'variables');
  const model = MultimodalModel.create(base, encoder, manifest.spec, options.routers === undefined ? {} : { routers: options.routers });
  try {
    const languageRoot = join(root, languageName);
    const language = await loadRoutedModelFrom(files.sub(languageName), base, {
      ...options,
      checkPath: (entry, details) => void resolveInside(languageRoot, entry, details),
    });
    try {
      const expected = JSON.stringify(model.language.spec);
      if (JSON.stringify(language.model.spec) !== expected) {
        throw new CheckpointError(`the language model's spec in ${languageName}/${MANIFEST_FILE} differs from the one the multimodal spec builds`, {
          path: manifestPath,
          hint: 'The manifest and the language directory disagree (edited or mixed up); save the model again',
        });
      }
      // Both were built from the same spec, so their variables pair up by name and shape (checked anyway).
      const saved = language.model.namedVariables();
      for (const [name, variable] of model.language.namedVariables()) {
        const value = saved.get(name);
        if (value === undefined || value.shape.join() !== variable.shape.join()) {
          throw new CheckpointError(`the language directory lacks variable '${name}' of shape [${variable.shape.join(', ')}]`, {
            path: files.path(languageName),
          });
        }
        variable.assign(value);
      }
    } finally {
      language.model.dispose();
    }
    await assignFromFile(files, variablesName, multimodalVariables(model), { allowNonFinite: options.allowNonFinite });
    return { model, manifest, warnings: language.warnings };
  } catch (error) {
    model.dispose();
    throw error;
  }
}
