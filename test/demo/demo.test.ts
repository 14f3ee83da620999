// The demo: task generators (determinism per seed, correct answers), the shipped base model through the
// public loaders, budget matching, the heat map, and one `demo --quick` run through main() whose JSON is
// checked for shape, equal budgets, the routed > shared claim, and the files it writes.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { loadBaseModel } from '../../src/base/checkpoints/load-model.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { escapeXml, renderHeatmap, shareColour } from '../../src/demo/heatmap.js';
import { demoBatch, demoModelDir, DEMO_ADAPTERS } from '../../src/demo/run-demo.js';
import { buildSetups } from '../../src/demo/setups.js';
import {
  DEMO_BOS_ID,
  DEMO_EOS_ID,
  DEMO_TASKS,
  DEMO_VOCAB_SIZE,
  PRETRAINING_KINDS,
  heldOutExamples,
  pretrainingDocument,
  pretrainingDocuments,
  reverseString,
  rotateLeft,
  sortAscending,
  sortDescending,
  taskExamples,
} from '../../src/demo/tasks.js';
import { seededRandom } from '../../src/base/sampling.js';
import { loadTokenizer } from '../../src/tokenizers/load-tokenizer.js';

describe('demo task generators', () => {
  test('the answer functions', () => {
    expect(reverseString('abcz')).toBe('zcba');
    expect(rotateLeft('abcz')).toBe('bcza');
    expect(sortAscending('40715')).toBe('01457');
    expect(sortDescending('40715')).toBe('75410');
  });

  test('the same seed gives the same examples; another seed gives others', () => {
    expect(taskExamples(20, 7)).toEqual(taskExamples(20, 7));
    expect(taskExamples(20, 8)).not.toEqual(taskExamples(20, 7));
    expect(pretrainingDocuments(30, 3)).toEqual(pretrainingDocuments(30, 3));
    expect(pretrainingDocuments(30, 4)).not.toEqual(pretrainingDocuments(30, 3));
  });

  test('every example is interleaved by task, has its marker layout, the right answer, and at most 8 characters', () => {
    const examples = taskExamples(50, 11);
    expect(examples).toHaveLength(50 * DEMO_TASKS.length);
    examples.forEach((e, i) => {
      expect(e.task).toBe(i % DEMO_TASKS.length);
      const task = DEMO_TASKS[e.task];
      expect(e.prompt.startsWith(`${task?.marker}:`)).toBe(true);
      expect(e.prompt.endsWith('=')).toBe(true);
      expect(e.completion.length).toBeGreaterThan(0);
      expect(e.completion.length).toBeLessThanOrEqual(8);
      const input = e.prompt.slice(2, -1);
      expect(input.length).toBeGreaterThanOrEqual(3);
      expect(input.length).toBeLessThanOrEqual(5);
      switch (task?.name) {
        case 'reverse':
          expect(input).toMatch(/^[a-z]+$/);
          expect(e.completion).toBe(reverseString(input));
          break;
        case 'rotate':
          expect(input).toMatch(/^[a-z]+$/);
          expect(e.completion).toBe(rotateLeft(input));
          break;
        case 'sort':
          expect(input).toMatch(/^[0-9]+$/);
          expect(e.completion).toBe(sortAscending(input));
          break;
        case 'desc':
          expect(input).toMatch(/^[0-9]+$/);
          expect(e.completion).toBe(sortDescending(input));
          break;
        default:
          throw new Error(`unknown task ${task?.name}`);
      }
    });
    // The pairs conflict: the same input, a different answer.
    expect(DEMO_TASKS.map((t) => t.answer(t.alphabet === '0123456789' ? '4071' : 'kqzt'))).toEqual(['tzqk', '0147', '7410', 'qztk']);
  });

  test('held-out examples avoid the excluded prompts and repeat no prompt', () => {
    const train = taskExamples(200, 1);
    const exclude = new Set(train.map((e) => e.prompt));
    const heldOut = heldOutExamples(40, 2, exclude);
    expect(heldOut.length).toBeGreaterThan(150);
    expect(heldOut.every((e) => !exclude.has(e.prompt))).toBe(true);
    expect(new Set(heldOut.map((e) => e.prompt)).size).toBe(heldOut.length);
    expect(heldOutExamples(40, 2, exclude)).toEqual(heldOut);
  });

  test('pretraining text has every kind, uses only the vocabulary, and never shows a task layout', () => {
    const random = seededRandom(5);
    for (const kind of PRETRAINING_KINDS) expect(pretrainingDocument(random, kind).length).toBeGreaterThan(0);
    const documents = pretrainingDocuments(500, 9);
    expect(documents.every((d) => /^[a-z0-9 |><=?]+$/.test(d))).toBe(true);
    expect(documents.some((d) => /^[rsdo]:/.test(d))).toBe(false);
  });
});

