// Crash consistency of saves (issue 20, "checkpoint swap window"): a child process saves over a directory
// holding a previous save and is SIGKILLed at EVERY step of the save in turn (test/fixtures/crash-save-child.ts;
// the steps are learned from an uninterrupted run). After each kill every reader — loadCheckpoint, hasCheckpoint,
// readTrainingState, loadRoutedModel (what inspect / eval / forward / serving use) — loads the previous or the new
// content, never neither; and after the next save no stale sibling (backup, version, temporary, link) remains.
// Three kinds of save: a training checkpoint, a routed-model directory, and a checkpoint over a directory in the
// old plain layout (converted once, with the readers' fallback covering the moment it is missing).
import { spawn } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import type { Transformer } from '../../src/base/transformer.js';
import { loadRoutedModel, readRoutedModelManifest, saveRoutedModel } from '../../src/io/routed-model-dir.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { hasCheckpoint, loadCheckpoint, readCheckpoint, readTrainingState, saveCheckpoint } from '../../src/train/checkpoint.js';
import { Trainer } from '../../src/train/trainer.js';
import { CHILD_SPEC, childBatch, childLoopState } from '../fixtures/checkpoint-child-data.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const routers = builtinRouters();
const childScript = fileURLToPath(new URL('../fixtures/crash-save-child.ts', import.meta.url));
const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
/** Children run side by side (each is mostly start-up time). */
const CONCURRENCY = 3;
/**
 * Kill points per kind of save. The checkpoint save is killed at every step. The other two share its code up
 * to the swap (a version directory nobody reads yet), so `npm test` kills them at the steps where they differ;
 * HOSTILE_CRASH_ALL=1 kills them at every step too.
 */
const ALL_STEPS = process.env['HOSTILE_CRASH_ALL'] === '1';
const SWAP_STEPS = new Set(['filled', 'link-created', 'old-moved', 'swapped', 'cleaned']);

type Mode = 'checkpoint' | 'routed' | 'legacy-checkpoint';

let base: Transformer;
let root: string;

function runChild(
  dir: string,
  mode: 'checkpoint' | 'routed',
  killAt: number,
): Promise<{ signal: NodeJS.Signals | null; code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', childScript, dir, mode, '4', String(killAt)], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve({ signal, code, out, err }));
  });
}

async function pool<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  const workers = Array.from({ length: Math.min(limit, queue.length) }, async () => {
    for (let item = queue.shift(); item !== undefined; item = queue.shift()) await work(item);
  });
  await Promise.all(workers);
}

const snapshot = (variables: ReadonlyMap<string, tf.Variable>): Record<string, number[]> =>
  Object.fromEntries([...variables].map(([name, v]) => [name, Array.from(v.dataSync())]));

/** The previous save: the tiny routed model after one training step, saved the way `mode` saves. */
async function writePrevious(out: string, mode: Mode): Promise<void> {
  const model = AdaptedModel.create(base, CHILD_SPEC, { routers });
  const trainer = new Trainer(model, { optimizer: { lr: 1e-2 } });
  trainer.step(childBatch);
  if (mode === 'routed') await saveRoutedModel(out, model);
  else await saveCheckpoint(out, { model, trainer, state: childLoopState(1) });
  trainer.dispose();
  model.dispose();
  if (mode === 'legacy-checkpoint') {
    // The layout of older releases: a plain directory.
    const version = realpathSync(out);
    await rm(out);
    await rename(version, out);
  }
}

/** Siblings of `out` other than its current version (what a save may leave behind). */
async function staleSiblings(out: string): Promise<string[]> {
  const current = basename(realpathSync(out));
  return (await readdir(dirname(out))).filter((name) => name.startsWith(`.${basename(out)}.`) && name !== current);
}

async function contentOf(dir: string): Promise<Record<string, number[]>> {
  const { model } = await loadRoutedModel(dir, base, { routers });
  const content = snapshot(model.namedVariables());
  model.dispose();
  return content;
}

beforeAll(async () => {
  base = tinyLlama();
  root = await mkdtemp(join(tmpdir(), 'routed-peft-crash-'));
});
afterAll(async () => {
  base.dispose();
  await rm(root, { recursive: true, force: true });
});

