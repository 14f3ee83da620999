/**
 * The flags that turn train / eval / generate multimodal: `--vision DIR` (a ViT directory, the frozen vision
 * encoder) with a multimodal spec or a multimodal model directory, and generate's `--image`. Loading what
 * they name, and the refusals that keep the two kinds of directory apart: a multimodal directory needs
 * --vision, --vision needs a multimodal directory.
 */
import { parseConfig } from '../config/parse.js';
import { UsageError } from '../errors.js';
import { isMultimodalModelDir, loadMultimodalModel } from '../io/multimodal-model-dir.js';
import { type MultimodalModel, multimodalSpecFeature } from '../model/multimodal-model.js';
import type { VisionEncoder } from '../vision/encoder.js';
import { type PixelImage, checkImageSize, readPngFile } from '../vision/image.js';
import { ImageSpec, renderImageSpec } from '../vision/image-spec.js';
import { loadVisionEncoder } from '../vision/load-encoder.js';
import type { CliContext } from './command.js';
import type { Transformer } from '../base/transformer.js';
import type { CliIo } from './io.js';

export const VISION_FLAGS = { vision: { type: 'string' } } as const;

export const VISION_USAGE = `  --vision DIR         A vision encoder directory (ViT, safetensors; e.g. demo-vision/): makes the
                       model multimodal, so data lines may carry an "image" (a PNG path or an image spec)`;

/** Refuses a multimodal model directory given without --vision (it cannot run as a text-only model). */
export function refuseMultimodalWithoutVision(dir: string | undefined, flag = '--routed'): void {
  if (dir === undefined || !isMultimodalModelDir(dir)) return;
  throw new UsageError(`${flag} ${dir} is a multimodal model directory; it needs the vision encoder it was trained with`, {
    path: dir,
    hint: 'Pass --vision DIR (the encoder given to train with --vision)',
  });
}

/** Refuses --vision with a text-only routed-model directory. */
export function refuseVisionWithoutMultimodal(dir: string, flag = '--routed'): void {
  if (isMultimodalModelDir(dir)) return;
  throw new UsageError(`--vision: ${flag} ${dir} is not a multimodal model directory (no routed-peft-multimodal.json)`, {
    path: dir,
    hint: 'Give the directory `routed-peft train --vision DIR --spec SPEC.json --out DIR` wrote, or drop --vision for a text-only routed model',
  });
}

/** Refuses a multimodal spec (a projector, or adapters on vision.* sites) given without --vision, instead of a schema error. */
export function refuseMultimodalSpecWithoutVision(spec: unknown, path: string): void {
  const feature = multimodalSpecFeature(spec);
  if (feature === undefined) return;
  throw new UsageError(`--spec ${path} is a multimodal spec (${feature}); it needs a vision encoder`, {
    path,
    hint: 'Pass --vision DIR (a ViT directory, e.g. demo-vision/)',
  });
}

export async function loadCliVision(path: string): Promise<VisionEncoder> {
  return loadVisionEncoder(path);
}

/** Loads a multimodal model directory on the loaded base and encoder, printing its warnings. */
export async function loadCliMultimodal(
  loaded: { readonly model: Transformer; readonly allowNonFinite: boolean },
  encoder: VisionEncoder,
  dir: string,
  context: CliContext,
  io: CliIo,
): Promise<{ model: MultimodalModel; tasks: readonly string[] | undefined }> {
  refuseVisionWithoutMultimodal(dir);
  const { model, manifest, warnings } = await loadMultimodalModel(dir, loaded.model, encoder, {
    routers: context.routers,
    allowNonFinite: loaded.allowNonFinite,
  });
  for (const w of warnings) io.stderr(`warning: ${w}\n`);
  return { model, tasks: manifest.tasks };
}

/** generate's --image: a PNG file, or (starting with `{`) a generated-image spec as JSON; checked against the encoder's size. */
export async function readCliImage(raw: string, size: number): Promise<PixelImage> {
  let pixels: PixelImage;
  if (raw.trimStart().startsWith('{')) {
    let json: unknown;
    try {
      json = JSON.parse(raw);
    } catch (cause) {
      throw new UsageError(`--image ${raw} is not valid JSON: ${(cause as Error).message}`, {
        hint: 'Give a PNG path, or an image spec like {"kind":"digit","digit":3,"colour":"red"}',
        cause,
      });
    }
    pixels = renderImageSpec(parseConfig(ImageSpec, json, '--image'));
  } else {
    pixels = await readPngFile(raw);
  }
  checkImageSize(pixels, size, raw.trimStart().startsWith('{') ? '--image' : raw);
  return pixels;
}