describe('the shipped demo base model', () => {
  test('loads through loadBaseModel and loadTokenizer like any Hugging Face directory', async () => {
    const dir = demoModelDir();
    const { model, format } = await loadBaseModel(dir);
    try {
      expect(format).toBe('huggingface');
      expect(model.config.family).toBe('llama');
      expect(model.config.vocabSize).toBe(DEMO_VOCAB_SIZE);
      expect(model.config.bosId).toBe(DEMO_BOS_ID);
      expect(model.config.eosId).toBe(DEMO_EOS_ID);
      const tokenizer = await loadTokenizer(dir);
      expect(tokenizer.vocabSize).toBe(DEMO_VOCAB_SIZE);
      expect(tokenizer.bosId).toBe(DEMO_BOS_ID);
      expect(tokenizer.eosId).toBe(DEMO_EOS_ID);
      for (const example of taskExamples(5, 3)) {
        const text = example.prompt + example.completion;
        const ids = tokenizer.encode(text);
        expect(ids).toHaveLength(text.length); // one token per character
        expect(tokenizer.decode(ids)).toBe(text);
      }
    } finally {
      model.dispose();
    }
  });

  test('training batches put left-padded prompts before right-padded completions, targets on the completions', async () => {
    const tokenizer = await loadTokenizer(demoModelDir());
    const examples = taskExamples(2, 4);
    const batch = demoBatch(examples, tokenizer);
    const width = batch.prompt[0]?.length ?? 0;
    examples.forEach((e, b) => {
      const prompt = tokenizer.encode(e.prompt, { addBos: true });
      const completion = [...tokenizer.encode(e.completion), DEMO_EOS_ID];
      expect(batch.prompt[b]?.slice(width - prompt.length)).toEqual(prompt);
      expect(batch.promptMask[b]?.reduce((s, m) => s + m, 0)).toBe(prompt.length);
      expect(batch.completion[b]?.slice(0, completion.length)).toEqual(completion);
      expect(batch.ids[b]).toEqual([...(batch.prompt[b] ?? []), ...(batch.completion[b] ?? [])]);
      // Targets: exactly the completion tokens (EOS included).
      expect(batch.lossMask[b]?.slice(0, width).every((m) => m === 0)).toBe(true);
      expect(batch.lossMask[b]?.slice(width)).toEqual(batch.completionMask[b]);
      // Routers read the prompt only, as when serving.
      expect(batch.routingMask[b]).toEqual([...(batch.promptMask[b] ?? []), ...(batch.completion[b] ?? []).map(() => 0)]);
    });
    expect(batch.taskIds).toEqual(examples.map((e) => e.task));
  });

  test('the four setups have equal budgets within 2%', async () => {
    const { model } = await loadBaseModel(demoModelDir());
    try {
      const setups = buildSetups(model, builtinRouters(), { tasks: DEMO_TASKS.map((t) => t.name), seed: 0, ...DEMO_ADAPTERS });
      const routed = setups.find((s) => s.name === 'routed')?.trainableParams ?? 0;
      expect(routed).toBeGreaterThan(0);
      for (const setup of setups) expect(Math.abs(setup.trainableParams - routed) / routed).toBeLessThan(0.02);
      // The oracle alone reads task ids.
      expect(setups.filter((s) => s.usesTaskIds).map((s) => s.name)).toEqual(['oracle']);
    } finally {
      model.dispose();
    }
  });
});

describe('heat map SVG', () => {
  test('one cell per task and expert in each layer group, escaped labels, colours from white to blue', () => {
    const svg = renderHeatmap({
      title: 'a <b> & "c"',
      columns: ['e0', 'e1'],
      groups: [
        {
          label: 'layer 0',
          rows: [
            { label: 'x', values: [1, 0] },
            { label: 'y', values: [0.25, 0.75] },
          ],
        },
        { label: 'layer 1', rows: [{ label: 'x', values: [0.5, 0.5] }] },
      ],
    });
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect(svg).toContain(escapeXml('a <b> & "c"'));
    expect(svg).not.toContain('<b>');
    expect(svg.match(/<text[^>]*>\d+%<\/text>/g)?.length).toBe(6 + 2); // 6 cells + legend ends
    expect(shareColour(0)).toBe('#ffffff');
    expect(shareColour(1)).toBe('#08306b');
  });
});

