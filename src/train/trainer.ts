/**
 * The trainer: joint training of adapters (experts), routers and an optional classification head on a
 * frozen base, with AdamW (adamw.ts), parameter groups and layer-wise LR decay (param-groups.ts), warmup +
 * cosine (schedule.ts), global-norm clipping (clip.ts), gradient accumulation and a non-finite guard.
 *
 * One `step(batch)` call processes one micro-batch; every `gradAccumulation`-th call completes an optimizer
 * step. Micro-batch gradients are weighted by their counted targets before averaging, Σ nᵢ·∇Lᵢ / Σ nᵢ, so
 * accumulating micro-batches gives the same update as one batch holding them all, even when they hold
 * different numbers of target tokens (the fix Hugging Face transformers made to its accumulation in 2024;
 * aux losses, being per-forward means, are weighted the same way).
 *
 * Only model.variables() (adapters and routers) and the head are differentiated — the base holds no
 * variables at all, which the constructor asserts. A step whose loss or any gradient is non-finite (read
 * from the global gradient norm, one sync) leaves every weight and the optimizer state untouched; after
 * `maxBadSteps` consecutive such steps the trainer aborts with a TrainingError.
 *
 * Controllers (controllers.ts) take part in every step: their loss terms join the objective inside the tape
 * (reported in auxLoss) and they act after each applied optimizer step. The model's own (one AdaLoRA budget
 * controller per AdaLoRA adapter) are always built, so an AdaLoRA adapter never trains without its schedule.
 *
 * Determinism: the head's init is seeded by `seed`; adapters and routers are seeded by the model spec (the
 * noisy top-k router also seeds each noise draw). But the adapters' tf.dropout draws its masks from tfjs's
 * unseeded generator, so runs with dropout > 0 are not bit-reproducible; without dropout, the same seeds,
 * batches and backend give the same weights.
 */
import * as tf from '@tensorflow/tfjs';
import { readSync, requireSyncReads } from '../backend-capabilities.js';
import { Subject, type Observable } from 'rxjs';
import { z } from 'zod';
import { listWeightTensors } from '../base/weights.js';
import { parseConfig } from '../config/parse.js';
import { ConfigError, ShapeError } from '../errors.js';
import type { AdaptedModel } from '../model/adapted-model.js';
import { MultimodalModel, type MultimodalForwardOptions, type RowImages } from '../model/multimodal-model.js';
import type { SelectionInput } from '../model/selection.js';
import { AdamW, adamWFields, type FlatMoments } from './adamw.js';
import { addScaledInto, readNamedInto, sameItems, squaredNorm, weightedMeanInto } from './flat-tensors.js';
import { type RowBatch, splitRows } from './shards.js';
import { clipScale, scaleByGlobalNorm, squaredGlobalNorm } from './clip.js';
import { modelControllers, type TrainingController } from './controllers.js';
import { DeferredTraceReads } from '../routing/trace.js';
import { TrainingError } from './errors.js';
import { bufferedIterable, type BufferedIterable, type StepReport, type TrainEvent, type TrainSummary } from './events.js';
import { ClassificationHead, causalLmLoss, classificationLoss, countLmTargets } from './losses.js';
import { assignGroups, paramGroupsFields, type ParamGroupEntry } from './param-groups.js';
import { baseLogProbs, mixRetentionRows, retentionKl, type MixedRows, type RetentionRows } from './retention.js';
import { AnnealingConfig, ScheduleConfig, annealingSchedule, lrSchedule, type AnnealingSchedule, type LrSchedule } from './schedule.js';

/** What to do instead where the backend cannot read synchronously. */
const TRAIN_ON_STEP_ASYNC = 'Use trainer.stepAsync() / fitAsync() on this backend (they read with await data())';

/** A step's work between host reads: it yields each tensor to read (it keeps ownership) and receives its values. */
type StepPlan<R> = Generator<tf.Tensor, R, ArrayLike<number>>;

/** Drives a plan with a synchronous reader; a failed read is thrown into the plan so it frees what it holds. */
function runPlan<R>(plan: StepPlan<R>, read: (tensor: tf.Tensor) => ArrayLike<number>): R {
  let next = plan.next();
  while (!next.done) {
    let values: ArrayLike<number>;
    try {
      values = read(next.value);
    } catch (error) {
      next = plan.throw(error);
      continue;
    }
    next = plan.next(values);
  }
  return next.value;
}

/** runPlan with `await data()`. */
async function runPlanAsync<R>(plan: StepPlan<R>): Promise<R> {
  let next = plan.next();
  while (!next.done) {
    let values: ArrayLike<number>;
    try {
      values = (await next.value.data()) as Float32Array;
    } catch (error) {
      next = plan.throw(error);
      continue;
    }
    next = plan.next(values);
  }
  return next.value;
}

export type { StepReport, TrainEvent, TrainSummary } from './events.js';

export const TrainObjective = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('causal-lm') }).strict(),
  /** Sequence classification through a linear head over the mean-pooled final hidden states. */
  z.object({ kind: z.literal('classification'), classes: z.number().int().min(2).max(65_536) }).strict(),
]);
export type TrainObjective = z.infer<typeof TrainObjective>;

