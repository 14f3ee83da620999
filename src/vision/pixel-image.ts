/** The pixel layout every image reader and generator produces (kept apart from PNG decoding, which needs Node). */
import { ImageError } from '../errors.js';

/** One image: `data` holds height · width · 3 floats in [0, 1], pixel (y, x) channel c at (y·width + x)·3 + c. */
export interface PixelImage {
  readonly width: number;
  readonly height: number;
  readonly data: Float32Array;
}

/** Refuses an image whose size is not the encoder's. */
export function checkImageSize(image: PixelImage, size: number, origin: string): void {
  if (image.width !== size || image.height !== size) {
    throw new ImageError(`image is ${image.width}×${image.height} pixels but the vision encoder reads ${size}×${size}`, {
      path: origin,
      hint: `Resize the image to ${size}×${size} before use`,
    });
  }
}
