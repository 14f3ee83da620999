// JSONL datasets: the three line kinds, malformed lines by line number, refusal of mostly-bad files,
// kind mixing, and the task / label tables.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, RoutedPeftError } from '../../src/errors.js';
import { DatasetError } from '../../src/train/dataset-errors.js';
import { readJsonlDataset } from '../../src/train/dataset-file.js';
import { parseJsonlDataset } from '../../src/train/dataset.js';

const jsonl = (...values: unknown[]): string => values.map((v) => (typeof v === 'string' ? v : JSON.stringify(v))).join('\n');
const goodText = (n: number): string[] => Array.from({ length: n }, (_, i) => JSON.stringify({ text: `story ${i}` }));

describe('parseJsonlDataset', () => {
  it('parses text lines', () => {
    const d = parseJsonlDataset(jsonl({ text: 'Once upon a time.' }, { text: 'The end.', task: 'stories' }), 'mem.jsonl');
    expect(d.kind).toBe('language-modelling');
    expect(d.examples).toEqual([
      { kind: 'text', text: 'Once upon a time.', line: 1 },
      { kind: 'text', text: 'The end.', task: 0, line: 2 },
    ]);
    expect(d.tasks).toEqual(['stories']);
    expect(d.labels).toEqual([]);
    expect(d.problems).toEqual([]);
    expect(d.lineCount).toBe(2);
  });

  it('parses prompt/completion lines (empty prompt allowed) and mixes them with text lines', () => {
    const d = parseJsonlDataset(jsonl({ prompt: 'Q: 2+2?', completion: ' 4' }, { text: 'plain' }, { prompt: '', completion: 'anything', task: 3 }), 'mem');
    expect(d.kind).toBe('language-modelling');
    expect(d.examples).toEqual([
      { kind: 'prompt-completion', prompt: 'Q: 2+2?', completion: ' 4', line: 1 },
      { kind: 'text', text: 'plain', line: 2 },
      { kind: 'prompt-completion', prompt: '', completion: 'anything', task: 3, line: 3 },
    ]);
    // Integer tasks are ids as written; the table names the ids up to the largest.
    expect(d.tasks).toEqual(['0', '1', '2', '3']);
  });

  it('parses labelled lines with string labels (ids by first appearance) and integer labels (as written)', () => {
    const named = parseJsonlDataset(jsonl({ text: 'great', label: 'pos' }, { text: 'awful', label: 'neg' }, { text: 'fine', label: 'pos' }), 'mem');
    expect(named.kind).toBe('classification');
    expect(named.examples.map((e) => (e.kind === 'labelled' ? e.label : -1))).toEqual([0, 1, 0]);
    expect(named.labels).toEqual(['pos', 'neg']);

    const ids = parseJsonlDataset(jsonl({ text: 'a', label: 2 }, { text: 'b', label: 0 }), 'mem');
    expect(ids.examples.map((e) => (e.kind === 'labelled' ? e.label : -1))).toEqual([2, 0]);
    expect(ids.labels).toEqual(['0', '1', '2']);
  });

  it('maps task names to ids in order of first appearance, and continues a given table', () => {
    const lines = jsonl({ text: 'a', task: 'math' }, { text: 'b', task: 'code' }, { text: 'c', task: 'math' }, { text: 'd', task: 'chat' });
    const d = parseJsonlDataset(lines, 'mem');
    expect(d.tasks).toEqual(['math', 'code', 'chat']);
    expect(d.examples.map((e) => e.task)).toEqual([0, 1, 0, 2]);

    const validation = parseJsonlDataset(jsonl({ text: 'x', task: 'chat' }, { text: 'y', task: 'poems' }), 'val', { tasks: d.tasks });
    expect(validation.examples.map((e) => e.task)).toEqual([2, 3]);
    expect(validation.tasks).toEqual(['math', 'code', 'chat', 'poems']);
  });

  it('treats "task": null as no task and ignores unknown fields', () => {
    const d = parseJsonlDataset(jsonl({ text: 'a', task: null, source: 'web', id: 7 }), 'mem');
    expect(d.examples).toEqual([{ kind: 'text', text: 'a', line: 1 }]);
  });

  it('reports malformed lines by 1-based line number (blank lines count as lines but are ignored) and skips them', () => {
    const lines = [
      ...goodText(2), // 1, 2
      '', // 3: blank
      '{"text": "unterminated', // 4: bad JSON
      ...goodText(8), // 5..12
      JSON.stringify({ text: '   ' }), // 13: empty text
      '   ', // 14: blank
      JSON.stringify({ prompt: 'only a prompt' }), // 15: no completion
      JSON.stringify({ text: 'x', label: 1.5 }), // 16: non-integer label
      '[1, 2]', // 17: not an object
      JSON.stringify({ txt: 'typo' }), // 18: no known field
      JSON.stringify({ text: 'y', task: -1 }), // 19: negative task
      ...goodText(13), // 20..32
    ].join('\r\n');
    const d = parseJsonlDataset(lines, 'mem.jsonl', { maxBadFraction: 0.5 });
    expect(d.problems.map((p) => p.line)).toEqual([4, 13, 15, 16, 17, 18, 19]);
    expect(d.examples).toHaveLength(23);
    expect(d.lineCount).toBe(30);
    const message = (line: number): string => d.problems.find((p) => p.line === line)?.message ?? '';
    expect(message(4)).toMatch(/not valid JSON/);
    expect(message(13)).toMatch(/text must not be empty/);
    expect(message(15)).toMatch(/completion/);
    expect(message(16)).toMatch(/label/);
    expect(message(17)).toMatch(/JSON object.*array/);
    expect(message(18)).toMatch(/"txt"/);
    expect(message(19)).toMatch(/task/);
    expect(d.examples.every((e) => e.line !== 4 && e.line !== 13)).toBe(true);
  });

  it('accepts a malformed fraction up to maxBadFraction (default 0.1) and refuses beyond it', () => {
    const tenPercent = [...goodText(9), '{bad'].join('\n');
    expect(parseJsonlDataset(tenPercent, 'mem').problems).toHaveLength(1);
    const moreThanTen = [...goodText(8), '{bad', '{bad'].join('\n');
    expect(() => parseJsonlDataset(moreThanTen, 'mem')).toThrow(DatasetError);
    expect(parseJsonlDataset(moreThanTen, 'mem', { maxBadFraction: 0.2 }).examples).toHaveLength(8);
  });

  it('refuses mixing language-modelling and labelled lines, naming the line that started the other kind', () => {
    const mixed = jsonl({ text: 'a' }, { prompt: 'p', completion: 'c' }, { text: 'b', label: 'pos' });
    expect(() => parseJsonlDataset(mixed, 'mixed.jsonl')).toThrow(DatasetError);
    expect(() => parseJsonlDataset(mixed, 'mixed.jsonl')).toThrow(/line 3 is a labelled classification example.*line 1 started a language-modelling dataset/);
    const other = jsonl({ text: 'b', label: 'pos' }, { text: 'a' });
    expect(() => parseJsonlDataset(other, 'mixed.jsonl')).toThrow(/line 2 is a language-modelling example.*line 1 started a classification dataset/);
  });

  it('refuses names and integer ids for the same field in one file', () => {
    expect(() => parseJsonlDataset(jsonl({ text: 'a', task: 'math' }, { text: 'b', task: 0 }), 'mem')).toThrow(
      /line 2 gives a task as an integer.*line 1 started with names/,
    );
    expect(() => parseJsonlDataset(jsonl({ text: 'a', label: 1 }, { text: 'b', label: 'x' }), 'mem')).toThrow(DatasetError);
  });

  it('refuses a file with no examples', () => {
    expect(() => parseJsonlDataset('\n  \n', 'blank.jsonl')).toThrow(/blank\.jsonl: no examples/);
  });

  it('validates its options', () => {
    expect(() => parseJsonlDataset(jsonl({ text: 'a' }), 'mem', { maxBadFraction: 2 })).toThrow(ConfigError);
  });
});