export const TrainerConfig = z
  .object({
    /** Parameter groups (lr, routerLr, weightDecay, routerWeightDecay, layerDecay) and AdamW's β1, β2, ε. */
    optimizer: z
      .object({ ...paramGroupsFields, ...adamWFields })
      .strict()
      .prefault({}),
    schedule: ScheduleConfig.prefault({}),
    /** Clip the global gradient norm to this; 0 disables clipping. */
    maxGradNorm: z.number().min(0).finite().default(1),
    /** Micro-batches (step() calls) per optimizer step. */
    gradAccumulation: z.number().int().positive().default(1),
    /** Consecutive skipped (non-finite) optimizer steps before the trainer aborts. */
    maxBadSteps: z.number().int().positive().default(5),
    /** Linear schedules for router temperature and noise, applied at the start of every optimizer step. */
    routerAnnealing: AnnealingConfig.optional(),
    objective: TrainObjective.prefault({ kind: 'causal-lm' }),
    /** Seeds the classification head's init. */
    seed: z.number().int().default(0),
    /**
     * Weight W of the retention term W · KL(p_base ‖ p_model) on a batch's retention rows (train/retention.ts);
     * batches without retention rows do not use it.
     */
    retentionWeight: z.number().min(0).finite().default(1),
  })
  .strict()
  .readonly();
export type TrainerConfig = z.infer<typeof TrainerConfig>;
export type TrainerConfigInput = z.input<typeof TrainerConfig>;

/** One micro-batch: its rows (shards.ts's RowBatch: ids, mask, lossMask, taskIds, labels, routingMask) and more. */
export interface TrainBatch extends RowBatch {
  /** One image per row (undefined: none) entering before the row's tokens; a MultimodalModel only. */
  readonly images?: RowImages;
  /**
   * Base-domain rows mixed into this batch (causal LM only): scored by KL against the frozen base's own
   * distribution, weighted by `retentionWeight` (train/retention.ts). They carry no task ids.
   */
  readonly retention?: RetentionRows;
}

/** Programmatic options that are not configuration data. */
export interface TrainerOptions {
  /** Which adapters the forward applies (default: the spec's composition). */
  readonly select?: SelectionInput;
  /**
   * Test and debug hook: replaces each micro-batch's objective before it is differentiated (e.g. multiply
   * by NaN to exercise the non-finite guard). Runs inside the gradient tape.
   */
  readonly transformLoss?: (loss: tf.Scalar, info: { readonly step: number; readonly microBatch: number }) => tf.Scalar;
  /** Controllers to run besides the model's own (owned by the caller: the Trainer does not dispose them). */
  readonly controllers?: readonly TrainingController[];
  /**
   * Data-parallel replicas (data-parallel.ts; owned by the caller): every batch is split by rows across the
   * group's replicas, which compute their shards' gradients at the same time. A step then computes what
   * gradient accumulation over those shards computes. Routing traces (model.traces$) cover the main
   * thread's shard only.
   */
  readonly dataParallel?: GradientReplicas;
}

/**
 * Replicas that compute shards' gradients elsewhere (DataParallelGroup, data-parallel.ts): shard i + 1 of a
 * step goes to replica i, the caller computes shard 0.
 */
export interface GradientReplicas {
  /** Replicas, the caller's included. */
  readonly replicas: number;
  /** Stable names of the trained variables, in the order of every flat vector. */
  readonly names: readonly string[];
  /** Element count of each variable, in `names` order. */
  readonly sizes: readonly number[];
  /** Sends shards 1… (with the variables' values where a replica's are stale); returns the replicas sent to. */
  dispatch(shards: readonly TrainBatch[], named: ReadonlyMap<string, tf.Variable>): number[];
  /** Waits for those replicas' answers; throws the first failure after collecting every answer. */
  collect(sent: readonly number[]): RemoteShard[];
  /** The host moments of the trainer's optimizer [P] each, shared with the replicas (AdamW's `moments`). */
  readonly moments: FlatMoments;
  /** [P] shared: where the trainer combines the shards' gradients (its own shard's first). */
  readonly combined: Float32Array;
  /**
   * One optimizer update over every replica at once (AdamW.applyFlat, each replica a range of the
   * variables): `grads` [P] in shared memory, times `gradScale`; the new values are assigned to `named`'s
   * variables with a gradient and handed to the replicas.
   */
  update(
    optimizer: AdamW,
    grads: Float32Array,
    present: Uint8Array,
    lrs: ReadonlyMap<string, number>,
    gradScale: number,
    named: ReadonlyMap<string, tf.Variable>,
  ): void;
}

/** One replica's shard: its targets, loss parts and flat gradients. */
export interface RemoteShard {
  readonly targets: number;
  readonly loss: number;
  readonly task: number;
  readonly aux: number;
  /** [P] in the replicas' name order, zeros where absent (valid until the next dispatch). */
  readonly grads: Float32Array;
  /** [variables]: 1 where the shard gave the variable a gradient. */
  readonly present: Uint8Array;
}

/** One batch's objective parts and gradients, as a data-parallel replica computes them (shardGradients). */
export interface ShardGradients {
  readonly targets: number;
  readonly loss: number;
  readonly task: number;
  readonly aux: number;
  /** By stable name; owned by the caller. */
  readonly grads: Map<string, tf.Tensor>;
}

/** Gradients and loss sums of the optimizer step being accumulated. */
interface Pending {
  grads: Map<string, tf.Tensor>;
  /** With a data-parallel group: Σ nᵢ·∇Lᵢ over the micro-batches (the mean itself with one), [P] in shared memory. */
  flat?: FlatGradients;
  /** Σ nᵢ: counted targets over the micro-batches with any. */
  weight: number;
  lossSum: number;
  taskSum: number;
  auxSum: number;
  retentionSum: number;
  /** Σ nᵢ over micro-batches with retention rows (their retention loss averages over these). */
  retentionWeight: number;
  microBatches: number;
}

