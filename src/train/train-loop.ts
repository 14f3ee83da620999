/**
 * The training loop over a dataset: tokenise once, then epochs of seeded-shuffled batches until a TOTAL
 * number of optimizer steps, with optional validation and checkpoints, and exact resumption.
 *
 * Determinism: the batch order of epoch e is makeBatches(…, seed = epochShuffleSeed(seed, e)) — a function of
 * the run's seed and e only — so the data position is just (epoch, index of the next micro-batch). A
 * checkpoint stores that position with the model, the optimizer and the trainer's counters
 * (checkpoint.ts); resuming rebuilds the same epoch order, skips to the position and restores the rest,
 * so a run stopped at step 8 and resumed to 16 produces the same losses as an uninterrupted 16-step run
 * (same backend; without adapter dropout, which tfjs cannot seed). Validation forwards run with training
 * false and consume no router randomness, so evaluating does not change the training trajectory.
 */
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import type { AdaptedModel } from '../model/adapted-model.js';
import { MultimodalModel } from '../model/multimodal-model.js';
import type { RoutingTraceEntry } from '../routing/trace.js';
import { ConfigError } from '../errors.js';
import { makeBatches, splitTrainValidation, tokenizeExamples, type TokenizedExample, type TrainBatch } from './batches.js';
import { readCheckpoint, resumeTrainer, saveCheckpoint, type CheckpointData, type DataPosition, type StepRecord, type ValidationRecord } from './checkpoint.js';
import { DatasetError } from './dataset-errors.js';
import type { Dataset, Example } from './dataset.js';
import { TrainingError } from './errors.js';
import { evaluateDataset, imageLoader, type EvaluationResult } from './evaluate.js';
import { hasImages } from './example-images.js';
import { expertLoad, type ExpertLoad } from './metrics.js';
import { Trainer, type StepReport, type TrainerConfigInput, type TrainerOptions, type TrainSummary } from './trainer.js';

export interface ValidationOptions {
  /** Evaluate every this many optimizer steps (and after the last one). */
  readonly every: number;
  /** Hold out this fraction of the dataset (seeded split), unless `examples` are given. */
  readonly fraction?: number;
  /** Explicit validation examples (task ids must follow the training dataset's table). */
  readonly examples?: readonly Example[];
  /** Exact-match generation budget (default 0: loss only, which is cheap). */
  readonly maxNewTokens?: number;
}

/** A completed optimizer step as the loop reports it. */
export interface LoopStepReport extends StepRecord {
  readonly tokensPerSecond: number;
  /** Wall time of the step's micro-batches. */
  readonly ms: number;
  readonly skippedTotal: number;
  /** Expert load per (layer, point) on the step's last micro-batch, when `routingLoadEvery` asks for it. */
  readonly load?: ExpertLoad[];
}

export interface TrainFromDatasetOptions {
  /**
   * The model to train (fresh, or the one loadCheckpoint returned when resuming). A MultimodalModel reads
   * the rows' images (an AdaptedModel refuses image rows by name); it has no training checkpoints yet, so
   * `checkpointDir` and `resumeFrom` are refused for it (save it with io/multimodal-model-dir.ts).
   */
  readonly model: AdaptedModel | MultimodalModel;
  readonly tokenizer: Tokenizer;
  readonly dataset: Dataset;
  /** Trainer config for a fresh run; a resumed run uses the checkpoint's (schedules must not change). */
  readonly trainer?: TrainerConfigInput;
  readonly trainerOptions?: TrainerOptions;
  /** TOTAL optimizer steps: a run resumed at step 8 with steps 16 runs 8 more. */
  readonly steps: number;
  readonly batchSize: number;
  /** Seeds the shuffle of every epoch and the validation split. Default 0. */
  readonly seed?: number;
  /** Longest row in tokens (BOS/EOS included). */
  readonly maxLength: number;
  /** Where checkpoints go (replaced atomically); the final state is saved there too. */
  readonly checkpointDir?: string;
  /** Save every this many optimizer steps (0 or absent: only at the end). */
  readonly checkpointEvery?: number;
  /** A checkpoint directory, or its content (readCheckpoint / loadCheckpoint), to continue from. */
  readonly resumeFrom?: string | CheckpointData;
  readonly validation?: ValidationOptions;
  /** Recorded in the checkpoint manifest. */
  readonly basePath?: string;
  /**
   * Report expert load every this many steps (0 or absent: never), read from the routing trace of the
   * step's last training micro-batch through model.traces$ (no extra forward).
   */
  readonly routingLoadEvery?: number;
  /**
   * Base-domain text mixed into every micro-batch (`batchSize` rows each, default the task batch size),
   * scored by KL against the frozen base (train/retention.ts; weight: trainer.retentionWeight). Its order
   * is seeded by `seed` and follows the micro-batch count, so a resumed run sees the same rows.
   */
  readonly retention?: { readonly dataset: Dataset; readonly batchSize?: number };
  readonly onStep?: (report: LoopStepReport) => void;
  readonly onValidation?: (record: ValidationRecord, result: EvaluationResult) => void;
  readonly onCheckpoint?: (info: { readonly dir: string; readonly step: number }) => void;
}

