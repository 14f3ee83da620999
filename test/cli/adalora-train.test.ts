// `routed-peft train` with an AdaLoRA adapter on stories260K + tok512: the summary reports the final ranks
// per layer and site at the target total, and the checkpoint holds adalora-ranks.json and a PEFT LoRA export
// that the PEFT reader loads with those ranks.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { loadBaseModel } from '../../src/base/checkpoints/load-model.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { readPeftAdapter } from '../../src/io/peft-adapter.js';
import { SHARED_MODELS_SKIP_NOTE, hasSharedModels, stories260kPath, tok512Path } from '../helpers/tiny-models.js';

const lines = [
  { prompt: 'Once upon a time, there was a', completion: ' little girl.' },
  { prompt: 'The cat sat on the', completion: ' mat.' },
  { prompt: 'Lily liked to play with her', completion: ' ball.' },
  { prompt: 'Tom went to the', completion: ' park.' },
];

describe.skipIf(!hasSharedModels)(`train an AdaLoRA adapter through the CLI${SHARED_MODELS_SKIP_NOTE}`, () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-adalora-cli-'));
    await writeFile(join(dir, 'data.jsonl'), `${lines.map((l) => JSON.stringify(l)).join('\n')}\n`);
    const spec = {
      adapters: [{ kind: 'adalora', name: 'ada', initR: 4, targetR: 2, alpha: 8, tinit: 1, tfinal: 1, targets: { sites: ['attn.q', 'attn.v'] } }],
    };
    await writeFile(join(dir, 'spec.json'), JSON.stringify(spec));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('the summary and the checkpoint carry the final ranks, and the LoRA export loads with them', async () => {
    const out = join(dir, 'run');
    const io = createMemoryIo();
    const argv = ['train', '--model', stories260kPath, '--tokenizer', tok512Path, '--data', join(dir, 'data.jsonl'), '--spec', join(dir, 'spec.json')];
    const code = await main([...argv, '--out', out, '--steps', '6', '--batch-size', '4', '--lr', '1e-2', '--format', 'json'], io, {
      routers: builtinRouters(),
    });
    expect(io.err).toBe('');
    expect(code).toBe(0);
    const summary = JSON.parse(io.out.trim().split('\n').at(-1) as string) as {
      adalora: { totalRank: number; targetTotalRank: number; modules: { rank: number }[] }[];
    };
    const report = summary.adalora[0];
    // stories260K: 5 layers × (q, v) = 10 modules; target 2 each.
    expect(report?.targetTotalRank).toBe(20);
    expect(report?.totalRank).toBe(20);
    expect(report?.modules).toHaveLength(10);
    const saved = JSON.parse(await readFile(join(out, 'adapters', 'ada', 'adalora-ranks.json'), 'utf8')) as {
      totalRank: number;
      lora: string;
      modules: unknown;
    };
    expect(saved).toMatchObject({ totalRank: 20, lora: 'lora', modules: report?.modules });
    const { model: base } = await loadBaseModel(stories260kPath);
    try {
      const peft = await readPeftAdapter(join(out, 'adapters', 'ada', 'lora'), base);
      try {
        const ranks = [...peft.instance.modules.values()].map((m) => (m.variables()[0]?.shape[0] as number) ?? 0);
        expect(ranks.reduce((a, b) => a + b, 0)).toBe(20);
      } finally {
        peft.instance.dispose();
      }
    } finally {
      base.dispose();
    }
  });
});
