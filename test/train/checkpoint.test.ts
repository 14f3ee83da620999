// Training checkpoints: save → load restores variables, optimizer moments, counters and the head exactly;
// a run stopped at step 8 and resumed to 16 has the same loss curve as an uninterrupted 16-step run (cpu);
// a save SIGKILLed part-way leaves the previous checkpoint complete and loadable.
import { spawn } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import type { Transformer } from '../../src/base/transformer.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import type { Tokenizer } from '../../src/tokenizers/tokenizer.js';
import { CheckpointError } from '../../src/errors.js';
import {
  HEAD_FILE,
  OPTIMIZER_FILE,
  TRAINING_STATE_FILE,
  VARIABLES_FILE,
  hasCheckpoint,
  loadCheckpoint,
  readCheckpoint,
  resumeTrainer,
  saveCheckpoint,
} from '../../src/train/checkpoint.js';
import { parseJsonlDataset } from '../../src/train/dataset.js';
import { trainFromDataset, type TrainFromDatasetOptions } from '../../src/train/train-loop.js';
import { Trainer } from '../../src/train/trainer.js';
import { CHILD_SPEC, childBatch, childLoopState } from '../fixtures/checkpoint-child-data.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const routers = builtinRouters();
const childScript = fileURLToPath(new URL('../fixtures/checkpoint-save-child.ts', import.meta.url));
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

/** Characters → ids 3..29 of the tiny llama's 32-token vocabulary (1 BOS, 2 EOS). */
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz ';
const charTokenizer: Tokenizer = {
  kind: 'llama2c',
  vocabSize: 32,
  bosId: 1,
  eosId: 2,
  encode: (text, options = {}) => [
    ...(options.addBos === true ? [1] : []),
    ...[...text].map((c) => 3 + Math.max(0, ALPHABET.indexOf(c))),
    ...(options.addEos === true ? [2] : []),
  ],
  decode: (ids) =>
    ids
      .filter((id) => id >= 3)
      .map((id) => ALPHABET[id - 3] ?? '?')
      .join(''),
  tokenText: (id) => ALPHABET[id - 3] ?? `<${id}>`,
};

const jsonl = [
  { prompt: 'add ab', completion: ' c', task: 'add' },
  { prompt: 'add bc', completion: ' d', task: 'add' },
  { prompt: 'add cd', completion: ' e', task: 'add' },
  { prompt: 'add de', completion: ' f', task: 'add' },
  { prompt: 'add ef', completion: ' g', task: 'add' },
  { prompt: 'rev abc', completion: ' cba', task: 'rev' },
  { prompt: 'rev bcd', completion: ' dcb', task: 'rev' },
  { prompt: 'rev cde', completion: ' edc', task: 'rev' },
  { prompt: 'rev def', completion: ' fed', task: 'rev' },
  { prompt: 'rev efg', completion: ' gfe', task: 'rev' },
  { text: 'the cat sat on the mat', task: 'add' },
  { text: 'a dog ran in the park', task: 'rev' },
]
  .map((line) => JSON.stringify(line))
  .join('\n');
const dataset = parseJsonlDataset(jsonl, 'tiny.jsonl');

const spec = {
  seed: 7,
  adapters: [0, 1, 2, 3].map((i) => ({ kind: 'lora', name: `e${i}`, r: 2, alpha: 4, targets: { sites: ['attn.q', 'attn.v', 'mlp.down'] } })),
  composition: { kind: 'route', experts: ['e0', 'e1', 'e2', 'e3'], router: { kind: 'top-k', k: 2 }, aux: { balance: 0.01 } },
};

function snapshot(variables: ReadonlyMap<string, tf.Variable>): Map<string, number[]> {
  return new Map([...variables].map(([name, v]) => [name, Array.from(v.dataSync())]));
}

