/**
 * Trains the small routed model the browser page ships with (web/models/routed-demo/), on the demo base:
 * four LoRA experts of rank 4 on attn.q, attn.v and mlp.down, one top-2 router per layer deciding per token,
 * trained on the demo's four tasks (reverse, rotate, sort, sort descending) with the library's Trainer.
 *
 *   node --import tsx scripts/make-web-routed-model.ts             # writes web/models/routed-demo/
 *   node --import tsx scripts/make-web-routed-model.ts OUT_DIR     # writes elsewhere
 *
 * Seeded and on one wasm thread, so a rerun gives the same experts (up to float rounding). The directory is
 * saved with saveRoutedModel and copied with its links followed, so it is a plain directory a static server
 * can serve.
 */
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { builtinRouters } from '../routers/index.js';
import { selectBackend } from '../src/backend.js';
import { loadBaseModel } from '../src/base/checkpoints/load-model.js';
import { demoBatch, demoModelDir } from '../src/demo/run-demo.js';
import { taskExamples } from '../src/demo/tasks.js';
import { saveRoutedModel } from '../src/io/routed-model-dir.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import { loadTokenizer } from '../src/tokenizers/load-tokenizer.js';
import { Trainer } from '../src/train/trainer.js';

const STEPS = 300;
const BATCH = 32;
const SEED = 0;
export const WEB_ROUTED_SPEC = {
  seed: SEED,
  adapters: ['e0', 'e1', 'e2', 'e3'].map((name) => ({
    kind: 'lora',
    name,
    r: 4,
    alpha: 16,
    targets: { sites: ['attn.q', 'attn.v', 'mlp.down'] },
  })),
  composition: {
    kind: 'route',
    experts: ['e0', 'e1', 'e2', 'e3'],
    router: { kind: 'top-k', k: 2 },
    granularity: 'token',
    placement: 'layer',
    aux: { balance: 0.01 },
  },
};

async function main(): Promise<void> {
  const out = resolve(process.argv[2] ?? join(import.meta.dirname, '..', 'web', 'models', 'routed-demo'));
  await selectBackend({ preference: 'wasm', threads: 1 });
  const { model: base } = await loadBaseModel(demoModelDir());
  const tokenizer = await loadTokenizer(demoModelDir());
  const model = AdaptedModel.create(base, WEB_ROUTED_SPEC, { routers: builtinRouters() });
  const trainer = new Trainer(model, {
    optimizer: { lr: 3e-3, routerLr: 3e-3 },
    schedule: { warmupSteps: 10, totalSteps: STEPS },
    maxGradNorm: 1,
  });
  const examples = taskExamples((STEPS * BATCH) / 4, SEED);
  for (let step = 0; step < STEPS; step++) {
    const { ids, mask, lossMask } = demoBatch(examples.slice(step * BATCH, (step + 1) * BATCH), tokenizer);
    const report = trainer.step({ ids, mask, lossMask });
    if (step % 20 === 0 || step === STEPS - 1) process.stderr.write(`step ${step + 1}/${STEPS} loss ${report.taskLoss.toFixed(3)}\n`);
  }
  trainer.dispose();
  const tmp = await mkdtemp(join(tmpdir(), 'routed-peft-web-model-'));
  try {
    await saveRoutedModel(join(tmp, 'model'), model);
    await rm(out, { recursive: true, force: true });
    await cp(join(tmp, 'model'), out, { recursive: true, dereference: true });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  model.dispose();
  base.dispose();
  process.stderr.write(`wrote ${out}\n`);
}

await main();