export interface TrainFromDatasetResult {
  readonly summary: TrainSummary;
  /** The whole loss history, including the steps before a resume. */
  readonly history: readonly StepRecord[];
  readonly validation: readonly ValidationRecord[];
  readonly position: DataPosition;
  /** The step the run started from (0, or the checkpoint's). */
  readonly startStep: number;
}

/** Seed of epoch e's shuffle: a mix of (seed, epoch) so that nearby seeds do not give shifted epoch orders. */
export function epochShuffleSeed(seed: number, epoch: number): number {
  let h = Math.imul(seed ^ 0x5bd1e995, 0x9e3779b1) ^ Math.imul(epoch + 1, 0x85ebca6b);
  h ^= h >>> 15;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 13)) | 0;
}

/** FNV-1a over the tokenized examples (ids, loss masks, tasks, labels), as 8 hex digits. */
export function datasetFingerprint(tokenized: readonly TokenizedExample[]): string {
  let h = 0x811c9dc5;
  const mix = (n: number): void => {
    h = Math.imul(h ^ (n & 0xffff), 0x01000193);
    h = Math.imul(h ^ (n >>> 16), 0x01000193);
  };
  for (const e of tokenized) {
    mix(e.ids.length);
    for (const id of e.ids) mix(id);
    for (const m of e.lossMask) mix(m);
    mix((e.task ?? -1) + 1);
    mix((e.label ?? -1) + 1);
  }
  return (h >>> 0).toString(16).padStart(8, '0');
}

function positiveInt(name: string, value: number, min = 1): void {
  if (!Number.isInteger(value) || value < min) throw new ConfigError(`${name} must be an integer ≥ ${min}, got ${value}`, { path: name });
}

const finiteOrNull = (x: number | null): number | null => (x === null || !Number.isFinite(x) ? null : x);

