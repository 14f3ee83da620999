// The issue's Show command in-process: `ROUTED_PEFT_BACKEND=webgpu routed-peft generate --model stories260K
// --tokenizer tok512 --routed DIR --temperature 0` prints the same ids as wasm (a routed model of 4 LoRA
// experts with different ranks, top-2 + null expert, on every linear site, created with `init`).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../../routers/index.js';
import { afterAll, beforeAll, describe, expect, test, vi } from 'vitest';
import { BACKEND_ENV_VAR, selectBackend } from '../../src/backend.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
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

describe.skipIf(!hasWebGpu || !hasSharedModels)(`routed-peft generate on webgpu${WEBGPU_SKIP_NOTE}${SHARED_MODELS_SKIP_NOTE}`, () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-webgpu-cli-'));
    await writeFile(join(dir, 'spec.json'), JSON.stringify(SPEC));
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
});
