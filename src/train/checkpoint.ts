/**
 * Training checkpoints. A checkpoint is a routed-model directory (io/routed-model-dir.ts: loadable by
 * `--routed DIR` as is) plus what training needs to continue exactly where it stopped:
 *
 *   training-state.json       step, data position (epoch, batch in the epoch's order, seed), trainer config
 *                             (schedule included), skipped counts, random state, loss history — plain JSON
 *   variables.safetensors     every trainable model variable by stable name, exactly (the PEFT files under
 *                             adapters/ may hold a LoRA in another factorisation, e.g. gpt2's fused c_attn)
 *   optimizer.safetensors     AdamW moments `<name>/m`, `<name>/v` by variable name (head included)
 *   head.safetensors          the classification head, when the objective has one
 *   routed-peft.json          the manifest, written LAST
 *
 * Crash safety: everything is written into a new version directory beside the current one, every file is
 * fsynced, and only then is the version swapped in by renaming a symbolic link over `DIR`
 * (formats/versioned-dir.ts) — one atomic rename, so there is no moment at which `DIR` holds no complete
 * checkpoint, for this module's readers or for loadRoutedModel / inspect / eval / serving. A save killed at
 * any point leaves the previous checkpoint (or the new one) loadable; what a killed save leaves behind (its
 * hidden `.<name>.v-*` version, temporaries) is removed by the next save once its process is gone.
 *
 * Random state: the data order is a function of (seed, epoch) only (train-loop.ts), so `data.seed` and
 * `data.epoch` are the shuffle's state. Routers that draw random numbers keep their own stream; a router
 * exposing `getRandomState()` / `setRandomState(n)` has it saved and restored (by route and router index).
 * tf.dropout is unseeded in tfjs, so runs with adapter dropout > 0 resume statistically, not bit for bit.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import type { Transformer } from '../base/transformer.js';
import { parseConfig } from '../config/parse.js';
import { CheckpointError, formatShape } from '../errors.js';
import { writeFileAtomic } from '../formats/atomic-write.js';
import { assertFiniteTensor, type FiniteOptions } from '../formats/finite.js';
import { readHostTensors } from '../formats/host-tensors.js';
import { replaceDirectoryVersioned, resolveVersionedDirectory, type SaveStep } from '../formats/versioned-dir.js';
import { readJsonFile } from '../base/checkpoints/hf-model-dir.js';
import { MANIFEST_FILE, loadRoutedModel, readRoutedModelManifest, writeRoutedModelContent, type RoutedModelManifest } from '../io/routed-model-dir.js';
import { decodeFloat32, readSafetensorsFile, writeSafetensorsFile, type TensorToWrite } from '../formats/safetensors.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import { AdaptedModel } from '../model/adapted-model.js';
import type { AdamWState, HostStateTensor } from './adamw.js';
import { ScheduleConfig } from './schedule.js';
import { Trainer, type TrainerOptions, type TrainerProgress } from './trainer.js';

export const TRAINING_STATE_FILE = 'training-state.json';
export const VARIABLES_FILE = 'variables.safetensors';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
export const HEAD_FILE = 'head.safetensors';

// ---------------------------------------------------------------------------------------------------------
// training-state.json

const count = z.number().int().min(0);
const maybeNumber = z.number().nullable();

/** One optimizer step of the loss history (non-finite losses are stored as null). */
export const StepRecord = z
  .object({
    step: count,
    epoch: count,
    loss: maybeNumber,
    taskLoss: maybeNumber,
    auxLoss: maybeNumber,
    /** KL to the base on the step's retention rows (absent: the run has no retention data). */
    retentionLoss: maybeNumber.optional(),
    lr: z.object({ expert: z.number(), router: z.number() }).strict(),
    gradNorm: maybeNumber,
    skipped: z.boolean(),
    /** Real tokens in the step's micro-batches. */
    tokens: count,
  })
  .strict();
export type StepRecord = z.infer<typeof StepRecord>;

/** One evaluation of the validation split. */
export const ValidationRecord = z
  .object({
    step: count,
    loss: maybeNumber,
    perplexity: maybeNumber,
    tasks: z.record(z.string(), z.object({ loss: maybeNumber, accuracy: maybeNumber, count }).strict()),
  })
  .strict();