/** Trains on a dataset until `steps` total optimizer steps; see the file header. */
export async function trainFromDataset(options: TrainFromDatasetOptions): Promise<TrainFromDatasetResult> {
  const { model, tokenizer, dataset, steps, batchSize, maxLength } = options;
  const seed = options.seed ?? 0;
  positiveInt('steps', steps, 0);
  positiveInt('batchSize', batchSize);
  positiveInt('maxLength', maxLength, 2);
  if (!Number.isInteger(seed)) throw new ConfigError(`seed must be an integer, got ${seed}`, { path: 'seed' });
  const checkpointEvery = options.checkpointEvery ?? 0;
  positiveInt('checkpointEvery', checkpointEvery, 0);
  const loadEvery = options.routingLoadEvery ?? 0;
  positiveInt('routingLoadEvery', loadEvery, 0);
  if (options.validation !== undefined) positiveInt('validation.every', options.validation.every);
  const language = model instanceof MultimodalModel ? model.language : model;
  if (model instanceof MultimodalModel && (options.checkpointDir !== undefined || options.resumeFrom !== undefined)) {
    throw new TrainingError(
      `${options.checkpointDir === undefined ? 'resumeFrom' : 'checkpointDir'}: training checkpoints of a multimodal model are not implemented`,
      {
        path: options.checkpointDir === undefined ? 'resumeFrom' : 'checkpointDir',
        hint: 'Train it without checkpointDir / resumeFrom and save the result with saveMultimodalModel (io/multimodal-model-dir.ts)',
      },
    );
  }

  // Data: optional seeded validation split, then tokenisation (deterministic).
  const fraction = options.validation?.examples === undefined ? options.validation?.fraction : undefined;
  const split = fraction !== undefined && fraction > 0 ? splitTrainValidation(dataset.examples, { validationFraction: fraction, seed }) : undefined;
  const trainExamples = split?.train ?? dataset.examples;
  const validationExamples = options.validation?.examples ?? split?.validation;
  const tokenized = tokenizeExamples(trainExamples, tokenizer, { maxLength });
  // tokenized[i] is trainExamples[i], so a batch's indices find its rows' images.
  const images = hasImages(trainExamples) ? imageLoader(model, trainExamples, dataset.source) : undefined;
  if (tokenized.length === 0)
    throw new DatasetError(`${dataset.source}: no training examples left`, { path: dataset.source, hint: 'Lower the validation fraction or add data' });
  const fingerprint = datasetFingerprint(tokenized);
  const retention = retentionStream(options, seed, maxLength);

  const resume = typeof options.resumeFrom === 'string' ? await readCheckpoint(options.resumeFrom) : options.resumeFrom;
  if (resume !== undefined) {
    const saved = resume.state.data;
    const mismatch = (what: string, was: unknown, now: unknown): never => {
      throw new TrainingError(`cannot resume: the checkpoint was trained with ${what} ${JSON.stringify(was)}, this run has ${JSON.stringify(now)}`, {
        path: resume.dir,
        hint: 'Resume with the same data, seed, batch size and max length (or start a new run in another directory)',
      });
    };
    if (saved.seed !== seed) mismatch('seed', saved.seed, seed);
    if (saved.batchSize !== batchSize) mismatch('batch size', saved.batchSize, batchSize);
    if (saved.maxLength !== maxLength) mismatch('max length', saved.maxLength, maxLength);
    if ((saved.validationFraction ?? 0) !== (split === undefined ? 0 : (fraction ?? 0)))
      mismatch('validation fraction', saved.validationFraction ?? 0, fraction ?? 0);
    if (saved.fingerprint !== fingerprint || saved.examples !== tokenized.length)
      mismatch('data (tokenized fingerprint, examples)', `${saved.fingerprint}, ${saved.examples}`, `${fingerprint}, ${tokenized.length}`);
    const describe = (r: DataPosition['retention']): string => (r === undefined ? 'none' : `${r.fingerprint}, ${r.examples}, batch ${r.batchSize}`);
    if (describe(saved.retention) !== describe(retention?.position)) mismatch('retention data', describe(saved.retention), describe(retention?.position));
  }

  const trainer =
    resume === undefined || model instanceof MultimodalModel // (a multimodal resume is refused above)
      ? new Trainer(model, options.trainer ?? {}, options.trainerOptions ?? {})
      : resumeTrainer(model, resume, options.trainerOptions ?? {});
  const startStep = trainer.steps;
  const history: StepRecord[] = [...(resume?.state.history ?? [])];
  const validation: ValidationRecord[] = [...(resume?.state.validation ?? [])];
  let epoch = resume?.state.data.epoch ?? 0;
  let next = resume?.state.data.batch ?? 0;
  const epochBatches = (e: number): TrainBatch[] => makeBatches(tokenized, { batchSize, seed: epochShuffleSeed(seed, e) });
  let batches = epochBatches(epoch);

  const position = (): DataPosition => ({
    seed,
    epoch,
    batch: next,
    batchSize,
    maxLength,
    examples: tokenized.length,
    fingerprint,
    tasks: [...dataset.tasks],
    labels: [...dataset.labels],
    ...(split === undefined ? {} : { validationFraction: fraction as number }),
    ...(retention === undefined ? {} : { retention: retention.position }),
  });
  let lastSaved = resume === undefined ? -1 : startStep;
  const save = async (): Promise<void> => {
    if (options.checkpointDir === undefined || model instanceof MultimodalModel) return; // (refused above for a multimodal model)
    await saveCheckpoint(
      options.checkpointDir,
      { model, trainer, state: { data: position(), history, validation } },
      options.basePath === undefined ? {} : { basePath: options.basePath },
    );
    lastSaved = trainer.steps;
    options.onCheckpoint?.({ dir: options.checkpointDir, step: trainer.steps });
  };
  const validationSet: Dataset | undefined =
    validationExamples === undefined || validationExamples.length === 0
      ? undefined
      : { ...dataset, examples: validationExamples, source: `${dataset.source} (validation)` };
  const validate = async (): Promise<void> => {
    if (validationSet === undefined) return;
    const result = await evaluateDataset({
      model,
      tokenizer,
      dataset: validationSet,
      batchSize,
      maxLength,
      maxNewTokens: options.validation?.maxNewTokens ?? 0,
      select: options.trainerOptions?.select,
    });
    const tasks: ValidationRecord['tasks'] = {};
    for (const [name, t] of Object.entries(result.tasks)) tasks[name] = { loss: t.loss, accuracy: t.accuracy, count: t.count };
    const record: ValidationRecord = { step: trainer.steps, loss: finiteOrNull(result.loss), perplexity: finiteOrNull(result.perplexity), tasks };
    validation.push(record);
    options.onValidation?.(record, result);
  };

  try {
    let stepTokens = 0;
    let stepMs = 0;
    // Micro-batches trained so far: a resume starts at an optimizer-step boundary.
    let microBatches = trainer.steps * trainer.config.gradAccumulation;
    while (trainer.steps < steps) {
      if (next >= batches.length) {
        epoch += 1;
        next = 0;
        batches = epochBatches(epoch);
      }
      const batch = batches[next] as TrainBatch;
      next += 1;
      // The training forward's own routing decisions, read from the trace stream (no extra forward).
      const wantLoad = loadEvery > 0 && language.routes.length > 0 && (trainer.steps + 1) % loadEvery === 0;
      let trained: readonly RoutingTraceEntry[] = [];
      const rows = images === undefined ? batch : { ...batch, images: await images(batch.indices) };
      const tracing = wantLoad ? language.traces$.subscribe((event) => (trained = event.entries)) : undefined;
      let report: StepReport;
      try {
        report = await trainer.stepAsync(retention === undefined ? rows : { ...rows, retention: retention.at(microBatches) }); // reads with await data(): every backend
        microBatches += 1;
      } finally {
        tracing?.unsubscribe();
      }
      stepTokens += report.tokens;
      stepMs += report.ms;
      if (!report.applied && !report.skipped) continue;

      const record: StepRecord = {
        step: report.step,
        epoch,
        loss: finiteOrNull(report.loss),
        taskLoss: finiteOrNull(report.taskLoss),
        auxLoss: finiteOrNull(report.auxLoss),
        ...(retention === undefined ? {} : { retentionLoss: finiteOrNull(report.retentionLoss) }),
        lr: { ...report.lr },
        gradNorm: finiteOrNull(report.gradNorm),
        skipped: report.skipped,
        tokens: stepTokens,
      };
      history.push(record);
      const load = wantLoad && report.step % loadEvery === 0 ? routingLoad(language, trained) : undefined;
      options.onStep?.({
        ...record,
        ms: stepMs,
        tokensPerSecond: stepMs > 0 ? (stepTokens * 1000) / stepMs : 0,
        skippedTotal: report.skippedTotal,
        ...(load === undefined ? {} : { load }),
      });
      stepTokens = 0;
      stepMs = 0;
      const last = trainer.steps >= steps;
      if (options.validation !== undefined && (report.step % options.validation.every === 0 || last)) await validate();
      if (checkpointEvery > 0 && report.step % checkpointEvery === 0 && !last) await save();
    }
    if (lastSaved !== trainer.steps) await save();
    return { summary: trainer.finish(), history, validation, position: position(), startStep };
  } finally {
    trainer.dispose();
  }
}

