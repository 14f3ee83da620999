// `routed-peft train / eval / generate --vision` on the shipped demo model and demo vision encoder: a small
// image dataset (generated-image specs and a PNG file) trains into a multimodal model directory, eval scores it
// per task, generate --image prepends an image (its tokens traced as image tokens), train --routed trains it
// further; text-only models refuse image rows and the two kinds of directory are kept apart, by name.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { IMAGE_TASKS, imageExamples } from '../../src/demo/image-tasks.js';
import { demoModelDir } from '../../src/demo/run-demo.js';
import { demoVisionDir } from '../../src/demo/run-multimodal-demo.js';
import { encodePng } from '../../src/vision/image.js';
import { renderImageSpec } from '../../src/vision/image-spec.js';
import { saveVisionEncoder } from '../../src/vision/load-encoder.js';
import { tinyVisionEncoder } from '../helpers/tiny-vision.js';

const specPath = fileURLToPath(new URL('../../examples/multimodal-routed-lora.json', import.meta.url));
const textSpecPath = fileURLToPath(new URL('../../examples/topk-lora-experts.json', import.meta.url));
const context = { routers: builtinRouters() };

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const io = createMemoryIo();
  const code = await main(argv, io, context);
  return { code, out: io.out, err: io.err };
}

const lastJson = (out: string): Record<string, unknown> => JSON.parse(out.trim().split('\n').at(-1) as string) as Record<string, unknown>;

