/**
 * The pixels of a dataset line's image: a PNG file decoded (and checked against the encoder's size), or a
 * generated-image spec rendered. Errors name the file or the line.
 */
import { ImageError } from '../errors.js';
import { type PixelImage, checkImageSize, readPngFile } from '../vision/image.js';
import { renderImageSpec } from '../vision/image-spec.js';
import type { Example, ExampleImage } from './dataset.js';

export async function loadExampleImage(image: ExampleImage, size: number, line: number): Promise<PixelImage> {
  const pixels = image.kind === 'spec' ? renderImageSpec(image.spec) : await readPngFile(image.path);
  try {
    checkImageSize(pixels, size, image.kind === 'file' ? image.path : `line ${line}: image`);
  } catch (error) {
    if (error instanceof ImageError && image.kind === 'spec') {
      throw new ImageError(`line ${line}: generated images are ${pixels.width}×${pixels.height}, but the vision encoder reads ${size}×${size}`, {
        path: `line ${line}: image`,
        hint: 'Use PNG files of the encoder size, or an encoder trained on generated images (demo-vision/)',
      });
    }
    throw error;
  }
  return pixels;
}

/**
 * The images of a batch's rows, by their positions in `examples` (undefined for a row without one); each
 * image is loaded once and kept, so every epoch reads the same pixels.
 */
export function exampleImageLoader(examples: readonly Example[], size: number): (indices: readonly number[]) => Promise<(PixelImage | undefined)[]> {
  const cache = new Map<number, PixelImage>();
  return async (indices) => {
    const out: (PixelImage | undefined)[] = [];
    for (const index of indices) {
      const example = examples[index];
      const image = example === undefined || example.kind === 'labelled' ? undefined : example.image;
      if (image === undefined) {
        out.push(undefined);
        continue;
      }
      let pixels = cache.get(index);
      if (pixels === undefined) {
        pixels = await loadExampleImage(image, size, example?.line ?? index + 1);
        cache.set(index, pixels);
      }
      out.push(pixels);
    }
    return out;
  };
}

/** Whether any example carries an image. */
export function hasImages(examples: readonly Example[]): boolean {
  return examples.some((e) => e.kind !== 'labelled' && e.image !== undefined);
}
