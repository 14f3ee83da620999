/**
 * Images as the vision encoder reads them: RGB, row-major, channels last, values in [0, 1]. PNG files are
 * decoded with pngjs (every bit depth, palette, grey and alpha variants; alpha is composited on black).
 */
import { readFile } from 'node:fs/promises';
import { PNG } from 'pngjs';
import { ImageError } from '../errors.js';
import { type PixelImage, checkImageSize } from './pixel-image.js';

export type { PixelImage };
export { checkImageSize };

/** Largest side of a PNG this library decodes (a hostile header must not make it allocate gigabytes). */
export const MAX_IMAGE_SIDE = 4096;

/** Decodes PNG bytes; `origin` names the file in errors. */
export function decodePng(bytes: Uint8Array, origin: string): PixelImage {
  let png: PNG;
  try {
    // pngjs checks the signature, chunk CRCs and the zlib stream; anything wrong throws.
    png = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (cause) {
    throw new ImageError(`not a valid PNG image: ${(cause as Error).message}`, {
      path: origin,
      hint: 'Give a PNG file (8- or 16-bit, any colour type)',
      cause,
    });
  }
  const { width, height, data } = png;
  if (width < 1 || height < 1 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE) {
    throw new ImageError(`PNG of ${width}×${height} pixels is outside 1..${MAX_IMAGE_SIDE} per side`, { path: origin });
  }
  const out = new Float32Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    const alpha = (data[i * 4 + 3] as number) / 255;
    for (let c = 0; c < 3; c++) out[i * 3 + c] = ((data[i * 4 + c] as number) / 255) * alpha;
  }
  return { width, height, data: out };
}

export async function readPngFile(path: string): Promise<PixelImage> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (cause) {
    throw new ImageError(`cannot read the image: ${(cause as Error).message}`, { path, cause });
  }
  return decodePng(bytes, path);
}

/** Encodes an image as an 8-bit RGBA PNG (values clamped to [0, 1]). */
export function encodePng(image: PixelImage): Buffer {
  const png = new PNG({ width: image.width, height: image.height });
  for (let i = 0; i < image.width * image.height; i++) {
    for (let c = 0; c < 3; c++) png.data[i * 4 + c] = Math.round(Math.min(1, Math.max(0, image.data[i * 3 + c] as number)) * 255);
    png.data[i * 4 + 3] = 255;
  }
  return PNG.sync.write(png);
}
