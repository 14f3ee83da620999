// The multimodal demo, at a few steps: the shipped vision encoder loads through the public loader, both frozen
// models come out byte-identical, every task is scored, image and text tokens are traced separately with shares
// that sum to one, and the heat map and summary are written. (The accuracy claim is measured by the full
// demo, not here: a few steps prove nothing about it.)
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { IMAGE_TASKS, imageExamples } from '../../src/demo/image-tasks.js';
import { demoVisionDir, runMultimodalDemo } from '../../src/demo/run-multimodal-demo.js';
import { loadVisionEncoder } from '../../src/vision/load-encoder.js';

const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

test('image questions have the answer of their spec', () => {
  for (const example of imageExamples(20, 3)) {
    const task = IMAGE_TASKS[example.task];
    expect(example.prompt).toBe(task?.question);
    expect(example.completion).toBe(task?.answer(example.spec));
    expect(example.completion).not.toBe('');
  }
});

test('the shipped encoder: 16 tokens per 24×24 image, under 2 MB of parameters', async () => {
  const encoder = await loadVisionEncoder(demoVisionDir());
  expect(encoder.tokensPerImage).toBe(16);
  expect(encoder.parameterCount * 4).toBeLessThan(2 * 1024 * 1024);
  encoder.dispose();
});

test('a short multimodal demo run: frozen models unchanged, per-task accuracy, modality shares, files', async () => {
  const outDir = await mkdtemp(join(tmpdir(), 'mm-demo-'));
  dirs.push(outDir);
  const summary = await runMultimodalDemo({
    routers: builtinRouters(),
    quick: true,
    outDir,
    sizes: { steps: 4, batchSize: 14, trainPerTask: 8, evalPerTask: 1, evalBatch: 7, warmupSteps: 1 },
  });
  expect(summary.frozen.unchanged).toBe(true);
  expect(summary.tasks.map((t) => t.modality)).toEqual(['text', 'text', 'text', 'text', 'image', 'image', 'image']);
  expect(Math.abs(summary.budgets.routed - summary.budgets.shared) / summary.budgets.routed).toBeLessThan(0.01);
  for (const setup of ['shared', 'routed'] as const) for (const t of summary.tasks) expect(summary.accuracy[setup][t.name]).toBeGreaterThanOrEqual(0);
  const routing = summary.runs[0]?.routing;
  expect(routing?.imageTokens).toBeGreaterThan(0);
  expect(routing?.textTokens).toBeGreaterThan(0);
  for (const shares of [routing?.image ?? [], routing?.text ?? []]) expect(shares.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 4);
  const svg = await readFile(summary.files.heatmap, 'utf8');
  expect(svg).toContain('count · image');
  expect(svg).toContain('count · text');
  expect(JSON.parse(await readFile(summary.files.summary, 'utf8')).frozen.unchanged).toBe(true);
});