/** Gradients as one flat vector in a data-parallel group's name order. */
interface FlatGradients {
  readonly values: Float32Array; // [P]
  /** [variables] 1 where some shard gave the variable a gradient. */
  readonly present: Uint8Array;
}

/** Why an optimizer step with this loss and gradient norm is skipped (non-finite), or undefined. */
function skipReason(loss: number, gradNorm: number): string | undefined {
  if (!Number.isFinite(loss)) return `the loss is ${loss}`;
  if (!Number.isFinite(gradNorm)) return `the gradient norm is ${gradNorm}`;
  return undefined;
}

function emptyPending(): Pending {
  return { grads: new Map(), weight: 0, lossSum: 0, taskSum: 0, auxSum: 0, retentionSum: 0, retentionWeight: 0, microBatches: 0 };
}

/**
 * The counters a checkpoint restores: the summary plus the current run of consecutive skipped steps. With
 * the optimizer state (AdamW.getState/setState), they let a resumed Trainer continue the LR and annealing
 * schedules, step numbers and the non-finite guard exactly where the saved one stopped.
 */
export interface TrainerProgress extends TrainSummary {
  readonly consecutiveBad: number;
}

export class Trainer {
  readonly config: TrainerConfig;
  /** The classification head (classification objective only). */
  readonly head: ClassificationHead | undefined;
  readonly optimizer: AdamW;
  /** Group, layer, peak LR and weight decay of every trained variable, by stable name. */
  readonly groups: ReadonlyMap<string, ParamGroupEntry>;
  /** The model's controllers (AdaLoRA budgets), then the caller's. */
  readonly controllers: readonly TrainingController[];

  private readonly named: Map<string, tf.Variable>;
  private readonly varList: tf.Variable[];
  private readonly modelVariables: readonly tf.Variable[];
  /** tfjs variable name → stable name. */
  private readonly stableNames = new Map<string, string>();
  private readonly ownControllers: readonly TrainingController[];
  private readonly schedule: LrSchedule;
  private readonly annealing: AnnealingSchedule | undefined;
  private readonly subject = new Subject<TrainEvent>();
  /** Training progress as plain-data events (step, skipped, done); errors with the TrainingError on abort. */
  readonly events$: Observable<TrainEvent> = this.subject.asObservable();

  private pending = emptyPending();
  private attempted = 0;
  private applied = 0;
  private skippedTotal = 0;
  private consecutiveBad = 0;
  private firstLoss: number | null = null;
  private lastLoss: number | null = null;
  private tokensTotal = 0;
  private msTotal = 0;
  private aborted: TrainingError | undefined;
  private finished = false;
  private disposed = false;
  /** A stepAsync is awaiting a read. */
  private inFlight = false;

  constructor(
    readonly model: AdaptedModel | MultimodalModel,
    /** A plain TrainerConfigInput object (validated here). */
    config: unknown = {},
    private readonly options: TrainerOptions = {},
  ) {
    this.config = parseConfig(TrainerConfig, config, 'trainer');
    const frozen = model instanceof MultimodalModel ? model.frozenTensors() : listWeightTensors(model.base.weights);
    const baseVariables = frozen.filter((t) => t instanceof tf.Variable);
    if (baseVariables.length > 0) {
      throw new TrainingError(`the base model holds ${baseVariables.length} tf.Variable weight(s); the base must stay frozen`, {
        hint: 'Build the base with plain tensors (the library loaders do); only adapters and routers may be variables',
      });
    }
    this.named = model.namedVariables();
    this.modelVariables = model.variables();
    const objective = this.config.objective;
    this.head = objective.kind === 'classification' ? new ClassificationHead(model.base.config.dim, objective.classes, this.config.seed) : undefined;
    let own: TrainingController[] = [];
    try {
      for (const [name, v] of this.head?.namedVariables() ?? []) {
        if (this.named.has(name))
          throw new ConfigError(`a model variable is already named ${JSON.stringify(name)}`, { hint: 'Rename the adapter called "head"' });
        this.named.set(name, v);
      }
      this.varList = [...this.named.values()];
      this.checkVarList();
      for (const [name, v] of this.named) this.stableNames.set(v.name, name);
      this.groups = assignGroups(this.named.keys(), model.base.config.nLayers, this.config.optimizer);
      this.schedule = lrSchedule(this.config.schedule);
      this.annealing = this.config.routerAnnealing === undefined ? undefined : annealingSchedule(this.config.routerAnnealing, this.config.schedule.totalSteps);
      const adapters = model instanceof MultimodalModel ? [...model.language.adapters.values(), ...model.visionAdapters.values()] : model.adapters.values();
      own = modelControllers(adapters, this.config.schedule.totalSteps);
      const decay = new Map([...this.groups].map(([name, g]) => [name, g.weightDecay]));
      const { beta1, beta2, epsilon } = this.config.optimizer;
      // A data-parallel group's replicas update the moments with this thread (checkDataParallel refuses a group of other variables).
      const group = options.dataParallel;
      const moments = group !== undefined && sameItems([...this.named.keys()], group.names) ? group.moments : undefined;
      this.optimizer = new AdamW(this.named, decay, { beta1, beta2, epsilon }, moments);
    } catch (error) {
      for (const c of own) c.dispose();
      this.head?.dispose();
      throw error;
    }
    this.ownControllers = own;
    this.controllers = [...own, ...(options.controllers ?? [])];
    if (options.dataParallel !== undefined) {
      try {
        this.checkDataParallel(options.dataParallel);
      } catch (error) {
        this.dispose();
        throw error;
      }
    }
  }