describe('routed-peft demo --quick through main()', () => {
  let dir: string;
  let out = '';
  let code = -1;
  let err = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-demo-'));
    const io = createMemoryIo();
    code = await main(['demo', '--quick', '--seed', '0', '--format', 'json', '--out', dir], io, { routers: builtinRouters() });
    out = io.out;
    err = io.err;
  }, 240_000);
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  test('prints one JSON summary with the documented shape', () => {
    expect(code, err).toBe(0);
    expect(out.trim().split('\n')).toHaveLength(1);
    const summary = JSON.parse(out) as Record<string, unknown>;
    expect(Object.keys(summary)).toEqual(expect.arrayContaining(['setups', 'routing', 'retention', 'seconds']));
    const setups = summary['setups'] as Record<string, { accuracy: Record<string, number>; trainableParams: number }>;
    expect(Object.keys(setups).sort()).toEqual(['oracle', 'retained', 'routed', 'shared']);
    for (const setup of Object.values(setups)) {
      for (const task of [...DEMO_TASKS.map((t) => t.name), 'mean']) {
        expect(setup.accuracy[task]).toBeGreaterThanOrEqual(0);
        expect(setup.accuracy[task]).toBeLessThanOrEqual(1);
      }
      const mean = DEMO_TASKS.reduce((s, t) => s + (setup.accuracy[t.name] ?? 0), 0) / DEMO_TASKS.length;
      expect(setup.accuracy['mean']).toBeCloseTo(mean, 10);
      expect(Number.isInteger(setup.trainableParams)).toBe(true);
    }
    const routing = summary['routing'] as { purity: number; mutualInformation: number; load: Record<string, number> };
    expect(routing.purity).toBeGreaterThan(0);
    expect(routing.purity).toBeLessThanOrEqual(1);
    expect(routing.mutualInformation).toBeGreaterThanOrEqual(0);
    expect(routing.mutualInformation).toBeLessThanOrEqual(1);
    expect(Object.values(routing.load).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
    const retention = summary['retention'] as { routedLoss: number; baseLoss: number; delta: number };
    expect(Number.isFinite(retention.routedLoss) && Number.isFinite(retention.baseLoss)).toBe(true);
    expect(retention.delta).toBeCloseTo(retention.routedLoss - retention.baseLoss, 10);
    expect(summary['seconds']).toBeGreaterThan(0);
    // --quick is one run; its margin is the routed − shared difference of mean accuracy.
    const runs = summary['runs'] as { seed: number; margin: number }[];
    expect(runs.map((r) => r.seed)).toEqual([0]);
    expect(summary['margin']).toBeCloseTo((setups['routed']?.accuracy['mean'] ?? 0) - (setups['shared']?.accuracy['mean'] ?? 0), 10);
  });

  test('the four setups have equal trainable budgets (within 2%)', () => {
    const setups = (JSON.parse(out) as { setups: Record<string, { trainableParams: number }> }).setups;
    const routed = setups['routed']?.trainableParams ?? 0;
    for (const setup of Object.values(setups)) expect(Math.abs(setup.trainableParams - routed) / routed).toBeLessThan(0.02);
  });

  test('the claim: routed LoRA experts beat one shared LoRA on mean accuracy at equal budget', () => {
    const setups = (JSON.parse(out) as { setups: Record<string, { accuracy: { mean: number } }> }).setups;
    expect(setups['routed']?.accuracy.mean).toBeGreaterThan(setups['shared']?.accuracy.mean ?? 1);
  });

  test('writes the heat map (SVG) and the summary (JSON)', async () => {
    const svg = await readFile(join(dir, 'routing-heatmap.svg'), 'utf8');
    expect(svg).toMatch(/^<svg [^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect((svg.match(/<svg/g) ?? []).length).toBe((svg.match(/<\/svg>/g) ?? []).length);
    const written = JSON.parse(await readFile(join(dir, 'summary.json'), 'utf8')) as { setups: unknown };
    expect(written.setups).toEqual((JSON.parse(out) as { setups: unknown }).setups);
  });
});