export type ValidationRecord = z.infer<typeof ValidationRecord>;

/** Where the data stream stands; the epoch order is a function of (seed, epoch) only. */
export const DataPosition = z
  .object({
    seed: z.number().int(),
    epoch: count,
    /** Index of the next micro-batch in this epoch's order. */
    batch: count,
    batchSize: z.number().int().min(1),
    maxLength: z.number().int().min(2),
    /** Training examples (after any validation split). */
    examples: count,
    /** Hash of the tokenized training examples, so a resume on other data is refused. */
    fingerprint: z.string(),
    /** Task and label names by id of the training data (eval maps its names to the same ids). */
    tasks: z.array(z.string()),
    labels: z.array(z.string()),
    /** Fraction held out for validation (split seeded by `seed`), when the loop split the dataset. */
    validationFraction: z.number().min(0).lt(1).optional(),
    /**
     * The retention data mixed into every micro-batch, when there is some: its size, hash and rows per
     * micro-batch (its order is a function of the seed and the micro-batch count, so no position is stored).
     */
    retention: z
      .object({ examples: count, fingerprint: z.string(), batchSize: z.number().int().min(1) })
      .strict()
      .optional(),
  })
  .strict();
export type DataPosition = z.infer<typeof DataPosition>;

/** What the training loop contributes to a checkpoint (the trainer's part is read from the Trainer). */
export const LoopState = z
  .object({
    data: DataPosition,
    history: z.array(StepRecord),
    validation: z.array(ValidationRecord).default([]),
  })
  .strict();
export type LoopState = z.input<typeof LoopState>;

export const TrainingState = z
  .object({
    format: z.literal('routed-peft-training-state'),
    version: z.literal(1),
    /** Optimizer steps done (applied + skipped). */
    step: count,
    data: DataPosition,
    /** The parsed TrainerConfig the run uses (a resumed Trainer is built from it). */
    trainer: z.record(z.string(), z.unknown()),
    /** trainer.schedule, repeated for readers. */
    schedule: ScheduleConfig,
    progress: z
      .object({
        steps: count,
        appliedSteps: count,
        skippedTotal: count,
        consecutiveBad: count,
        firstLoss: maybeNumber,
        lastLoss: maybeNumber,
        tokens: count,
        ms: z.number().min(0),
      })
      .strict(),
    optimizer: z.object({ step: count, paramSteps: z.record(z.string(), count) }).strict(),
    /** Random streams of routers that expose them, by `route<i>/<j>` (route index, router index). */
    random: z.object({ routers: z.record(z.string(), z.number()) }).strict(),
    history: z.array(StepRecord),
    validation: z.array(ValidationRecord),
    savedAt: z.string(),
  })
  .strict();
export type TrainingState = z.infer<typeof TrainingState>;

// ---------------------------------------------------------------------------------------------------------
// Router random state (optional, duck-typed: the Router contract does not require it)

interface RandomStateful {
  getRandomState(): number;
  setRandomState(state: number): void;
}

function isRandomStateful(router: object): router is RandomStateful {
  const r = router as Partial<RandomStateful>;
  return typeof r.getRandomState === 'function' && typeof r.setRandomState === 'function';
}

