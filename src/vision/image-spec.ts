/**
 * Generated images: a small validated spec (what to draw) rendered deterministically to pixels, so datasets
 * can describe an image in a JSONL row instead of shipping a file, and the demo can make as many as it needs.
 *
 *   { kind: 'shapes', shape: 'circle', colour: 'red', count: 3, seed: 7 }   three red circles
 *   { kind: 'digit', digit: 4, colour: 'blue', seed: 2 }                    a blue drawn 4
 *
 * The seed moves things about (which cells hold the shapes, their sizes and offsets, the digit's position
 * and stroke jitter, a slight tint): the same spec always gives the same pixels. Images are IMAGE_SIZE² on
 * black; shapes sit in the four quadrants (at most one per quadrant), so counts run 1..4.
 */
import { z } from 'zod';
import { seededRandom } from '../base/sampling.js';
import type { PixelImage } from './pixel-image.js';

export const IMAGE_SIZE = 24;
export const SHAPES = ['square', 'circle', 'triangle'] as const;
export const COLOURS = ['red', 'green', 'blue', 'yellow', 'purple'] as const;
export const MAX_COUNT = 4;

const RGB: Readonly<Record<(typeof COLOURS)[number], readonly [number, number, number]>> = {
  red: [0.9, 0.1, 0.1],
  green: [0.1, 0.8, 0.2],
  blue: [0.15, 0.3, 0.95],
  yellow: [0.95, 0.9, 0.1],
  purple: [0.7, 0.2, 0.85],
};

const seedField = z
  .number()
  .int()
  .min(0)
  .max(2 ** 31 - 1)
  .default(0);

export const ImageSpec = z.discriminatedUnion('kind', [
  z
    .object({ kind: z.literal('shapes'), shape: z.enum(SHAPES), colour: z.enum(COLOURS), count: z.number().int().min(1).max(MAX_COUNT), seed: seedField })
    .strict(),
  z.object({ kind: z.literal('digit'), digit: z.number().int().min(0).max(9), colour: z.enum(COLOURS), seed: seedField }).strict(),
]);
export type ImageSpec = z.infer<typeof ImageSpec>;

/** 5×7 bitmaps of the digits, one string per row, '#' inked. */
const DIGIT_FONT: readonly (readonly string[])[] = [
  [' ### ', '#   #', '#  ##', '# # #', '##  #', '#   #', ' ### '],
  ['  #  ', ' ##  ', '  #  ', '  #  ', '  #  ', '  #  ', ' ### '],
  [' ### ', '#   #', '    #', '   # ', '  #  ', ' #   ', '#####'],
  ['#####', '   # ', '  #  ', '   # ', '    #', '#   #', ' ### '],
  ['   # ', '  ## ', ' # # ', '#  # ', '#####', '   # ', '   # '],
  ['#####', '#    ', '#### ', '    #', '    #', '#   #', ' ### '],
  ['  ## ', ' #   ', '#    ', '#### ', '#   #', '#   #', ' ### '],
  ['#####', '    #', '   # ', '  #  ', ' #   ', ' #   ', ' #   '],
  [' ### ', '#   #', '#   #', ' ### ', '#   #', '#   #', ' ### '],
  [' ### ', '#   #', '#   #', ' ####', '    #', '   # ', ' ##  '],
];

function inShape(shape: (typeof SHAPES)[number], dx: number, dy: number, half: number): boolean {
  switch (shape) {
    case 'square':
      return Math.abs(dx) <= half && Math.abs(dy) <= half;
    case 'circle':
      return dx * dx + dy * dy <= half * half + 0.5;
    case 'triangle': {
      // Apex up: rows widen from the top (dy = −half) to the base (dy = +half).
      if (dy < -half || dy > half) return false;
      return Math.abs(dx) <= (dy + half) / 2 + 0.5;
    }
  }
}

/** Renders a (validated) spec to an IMAGE_SIZE² RGB image. */
export function renderImageSpec(spec: ImageSpec): PixelImage {
  const size = IMAGE_SIZE;
  const data = new Float32Array(size * size * 3);
  const random = seededRandom(spec.seed * 7919 + 17);
  const base = RGB[spec.colour];
  const tint = base.map((c) => Math.min(1, Math.max(0, c + (random() - 0.5) * 0.16))) as [number, number, number];
  const paint = (x: number, y: number): void => {
    if (x < 0 || y < 0 || x >= size || y >= size) return;
    for (let c = 0; c < 3; c++) data[(y * size + x) * 3 + c] = tint[c] as number;
  };
  if (spec.kind === 'shapes') {
    const cells = [0, 1, 2, 3];
    for (let i = cells.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [cells[i], cells[j]] = [cells[j] as number, cells[i] as number];
    }
    const cell = size / 2;
    for (const index of cells.slice(0, spec.count)) {
      const half = 2 + Math.floor(random() * 2); // 2..3: shapes 5..7 px across
      const cx = (index % 2) * cell + half + 1 + Math.floor(random() * (cell - 2 * half - 2));
      const cy = Math.floor(index / 2) * cell + half + 1 + Math.floor(random() * (cell - 2 * half - 2));
      for (let dy = -half; dy <= half; dy++) for (let dx = -half; dx <= half; dx++) if (inShape(spec.shape, dx, dy, half)) paint(cx + dx, cy + dy);
    }
  } else {
    const glyph = DIGIT_FONT[spec.digit] as readonly string[];
    const scale = 2;
    const left = 1 + Math.floor(random() * (size - 5 * scale - 2));
    const top = 1 + Math.floor(random() * (size - 7 * scale - 2));
    glyph.forEach((row, gy) => {
      for (let gx = 0; gx < row.length; gx++) {
        if (row[gx] !== '#') continue;
        for (let sy = 0; sy < scale; sy++) for (let sx = 0; sx < scale; sx++) paint(left + gx * scale + sx, top + gy * scale + sy);
      }
    });
  }
  return { width: size, height: size, data };
}

/** A random spec (shapes or digit, half each), drawn from `random`; the seed field comes from it too. */
export function randomImageSpec(random: () => number): ImageSpec {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
  const seed = Math.floor(random() * 2 ** 31);
  const colour = pick(COLOURS);
  if (random() < 0.5) return { kind: 'shapes', shape: pick(SHAPES), colour, count: 1 + Math.floor(random() * MAX_COUNT), seed };
  return { kind: 'digit', digit: Math.floor(random() * 10), colour, seed };
}