/** The retention rows of micro-batch m: epoch ⌊m / n⌋ of seeded shuffles, batch m mod n. */
function retentionStream(
  options: TrainFromDatasetOptions,
  seed: number,
  maxLength: number,
): { readonly position: NonNullable<DataPosition['retention']>; at(microBatch: number): TrainBatch } | undefined {
  const spec = options.retention;
  if (spec === undefined) return undefined;
  const batchSize = spec.batchSize ?? options.batchSize;
  positiveInt('retention.batchSize', batchSize);
  const { dataset } = spec;
  const notText = dataset.examples.find((e) => e.kind !== 'text');
  if (notText !== undefined) {
    throw new DatasetError(`${dataset.source}: line ${notText.line} is not a {"text": ...} line; retention data is unlabelled base-domain text`, {
      path: dataset.source,
      hint: 'Give retention data as {"text": ...} lines only',
    });
  }
  const tokenized = tokenizeExamples(
    // Any "task" of a line is dropped: base-domain rows have none.
    dataset.examples.map((e) => ({ kind: 'text' as const, text: e.kind === 'text' ? e.text : '', line: e.line })),
    options.tokenizer,
    { maxLength },
  );
  const perEpoch = Math.ceil(tokenized.length / batchSize);
  const retentionSeed = seed ^ 0x52e7;
  let cached: { epoch: number; batches: TrainBatch[] } | undefined;
  return {
    position: { examples: tokenized.length, fingerprint: datasetFingerprint(tokenized), batchSize },
    at(microBatch: number): TrainBatch {
      const epoch = Math.floor(microBatch / perEpoch);
      if (cached?.epoch !== epoch) cached = { epoch, batches: makeBatches(tokenized, { batchSize, seed: epochShuffleSeed(retentionSeed, epoch) }) };
      return cached.batches[microBatch % perEpoch] as TrainBatch;
    },
  };
}

/** Expert load per route from a training forward's trace (undefined when nothing routed). */
function routingLoad(model: AdaptedModel, trace: readonly RoutingTraceEntry[]): ExpertLoad[] | undefined {
  if (trace.length === 0) return undefined;
  const load: ExpertLoad[] = [];
  for (const route of model.routes) {
    const entries = trace.filter((e) => e.route === route.index);
    if (entries.length > 0) load.push(...expertLoad(entries, { experts: route.expertNames }));
  }
  return load;
}