function statefulRouters(model: Pick<AdaptedModel, 'routes'>): Map<string, RandomStateful> {
  const out = new Map<string, RandomStateful>();
  for (const route of model.routes) {
    route.routerList().forEach((router, j) => {
      if (isRandomStateful(router)) out.set(`route${route.index}/${j}`, router);
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Saving

export interface SaveCheckpointInput {
  readonly model: AdaptedModel;
  readonly trainer: Trainer;
  readonly state: LoopState;
}

export interface SaveCheckpointOptions {
  /** Recorded in the manifest as where the base was loaded from. */
  readonly basePath?: string;
  /**
   * Test hook, awaited after each file is written into the temporary directory (before the swap), with the
   * file's name and the temporary directory. The manifest comes last.
   */
  readonly afterFile?: (file: string, tmpDir: string) => void | Promise<void>;
  /** Test hook, awaited at every step of the save: after each file (`file:<name>`) and each step of the swap. */
  readonly onStep?: SaveStep;
}

function toWrite(values: ReadonlyMap<string, HostStateTensor>): Map<string, TensorToWrite> {
  return new Map([...values].map(([name, t]) => [name, { dtype: 'F32', shape: t.shape, data: t.values } as const]));
}

const finiteOrNull = (x: number | null): number | null => (x === null || !Number.isFinite(x) ? null : x);

/** The full training state (trainer part read from `trainer`). */
export function trainingState(model: AdaptedModel, trainer: Trainer, loop: LoopState): TrainingState {
  const parsedLoop = parseConfig(LoopState, loop, 'loop state');
  const progress: TrainerProgress = trainer.progress();
  const optimizer = trainer.optimizer.counts();
  const random: Record<string, number> = {};
  for (const [key, router] of statefulRouters(model)) random[key] = router.getRandomState();
  return {
    format: 'routed-peft-training-state',
    version: 1,
    step: progress.steps,
    data: parsedLoop.data,
    trainer: JSON.parse(JSON.stringify(trainer.config)) as Record<string, unknown>,
    schedule: trainer.config.schedule,
    progress: { ...progress, firstLoss: finiteOrNull(progress.firstLoss), lastLoss: finiteOrNull(progress.lastLoss) },
    optimizer: { step: optimizer.step, paramSteps: Object.fromEntries(optimizer.paramSteps ?? []) },
    random: { routers: random },
    history: parsedLoop.history,
    validation: parsedLoop.validation,
    savedAt: new Date().toISOString(),
  };
}

/**
 * Saves a checkpoint into `dir` (created, or replaced atomically: readers see the previous or the new
 * checkpoint at every moment). The model must be the trainer's model. What killed saves left behind (whose
 * process is gone) and the previous version are removed once the new one is in place.
 */
export async function saveCheckpoint(dir: string, input: SaveCheckpointInput, options: SaveCheckpointOptions = {}): Promise<TrainingState> {
  const { model, trainer } = input;
  if (trainer.model !== model)
    throw new CheckpointError('saveCheckpoint: the trainer trains another model', { hint: 'Pass the model the Trainer was created with' });
  // Copy everything to host memory first, so the files describe one instant of training.
  const state = trainingState(model, trainer, input.state);
  const headNames = new Set([...(trainer.head?.namedVariables().keys() ?? [])]);
  const [variables, head, moments] = await Promise.all([
    readHostTensors(model.namedVariables()),
    readHostTensors([...trainer.namedVariables()].filter(([name]) => headNames.has(name))),
    trainer.optimizer.readMoments(),
  ]);
  const hook = options.afterFile;
  const onStep = options.onStep;
  await replaceDirectoryVersioned(
    dir,
    async (tmp) => {
      const write = async (file: string, task: Promise<void>): Promise<void> => {
        await task;
        await hook?.(file, tmp);
        await onStep?.(`file:${file}`);
      };
      await write(VARIABLES_FILE, writeSafetensorsFile(join(tmp, VARIABLES_FILE), toWrite(variables), { format: 'routed-peft' }));
      await write(
        OPTIMIZER_FILE,
        writeSafetensorsFile(join(tmp, OPTIMIZER_FILE), toWrite(moments), { format: 'routed-peft', step: String(state.optimizer.step) }),
      );
      if (head.size > 0) await write(HEAD_FILE, writeSafetensorsFile(join(tmp, HEAD_FILE), toWrite(head), { format: 'routed-peft' }));
      await write(TRAINING_STATE_FILE, writeFileAtomic(join(tmp, TRAINING_STATE_FILE), `${JSON.stringify(state, null, 2)}\n`));
      // Adapters, routers, then the manifest last.
      await write(
        MANIFEST_FILE,
        writeRoutedModelContent(tmp, model, options.basePath === undefined ? {} : { basePath: options.basePath }).then(() => undefined),
      );
    },
    { onStep },
  );
  return state;
}

// ---------------------------------------------------------------------------------------------------------
// Loading

/** A checkpoint's content in host memory (no tensors, no model). */
export interface CheckpointData {
  /** The directory actually read (a `.<name>.old-*` sibling after a swap interrupted by a crash). */
  readonly dir: string;
  readonly manifest: RoutedModelManifest;
  readonly state: TrainingState;
  /** Trainable model variables by stable name. */
  readonly variables: ReadonlyMap<string, HostStateTensor>;
  readonly optimizer: AdamWState;
  /** Classification head variables (`head/weight`, `head/bias`), when saved. */
  readonly head: ReadonlyMap<string, HostStateTensor> | undefined;
  readonly warnings: readonly string[];
}

export interface LoadedCheckpoint extends CheckpointData {
  /** The model rebuilt on the base, with the exact saved variables. The caller disposes it. */
  readonly model: AdaptedModel;
}

/** Whether `dir` holds a training checkpoint (routed-model manifest and training state). */
export function hasCheckpoint(dir: string): boolean {
  return locateCheckpoint(dir) !== undefined;
}

/** The directory holding `dir`'s checkpoint: its current version, or the newest complete sibling while `dir` is missing. */
function locateCheckpoint(dir: string): string | undefined {
  const complete = (d: string): boolean => existsSync(join(d, MANIFEST_FILE)) && existsSync(join(d, TRAINING_STATE_FILE));
  const found = resolveVersionedDirectory(dir, complete);
  return complete(found) ? found : undefined;
}

async function readF32File(path: string, finite: FiniteOptions): Promise<Map<string, HostStateTensor>> {
  const file = await readSafetensorsFile(path);
  const out = new Map<string, HostStateTensor>();
  for (const [name, entry] of file.entries) {
    const values = decodeFloat32(entry, { source: path });
    assertFiniteTensor(values, name, path, finite);
    out.set(name, { shape: [...entry.shape], values });
  }
  return out;
}

/** The training state of a checkpoint (or of a routed-model directory saved by training), or undefined. */
export async function readTrainingState(dir: string): Promise<TrainingState | undefined> {
  const found = locateCheckpoint(dir) ?? (existsSync(join(dir, TRAINING_STATE_FILE)) ? dir : undefined);
  if (found === undefined) return undefined;
  const path = join(found, TRAINING_STATE_FILE);
  return parseConfig(TrainingState, await readJsonFile(path, TRAINING_STATE_FILE), path);
}

/** Reads a checkpoint into host memory: manifest, training state, variables, optimizer state, head (all finite unless allowed). */
export async function readCheckpoint(dir: string, options: FiniteOptions = {}): Promise<CheckpointData> {
  const found = locateCheckpoint(dir);
  if (found === undefined) {
    throw new CheckpointError(`no training checkpoint (${MANIFEST_FILE} + ${TRAINING_STATE_FILE})`, {
      path: dir,
      hint: 'Train with a checkpoint directory first (routed-peft train --out DIR), or start without resuming',
    });
  }
  const warnings = existsSync(dir) ? [] : [`${dir} is missing; read the newest complete checkpoint left by an interrupted save in ${found}`];
  const manifest = await readRoutedModelManifest(found);
  const statePath = join(found, TRAINING_STATE_FILE);
  const state = parseConfig(TrainingState, await readJsonFile(statePath, TRAINING_STATE_FILE), statePath);
  const variables = await readF32File(join(found, VARIABLES_FILE), options);
  const tensors = await readF32File(join(found, OPTIMIZER_FILE), options);
  const head = existsSync(join(found, HEAD_FILE)) ? await readF32File(join(found, HEAD_FILE), options) : undefined;
  const optimizer: AdamWState = { step: state.optimizer.step, tensors, paramSteps: new Map(Object.entries(state.optimizer.paramSteps)) };
  return { dir: found, manifest, state, variables, optimizer, head, warnings };
}

/** Assigns saved values to variables by name: every variable present with its shape, nothing extra. */
function assignVariables(variables: ReadonlyMap<string, tf.Variable>, saved: ReadonlyMap<string, HostStateTensor>, where: string): void {
  for (const name of saved.keys()) {
    if (!variables.has(name))
      throw new CheckpointError(`the checkpoint has variable '${name}', which this model lacks`, {
        path: where,
        hint: 'Resume with the spec the checkpoint was trained with',
      });
  }
  for (const [name, v] of variables) {
    const entry = saved.get(name);
    if (entry === undefined)
      throw new CheckpointError(`the checkpoint has no variable '${name}'`, { path: where, hint: 'Resume with the spec the checkpoint was trained with' });
    const same = entry.shape.length === v.shape.length && entry.shape.every((d, i) => d === v.shape[i]);
    if (!same)
      throw new CheckpointError(`variable '${name}' is ${formatShape(entry.shape)} in the checkpoint but ${formatShape(v.shape)} in the model`, {
        path: where,
      });
  }
  for (const [name, v] of variables) {
    const entry = saved.get(name) as HostStateTensor;
    tf.tidy(() => v.assign(tf.tensor(entry.values, v.shape, 'float32')));
  }
}

function sameStructure(model: AdaptedModel, saved: ReadonlyMap<string, HostStateTensor>): boolean {
  const named = model.namedVariables();
  if (named.size !== saved.size) return false;
  for (const [name, v] of named) {
    const entry = saved.get(name);
    if (entry === undefined || entry.shape.length !== v.shape.length || entry.shape.some((d, i) => d !== v.shape[i])) return false;
  }
  return true;
}

/**
 * Loads a checkpoint onto `base`: the routed-model directory (validated, base checked) with the exact saved
 * variables assigned, plus the training state for a Trainer (see resumeTrainer).
 */
export async function loadCheckpoint(
  dir: string,
  base: Transformer,
  options: { readonly routers?: RouterRegistry | undefined } & FiniteOptions = {},
): Promise<LoadedCheckpoint> {
  const data = await readCheckpoint(dir, options);
  const loaded = await loadRoutedModel(data.dir, base, options);
  let model = loaded.model;
  try {
    if (!sameStructure(model, data.variables)) {
      // The PEFT files factor some LoRAs differently (gpt2 c_attn); rebuild the spec's exact variables.
      model.dispose();
      model = AdaptedModel.create(base, data.manifest.spec, options.routers === undefined ? {} : { routers: options.routers });
    }
    assignVariables(model.namedVariables(), data.variables, join(data.dir, VARIABLES_FILE));
  } catch (error) {
    model.dispose();
    throw error;
  }
  return { ...data, warnings: [...data.warnings, ...loaded.warnings], model };
}

/**
 * Restores a Trainer to a checkpoint: model and head variables, AdamW moments and step counts, the trainer's
 * counters (schedules continue at the saved step) and router random streams. Build the Trainer with
 * `checkpoint.state.trainer` as its config (resumeTrainer does both). Call before the first step().
 */
export function restoreTrainer(trainer: Trainer, checkpoint: CheckpointData): void {
  const headNames = new Set([...(trainer.head?.namedVariables().keys() ?? [])]);
  const named = trainer.namedVariables();
  const modelVars = new Map([...named].filter(([name]) => !headNames.has(name)));
  assignVariables(modelVars, checkpoint.variables, join(checkpoint.dir, VARIABLES_FILE));
  if (headNames.size > 0 || checkpoint.head !== undefined) {
    const headVars = new Map([...named].filter(([name]) => headNames.has(name)));
    assignVariables(headVars, checkpoint.head ?? new Map(), join(checkpoint.dir, HEAD_FILE));
  }
  trainer.optimizer.setState(checkpoint.optimizer);
  trainer.restoreProgress(checkpoint.state.progress);
  const routers = statefulRouters(trainer.model);
  for (const [key, value] of Object.entries(checkpoint.state.random.routers)) {
    const router = routers.get(key);
    if (router === undefined)
      throw new CheckpointError(`the checkpoint has a random state for router ${key}, which this model lacks`, {
        path: join(checkpoint.dir, TRAINING_STATE_FILE),
      });
    router.setRandomState(value);
  }
}

/** A Trainer for `model` built from the checkpoint's trainer config and restored to it. */
export function resumeTrainer(model: AdaptedModel, checkpoint: CheckpointData, options: TrainerOptions = {}): Trainer {
  const trainer = new Trainer(model, checkpoint.state.trainer, options);
  try {
    restoreTrainer(trainer, checkpoint);
  } catch (error) {
    trainer.dispose();
    throw error;
  }
  return trainer;
}
