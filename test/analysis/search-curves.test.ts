// Accuracy-vs-parameters curves from a hand-written trials.jsonl (test/fixtures/search-run): each candidate
// counts at the highest rung it reached, the frontier per method is the best accuracy at ≤ each parameter
// count, and malformed lines are refused by their line number.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { analyzeSearchRun, monotoneFrontier, parseTrials, searchCurves } from '../../src/analysis/search-curves.js';
import { CheckpointError, ConfigError } from '../../src/errors.js';
import { TrialRecord, trialId, writeTrials } from '../../src/search/trial-log.js';

const fixture = fileURLToPath(new URL('../fixtures/search-run/', import.meta.url));

describe('analyzeSearchRun on the fixture', () => {
  test('one curve per method, from each candidate at its highest rung', async () => {
    const search = await analyzeSearchRun(fixture);
    expect(search.trials).toBe(9);
    expect(search.methods.map((m) => m.method)).toEqual(['lora', 'bottleneck', 'lora+route']);
    const lora = search.methods[0];
    expect(lora?.candidates).toBe(4);
    // c1 rose to 0.6 at rung 1, which beats c5 (2000 params) and c2 (4000 params); c6 is better still.
    expect(lora?.frontier).toEqual([
      { trainableParams: 1000, accuracy: 0.6, candidate: 'c1', rung: 1 },
      { trainableParams: 8000, accuracy: 0.65, candidate: 'c6', rung: 0 },
    ]);
    expect(lora?.points.map((p) => p.candidate)).toEqual(['c1', 'c5', 'c2', 'c6']);
    // A line without a candidate id is a candidate of its own, named by its line.
    expect(search.methods[1]?.frontier).toEqual([
      { trainableParams: 500, accuracy: 0.3, candidate: 'line 10', rung: 0 },
      { trainableParams: 2000, accuracy: 0.5, candidate: 'c3', rung: 0 },
    ]);
    expect(search.methods[2]?.frontier).toEqual([{ trainableParams: 3000, accuracy: 0.7, candidate: 'c4', rung: 1 }]);
  });
});

test('the frontier never falls and keeps only the points where it rises', () => {
  const p = (trainableParams: number, accuracy: number) => ({ trainableParams, accuracy, candidate: `${trainableParams}`, rung: 0 });
  expect(monotoneFrontier([p(30, 0.5), p(10, 0.2), p(20, 0.5), p(20, 0.1), p(40, 0.45)]).map((f) => [f.trainableParams, f.accuracy])).toEqual([
    [10, 0.2],
    [20, 0.5],
  ]);
});

describe('bad search runs', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-search-bad-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  const good = '{"method":"lora","rung":0,"trainableParams":10,"validation":{"accuracy":0.5}}';
  test.each([
    ['not JSON', '{"method": "lora",', /line 2 is not JSON/],
    ['a negative rung', '{"method":"lora","rung":-1,"trainableParams":10,"validation":{"accuracy":0.5}}', /line 2\.rung/],
    ['an accuracy above 1', '{"method":"lora","rung":0,"trainableParams":10,"validation":{"accuracy":1.5}}', /line 2\.validation\.accuracy/],
    ['no validation', '{"method":"lora","rung":0,"trainableParams":10}', /line 2\.validation/],
    ['fractional parameters', '{"method":"lora","rung":0,"trainableParams":1.5,"validation":{"accuracy":0.5}}', /line 2\.trainableParams/],
  ])('a line with %s is refused by its number', (_what, line, message) => {
    expect(() => parseTrials(`${good}\n${line}\n`, 'trials.jsonl')).toThrow(ConfigError);
    expect(() => parseTrials(`${good}\n${line}\n`, 'trials.jsonl')).toThrow(message);
  });

  test('a candidate whose method changes between rungs is refused', () => {
    const text =
      '{"key":"c7","method":"lora","rung":0,"trainableParams":10,"validation":{"accuracy":0.5}}\n{"key":"c7","method":"ia3","rung":1,"trainableParams":10,"validation":{"accuracy":0.5}}';
    expect(() => searchCurves(parseTrials(text, 't'), 't')).toThrow(/line 2 gives candidate "c7" the method "ia3", but line 1 gave it "lora"/);
  });

  test('a directory without trials.jsonl, or with an empty one, is a typed error naming the path', async () => {
    await expect(analyzeSearchRun(join(dir, 'missing'))).rejects.toThrow(CheckpointError);
    await expect(analyzeSearchRun(join(dir, 'missing'))).rejects.toThrow(join(dir, 'missing', 'trials.jsonl'));
    await writeFile(join(dir, 'trials.jsonl'), '\n\n');
    await expect(analyzeSearchRun(dir)).rejects.toThrow(/holds no trials/);
  });
});

describe('the trial log routed-peft search writes', () => {
  test('is read as it is: one candidate per key, at its highest rung', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'routed-peft-search-log-'));
    try {
      const trial = (key: string, rung: number, accuracy: number, trainableParams: number): TrialRecord =>
        TrialRecord.parse({
          type: 'trial',
          id: trialId(key, rung),
          key,
          method: 'lora',
          rung,
          steps: 10 * (rung + 1),
          candidate: { kind: 'lora', injection: 'attn.qv', layers: 'all', budgetShare: 1, routing: { kind: 'none' } },
          size: 2,
          spec: { adapters: [] },
          trainableParams,
          validation: { accuracy, loss: 1, examples: 4, tasks: {} },
          seconds: 1,
        });
      await writeTrials(dir, [trial('a', 0, 0.25, 100), trial('b', 0, 0.5, 200), trial('a', 1, 0.75, 100)]);
      const analysis = await analyzeSearchRun(dir);
      const lora = analysis.methods.find((m) => m.method === 'lora');
      expect(lora?.candidates).toBe(2);
      expect(lora?.frontier).toEqual([{ trainableParams: 100, accuracy: 0.75, candidate: 'a', rung: 1 }]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
