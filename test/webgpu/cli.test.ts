// The issue's Show command in-process: `ROUTED_PEFT_BACKEND=webgpu routed-peft generate --model stories260K
// --tokenizer tok512 --routed DIR --temperature 0` prints the same ids as wasm (a routed model of 4 LoRA
// experts with different ranks, top-2 + null expert, on every linear site, created with `init`); and
// `routed-peft eval` there gives wasm's loss, exact-match accuracy and routing statistics (its trace and its
// greedy completions are read with await data()); `routed-peft train --out` there gives wasm's step losses,
// expert load and a routed-model directory with wasm's variables (every read asynchronous).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../../routers/index.js';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { BACKEND_ENV_VAR, selectBackend } from '../../src/backend.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { decodeFloat32, readSafetensorsFile } from '../../src/formats/safetensors.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { SHARED_MODELS_SKIP_NOTE, hasSharedModels, stories260kPath, tok512Path } from '../helpers/tiny-models.js';
import { WEBGPU_SKIP_NOTE, hasWebGpu } from '../helpers/webgpu.js';

async function run(backend: string, ...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  vi.stubEnv(BACKEND_ENV_VAR, backend);
  try {
    const io = createMemoryIo();
    const code = await main(argv, io, { routers: builtinRouters() });
    return { code, out: io.out, err: io.err };
  } finally {
    vi.unstubAllEnvs();
  }
}

const SPEC = {
  seed: 3,
  adapters: [4, 2, 8, 4].map((r, i) => ({ kind: 'lora', name: `e${i}`, r, alpha: 8, init: 'random', targets: { sites: 'all-linear' } })),
  composition: { kind: 'route', experts: ['e0', 'e1', 'e2', 'e3'], router: { kind: 'top-k', k: 2 }, nullExpert: true },
};

const EVAL_LINES = [
  { prompt: 'Once upon a time, there was a', completion: ' little girl.', task: 'story' },
  { prompt: 'The cat sat on the', completion: ' mat.', task: 'story' },
  { prompt: 'Q: What color is the sky? A:', completion: ' blue.', task: 'qa' },
  { text: 'The sun was warm and the birds sang in the tree.', task: 'qa' },
];

interface EvalJson {
  loss: number;
  tasks: Record<string, { loss: number; accuracy: number | null; count: number }>;
  routing: { decisions: number; load: { layer: number; site: string; fractions: readonly number[] }[] };
}

describe.skipIf(!hasWebGpu || !hasSharedModels)(`routed-peft generate on webgpu${WEBGPU_SKIP_NOTE}${SHARED_MODELS_SKIP_NOTE}`, () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-webgpu-cli-'));
    await writeFile(join(dir, 'spec.json'), JSON.stringify(SPEC));
    await writeFile(join(dir, 'data.jsonl'), `${EVAL_LINES.map((l) => JSON.stringify(l)).join('\n')}\n`);
    const init = await run(
      'wasm',
      'init',
      '--model',
      stories260kPath,
      '--tokenizer',
      tok512Path,
      '--spec',
      join(dir, 'spec.json'),
      '--out',
      join(dir, 'routed'),
    );
    expect(init.code).toBe(0);
  });
  afterAll(async () => {
    await selectBackend({ preference: 'wasm' });
    await rm(dir, { recursive: true, force: true });
  });

  test('--routed DIR --temperature 0 prints the same ids (and text) as wasm', async () => {
    const argv = [
      'generate',
      '--model',
      stories260kPath,
      '--tokenizer',
      tok512Path,
      '--routed',
      join(dir, 'routed'),
      '--temperature',
      '0',
      '--max-new-tokens',
      '48',
      '--format',
      'json',
    ];
    const wasm = await run('wasm', ...argv);
    expect(wasm.code).toBe(0);
    const webgpu = await run('webgpu', ...argv);
    expect(webgpu.err).not.toMatch(/OffscreenCanvas/);
    expect(webgpu.code).toBe(0);
    expect(tf.getBackend()).toBe('webgpu');
    const [a, b] = [JSON.parse(wasm.out) as { ids: number[]; text: string }, JSON.parse(webgpu.out) as { ids: number[]; text: string }];
    expect(b.ids).toEqual(a.ids);
    expect(b.text).toBe(a.text);
    expect(a.ids.length).toBeGreaterThan(10);
  });

  test('eval --routed DIR --data FILE gives the loss, accuracy and routing statistics of wasm', async () => {
    const argv = [
      'eval',
      '--model',
      stories260kPath,
      '--tokenizer',
      tok512Path,
      '--routed',
      join(dir, 'routed'),
      '--data',
      join(dir, 'data.jsonl'),
      '--max-new-tokens',
      '4',
      '--format',
      'json',
    ];
    const wasm = await run('wasm', ...argv);
    expect(wasm.code).toBe(0);
    const webgpu = await run('webgpu', ...argv);
    expect(webgpu.err).toBe('');
    expect(webgpu.code).toBe(0);
    const [a, b] = [JSON.parse(wasm.out) as EvalJson, JSON.parse(webgpu.out) as EvalJson];
    expect(Math.abs(b.loss - a.loss)).toBeLessThanOrEqual(1e-4 * a.loss);
    for (const [name, task] of Object.entries(a.tasks)) {
      expect(b.tasks[name]?.accuracy).toBe(task.accuracy);
      expect(b.tasks[name]?.count).toBe(task.count);
    }
    expect(a.routing.decisions).toBeGreaterThan(0);
    expect(b.routing.decisions).toBe(a.routing.decisions); // the trace was read on webgpu: one entry per decision and token
    expect(b.routing.load).toEqual(a.routing.load);
  });

  test('train --steps 2 --out DIR (JSON lines with expert load, checkpoint and routed model saved) matches wasm', async () => {
    const train = async (backend: 'wasm' | 'webgpu') => {
      const out = join(dir, `trained-${backend}`);
      const argv = [
        'train',
        '--model',
        stories260kPath,
        '--tokenizer',
        tok512Path,
        '--data',
        join(dir, 'data.jsonl'),
        '--spec',
        join(dir, 'spec.json'),
        '--out',
        out,
        '--steps',
        '2',
        '--batch-size',
        '4',
      ];
      const result = await run(backend, ...argv);
      expect(result.err).toBe('');
      expect(result.code).toBe(0);
      const steps = result.out
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as { type: string; loss?: number; load?: { fractions: number[] }[] })
        .filter((line) => line.type === 'step');
      const variables = await readSafetensorsFile(join(out, 'routers.safetensors'));
      return { steps, routers: variables };
    };
    const a = await train('wasm');
    const b = await train('webgpu');
    expect(b.steps).toHaveLength(2);
    b.steps.forEach((step, i) => {
      const expected = a.steps[i];
      expect(Math.abs((step.loss ?? Number.NaN) - (expected?.loss ?? Number.NaN))).toBeLessThanOrEqual(1e-3 * Math.abs(expected?.loss ?? 1));
      expect(step.load?.length).toBeGreaterThan(0); // the training forward's trace, read after the step
      expect(step.load?.map((l) => l.fractions.length)).toEqual(expected?.load?.map((l) => l.fractions.length));
    });
    expect([...b.routers.entries.keys()]).toEqual([...a.routers.entries.keys()]);
    for (const [name, t] of a.routers.entries) {
      expectClose(decodeFloat32(b.routers.entries.get(name) as typeof t), decodeFloat32(t), { rtol: 1e-3, atol: 1e-5, label: name });
    }
  });
});
