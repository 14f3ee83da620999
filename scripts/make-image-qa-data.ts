/**
 * Writes examples/image-qa/: the multimodal demo's three image questions (count?, colour?, digit?) about
 * generated images, as JSONL lines with an "image" spec, for `routed-peft train / eval --vision`.
 * train.jsonl: 100 rows per task (seed 1); eval.jsonl: 20 rows per task (seed 2) whose images are not in
 * train.jsonl; digit-7.png: one 24×24 image for `generate --image`. Deterministic.
 *
 *   node --import tsx scripts/make-image-qa-data.ts
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { IMAGE_TASKS, type ImageExample, imageExamples } from '../src/demo/image-tasks.js';
import { encodePng } from '../src/vision/image.js';
import { renderImageSpec } from '../src/vision/image-spec.js';

const dir = join(import.meta.dirname, '..', 'examples', 'image-qa');
mkdirSync(dir, { recursive: true });
const lines = (examples: readonly ImageExample[]): string =>
  examples.map((e) => JSON.stringify({ prompt: e.prompt, completion: e.completion, image: e.spec, task: IMAGE_TASKS[e.task]?.name })).join('\n');
const train = imageExamples(100, 1);
const held = imageExamples(20, 2, new Set(train.map((e) => JSON.stringify(e.spec))));
writeFileSync(join(dir, 'train.jsonl'), `${lines(train)}\n`);
writeFileSync(join(dir, 'eval.jsonl'), `${lines(held)}\n`);
writeFileSync(join(dir, 'digit-7.png'), encodePng(renderImageSpec({ kind: 'digit', digit: 7, colour: 'blue', seed: 0 })));