describe('a save killed at every one of its steps leaves the previous or the new content loadable by every reader', () => {
  for (const mode of ['checkpoint', 'routed', 'legacy-checkpoint'] as const) {
    const where = mode === 'checkpoint' || ALL_STEPS ? 'every step' : 'every step of the swap';
    test(`${mode}: SIGKILL at ${where}, then every reader, then the next save leaves no stale sibling`, async () => {
      const childMode = mode === 'routed' ? 'routed' : 'checkpoint';
      // An uninterrupted save names the steps and gives the new content.
      const reference = join(root, mode, 'reference', 'out');
      await mkdir(dirname(reference), { recursive: true });
      await writePrevious(reference, mode);
      const complete = await runChild(reference, childMode, 0);
      expect(complete.code, complete.err).toBe(0);
      const steps = complete.out.trim().split('\n');
      expect(steps).toEqual(expect.arrayContaining(['version-created', 'synced', 'swapped', 'cleaned']));
      if (mode === 'legacy-checkpoint') expect(steps).toContain('old-moved');
      const newContent = await contentOf(reference);

      const previousDir = join(root, mode, 'previous', 'out');
      await mkdir(dirname(previousDir), { recursive: true });
      await writePrevious(previousDir, mode);
      const previousContent = await contentOf(previousDir);
      expect(newContent).not.toEqual(previousContent);

      const outcomes: string[] = [];
      const killPoints = steps.map((step, i) => ({ step, killAt: i + 1 })).filter(({ step }) => mode === 'checkpoint' || ALL_STEPS || SWAP_STEPS.has(step));
      await pool(killPoints, CONCURRENCY, async ({ step, killAt }) => {
        const out = join(root, mode, `kill-${killAt}`, 'out');
        await mkdir(dirname(out), { recursive: true });
        await writePrevious(out, mode);
        const child = await runChild(out, childMode, killAt);
        expect(child.signal, `${step}: ${child.err}`).toBe('SIGKILL');

        // Every reader finds a complete save: the previous or the new one, never neither.
        const loaded = await loadRoutedModel(out, base, { routers });
        const content = snapshot(loaded.model.namedVariables());
        loaded.model.dispose();
        const which =
          JSON.stringify(content) === JSON.stringify(previousContent) ? 'previous' : JSON.stringify(content) === JSON.stringify(newContent) ? 'new' : 'neither';
        expect(which, `killed at ${step}`).not.toBe('neither');
        expect((await readRoutedModelManifest(out)).format).toBe('routed-peft');
        if (childMode === 'checkpoint') {
          expect(hasCheckpoint(out), step).toBe(true);
          const state = await readTrainingState(out);
          expect(state?.step).toBe(which === 'previous' ? 1 : 0);
          const checkpoint = await loadCheckpoint(out, base, { routers });
          expect(checkpoint.state.step).toBe(state?.step);
          checkpoint.model.dispose();
        }
        outcomes.push(`${step}:${which}`);

        // The next save cleans up whatever the killed one left.
        const model = AdaptedModel.create(base, CHILD_SPEC, { routers });
        const trainer = new Trainer(model, {});
        if (childMode === 'checkpoint') await saveCheckpoint(out, { model, trainer, state: childLoopState(3) });
        else await saveRoutedModel(out, model);
        trainer.dispose();
        model.dispose();
        expect(await staleSiblings(out), `after a kill at ${step}`).toEqual([]);
        if (childMode === 'checkpoint') expect((await readCheckpoint(out)).state.data.epoch).toBe(3);
      });
      // Killed before the swap: the previous content; from the swap on: the new one. In between (only when an
      // old-style directory was just moved aside) readers fall back to the newest complete version: the new one.
      const swapped = steps.indexOf('swapped');
      for (const [i, step] of steps.entries()) {
        if (!killPoints.some((k) => k.step === step)) continue;
        const expected = step === 'old-moved' ? 'new' : i < swapped ? 'previous' : 'new';
        expect(outcomes).toContain(`${step}:${expected}`);
      }
    });
  }
});
