// `routed-peft generate` and `forward` on the real stories260K checkpoint and on tiny HF directories:
// the documented story, JSON shapes, and exit codes for bad arguments (2) and bad files (1).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { SHARED_MODELS_SKIP_NOTE, hasSharedModels, stories260kPath, tok512Path, writeTinyGpt2Dir } from '../helpers/tiny-models.js';

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const io = createMemoryIo();
  const code = await main(argv, io);
  return { code, out: io.out, err: io.err };
}

const STORY = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.';

describe.skipIf(!hasSharedModels)(`generate / forward on stories260K${SHARED_MODELS_SKIP_NOTE}`, () => {
  test('greedy generation from BOS prints the documented story', async () => {
    const { code, out } = await run('generate', '--model', stories260kPath, '--tokenizer', tok512Path, '--max-new-tokens', '40', '--temperature', '0');
    expect(code).toBe(0);
    expect(STORY.startsWith(out.trim().slice(0, 60))).toBe(true);
    expect(out.startsWith('Once upon a time, there was a little girl named Lily.')).toBe(true);
  });

  test('--format json prints the whole sequence (BOS and prompt included) and its text', async () => {
    const { code, out } = await run(
      'generate',
      '--model',
      stories260kPath,
      '--tokenizer',
      tok512Path,
      '--prompt',
      'Once upon',
      '--max-new-tokens',
      '8',
      '--temperature',
      '0',
      '--format',
      'json',
    );
    expect(code).toBe(0);
    const result = JSON.parse(out) as { ids: number[]; text: string };
    expect(result.ids[0]).toBe(1);
    expect(result.ids).toHaveLength(1 + 2 + 8);
    expect(result.text.startsWith('Once upon a time')).toBe(true);
  });

  test('--prompt-ids without a tokenizer gives ids only; same seed repeats', async () => {
    const a = await run('generate', '--model', stories260kPath, '--prompt-ids', '1,403', '--max-new-tokens', '6', '--seed', '7', '--format', 'json');
    const b = await run('generate', '--model', stories260kPath, '--prompt-ids', '1,403', '--max-new-tokens', '6', '--seed', '7', '--format', 'json');
    expect(a.code).toBe(0);
    expect(JSON.parse(a.out)).toEqual(JSON.parse(b.out));
    expect(JSON.parse(a.out)).not.toHaveProperty('text');
  });

  test('forward prints one row of vocabulary logits per position', async () => {
    const { code, out } = await run('forward', '--model', stories260kPath, '--ids', '1,403,407', '--format', 'json');
    expect(code).toBe(0);
    const { logits } = JSON.parse(out) as { logits: number[][] };
    expect(logits).toHaveLength(3);
    expect(logits.every((row) => row.length === 512 && row.every(Number.isFinite))).toBe(true);
    // After "<s> Once" the model continues with " upon" (id 407) in greedy decoding.
    const row = logits[1] as number[];
    expect(row.indexOf(Math.max(...row))).toBe(407);
  });

  test('--prompt without a tokenizer and out-of-vocabulary ids are errors', async () => {
    const noTokenizer = await run('generate', '--model', stories260kPath, '--prompt', 'hi');
    expect(noTokenizer.code).toBe(2);
    expect(noTokenizer.err).toMatch(/--prompt needs a tokenizer/);
    const badIds = await run('forward', '--model', stories260kPath, '--ids', '1,9999');
    expect(badIds.code).toBe(1);
    expect(badIds.err).toMatch(/token id 9999 is outside the vocabulary/);
  });
});

describe('generate / forward argument and file errors', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-cli-'));
    await writeTinyGpt2Dir(join(dir, 'gpt2'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  test('a tiny HF gpt2 directory runs through forward', async () => {
    const { code, out } = await run('forward', '--model', join(dir, 'gpt2'), '--ids', '1,2,3');
    expect(code).toBe(0);
    expect((JSON.parse(out) as { logits: number[][] }).logits).toHaveLength(3);
  });

  test.each([
    [['generate'], /--model is required/],
    [['generate', '--model', 'x', '--temperature', '-1'], /--temperature/],
    [['generate', '--model', 'x', '--top-k', '0'], /--top-k/],
    [['generate', '--model', 'x', '--bogus'], /bogus/],
    [['forward', '--model', 'x'], /--ids is required/],
    [['forward', '--model', 'x', '--ids', '1,a'], /--ids/],
  ])('%j is a usage error (exit 2)', async (argv, message) => {
    const { code, err } = await run(...argv);
    expect(code).toBe(2);
    expect(err).toMatch(message);
  });

  test('a missing or malformed checkpoint exits 1 with the typed error message', async () => {
    const missing = await run('forward', '--model', join(dir, 'nope'), '--ids', '1');
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/model path does not exist/);
    const notModel = await run('forward', '--model', join(dir, 'gpt2', 'config.json'), '--ids', '1');
    expect(notModel.code).toBe(1);
    expect(notModel.err).toMatch(/cannot tell the checkpoint format/);
  });
});
