// `routed-peft train` and `routed-peft eval` on stories260K + tok512: JSON step lines, checkpoints in --out,
// --resume to the TOTAL --steps, the progress bar on a terminal, eval's JSON, and the error paths.
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { SHARED_MODELS_SKIP_NOTE, hasSharedModels, stories260kPath, tok512Path } from '../helpers/tiny-models.js';

const specPath = fileURLToPath(new URL('../../examples/topk-lora-experts.json', import.meta.url));
const retentionSpecPath = fileURLToPath(new URL('../../examples/retention-null-expert.json', import.meta.url));
const context = { routers: builtinRouters() };

async function run(argv: string[], options: { readonly isTTY?: boolean } = {}): Promise<{ code: number; out: string; err: string }> {
  const io = createMemoryIo(options);
  const code = await main(argv, io, context);
  return { code, out: io.out, err: io.err };
}

const lines = [
  { prompt: 'Once upon a time, there was a', completion: ' little girl.', task: 'story' },
  { prompt: 'The cat sat on the', completion: ' mat.', task: 'story' },
  { prompt: 'Lily liked to play with her', completion: ' ball.', task: 'story' },
  { prompt: 'Tom went to the', completion: ' park.', task: 'story' },
  { prompt: 'Q: What color is the sky? A:', completion: ' blue.', task: 'qa' },
  { prompt: 'Q: What does a dog say? A:', completion: ' woof.', task: 'qa' },
  { prompt: 'Q: What is big and gray? A:', completion: ' an elephant.', task: 'qa' },
  { text: 'The sun was warm and the birds sang in the tree.', task: 'qa' },
];

interface StepLine {
  type: string;
  step: number;
  loss: number;
  taskLoss: number;
  auxLoss: number;
  lr: number;
  gradNorm: number;
  skipped: boolean;
  tokensPerSecond: number;
  load?: { layer: number; experts: string[]; fractions: number[] }[];
}