describe('checkpoint save / load round trip', () => {
  let base: Transformer;
  let dir: string;
  beforeAll(async () => {
    base = tinyLlama();
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-ckpt-'));
  });
  afterAll(async () => {
    base.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  test('variables, AdamW moments and step counts, trainer counters: restored exactly; the directory is a routed model', async () => {
    const model = AdaptedModel.create(base, CHILD_SPEC, { routers });
    const trainer = new Trainer(model, { optimizer: { lr: 1e-2, routerLr: 3e-2 }, schedule: { warmupSteps: 2, totalSteps: 10 } });
    for (let i = 0; i < 3; i++) trainer.step(childBatch);
    const out = join(dir, 'ckpt');
    const saved = await saveCheckpoint(out, { model, trainer, state: childLoopState(3) });
    expect(saved.step).toBe(3);
    const files = (await readdir(out)).sort();
    expect(files).toEqual(expect.arrayContaining(['routed-peft.json', 'routers.safetensors', 'adapters', TRAINING_STATE_FILE, OPTIMIZER_FILE, VARIABLES_FILE]));
    expect(files).not.toContain(HEAD_FILE);
    expect(hasCheckpoint(out)).toBe(true);

    const loaded = await loadCheckpoint(out, base, { routers });
    const resumed = resumeTrainer(loaded.model, loaded);
    try {
      expect(snapshot(loaded.model.namedVariables())).toEqual(snapshot(model.namedVariables()));
      const before = trainer.optimizer.getState();
      const after = resumed.optimizer.getState();
      expect(after.step).toBe(before.step);
      expect(after.paramSteps).toEqual(before.paramSteps);
      expect([...after.tensors.keys()].sort()).toEqual([...before.tensors.keys()].sort());
      for (const [name, t] of before.tensors) expect(Array.from(after.tensors.get(name)?.values ?? [])).toEqual(Array.from(t.values));
      const { ms: _a, ...progressBefore } = trainer.progress();
      const { ms: _b, ...progressAfter } = resumed.progress();
      expect(progressAfter).toEqual(progressBefore);
      expect(resumed.lrAt(3)).toEqual(trainer.lrAt(3));
      // The next step is identical in both.
      const a = trainer.step(childBatch);
      const b = resumed.step(childBatch);
      expect(b.step).toBe(4);
      expect(b.loss).toBe(a.loss);
      expect(b.lr).toEqual(a.lr);
      expect(snapshot(loaded.model.namedVariables())).toEqual(snapshot(model.namedVariables()));
    } finally {
      resumed.dispose();
      loaded.model.dispose();
      trainer.dispose();
      model.dispose();
    }
  });

  test('a classification head is saved to head.safetensors and restored with its moments', async () => {
    const model = AdaptedModel.create(base, CHILD_SPEC, { routers });
    const config = { objective: { kind: 'classification', classes: 3 }, optimizer: { lr: 1e-2 }, seed: 4 };
    const trainer = new Trainer(model, config);
    const batch = { ...childBatch, labels: [0, 2] };
    trainer.step(batch);
    trainer.step(batch);
    const out = join(dir, 'head');
    await saveCheckpoint(out, { model, trainer, state: childLoopState(2) });
    expect(await readdir(out)).toContain(HEAD_FILE);
    const loaded = await loadCheckpoint(out, base, { routers });
    const resumed = resumeTrainer(loaded.model, loaded);
    try {
      expect(resumed.config.objective).toEqual({ kind: 'classification', classes: 3 });
      expect(snapshot(resumed.namedVariables())).toEqual(snapshot(trainer.namedVariables()));
      expect(resumed.step(batch).loss).toBe(trainer.step(batch).loss);
    } finally {
      resumed.dispose();
      loaded.model.dispose();
      trainer.dispose();
      model.dispose();
    }
  });

  test('missing checkpoint → CheckpointError; an old-style swap interrupted between its renames falls back to the .old sibling', async () => {
    await expect(readCheckpoint(join(dir, 'nothing-here'))).rejects.toThrow(CheckpointError);
    const model = AdaptedModel.create(base, CHILD_SPEC, { routers });
    const trainer = new Trainer(model, {});
    trainer.step(childBatch);
    const out = join(dir, 'swap');
    await saveCheckpoint(out, { model, trainer, state: childLoopState(1) });
    trainer.dispose();
    model.dispose();
    // An old-style (plain directory) checkpoint, as if killed after renaming it away and before renaming the new one in.
    const backup = join(dirname(out), `.${basename(out)}.old-99999-abcdef`);
    const version = realpathSync(out);
    await rm(out);
    await rename(version, backup);
    expect(hasCheckpoint(out)).toBe(true);
    const data = await readCheckpoint(out);
    expect(data.dir).toBe(backup);
    expect(data.state.step).toBe(1);
    expect(data.warnings.join(' ')).toMatch(/interrupted save/);
  });
});

describe('resume equals an uninterrupted run (cpu backend)', () => {
  let previousBackend: string;
  let base: Transformer;
  let dir: string;
  beforeAll(async () => {
    previousBackend = tf.getBackend();
    await tf.setBackend('cpu');
    base = tinyLlama();
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-resume-'));
  });
  afterAll(async () => {
    base.dispose();
    await rm(dir, { recursive: true, force: true });
    await tf.setBackend(previousBackend);
  });

  const common = (model: AdaptedModel): TrainFromDatasetOptions => ({
    model,
    tokenizer: charTokenizer,
    dataset,
    trainer: { optimizer: { lr: 2e-2, routerLr: 5e-2 }, schedule: { warmupSteps: 3, totalSteps: 16, minLrRatio: 0.2 } },
    steps: 16,
    batchSize: 4,
    seed: 11,
    maxLength: 16,
    validation: { every: 4, fraction: 0.2 },
  });

  test('stopped at step 8 (mid-epoch) and resumed to 16: the same losses, validation and final weights', async () => {
    const tensorsAtStart = tf.memory().numTensors;
    const fresh = AdaptedModel.create(base, spec, { routers });
    const full = await trainFromDataset(common(fresh));
    const finalFull = snapshot(fresh.namedVariables());
    fresh.dispose();
    expect(full.history).toHaveLength(16);
    expect(full.summary.steps).toBe(16);
    expect(full.validation.map((v) => v.step)).toEqual([4, 8, 12, 16]);
    expect(tf.memory().numTensors).toBe(tensorsAtStart);

    const out = join(dir, 'run');
    const first = AdaptedModel.create(base, spec, { routers });
    const checkpoints: number[] = [];
    const half = await trainFromDataset({ ...common(first), steps: 8, checkpointDir: out, checkpointEvery: 3, onCheckpoint: (c) => checkpoints.push(c.step) });
    first.dispose();
    expect(checkpoints).toEqual([3, 6, 8]);
    expect(half.history).toHaveLength(8);
    // 10 training examples (2 held out) in batches of 4, 4, 2: step 8 stops inside epoch 2.
    const state = (await readCheckpoint(out)).state;
    expect(state.step).toBe(8);
    expect(state.data).toMatchObject({ epoch: 2, batch: 2, examples: 10 });
    expect(state.history).toHaveLength(8);

    const loaded = await loadCheckpoint(out, base, { routers });
    const resumedSteps: number[] = [];
    const resumed = await trainFromDataset({ ...common(loaded.model), resumeFrom: loaded, checkpointDir: out, onStep: (r) => resumedSteps.push(r.step) });
    expect(resumed.startStep).toBe(8);
    expect(resumedSteps).toEqual([9, 10, 11, 12, 13, 14, 15, 16]);
    expect(resumed.history.map((h) => h.loss)).toEqual(full.history.map((h) => h.loss));
    expect(resumed.history.map((h) => h.lr)).toEqual(full.history.map((h) => h.lr));
    expect(resumed.validation).toEqual(full.validation);
    const finalResumed = snapshot(loaded.model.namedVariables());
    for (const [name, values] of finalFull) expect(finalResumed.get(name)).toEqual(values);
    loaded.model.dispose();
    expect((await readCheckpoint(out)).state.step).toBe(16);

    // Resuming on different data is refused.
    const again = await loadCheckpoint(out, base, { routers });
    try {
      const other = parseJsonlDataset(jsonl.replace('the cat', 'the bat'), 'other.jsonl');
      await expect(trainFromDataset({ ...common(again.model), dataset: other, steps: 20, resumeFrom: again })).rejects.toThrow(/cannot resume.*data/);
    } finally {
      again.model.dispose();
    }
    expect(tf.memory().numTensors).toBe(tensorsAtStart);
  });
});

describe('a save killed part-way', () => {
  let base: Transformer;
  let dir: string;
  beforeAll(async () => {
    base = tinyLlama();
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-kill-'));
  });
  afterAll(async () => {
    base.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  test('SIGKILL while the temporary directory is filled: the previous checkpoint is intact and loads', async () => {
    const out = join(dir, 'ckpt');
    const model = AdaptedModel.create(base, CHILD_SPEC, { routers });
    const trainer = new Trainer(model, { optimizer: { lr: 1e-2 } });
    trainer.step(childBatch);
    await saveCheckpoint(out, { model, trainer, state: childLoopState(1) });
    const listing = async (d: string): Promise<string[]> => (await readdir(d, { recursive: true })).map(String).sort();
    const filesBefore = await listing(out);
    const stateBefore = await readFile(join(out, TRAINING_STATE_FILE), 'utf8');
    const variablesBefore = await readFile(join(out, VARIABLES_FILE));

    const marker = join(dir, 'marker');
    const child = spawn(process.execPath, ['--import', 'tsx', childScript, out, marker], { cwd: repoRoot, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.on('exit', (code, signal) => resolve(signal ?? code)));
    const deadline = Date.now() + 45_000;
    while (!existsSync(marker)) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the child never reached the save hook: ${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');

    // The half-written save sits in a hidden sibling; the checkpoint itself is byte-identical.
    const siblings = (await readdir(dir)).filter((name) => name.startsWith(`.${basename(out)}.v-`) && name.includes(`-${child.pid}-`));
    expect(siblings).toHaveLength(1);
    expect(await readdir(join(dir, siblings[0] as string))).toContain(OPTIMIZER_FILE);
    expect(await readdir(join(dir, siblings[0] as string))).not.toContain('routed-peft.json');
    expect(await listing(out)).toEqual(filesBefore);
    expect(await readFile(join(out, TRAINING_STATE_FILE), 'utf8')).toBe(stateBefore);
    expect((await readFile(join(out, VARIABLES_FILE))).equals(variablesBefore)).toBe(true);

    const loaded = await loadCheckpoint(out, base, { routers });
    try {
      expect(loaded.state.step).toBe(1);
      expect(loaded.warnings).toEqual([]);
      expect(snapshot(loaded.model.namedVariables())).toEqual(snapshot(model.namedVariables()));
    } finally {
      loaded.model.dispose();
    }

    // The next save removes the dead process's version; only the current version remains beside the link.
    trainer.step(childBatch);
    await saveCheckpoint(out, { model, trainer, state: childLoopState(2) });
    expect((await readdir(dir)).filter((name) => name.startsWith(`.${basename(out)}.`))).toEqual([basename(realpathSync(out))]);
    expect((await readCheckpoint(out)).state.step).toBe(2);
    trainer.dispose();
    model.dispose();
  });
});