  /** What a data-parallel replica cannot reproduce is refused by name; the group must replicate these variables. */
  private checkDataParallel(group: GradientReplicas): void {
    const refuse = (what: string, hint: string): never => {
      throw new ConfigError(`data-parallel training does not support ${what}`, { path: 'trainerOptions.dataParallel', hint });
    };
    if (this.model instanceof MultimodalModel) refuse('a multimodal model', 'Train the multimodal model without a data-parallel group');
    if (this.ownControllers.length > 0)
      refuse("AdaLoRA adapters (their budget controller changes the model's ranks between steps)", 'Train AdaLoRA without a data-parallel group');
    if ((this.options.controllers ?? []).length > 0) refuse('extra training controllers (they cannot run in the replicas)', 'Drop the controllers option');
    if (this.options.transformLoss !== undefined) refuse('transformLoss', 'Drop the transformLoss option');
    if (this.options.select !== undefined) refuse('a select option (the replicas apply the spec composition)', 'Drop the select option');
    if (this.annealing !== undefined) refuse('routerAnnealing (the replicas do not anneal their routers)', 'Drop routerAnnealing from the trainer config');
    if (!sameItems([...this.named.keys()], group.names)) {
      throw new ConfigError("the data-parallel group replicates other variables than this Trainer's", {
        path: 'trainerOptions.dataParallel',
        hint: 'Start the group from the same model and trainer config as the Trainer',
      });
    }
  }

  /** Optimizer steps attempted so far (applied + skipped). */
  get steps(): number {
    return this.attempted;
  }

  /** The trained variables by stable name (model.namedVariables() plus the head's). */
  namedVariables(): ReadonlyMap<string, tf.Variable> {
    return this.named;
  }

  /** Learning rate of each group's top layer at an optimizer step. */
  lrAt(step: number): { expert: number; router: number } {
    const multiplier = this.schedule.lrAt(step);
    const { lr, routerLr } = this.config.optimizer;
    return { expert: lr * multiplier, router: (routerLr ?? lr) * multiplier };
  }

  /**
   * Processes one micro-batch; completes an optimizer step every `gradAccumulation` calls. Reads its loss and
   * gradient norm synchronously: on a backend without synchronous reads (webgpu) use stepAsync.
   */
  step(batch: TrainBatch): StepReport {
    this.checkUsable();
    requireSyncReads('A training step', TRAIN_ON_STEP_ASYNC); // before any work: nothing is half-done
    return runPlan(this.stepPlan(batch), (t) => readSync(t, 'A training step', TRAIN_ON_STEP_ASYNC));
  }

  /**
   * step() for every backend: the same work, reading the loss and the gradient norm with `await data()`
   * (two reads per optimizer step). One call at a time: await each before the next.
   */
  async stepAsync(batch: TrainBatch): Promise<StepReport> {
    this.checkUsable();
    this.inFlight = true;
    try {
      // Routing traces of the training forward (model.traces$ subscribers) are read after it, like the loss.
      const traceReads = new DeferredTraceReads();
      try {
        const report = await runPlanAsync(this.stepPlan(batch, traceReads));
        await traceReads.flush();
        return report;
      } finally {
        traceReads.dispose();
      }
    } finally {
      this.inFlight = false;
    }
  }

  /** stepAsync over every batch (sync or async iterable); returns the running summary. */
  async fitAsync(batches: Iterable<TrainBatch> | AsyncIterable<TrainBatch>): Promise<TrainSummary> {
    for await (const batch of batches) await this.stepAsync(batch);
    return this.summary();
  }

  /** One micro-batch's work, yielding each tensor it must read on the host (step and stepAsync drive it). */
  private *stepPlan(batch: TrainBatch, traceReads?: DeferredTraceReads): StepPlan<StepReport> {
    const started = performance.now();
    this.checkVarList();
    const targets = this.targetsOf(batch);
    const tokens = [...batch.mask, ...(batch.retention?.mask ?? [])].reduce((s, row) => s + row.reduce((a, m) => a + m, 0), 0);
    const stepIndex = this.attempted;
    const pending = this.pending;
    if (pending.microBatches === 0 && this.annealing !== undefined) this.anneal(this.annealing.stateAt(stepIndex));
    pending.microBatches += 1;
    const microBatch = pending.microBatches;

    const mixed = batch.retention === undefined ? undefined : this.mixRetention(batch, batch.retention);
    if (targets > 0) {
      const group = this.options.dataParallel;
      const { loss, task, aux, retention, grads } =
        group === undefined
          ? yield* this.gradients(batch, stepIndex, microBatch, mixed, traceReads)
          : yield* this.parallelGradients(group, batch, stepIndex, microBatch, traceReads);
      if (grads instanceof Map) this.accumulate(grads, targets);
      else this.accumulateFlat(grads, targets);
      pending.weight += targets;
      pending.lossSum += targets * loss;
      pending.taskSum += targets * task;
      pending.auxSum += targets * aux;
      if (retention !== undefined) {
        pending.retentionSum += targets * retention;
        pending.retentionWeight += targets;
      }
    }
    this.tokensTotal += tokens;

    if (microBatch < this.config.gradAccumulation) {
      const ms = performance.now() - started;
      this.msTotal += ms;
      return {
        ...this.means(pending),
        step: this.attempted,
        lr: this.lrAt(stepIndex),
        gradNorm: null,
        skipped: false,
        applied: false,
        microBatch,
        skippedTotal: this.skippedTotal,
        tokens,
        targets,
        ms,
      };
    }
    return yield* this.finishStep(stepIndex, { tokens, targets, started, microBatch });
  }