function parseLines(out: string): Record<string, unknown>[] {
  return out
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe.skipIf(!hasSharedModels)(`train and eval through the CLI on stories260K${SHARED_MODELS_SKIP_NOTE}`, () => {
  let dir: string;
  let data: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-train-cli-'));
    data = join(dir, 'data.jsonl');
    await writeFile(data, `${lines.map((l) => JSON.stringify(l)).join('\n')}\n`);
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  const model = ['--model', stories260kPath, '--tokenizer', tok512Path];

  test('train --retention-data mixes base-domain rows (retentionLoss per step), a resume must keep them; eval --base-text reports the null share', async () => {
    const out = join(dir, 'retention-run');
    const baseText = join(dir, 'base.jsonl');
    await writeFile(
      baseText,
      `${['One day a boy saw a big dog.', 'She was happy and ran home.', 'The tree was tall.'].map((text) => JSON.stringify({ text })).join('\n')}\n`,
    );
    const args = ['train', ...model, '--data', data, '--spec', retentionSpecPath, '--out', out, '--steps', '2', '--batch-size', '4'];
    const first = await run([...args, '--retention-data', baseText, '--retention-weight', '2', '--retention-batch-size', '2']);
    expect(first.err).toBe('');
    expect(first.code).toBe(0);
    const steps = parseLines(first.out).filter((l) => l['type'] === 'step');
    expect(steps).toHaveLength(2);
    for (const s of steps) {
      expect(s['retentionLoss']).toBeGreaterThanOrEqual(0);
      expect(s['loss'] as number).toBeCloseTo((s['taskLoss'] as number) + (s['auxLoss'] as number) + 2 * (s['retentionLoss'] as number), 4);
    }
    const withoutData = await run(['train', ...model, '--data', data, '--out', out, '--steps', '3', '--resume']);
    expect(withoutData.code).toBe(2);
    expect(withoutData.err).toMatch(/--retention-data FILE/);
    const resumed = await run(['train', ...model, '--data', data, '--out', out, '--steps', '3', '--resume', '--retention-data', baseText]);
    expect(resumed.err).toBe('');
    expect(resumed.code).toBe(0);

    const evaluated = await run(['eval', ...model, '--routed', out, '--data', data, '--base-text', baseText, '--max-new-tokens', '0', '--format', 'json']);
    expect(evaluated.code).toBe(0);
    const retention = (JSON.parse(evaluated.out) as { baseRetention: { delta: number; nullShare: number } }).baseRetention;
    expect(Number.isFinite(retention.delta)).toBe(true);
    expect(retention.nullShare).toBeGreaterThanOrEqual(0);
    expect(retention.nullShare).toBeLessThanOrEqual(1);
  });

  test('train writes JSON step lines and a checkpoint; --resume continues to the total --steps; eval prints loss, tasks and routing', async () => {
    const out = join(dir, 'run');
    const first = await run([
      'train',
      ...model,
      '--data',
      data,
      '--spec',
      specPath,
      '--out',
      out,
      '--steps',
      '3',
      '--batch-size',
      '4',
      '--lr',
      '5e-3',
      '--checkpoint-every',
      '2',
    ]);
    expect(first.err).toBe('');
    expect(first.code).toBe(0);
    const parsed = parseLines(first.out);
    const steps = parsed.filter((l) => l['type'] === 'step') as unknown as StepLine[];
    expect(steps.map((s) => s.step)).toEqual([1, 2, 3]);
    for (const s of steps) {
      expect(Number.isFinite(s.loss)).toBe(true);
      expect(s.loss).toBeCloseTo(s.taskLoss + s.auxLoss, 5);
      expect(s.lr).toBeGreaterThan(0);
      expect(s.skipped).toBe(false);
      expect(s.tokensPerSecond).toBeGreaterThan(0);
      // top-k over 4 experts on attn.q, attn.v and mlp.down of 5 layers.
      expect(s.load).toHaveLength(15);
      expect(s.load?.[0]?.experts).toEqual(['expert0', 'expert1', 'expert2', 'expert3']);
      expect(s.load?.[0]?.fractions.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 3);
    }
    expect(parsed.filter((l) => l['type'] === 'checkpoint').map((l) => l['step'])).toEqual([2, 3]);
    expect(parsed.at(-1)).toMatchObject({ type: 'summary', startStep: 0, steps: 3, skippedTotal: 0 });
    expect(await readdir(out)).toEqual(expect.arrayContaining(['routed-peft.json', 'training-state.json', 'optimizer.safetensors', 'adapters']));

    const resumed = await run(['train', ...model, '--data', data, '--out', out, '--steps', '5', '--resume']);
    expect(resumed.err).toBe('');
    expect(resumed.code).toBe(0);
    const resumedLines = parseLines(resumed.out);
    expect(resumedLines.filter((l) => l['type'] === 'step').map((l) => l['step'])).toEqual([4, 5]);
    expect(resumedLines.at(-1)).toMatchObject({ type: 'summary', startStep: 3, steps: 5 });
    const done = await run(['train', ...model, '--data', data, '--out', out, '--steps', '5', '--resume', '--format', 'json']);
    expect(done.code).toBe(0);
    expect(parseLines(done.out)).toEqual([expect.objectContaining({ type: 'summary', startStep: 5, steps: 5 })]);
    const changed = await run(['train', ...model, '--data', data, '--out', out, '--steps', '6', '--resume', '--batch-size', '2']);
    expect(changed.code).toBe(2);
    expect(changed.err).toMatch(/--batch-size 2 differs from the checkpoint's 4/);

    const evaluated = await run(['eval', ...model, '--routed', out, '--data', data, '--format', 'json']);
    expect(evaluated.err).toBe('');
    expect(evaluated.code).toBe(0);
    expect(evaluated.out.trim().split('\n')).toHaveLength(1);
    const result = JSON.parse(evaluated.out) as {
      loss: number;
      perplexity: number;
      tasks: Record<string, { loss: number; accuracy: number | null; count: number }>;
      routing: { purity: number; mutualInformation: number; droppedRate: number; load: { layer: number; fractions: number[] }[] };
    };
    expect(Number.isFinite(result.loss)).toBe(true);
    expect(result.perplexity).toBeCloseTo(Math.exp(result.loss), 6);
    expect(Object.keys(result.tasks).sort()).toEqual(['qa', 'story']);
    expect(result.tasks['story']).toMatchObject({ count: 4 });
    expect(result.tasks['qa']?.count).toBe(4);
    for (const t of Object.values(result.tasks)) {
      expect(Number.isFinite(t.loss)).toBe(true);
      expect(t.accuracy).toBeGreaterThanOrEqual(0);
      expect(t.accuracy).toBeLessThanOrEqual(1);
    }
    expect(result.routing.purity).toBeGreaterThanOrEqual(0.25);
    expect(result.routing.purity).toBeLessThanOrEqual(1);
    expect(result.routing.mutualInformation).toBeGreaterThanOrEqual(0);
    expect(result.routing.mutualInformation).toBeLessThanOrEqual(1);
    expect(result.routing.droppedRate).toBe(0);
    expect(result.routing.load).toHaveLength(15);
  });

  test('train --workers 2: data-parallel replicas give the first step the one-replica loss; a --workers run resumes; refusals by name', async () => {
    const common = ['train', ...model, '--data', data, '--spec', specPath, '--steps', '2', '--batch-size', '4', '--format', 'json'];
    const one = await run([...common, '--out', join(dir, 'one-replica')]);
    const two = await run([...common, '--out', join(dir, 'two-replicas'), '--workers', '2']);
    expect(two.err).toBe('');
    expect(two.code).toBe(0);
    const a = parseLines(one.out).filter((l) => l['type'] === 'step') as unknown as StepLine[];
    const b = parseLines(two.out).filter((l) => l['type'] === 'step') as unknown as StepLine[];
    expect(b).toHaveLength(2);
    // The first step's token loss is over the same weights: exact across shards (aux terms are per shard).
    expect(b[0]?.taskLoss).toBeCloseTo(a[0]?.taskLoss as number, 5);
    for (const s of b) {
      expect(Number.isFinite(s.loss)).toBe(true);
      expect(s.load).toBeUndefined();
    }
    const resumed = await run([...common.map((x) => (x === '2' ? '3' : x)), '--out', join(dir, 'two-replicas'), '--workers', '2', '--resume']);
    expect(resumed.err).toBe('');
    expect(
      parseLines(resumed.out)
        .filter((l) => l['type'] === 'step')
        .map((l) => l['step']),
    ).toEqual([3]);
    const refused = await run([...common, '--out', join(dir, 'refused'), '--workers', '2', '--retention-data', data]);
    expect(refused.code).not.toBe(0);
    expect(refused.err).toMatch(/--workers with --retention-data/);
    const bad = await run([...common, '--out', join(dir, 'refused'), '--workers', '0']);
    expect(bad.code).not.toBe(0);
    expect(bad.err).toMatch(/workers/);
  });

  test('on a terminal: a progress bar on stderr and a text summary on stdout', async () => {
    const out = join(dir, 'tty');
    const result = await run(['train', ...model, '--data', data, '--spec', specPath, '--out', out, '--steps', '2', '--batch-size', '4'], { isTTY: true });
    expect(result.code).toBe(0);
    expect(result.err).toMatch(/train \|.*\| 2\/2 steps \| loss \d/);
    expect(result.out).toMatch(/^trained .*: steps 0 → 2 \(0 skipped\), loss \d/);
  });

  test('error paths: bad data exits 1 naming the line; --resume without a checkpoint; --out already trained; bad args', async () => {
    const bad = join(dir, 'bad.jsonl');
    await writeFile(bad, `${JSON.stringify(lines[0])}\n{"prompt": "x", "completion": 3}\n${JSON.stringify(lines[1])}\n`);
    const badData = await run(['train', ...model, '--data', bad, '--spec', specPath, '--out', join(dir, 'bad-out'), '--steps', '1']);
    expect(badData.code).toBe(1);
    expect(badData.err).toMatch(/line 2: completion must be a string/);

    const noCheckpoint = await run(['train', ...model, '--data', data, '--out', join(dir, 'empty'), '--resume']);
    expect(noCheckpoint.code).toBe(1);
    expect(noCheckpoint.err).toMatch(/no checkpoint to resume from/);

    const out = join(dir, 'once');
    expect((await run(['train', ...model, '--data', data, '--spec', specPath, '--out', out, '--steps', '1', '--batch-size', '8'])).code).toBe(0);
    const again = await run(['train', ...model, '--data', data, '--spec', specPath, '--out', out, '--steps', '1']);
    expect(again.code).toBe(2);
    expect(again.err).toMatch(/already holds a training checkpoint; pass --resume/);

    expect((await run(['train', ...model, '--data', data, '--out', join(dir, 'x'), '--steps', '1'])).code).toBe(2);
    expect((await run(['train', ...model, '--data', data, '--spec', specPath, '--out', join(dir, 'x'), '--steps', '0'])).code).toBe(2);
    expect((await run(['train', ...model, '--data', data, '--spec', specPath, '--out', join(dir, 'x'), '--lr', 'fast'])).code).toBe(2);
    expect((await run(['eval', ...model, '--data', data, '--format', 'json'])).code).toBe(2);
  });
});
