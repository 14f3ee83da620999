/**
 * The pixels of a dataset line's image: a PNG file decoded (and checked against the encoder's size), or a
 * generated-image spec rendered. Errors name the file or the line.
 */
import { ImageError } from '../errors.js';
import { type PixelImage, checkImageSize, readPngFile } from '../vision/image.js';
import { renderImageSpec } from '../vision/image-spec.js';
import type { ExampleImage } from './dataset.js';

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