describe('readJsonlDataset (files)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-dataset-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads a file (BOM and CRLF tolerated)', async () => {
    const path = join(dir, 'good.jsonl');
    await writeFile(path, `\uFEFF${jsonl({ prompt: 'Hi', completion: ' there', task: 'chat' }, { text: 'More.', task: 'lm' })}\r\n`);
    const d = await readJsonlDataset(path);
    expect(d.source).toBe(path);
    expect(d.examples).toHaveLength(2);
    expect(d.tasks).toEqual(['chat', 'lm']);
  });

  it('refuses a mostly malformed file with a DatasetError naming the file, the count and the first bad lines', async () => {
    const path = join(dir, 'bad.jsonl');
    await writeFile(
      path,
      [JSON.stringify({ text: 'ok' }), '{nope', '', JSON.stringify({ completion: '' }), 'true', ...Array.from({ length: 6 }, () => '{"x": 1}')].join('\n'),
    );
    const error = await readJsonlDataset(path).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(DatasetError);
    expect(error).toBeInstanceOf(RoutedPeftError);
    const e = error as DatasetError;
    expect(e.path).toBe(path);
    expect(e.message).toContain(path);
    expect(e.message).toContain('9 of 10 non-empty lines are malformed');
    expect(e.message).toMatch(/line 2: not valid JSON/);
    expect(e.message).toMatch(/line 4: .*completion/);
    expect(e.message).toMatch(/line 5: expected a JSON object/);
    expect(e.message).toContain('... and 4 more');
  });

  it('reports a missing file as a DatasetError', async () => {
    await expect(readJsonlDataset(join(dir, 'missing.jsonl'))).rejects.toThrow(DatasetError);
  });
});