describe('train, eval and generate with images through the CLI', () => {
  let dir: string;
  let data: string;
  let out: string;
  const model = ['--model', demoModelDir()];
  const vision = ['--vision', demoVisionDir()];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-mm-cli-'));
    data = join(dir, 'data.jsonl');
    const rows: Record<string, unknown>[] = imageExamples(3, 11).map((e) => ({
      prompt: e.prompt,
      completion: e.completion,
      image: e.spec,
      task: IMAGE_TASKS[e.task]?.name,
    }));
    // A PNG path, relative to the data file, and a text row without an image.
    await writeFile(join(dir, 'two.png'), encodePng(renderImageSpec({ kind: 'digit', digit: 2, colour: 'green', seed: 5 })));
    rows.push({ prompt: 'digit?', completion: '2', image: 'two.png', task: 'digit' }, { prompt: 'abc', completion: 'd', task: 'count' });
    await writeFile(data, `${rows.map((r) => JSON.stringify(r)).join('\n')}\n`);
    out = join(dir, 'mm');
    const trained = await run([
      'train',
      ...model,
      ...vision,
      '--spec',
      specPath,
      '--data',
      data,
      '--out',
      out,
      '--steps',
      '2',
      '--batch-size',
      '4',
      '--format',
      'json',
    ]);
    expect(trained.err).toBe('');
    expect(trained.code).toBe(0);
    const summary = lastJson(trained.out);
    expect(summary['type']).toBe('summary');
    expect(summary['steps']).toBe(2);
    expect(Number.isFinite(summary['lastLoss'])).toBe(true);
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  test('eval reads the images and reports every task, with routing statistics', async () => {
    const evaluated = await run(['eval', ...model, ...vision, '--routed', out, '--data', data, '--max-new-tokens', '2', '--format', 'json']);
    expect(evaluated.err).toBe('');
    expect(evaluated.code).toBe(0);
    const result = JSON.parse(evaluated.out) as {
      count: number;
      tasks: Record<string, { count: number; accuracy: number | null }>;
      routing: { decisions: number };
    };
    expect(result.count).toBe(11);
    expect(Object.keys(result.tasks).sort()).toEqual(['colour', 'count', 'digit']);
    expect(result.tasks['digit']?.count).toBe(4);
    for (const t of Object.values(result.tasks)) expect(t.accuracy).not.toBeNull();
    expect(result.routing.decisions).toBeGreaterThan(0);
  });

  test('generate --image prepends the image: a PNG or a spec, its tokens traced as image tokens', async () => {
    const args = ['generate', ...model, ...vision, '--routed', out, '--prompt', 'digit?', '--max-new-tokens', '2', '--temperature', '0', '--format', 'json'];
    const fromPng = await run([...args, '--image', join(dir, 'two.png'), '--trace']);
    expect(fromPng.err).toBe('');
    expect(fromPng.code).toBe(0);
    const result = JSON.parse(fromPng.out) as { ids: number[]; text: string; trace: { modality: string; token: number }[] };
    expect(result.text.startsWith('digit?')).toBe(true);
    // demo-vision reads 24×24 images in 6×6 patches: 16 image tokens, routed at each of the 3 layers.
    const imageTokens = new Set(result.trace.filter((e) => e.modality === 'image').map((e) => e.token));
    expect(imageTokens.size).toBe(16);
    expect(result.trace.some((e) => e.modality === 'text')).toBe(true);
    const fromSpec = await run([...args, '--image', '{"kind":"digit","digit":2,"colour":"green","seed":5}']);
    expect(fromSpec.code).toBe(0);
    // The same pixels by either route give the same continuation.
    expect((JSON.parse(fromSpec.out) as { ids: number[] }).ids).toEqual(result.ids);
    const noImage = await run(args);
    expect(noImage.code).toBe(0);
  });

  test('train --routed trains a saved multimodal model further into a new --out', async () => {
    const further = await run([
      'train',
      ...model,
      ...vision,
      '--routed',
      out,
      '--data',
      data,
      '--out',
      join(dir, 'mm2'),
      '--steps',
      '1',
      '--batch-size',
      '4',
      '--format',
      'json',
    ]);
    expect(further.err).toBe('');
    expect(further.code).toBe(0);
    expect(lastJson(further.out)['steps']).toBe(1);
  });

  test('refusals name the flag, the file or the line', async () => {
    const withoutVision = await run(['train', ...model, '--spec', textSpecPath, '--data', data, '--out', join(dir, 'text'), '--steps', '1']);
    expect(withoutVision.code).toBe(2);
    expect(withoutVision.err).toMatch(/line\(s\) carry an "image" \(first: line 1\).*text-only/s);
    expect(withoutVision.err).toMatch(/--vision DIR/);

    const specWithoutVision = await run(['train', ...model, '--spec', specPath, '--data', data, '--out', join(dir, 'text'), '--steps', '1']);
    expect(specWithoutVision.code).toBe(2);
    expect(specWithoutVision.err).toMatch(/is a multimodal spec \(adapters on vision\.\* sites\); it needs a vision encoder/);

    const evalWithoutVision = await run(['eval', ...model, '--routed', out, '--data', data]);
    expect(evalWithoutVision.code).toBe(2);
    expect(evalWithoutVision.err).toMatch(/is a multimodal model directory.*--vision DIR/s);

    const forwardWithoutVision = await run(['forward', ...model, '--routed', out, '--ids', '1,2']);
    expect(forwardWithoutVision.code).toBe(2);
    expect(forwardWithoutVision.err).toMatch(/is a multimodal model directory/);

    const visionWithTextDir = await run(['eval', ...model, ...vision, '--routed', join(dir, 'mm', 'language'), '--data', data]);
    expect(visionWithTextDir.code).toBe(2);
    expect(visionWithTextDir.err).toMatch(/is not a multimodal model directory/);

    const resume = await run(['train', ...model, ...vision, '--data', data, '--out', out, '--resume']);
    expect(resume.code).toBe(2);
    expect(resume.err).toMatch(/--resume with --vision: training checkpoints of a multimodal model are not implemented/);

    const overwrite = await run(['train', ...model, ...vision, '--spec', specPath, '--data', data, '--out', out, '--steps', '1']);
    expect(overwrite.code).toBe(2);
    expect(overwrite.err).toMatch(/already holds a multimodal model/);

    const imageWithoutVision = await run(['generate', ...model, '--image', join(dir, 'two.png')]);
    expect(imageWithoutVision.code).toBe(2);
    expect(imageWithoutVision.err).toMatch(/--image needs --vision DIR/);

    const wrongSize = join(dir, 'big.png');
    await writeFile(wrongSize, encodePng({ width: 32, height: 32, data: new Float32Array(32 * 32 * 3) }));
    const big = await run(['generate', ...model, ...vision, '--routed', out, '--image', wrongSize]);
    expect(big.code).toBe(1);
    expect(big.err).toMatch(/32×32.*big\.png/s);

    // Another vision tower than the one trained with.
    const otherVision = join(dir, 'other-vit');
    const encoder = tinyVisionEncoder();
    await saveVisionEncoder(otherVision, encoder);
    encoder.dispose();
    const other = await run(['eval', ...model, '--vision', otherVision, '--routed', out, '--data', data]);
    expect(other.code).toBe(1);
    expect(other.err).toMatch(/trained with a vision encoder with imageSize|patchSize/);
  });
});
