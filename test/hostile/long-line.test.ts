// A 10 MB JSONL line is processed in linear time (issue 20, "quadratic tokenising"): only the window of the
// text that --max-length can use is encoded, so reading and tokenising cost what JSON.parse costs. Before, the
// whole line was encoded first by a quadratic tokenizer: 80 KB took 5.6 s and 8 MB did not finish in 75 s.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { loadTokenizer } from '../../src/tokenizers/load-tokenizer.js';
import { Llama2cTokenizer } from '../../src/tokenizers/llama2c-tokenizer.js';
import type { Tokenizer } from '../../src/tokenizers/tokenizer.js';
import { tokenizeExamples } from '../../src/train/batches.js';
import { parseJsonlDataset } from '../../src/train/dataset.js';
import { hasSharedModels, tok512Path } from '../helpers/tiny-models.js';

const demo = fileURLToPath(new URL('../../demo-model', import.meta.url));
const WORDS = 'once upon a time there was a little girl named lily. ';
const text = (bytes: number): string => WORDS.repeat(Math.ceil(bytes / WORDS.length)).slice(0, bytes);

let dir: string;
const tokenizers: [string, Tokenizer][] = [];
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'routed-peft-long-line-'));
  tokenizers.push(['tokenizer.json (BPE, no pre-tokenizer: one 10 MB word)', await loadTokenizer(join(demo, 'tokenizer.json'))]);
  if (hasSharedModels) tokenizers.push(['llama2.c tok512', await Llama2cTokenizer.fromFile(tok512Path)]);
});
afterAll(async () => rm(dir, { recursive: true, force: true }));

/** Milliseconds to parse and tokenise one line of `bytes` characters of text and one prompt/completion line. */
function timeLines(bytes: number, tokenizer: Tokenizer): { ms: number; lengths: number[] } {
  const body = text(bytes);
  const jsonl = `${JSON.stringify({ text: body })}\n${JSON.stringify({ prompt: body.slice(0, bytes / 2), completion: body.slice(0, bytes / 2) })}\n`;
  const start = performance.now();
  const dataset = parseJsonlDataset(jsonl, 'long.jsonl');
  const tokenized = tokenizeExamples(dataset.examples, tokenizer, { maxLength: 128 });
  return { ms: performance.now() - start, lengths: tokenized.map((e) => e.ids.length) };
}

describe('a 10 MB JSONL line is processed in linear time', () => {
  test('parse + tokenise: 10 MB takes under 2 s and grows at most ~linearly from 1 MB', () => {
    for (const [name, tokenizer] of tokenizers) {
      timeLines(100_000, tokenizer); // warm-up
      const small = timeLines(1_000_000, tokenizer);
      const large = timeLines(10_000_000, tokenizer);
      expect(large.lengths, name).toEqual([128, 128]);
      expect(large.ms, `${name}: ${large.ms.toFixed(0)} ms for 10 MB`).toBeLessThan(2000);
      // Linear: ×10 the bytes costs ≤ ~×10 the time (quadratic would be ×100); the constant absorbs timer noise.
      expect(large.ms, `${name}: 1 MB ${small.ms.toFixed(0)} ms, 10 MB ${large.ms.toFixed(0)} ms`).toBeLessThan(20 * small.ms + 200);
    }
  });

  test('the kept tokens are those the whole line would give (the window is exact, not an approximation)', () => {
    for (const [name, tokenizer] of tokenizers) {
      const body = text(20_000); // long enough to be windowed, short enough to encode whole for comparison
      const [windowed] = tokenizeExamples([{ kind: 'text', text: body, line: 1 }], tokenizer, { maxLength: 64 });
      const bos = tokenizer.bosId === undefined ? [] : [tokenizer.bosId];
      expect(windowed?.ids, name).toEqual([...bos, ...tokenizer.encode(body).slice(0, 64 - bos.length)]);
      expect(windowed?.truncated?.exact).toBe(false);
    }
  });

  test('train on a file with a 10 MB line finishes in seconds through the CLI (was: 44 s for a 200 KB line)', async () => {
    const data = join(dir, 'long.jsonl');
    await writeFile(data, `${JSON.stringify({ text: text(10_000_000) })}\n${JSON.stringify({ text: 'a short one' })}\n`);
    const spec = join(dir, 'spec.json');
    await writeFile(spec, JSON.stringify({ adapters: [{ kind: 'lora', name: 'e0', r: 2 }] }));
    const io = createMemoryIo();
    const start = performance.now();
    const code = await main(
      ['train', '--model', demo, '--data', data, '--spec', spec, '--out', join(dir, 'run'), '--steps', '2', '--batch-size', '2', '--max-length', '64'],
      io,
      { routers: builtinRouters() },
    );
    expect(code, io.err).toBe(0);
    expect(performance.now() - start).toBeLessThan(10_000);
  });
});
