// Image decoding and generated-image specs: PNG round trips through pngjs, a bad PNG, a wrong size and an
// unknown spec field are refused by name, and rendering is deterministic.
import { describe, expect, test } from 'vitest';
import { parseConfig } from '../../src/config/parse.js';
import { ConfigError, ImageError } from '../../src/errors.js';
import { checkImageSize, decodePng, encodePng } from '../../src/vision/image.js';
import { IMAGE_SIZE, ImageSpec, renderImageSpec } from '../../src/vision/image-spec.js';

describe('PNG decoding', () => {
  test('an encoded image decodes to the same pixels (8-bit)', () => {
    const image = renderImageSpec(parseConfig(ImageSpec, { kind: 'digit', digit: 4, colour: 'blue', seed: 3 }, 'image'));
    const decoded = decodePng(encodePng(image), 'x.png');
    expect([decoded.width, decoded.height]).toEqual([IMAGE_SIZE, IMAGE_SIZE]);
    for (let i = 0; i < image.data.length; i++) expect(Math.abs((decoded.data[i] as number) - (image.data[i] as number))).toBeLessThanOrEqual(0.5 / 255 + 1e-6);
  });

  test('bytes that are not a PNG are an ImageError naming the file', () => {
    expect(() => decodePng(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9]), 'photos/cat.png')).toThrow(ImageError);
    expect(() => decodePng(new Uint8Array([1, 2, 3]), 'photos/cat.png')).toThrow(/not a valid PNG.*photos\/cat\.png/);
  });

  test('a truncated PNG is refused', () => {
    const bytes = encodePng(renderImageSpec(parseConfig(ImageSpec, { kind: 'shapes', shape: 'circle', colour: 'red', count: 2 }, 'image')));
    expect(() => decodePng(bytes.subarray(0, bytes.length - 20), 'cut.png')).toThrow(ImageError);
  });

  test('an image of the wrong size is refused with both sizes named', () => {
    const image = { width: 20, height: 24, data: new Float32Array(20 * 24 * 3) };
    expect(() => checkImageSize(image, 24, 'rows[3].image')).toThrow(/20×24 pixels but the vision encoder reads 24×24.*rows\[3\]\.image/);
  });
});

describe('generated image specs', () => {
  test('an unknown field is refused by name', () => {
    expect(() => parseConfig(ImageSpec, { kind: 'shapes', shape: 'circle', colour: 'red', count: 2, size: 9 }, 'rows[0].image')).toThrow(ConfigError);
    expect(() => parseConfig(ImageSpec, { kind: 'shapes', shape: 'circle', colour: 'red', count: 2, size: 9 }, 'rows[0].image')).toThrow(/size/);
  });

  test('a count beyond four and an unknown colour are refused', () => {
    expect(() => parseConfig(ImageSpec, { kind: 'shapes', shape: 'square', colour: 'red', count: 5 }, 'image')).toThrow(/count/);
    expect(() => parseConfig(ImageSpec, { kind: 'digit', digit: 3, colour: 'teal' }, 'image')).toThrow(/colour/);
  });

  test('the same spec renders the same pixels; another seed moves them; counts differ in ink', () => {
    const spec = (count: number, seed: number) => parseConfig(ImageSpec, { kind: 'shapes', shape: 'square', colour: 'green', count, seed }, 'image');
    expect(renderImageSpec(spec(3, 1)).data).toEqual(renderImageSpec(spec(3, 1)).data);
    expect(renderImageSpec(spec(3, 2)).data).not.toEqual(renderImageSpec(spec(3, 1)).data);
    const ink = (count: number) => renderImageSpec(spec(count, 5)).data.filter((v) => v > 0).length;
    expect(ink(4)).toBeGreaterThan(ink(1));
  });
});

describe('JSONL rows with an image', () => {
  test('a PNG path resolves against the file, a spec is validated, and a spec with an unknown field is a malformed line', async () => {
    const { parseJsonlDataset, datasetImages } = await import('../../src/train/dataset.js');
    const text = [
      JSON.stringify({ prompt: 'count?', completion: '3', image: 'imgs/a.png' }),
      JSON.stringify({ prompt: 'digit?', completion: '7', image: { kind: 'digit', digit: 7, colour: 'red' } }),
      JSON.stringify({ prompt: 'digit?', completion: '7', image: { kind: 'digit', digit: 7, colour: 'red', blur: 2 } }),
      JSON.stringify({ text: 'plain text' }),
    ].join('\n');
    const dataset = parseJsonlDataset(text, '/data/set/train.jsonl', { maxBadFraction: 0.5 });
    expect(dataset.examples[0]).toMatchObject({ image: { kind: 'file', path: '/data/set/imgs/a.png' } });
    expect(dataset.examples[1]).toMatchObject({ image: { kind: 'spec', spec: { kind: 'digit', digit: 7, colour: 'red', seed: 0 } } });
    expect(dataset.problems).toHaveLength(1);
    expect(dataset.problems[0]?.line).toBe(3);
    expect(dataset.problems[0]?.message).toMatch(/image/);
    expect(datasetImages(dataset)).toEqual([1, 2]);
  });

  test('a generated image renders, a missing PNG is an ImageError naming it', async () => {
    const { loadExampleImage } = await import('../../src/train/example-images.js');
    const pixels = await loadExampleImage({ kind: 'spec', spec: parseConfig(ImageSpec, { kind: 'digit', digit: 1, colour: 'red' }, 'image') }, IMAGE_SIZE, 1);
    expect(pixels.width).toBe(IMAGE_SIZE);
    await expect(loadExampleImage({ kind: 'file', path: '/nonexistent/x.png' }, IMAGE_SIZE, 2)).rejects.toThrow(/nonexistent\/x\.png/);
    await expect(loadExampleImage({ kind: 'spec', spec: parseConfig(ImageSpec, { kind: 'digit', digit: 1, colour: 'red' }, 'image') }, 32, 5)).rejects.toThrow(
      /line 5.*32×32/,
    );
  });
});
