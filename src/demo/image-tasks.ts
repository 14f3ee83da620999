/**
 * The image question-answer tasks of `routed-peft demo --multimodal`: a generated image (image-spec.ts) and
 * a question about it, answered in a few characters of the demo vocabulary.
 *
 *   count   three red circles     `count?`  → `3`
 *   colour  a blue drawn 4        `colour?` → `blue`
 *   digit   a green drawn 7       `digit?`  → `7`
 *
 * The answer is in the image only: the question is the same for every image of a task. Generated from a
 * seed like the text tasks (tasks.ts).
 */
import { seededRandom } from '../base/sampling.js';
import { COLOURS, type ImageSpec, MAX_COUNT, SHAPES } from '../vision/image-spec.js';
import type { Random } from './tasks.js';

export interface ImageTask {
  readonly name: string;
  readonly question: string;
  readonly description: string;
  /** A spec this task asks about. */
  draw(random: Random): ImageSpec;
  answer(spec: ImageSpec): string;
}

const pick = <T>(random: Random, items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
const seed = (random: Random): number => Math.floor(random() * 2 ** 31);
const shapes = (random: Random): ImageSpec => ({
  kind: 'shapes',
  shape: pick(random, SHAPES),
  colour: pick(random, COLOURS),
  count: 1 + Math.floor(random() * MAX_COUNT),
  seed: seed(random),
});
const digit = (random: Random): ImageSpec => ({ kind: 'digit', digit: Math.floor(random() * 10), colour: pick(random, COLOURS), seed: seed(random) });

export const IMAGE_TASKS: readonly ImageTask[] = [
  { name: 'count', question: 'count?', description: 'how many shapes', draw: shapes, answer: (s) => (s.kind === 'shapes' ? String(s.count) : '') },
  {
    name: 'colour',
    question: 'colour?',
    description: 'what colour (shapes or digit)',
    draw: (random) => (random() < 0.5 ? shapes(random) : digit(random)),
    answer: (s) => s.colour,
  },
  { name: 'digit', question: 'digit?', description: 'which digit is drawn', draw: digit, answer: (s) => (s.kind === 'digit' ? String(s.digit) : '') },
];

export interface ImageExample {
  /** Index in IMAGE_TASKS. */
  readonly task: number;
  readonly spec: ImageSpec;
  readonly prompt: string;
  readonly completion: string;
}

/** `perTask` examples of every image task, interleaved, from one seed; never a spec of `exclude` (JSON). */
export function imageExamples(perTask: number, seedValue: number, exclude: ReadonlySet<string> = new Set()): ImageExample[] {
  const random = seededRandom(seedValue);
  const out: ImageExample[] = [];
  for (let i = 0; i < perTask; i++) {
    IMAGE_TASKS.forEach((task, t) => {
      for (let attempt = 0; attempt < 50; attempt++) {
        const spec = task.draw(random);
        if (exclude.has(JSON.stringify(spec))) continue;
        out.push({ task: t, spec, prompt: task.question, completion: task.answer(spec) });
        return;
      }
    });
  }
  return out;
}