  /** Steps over every batch; returns the running summary (call finish() to end the event stream). */
  fit(batches: Iterable<TrainBatch>): TrainSummary {
    for (const batch of batches) this.step(batch);
    return this.summary();
  }

  summary(): TrainSummary {
    return {
      steps: this.attempted,
      appliedSteps: this.applied,
      skippedTotal: this.skippedTotal,
      firstLoss: this.firstLoss,
      lastLoss: this.lastLoss,
      tokens: this.tokensTotal,
      ms: this.msTotal,
    };
  }

  /** The counters to checkpoint (see TrainerProgress). */
  progress(): TrainerProgress {
    return { ...this.summary(), consecutiveBad: this.consecutiveBad };
  }

  /**
   * Resumes the counters of a checkpointed run (restore the optimizer with `optimizer.setState` too): the
   * next step() is optimizer step `progress.steps` of the schedules. Only between optimizer steps.
   */
  restoreProgress(progress: TrainerProgress): void {
    this.checkUsable();
    if (this.pending.microBatches > 0)
      throw new TrainingError('restoreProgress() in the middle of an accumulated optimizer step', { hint: 'Restore before the first step() call' });
    const fresh = this.controllers.find((c) => !c.resumable);
    if (fresh !== undefined && progress.steps > 0) {
      throw new TrainingError(
        `cannot resume at step ${progress.steps}: ${fresh.adapter === undefined ? 'a training controller' : `the budget controller of AdaLoRA adapter ${JSON.stringify(fresh.adapter)}`} keeps state that checkpoints do not hold (importance scores), so the resumed run would not continue it`,
        { hint: 'Train AdaLoRA adapters in one uninterrupted run (start again from step 0)' },
      );
    }
    const counts = [progress.steps, progress.appliedSteps, progress.skippedTotal, progress.consecutiveBad];
    if (counts.some((n) => !Number.isInteger(n) || n < 0) || progress.appliedSteps + progress.skippedTotal !== progress.steps) {
      throw new TrainingError(`inconsistent trainer progress: ${JSON.stringify(progress)}`, {
        hint: 'steps must equal appliedSteps + skippedTotal (non-negative integers)',
      });
    }
    this.attempted = progress.steps;
    this.applied = progress.appliedSteps;
    this.skippedTotal = progress.skippedTotal;
    this.consecutiveBad = progress.consecutiveBad;
    this.firstLoss = progress.firstLoss;
    this.lastLoss = progress.lastLoss;
    this.tokensTotal = progress.tokens;
    this.msTotal = progress.ms;
  }

  /** Emits the 'done' event and completes events$. Further step() calls throw. */
  finish(): TrainSummary {
    const summary = this.summary();
    if (!this.finished && this.aborted === undefined) {
      this.finished = true;
      this.subject.next({ type: 'done', summary });
      this.subject.complete();
    }
    return summary;
  }

  /**
   * The events as an AsyncIterable, subscribed from this call on. Training never waits for the reader:
   * beyond `capacity` unread events the oldest are dropped (see `dropped`).
   */
  eventsIterable(capacity = 1024): BufferedIterable<TrainEvent> {
    return bufferedIterable(this.events$, capacity);
  }

  /**
   * One batch's objective parts and gradients, without accumulating or applying them (what a data-parallel
   * replica computes for its shard). Synchronous reads.
   */
  shardGradients(batch: TrainBatch): ShardGradients {
    this.checkUsable();
    if (batch.retention !== undefined) throw new ConfigError('a data-parallel shard cannot hold retention rows', { path: 'batch.retention' });
    const targets = this.targetsOf(batch);
    if (targets === 0) return { targets, loss: 0, task: 0, aux: 0, grads: new Map() };
    const result = runPlan(this.gradients(batch, this.attempted, 1, undefined, undefined), (t) => readSync(t, 'A training step', TRAIN_ON_STEP_ASYNC));
    return { targets, loss: result.loss, task: result.task, aux: result.aux, grads: result.grads };
  }

  /** Frees the optimizer state, pending gradients and the head; completes events$. The model is not touched. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.disposePending();
    this.optimizer.dispose();
    this.head?.dispose();
    for (const c of this.ownControllers) c.dispose();
    if (!this.finished && this.aborted === undefined) this.subject.complete();
  }

  // -------------------------------------------------------------------------------------------------------

  /** One micro-batch's objective value, its parts, and its gradients by stable name (owned by the caller). */
  private *gradients(
    batch: TrainBatch,
    step: number,
    microBatch: number,
    mixed: MixedRows | undefined,
    traceReads: DeferredTraceReads | undefined,
  ): StepPlan<{ loss: number; task: number; aux: number; retention: number | undefined; grads: Map<string, tf.Tensor> }> {
    const sink: tf.Scalar[] = [];
    const kept: tf.Tensor[] = [];
    const head = this.head;
    const transform = this.options.transformLoss;
    const weight = this.config.retentionWeight;
    // The base's distribution on the retention rows: the same model with adapters off, before the tape.
    const base =
      mixed === undefined || weight === 0 || mixed.retentionTargets === 0
        ? undefined
        : baseLogProbs((ids, mask) => this.model.forward({ ids, mask, select: 'base' }), mixed); // [Br, T−1, V]
    let retentionLoss: tf.Scalar | undefined;
    try {
      const rows = mixed ?? batch;
      const { value, grads } = tf.variableGrads(() => {
        const forward: MultimodalForwardOptions = {
          ids: rows.ids,
          mask: rows.mask,
          training: true,
          routing: {
            auxLosses: sink,
            taskIds: mixed === undefined ? batch.taskIds : undefined, // only task routers read them, and those refuse retention rows
            routingMask: mixed === undefined ? batch.routingMask : mixed.routingMask,
            ...(mixed === undefined ? {} : { retentionRows: mixed.retentionRows }),
            ...(traceReads === undefined ? {} : { traceReads }),
          },
          select: this.options.select,
          output: head === undefined ? 'logits' : 'hidden',
          ...(batch.images === undefined ? {} : { images: batch.images }),
        };
        // An AdaptedModel refuses images by name (it has no encoder).
        const output = this.model instanceof MultimodalModel ? this.model.forward(forward) : this.model.forward(forward); // [B, T, V] or [B, T, D]
        const taskLoss =
          head === undefined
            ? causalLmLoss(output, rows) // []  retention rows have no task targets
            : classificationLoss(head.logits(output, batch.mask), batch.labels ?? []); // []
        kept.push(tf.keep(taskLoss));
        for (const controller of this.controllers) {
          const term = controller.loss?.();
          if (term !== undefined) sink.push(tf.keep(term)); // [] e.g. AdaLoRA's orthogonality term
        }
        let total: tf.Scalar = sink.length === 0 ? taskLoss : tf.add(taskLoss, tf.addN(sink)); // []
        if (base !== undefined && mixed !== undefined) {
          const kl = retentionKl(output, base, mixed); // []
          retentionLoss = tf.keep(kl);
          total = tf.add(total, tf.mul(kl, weight)); // []
        }
        return transform === undefined ? total : transform(total, { step, microBatch });
      }, this.varList);
      kept.push(value);
      const named = new Map<string, tf.Tensor>();
      for (const [tfName, g] of Object.entries(grads)) {
        if (g === null) continue;
        const name = this.stableNames.get(tfName);
        if (name === undefined) {
          g.dispose();
          throw new TrainingError(`received a gradient for an unknown variable ${tfName}`);
        }
        named.set(name, g);
      }
      // [3 + aux terms]: objective, task loss, retention KL (0 without one), aux terms
      const scalars = tf.tidy(() => tf.stack([value, kept[0] as tf.Scalar, retentionLoss ?? tf.scalar(0), ...sink]));
      let read: ArrayLike<number>;
      try {
        read = yield scalars; // one host read per micro-batch
      } catch (error) {
        for (const g of named.values()) g.dispose();
        throw error;
      } finally {
        scalars.dispose();
      }
      let aux = 0;
      for (let i = 3; i < read.length; i++) aux += read[i] as number;
      const retention = mixed === undefined ? undefined : (read[2] ?? Number.NaN);
      return { loss: read[0] ?? Number.NaN, task: read[1] ?? Number.NaN, aux, retention, grads: named };
    } finally {
      for (const t of [...sink, ...kept]) t.dispose();
      base?.dispose();
      retentionLoss?.dispose();
    }
  }

  /**
   * gradients() over a data-parallel group: shard 0 here, the others on the workers at the same time; the
   * shards' gradients and loss parts combined weighted by their targets, Σ nₛ·xₛ / Σ nₛ.
   */
  private *parallelGradients(
    group: GradientReplicas,
    batch: TrainBatch,
    step: number,
    microBatch: number,
    traceReads: DeferredTraceReads | undefined,
  ): StepPlan<{ loss: number; task: number; aux: number; retention: undefined; grads: FlatGradients }> {
    if (batch.retention !== undefined)
      throw new ConfigError('data-parallel training does not support retention rows', {
        path: 'batch.retention',
        hint: 'Train with retention without a data-parallel group',
      });
    if (batch.images !== undefined) throw new ConfigError('data-parallel training does not support images', { path: 'batch.images' });
    const [own, ...others] = splitRows(batch, group.replicas) as [TrainBatch, ...TrainBatch[]]; // contiguous rows
    const sent = group.dispatch(others, this.named);
    const names = group.names;
    const sum = group.combined; // [P]  this shard's gradients, then Σ nₛ·∇Lₛ / Σ nₛ
    const ownPresent = new Uint8Array(names.length); // 1 where this shard gave the variable a gradient
    let local: { loss: number; task: number; aux: number } | undefined;
    let remote: RemoteShard[];
    const ownTargets = this.targetsOf(own);
    try {
      if (ownTargets > 0) {
        const { grads: ownGrads, ...parts } = yield* this.gradients(own, step, microBatch, undefined, traceReads);
        try {
          // Read while the workers still compute (this shard usually ends first).
          readNamedInto(names, group.sizes, ownGrads, sum, ownPresent);
        } finally {
          for (const g of ownGrads.values()) g.dispose();
        }
        local = parts;
      } else sum.fill(0);
    } finally {
      // Every dispatched shard is collected, even when this one failed, so the next step reads its own answers.
      remote = group.collect(sent);
    }
    const answered = remote.filter((r) => r.targets > 0);
    const shards = [...(local === undefined ? [] : [{ targets: ownTargets, ...local }]), ...answered];
    const total = shards.reduce((s, x) => s + x.targets, 0); // Σ nₛ, the batch's targets
    const mean = (part: 'loss' | 'task' | 'aux'): number => shards.reduce((s, x) => s + x.targets * x[part], 0) / total;
    weightedMeanInto(
      sum,
      local === undefined ? 0 : ownTargets,
      answered.map((r) => ({ values: r.grads, weight: r.targets })),
    );
    // A variable no shard gave a gradient gets none, as in one replica.
    const present = ownPresent.map((own, i) => (own === 1 || answered.some((r) => r.present[i] === 1) ? 1 : 0));
    return { loss: mean('loss'), task: mean('task'), aux: mean('aux'), retention: undefined, grads: { values: sum, present } };
  }

  /** The batch with its retention rows appended; refuses what retention cannot serve, by name. */
  private mixRetention(batch: TrainBatch, retention: RetentionRows): MixedRows {
    if (this.config.objective.kind !== 'causal-lm') {
      throw new ConfigError('retention rows need the causal-lm objective (their loss is a KL divergence between next-token distributions)', {
        path: 'batch.retention',
        hint: 'Drop batch.retention, or train with objective { kind: "causal-lm" }',
      });
    }
    if (this.model.routes.some((route) => route.needsTaskIds)) {
      throw new ConfigError('a task-routed model cannot train on retention rows: base-domain rows have no task id for its task router', {
        path: 'batch.retention',
        hint: 'Train task-routed models without retention rows (a task router sends each task to its own adapter already)',
      });
    }
    if (batch.images !== undefined) {
      throw new ConfigError('retention rows cannot be mixed into a batch with images (base-domain rows are text only)', {
        path: 'batch.retention',
        hint: 'Train a multimodal model without retention rows, or drop the images from this batch',
      });
    }
    return mixRetentionRows(batch, retention);
  }

  /**
   * accumulate() for a data-parallel micro-batch's flat gradients: kept as they are with one micro-batch,
   * else added, weighted by its targets, into a shared sum (the replicas read it in the update).
   */
  private accumulateFlat(grads: FlatGradients, targets: number): void {
    const pending = this.pending;
    if (this.config.gradAccumulation === 1) {
      pending.flat = grads;
      return;
    }
    const n = grads.values.length;
    const sum = pending.flat ?? { values: new Float32Array(new SharedArrayBuffer(n * 4)), present: new Uint8Array(grads.present.length) };
    addScaledInto(sum.values, grads.values, targets);
    grads.present.forEach((p, i) => {
      if (p === 1) sum.present[i] = 1;
    });
    pending.flat = sum;
  }

  /** Adds a micro-batch's gradients into the pending sums (weighted by its targets when accumulating). */
  private accumulate(grads: Map<string, tf.Tensor>, targets: number): void {
    const sums = this.pending.grads;
    if (this.config.gradAccumulation === 1) {
      for (const [name, g] of grads) sums.set(name, g);
      return;
    }
    for (const [name, g] of grads) {
      const weighted = tf.tidy(() => tf.mul(g, targets)); // [...p]  nᵢ·∇Lᵢ
      g.dispose();
      const previous = sums.get(name);
      if (previous === undefined) {
        sums.set(name, weighted);
      } else {
        sums.set(name, tf.add(previous, weighted)); // [...p]
        previous.dispose();
        weighted.dispose();
      }
    }
  }

  private *finishStep(stepIndex: number, call: { tokens: number; targets: number; started: number; microBatch: number }): StepPlan<StepReport> {
    const pending = this.pending;
    this.pending = emptyPending();
    this.attempted += 1;
    const lr = this.lrAt(stepIndex);
    const means = this.means(pending);
    let reason: string | undefined;
    let gradNorm: number | null = null;
    try {
      if (pending.weight === 0) {
        reason = 'no loss targets in the batch (lossMask selects no real target token, or no labels)';
      } else if (pending.flat !== undefined) {
        const group = this.options.dataParallel as GradientReplicas;
        // Σ nᵢ·∇Lᵢ / Σ nᵢ: the sum itself with one micro-batch, else scaled by 1 / Σ nᵢ inside the update.
        const toMean = this.config.gradAccumulation === 1 ? 1 : 1 / pending.weight;
        gradNorm = Math.sqrt(squaredNorm(pending.flat.values)) * toMean;
        reason = skipReason(means.loss, gradNorm);
        if (reason === undefined) {
          const clip = this.config.maxGradNorm > 0 ? clipScale(gradNorm, this.config.maxGradNorm) : 1;
          group.update(this.optimizer, pending.flat.values, pending.flat.present, this.learningRates(stepIndex), toMean * clip, this.named);
        }
      } else {
        const averaged = this.config.gradAccumulation === 1 ? pending.grads : this.average(pending);
        try {
          const squared = squaredGlobalNorm(averaged.values()); // []
          try {
            gradNorm = Math.sqrt((yield squared)[0] as number); // one host read per optimizer step
          } finally {
            squared.dispose();
          }
          const clip = this.config.maxGradNorm > 0 ? scaleByGlobalNorm(averaged, gradNorm, this.config.maxGradNorm) : undefined;
          try {
            reason = skipReason(means.loss, gradNorm);
            if (reason === undefined) {
              const applied = clip?.grads ?? averaged;
              this.optimizer.applyGradients(applied, this.learningRates(stepIndex));
              this.afterApplied(applied);
            }
          } finally {
            for (const g of clip?.grads.values() ?? []) g.dispose();
          }
        } finally {
          if (averaged !== pending.grads) for (const g of averaged.values()) g.dispose();
        }
      }
    } finally {
      for (const g of pending.grads.values()) g.dispose();
    }

    const skipped = reason !== undefined;
    if (skipped) {
      this.skippedTotal += 1;
      this.consecutiveBad += 1;
    } else {
      this.applied += 1;
      this.consecutiveBad = 0;
      this.firstLoss ??= means.loss;
      this.lastLoss = means.loss;
    }
    const ms = performance.now() - call.started;
    this.msTotal += ms;
    const report: StepReport = {
      ...means,
      step: this.attempted,
      lr,
      gradNorm,
      skipped,
      applied: !skipped,
      microBatch: call.microBatch,
      skippedTotal: this.skippedTotal,
      tokens: call.tokens,
      targets: call.targets,
      ms,
    };
    if (reason !== undefined) this.subject.next({ type: 'skipped', step: this.attempted, reason });
    this.subject.next({ type: 'step', ...report });
    if (reason !== undefined && this.consecutiveBad >= this.config.maxBadSteps) {
      const error = new TrainingError(
        `training aborted: ${this.consecutiveBad} consecutive optimizer steps were skipped (last at step ${this.attempted}: ${reason}); weights are unchanged since the last good step`,
        {
          hint: 'Lower the learning rate (optimizer.lr / routerLr) or maxGradNorm, add warmup, and check the data for empty lossMasks, bad labels or extreme values',
        },
      );
      this.aborted = error;
      this.subject.error(error);
      throw error;
    }
    return report;
  }

  /** Every variable's learning rate at a step: its group's times the schedule's multiplier. */
  private learningRates(stepIndex: number): Map<string, number> {
    const multiplier = this.schedule.lrAt(stepIndex);
    return new Map([...this.groups].map(([name, g]) => [name, g.lr * multiplier]));
  }

  /** Runs every controller after an applied optimizer step, with the gradients it applied (by variable). */
  private afterApplied(grads: ReadonlyMap<string, tf.Tensor>): void {
    if (this.controllers.length === 0) return;
    const byVariable = new Map<tf.Variable, tf.Tensor>();
    for (const [name, g] of grads) {
      const v = this.named.get(name);
      if (v !== undefined) byVariable.set(v, g);
    }
    for (const controller of this.controllers) controller.afterStep?.(this.attempted, (v) => byVariable.get(v));
  }

  /** Σ nᵢ·∇Lᵢ / Σ nᵢ as new tensors (the pending sums are freed by the caller). */
  private average(pending: Pending): Map<string, tf.Tensor> {
    const averaged = new Map<string, tf.Tensor>();
    for (const [name, sum] of pending.grads) {
      averaged.set(
        name,
        tf.tidy(() => tf.div(sum, pending.weight)),
      ); // [...p]
    }
    return averaged;
  }

  private means(pending: Pending): { loss: number; taskLoss: number; auxLoss: number; retentionLoss: number | null } {
    const w = pending.weight;
    const retentionLoss = pending.retentionWeight === 0 ? null : pending.retentionSum / pending.retentionWeight;
    return w === 0
      ? { loss: Number.NaN, taskLoss: Number.NaN, auxLoss: Number.NaN, retentionLoss }
      : { loss: pending.lossSum / w, taskLoss: pending.taskSum / w, auxLoss: pending.auxSum / w, retentionLoss };
  }

  private anneal(state: { readonly temperature?: number; readonly noise?: number }): void {
    for (const route of this.model.routes) for (const router of route.routerList()) router.setAnnealing?.(state);
  }

  /** The differentiated variables must be exactly the model's trainable variables plus the head's. */
  private checkVarList(): void {
    const current = this.model.variables();
    const expected = [...current, ...(this.head?.variables() ?? [])];
    const same = current.length === this.modelVariables.length && current.every((v, i) => v === this.modelVariables[i]);
    if (!same || expected.length !== this.varList.length || expected.some((v, i) => v !== this.varList[i])) {
      throw new TrainingError("the model's trainable variables changed since this Trainer was created (an adapter was added, replaced or removed)", {
        hint: 'Create a new Trainer after changing the resident adapters',
      });
    }
    const frozen = this.varList.find((v) => !v.trainable);
    if (frozen !== undefined)
      throw new TrainingError(`variable ${frozen.name} is not trainable`, { hint: 'Adapters and routers must create trainable variables' });
  }

  /** The batch's counted targets: its labelled rows (classification) or its LM target tokens. */
  private targetsOf(batch: TrainBatch): number {
    return this.config.objective.kind === 'classification' ? this.checkLabels(batch) : countLmTargets(batch.mask, batch.lossMask);
  }

  private checkLabels(batch: TrainBatch): number {
    if (batch.labels === undefined) throw new ShapeError('the classification objective needs labels on every batch', { path: 'batch.labels' });
    if (batch.labels.length !== batch.ids.length)
      throw new ShapeError(`labels has ${batch.labels.length} entries but the batch has ${batch.ids.length} rows`, { path: 'batch.labels' });
    return batch.labels.length;
  }

  private checkUsable(): void {
    if (this.disposed) throw new Error('Trainer used after dispose()');
    if (this.inFlight) throw new TrainingError('a step was started while a stepAsync() is in flight', { hint: 'Await each stepAsync() before the next step' });
    if (this.aborted !== undefined) throw this.aborted;
    if (this.finished) throw new TrainingError('step() after finish()', { hint: 'Create a new Trainer (or keep stepping before calling finish())' });
  }

  private disposePending(): void {
    for (const g of this.pending.grads.values()) g.dispose();
    this.pending = emptyPending();
  }
}
