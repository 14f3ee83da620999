/**
 * `routed-peft demo`, as a library function: fine-tunes the shipped base model (demo-model/) on four
 * procedurally generated tasks with four setups of equal trainable budget — one shared LoRA, routed LoRA
 * experts, per-task LoRAs chosen by the true task id (the oracle), and routed experts with a null expert
 * trained on retention data (retained) — on the same batches, steps, learning
 * rate schedule and seed; then serves mixed batches (all four tasks interleaved, left-padded) through each
 * and measures exact-match accuracy per task, routing purity and mutual information task ↔ expert, base
 * retention (loss on pretraining-style text against the bare base), and time. Writes a routing heat map
 * (SVG) and the summary (JSON) to the output directory and returns the summary.
 *
 * Nothing here gives the routed setup anything the shared one lacks except its router (counted in the
 * budget): the same data in the same order, the same steps, LR and schedule, the same seeds. Only the
 * oracle sees task ids.
 */
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { getBackendReport, selectBackend } from '../backend.js';
import { loadBaseModel } from '../base/checkpoints/load-model.js';
import type { SiteName } from '../base/sites.js';
import type { Transformer } from '../base/transformer.js';
import { RoutedPeftError } from '../errors.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import { NULL_EXPERT, type RoutingTraceEntry } from '../routing/trace.js';
import { AdaptedModel } from '../model/adapted-model.js';
import type { SelectionInput } from '../model/selection.js';
import { loadTokenizer } from '../tokenizers/load-tokenizer.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import { makeBatches, seededShuffle, tokenizeExamples } from '../train/batches.js';
import { causalLmLoss } from '../train/losses.js';
import type { RetentionRows } from '../train/retention.js';
import { baseRetention, exactMatch, routingPurity, type BaseRetention } from '../train/metrics.js';
import { Trainer } from '../train/trainer.js';
import { renderHeatmap } from './heatmap.js';
import { SETUP_NAMES, buildSetups, type DemoSetup, type SetupName } from './setups.js';
import { DEMO_TASKS, heldOutExamples, pretrainingDocuments, taskExamples, type DemoExample } from './tasks.js';

// ---------------------------------------------------------------------------------------------------------
// Sizes

export interface DemoSizes {
  /**
   * How many times the whole comparison runs, with seeds seed, seed + 1, …: each run draws its own data,
   * initialisation and batch order. Reported figures are means over the runs; each run is listed too.
   */
  readonly runs: number;
  /** Training examples per task (the same set, in the same batch order, for every setup). */
  readonly trainPerTask: number;
  /** Optimizer steps per setup. */
  readonly steps: number;
  readonly batchSize: number;
  /** Peak learning rate of the adapters (every setup), linear warmup then cosine to lr · minLrRatio. */
  readonly lr: number;
  /** Peak learning rate of the routers (routed setup only; same schedule). */
  readonly routerLr: number;
  readonly warmupSteps: number;
  readonly minLrRatio: number;
  /** Held-out prompts per task for accuracy. */
  readonly evalPerTask: number;
  /** Prompts per generation batch (mixed tasks, left-padded). */
  readonly evalBatch: number;
  /** Pretraining-style documents for base retention. */
  readonly retentionDocuments: number;
  /**
   * Pretraining-style rows mixed into every training batch of the retained setup (drawn from their own seed).
   * 48 rather than 16: the router learns base-domain vs task from these rows, and with 16 it sent only about
   * two thirds of the copy-like documents (`abc=abc`, `defg`) to the null expert.
   */
  readonly retentionBatch: number;
  /** Weight of the retained setup's KL-to-base term (TrainerConfig.retentionWeight). */
  readonly retentionWeight: number;
  /**
   * Peak learning rate of the retained setup's router (it has one more thing to learn: which inputs are
   * base-domain). 5e-2 against 1e-2 took its quick-mode accuracy from 45.0% to 63.1% and purity from 0.68 to
   * 0.98 (seed 0, 16 retention rows, temperature 1).
   */
  readonly retainedRouterLr: number;
}

export const FULL_SIZES: DemoSizes = {
  runs: 3,
  trainPerTask: 300,
  steps: 100,
  batchSize: 64,
  lr: 1e-2,
  routerLr: 1e-2,
  warmupSteps: 5,
  minLrRatio: 0.1,
  evalPerTask: 100,
  evalBatch: 100,
  retentionDocuments: 128,
  retentionBatch: 48,
  retentionWeight: 1,
  retainedRouterLr: 5e-2,
};

export const QUICK_SIZES: DemoSizes = {
  runs: 1,
  trainPerTask: 300,
  steps: 100,
  batchSize: 64,
  lr: 1e-2,
  routerLr: 1e-2,
  warmupSteps: 5,
  minLrRatio: 0.1,
  evalPerTask: 40,
  evalBatch: 80,
  retentionDocuments: 64,
  retentionBatch: 48,
  retentionWeight: 1,
  retainedRouterLr: 5e-2,
};

/** The adapter design shared by the three setups (see setups.ts). */
export const DEMO_ADAPTERS = {
  rank: 4,
  sites: ['attn.q', 'attn.k', 'attn.v', 'attn.o', 'mlp.gate', 'mlp.up', 'mlp.down'] as readonly SiteName[],
  alpha: 16,
  router: { kind: 'top-k', k: 2 } as Readonly<Record<string, unknown>>,
  granularity: 'sequence' as 'token' | 'sequence',
  placement: 'model' as 'layer' | 'model',
  readLayer: 0,
  expertScale: 1,
  aux: { balance: 0.01, zLoss: 0, importance: 0, entropy: 0 },
  nullRouting: 1,
  retainedTemperature: 0.1,
};

// ---------------------------------------------------------------------------------------------------------
// Summary

export interface TaskAccuracy {
  /** Exact-match accuracy per task name, and their mean. */
  readonly [task: string]: number;
  readonly mean: number;
}

export interface SetupSummary {
  readonly description: string;
  readonly accuracy: TaskAccuracy;
  readonly trainableParams: number;
  /** trainable / (trainable + frozen base). */
  readonly trainableFraction: number;
  /** (trainableParams − routed's) / routed's. */
  readonly budgetDifference: number;
  readonly firstLoss: number | null;
  readonly finalLoss: number | null;
  /** routed-or-shared loss − base loss on pretraining-style text (null for the oracle: it needs a task id). */
  readonly retentionDelta: number | null;
  /**
   * Share of the pretraining-style documents the route sends to the null expert (its largest gate) or to
   * nothing (routed setups; null for the others).
   */
  readonly nullShare: number | null;
  /** Routing purity of the served task prompts (routed setups; null for the others). */
  readonly purity: number | null;
  readonly trainSeconds: number;
  readonly evalSeconds: number;
}

export interface LayerRouting {
  /** The layer whose input the router reads. */
  readonly layer: number;
  /** What decided: `model` (one router for every layer), `layer` (this layer's router), or a site. */
  readonly router: string;
  readonly experts: readonly string[];
  /** Mean gate weight per expert, per task (rows in task order). */
  readonly shares: readonly (readonly number[])[];
  /** Mean gate weight per expert over all sequences. */
  readonly load: readonly number[];
  readonly purity: number;
  readonly mutualInformation: number;
}

export interface RoutingSummary {
  /** Mean over layers of routing purity (each sequence's top expert; 1 = every task always uses one expert). */
  readonly purity: number;
  /** Mean over layers of normalised mutual information task ↔ top expert (0 = independent, 1 = a function). */
  readonly mutualInformation: number;
  /** Mean gate weight per expert, over layers and sequences. */
  readonly load: Readonly<Record<string, number>>;
  readonly layers: readonly LayerRouting[];
}

export interface DemoPrediction {
  readonly task: string;
  readonly prompt: string;
  readonly expected: string;
  readonly predicted: Readonly<Record<SetupName, string>>;
}

/** One run of the comparison (one seed). */
export interface DemoRun {
  readonly seed: number;
  /** Mean accuracy per setup. */
  readonly accuracy: Readonly<Record<SetupName, number>>;
  /** routed − shared mean accuracy. */
  readonly margin: number;
  readonly purity: number;
  readonly mutualInformation: number;
}

export interface DemoSummary {
  /** The first run's seed (run i uses seed + i). */
  readonly seed: number;
  readonly quick: boolean;
  readonly backend: string;
  readonly model: { readonly path: string; readonly parameters: number; readonly layers: number; readonly dim: number; readonly vocab: number };
  readonly tasks: readonly { readonly name: string; readonly description: string; readonly example: string }[];
  readonly sizes: DemoSizes;
  readonly setups: Readonly<Record<SetupName, SetupSummary>>;
  readonly routing: RoutingSummary;
  /** The routed model against the bare base (select: 'base') on pretraining-style text. */
  readonly retention: BaseRetention;
  /** The same for the retained setup (routed with a null expert and retention data). */
  readonly retainedRetention: BaseRetention;
  /** The retained setup's routing of the served task prompts (its choices include the null expert). */
  readonly retainedRouting: RoutingSummary;
  /** routed mean accuracy − shared mean accuracy, averaged over the runs (the demo's claim: > 0). */
  readonly margin: number;
  /** Every run on its own. */
  readonly runs: readonly DemoRun[];
  /** Largest |budgetDifference| of the three setups. */
  readonly budgetTolerance: number;
  readonly examples: readonly DemoPrediction[];
  readonly files: { readonly heatmap: string; readonly summary: string };
  readonly seconds: number;
}

export interface DemoOptions {
  readonly routers: RouterRegistry;
  readonly seed?: number;
  readonly quick?: boolean;
  /** Where heatmap.svg and summary.json go (created if missing). */
  readonly outDir: string;
  /** The base model directory (default: the shipped demo-model/). */
  readonly modelDir?: string;
  /** Overrides of the chosen sizes (for experiments). */
  readonly sizes?: Partial<DemoSizes>;
  /** Overrides of the adapter design (for experiments). */
  readonly adapters?: Partial<typeof DEMO_ADAPTERS>;
  /** Progress lines (default: none). */
  readonly log?: (line: string) => void;
}

/** The demo-model/ directory of this package (from src/demo/ or dist/src/demo/). */
export function demoModelDir(): string {
  return packageModelDir('demo-model', 'the demo base model', 'scripts/pretrain-demo-base.ts');
}

/** A model directory shipped at the package root (`folder`, holding a config.json); `script` regenerates it. */
export function packageModelDir(folder: string, what: string, script: string): string {
  for (const up of ['../../', '../../../']) {
    const dir = fileURLToPath(new URL(`${up}${folder}/`, import.meta.url));
    if (existsSync(join(dir, 'config.json'))) return dir;
  }
  throw new RoutedPeftError(`${what} (${folder}/) is missing from this installation`, {
    hint: `Reinstall routed-peft, or regenerate it with \`node --import tsx ${script}\``,
  });
}

/**
 * The text a greedy generation added after its prompt, up to EOS. No EOS within the budget: the whole
 * continuation is the answer (and is wrong, being too long).
 */
export function decodeCompletion(tokenizer: Tokenizer, ids: readonly number[], promptLength: number): string {
  const continuation = ids.slice(promptLength);
  const end = continuation.indexOf(tokenizer.eosId ?? -1);
  return tokenizer.decode(end < 0 ? continuation : continuation.slice(0, end));
}

// ---------------------------------------------------------------------------------------------------------
// Steps

/**
 * One training batch in two parts, as serving sees a request: the prompts (BOS + prompt) left-padded to one
 * width P, then the completions (completion + EOS) right-padded to one width C. `ids` is the whole
 * [B, P + C] sequence; `lossMask` marks the completion tokens (the targets).
 */
export interface DemoBatch {
  readonly prompt: number[][];
  readonly promptMask: number[][];
  readonly completion: number[][];
  readonly completionMask: number[][];
  readonly ids: number[][];
  readonly mask: number[][];
  readonly lossMask: number[][];
  /** The prompt tokens: what a sequence router may read (it decides from the prompt alone when serving). */
  readonly routingMask: number[][];
  readonly taskIds: number[];
}

/** One seed's data: the training batches, retention rows and held-out prompts every setup shares. */
export interface Prepared {
  readonly train: readonly DemoBatch[];
  /** Pretraining-style rows for each training step of the retained setup. */
  readonly retention: readonly RetentionRows[];
  readonly evalSet: readonly DemoExample[];
  readonly prompts: readonly number[][];
}

export function demoBatch(examples: readonly DemoExample[], tokenizer: Tokenizer): DemoBatch {
  const eos = tokenizer.eosId;
  if (eos === undefined) throw new RoutedPeftError('the demo tokenizer has no EOS token');
  const prompts = examples.map((e) => tokenizer.encode(e.prompt, { addBos: true }));
  const completions = examples.map((e) => [...tokenizer.encode(e.completion), eos]);
  const width = (rows: readonly number[][]): number => Math.max(...rows.map((r) => r.length));
  const p = width(prompts);
  const c = width(completions);
  const fill = (n: number, v: number): number[] => Array.from({ length: n }, () => v);
  const prompt = prompts.map((r) => [...fill(p - r.length, 0), ...r]);
  const promptMask = prompts.map((r) => [...fill(p - r.length, 0), ...fill(r.length, 1)]);
  const completion = completions.map((r) => [...r, ...fill(c - r.length, 0)]);
  const completionMask = completions.map((r) => [...fill(r.length, 1), ...fill(c - r.length, 0)]);
  return {
    prompt,
    promptMask,
    completion,
    completionMask,
    ids: prompt.map((r, b) => [...r, ...(completion[b] as number[])]),
    mask: promptMask.map((r, b) => [...r, ...(completionMask[b] as number[])]),
    lossMask: promptMask.map((r, b) => [...fill(r.length, 0), ...(completionMask[b] as number[])]),
    routingMask: promptMask.map((r) => [...r, ...fill(c, 0)]),
    taskIds: examples.map((e) => e.task),
  };
}

export function prepare(tokenizer: Tokenizer, seed: number, sizes: DemoSizes): Prepared {
  const trainExamples = taskExamples(sizes.trainPerTask, seed);
  const order: number[] = [];
  const all = trainExamples.map((_, i) => i);
  for (let epoch = 0; order.length < sizes.steps * sizes.batchSize; epoch++) order.push(...seededShuffle(all, seed * 1009 + epoch));
  const train = Array.from({ length: sizes.steps }, (_, step) =>
    demoBatch(
      order.slice(step * sizes.batchSize, (step + 1) * sizes.batchSize).map((i) => trainExamples[i] as DemoExample),
      tokenizer,
    ),
  );
  const evalSet = heldOutExamples(sizes.evalPerTask, seed + 7919, new Set(trainExamples.map((e) => e.prompt)));
  const prompts = evalSet.map((e) => tokenizer.encode(e.prompt, { addBos: true }));
  // Retention rows: their own documents (never the evaluation's, seed RETENTION_EVAL_SEED), one batch per step.
  const documents = pretrainingDocuments(sizes.steps * sizes.retentionBatch, seed * 7 + 101);
  const tokenized = tokenizeExamples(
    documents.map((text, i) => ({ kind: 'text' as const, text, line: i + 1 })),
    tokenizer,
    { maxLength: 64, addEos: true },
  );
  const retention = makeBatches(tokenized, { batchSize: sizes.retentionBatch, shuffle: false }).map(({ ids, mask, lossMask }) => ({ ids, mask, lossMask }));
  return { train, retention, evalSet, prompts };
}

/** What training needs of a setup: its name (for the log), whether it sees task ids and retention rows. */
export type TrainedSetup = Pick<DemoSetup, 'usesTaskIds' | 'retention'> & { readonly name: string };

/**
 * Trains one setup with the library's Trainer: AdamW with the router / expert parameter groups, linear
 * warmup then cosine decay, global-norm clipping at 1, the non-finite guard. Every setup goes through it on
 * the same batches. Routers pool the prompt only (routingMask), so they decide in training exactly as they
 * will when serving, where the prompt is all they see.
 */
export function trainSetup(
  model: AdaptedModel,
  setup: TrainedSetup,
  prepared: Prepared,
  sizes: DemoSizes,
  log: (line: string) => void,
): { firstLoss: number | null; finalLoss: number | null } {
  const trainer = new Trainer(model, {
    optimizer: { lr: sizes.lr, routerLr: setup.retention ? sizes.retainedRouterLr : sizes.routerLr },
    schedule: { warmupSteps: sizes.warmupSteps, totalSteps: sizes.steps, minLrRatio: sizes.minLrRatio },
    maxGradNorm: 1,
    retentionWeight: sizes.retentionWeight,
  });
  let firstLoss: number | null = null;
  let finalLoss: number | null = null;
  try {
    let window = 0;
    let count = 0;
    const every = Math.max(1, Math.round(sizes.steps / 5));
    prepared.train.forEach((batch, step) => {
      const { ids, mask, lossMask, routingMask } = batch;
      const retention = setup.retention ? prepared.retention[step] : undefined;
      // Only the oracle is told the task.
      const report = trainer.step(
        setup.usesTaskIds
          ? { ids, mask, lossMask, routingMask, taskIds: batch.taskIds }
          : { ids, mask, lossMask, routingMask, ...(retention === undefined ? {} : { retention }) },
      );
      if (!report.skipped) {
        firstLoss ??= report.taskLoss;
        finalLoss = report.taskLoss;
      }
      window += report.taskLoss;
      count++;
      if ((step + 1) % every === 0 || step === prepared.train.length - 1) {
        log(`  ${setup.name.padEnd(6)} step ${String(step + 1).padStart(4)}/${sizes.steps}  loss ${(window / count).toFixed(3)}`);
        window = 0;
        count = 0;
      }
    });
    return { firstLoss, finalLoss };
  } finally {
    trainer.dispose();
  }
}

/** Greedy completions of every eval prompt, served in mixed left-padded batches. */
export function serve(
  model: AdaptedModel,
  setup: Pick<DemoSetup, 'usesTaskIds'>,
  prepared: Prepared,
  tokenizer: Tokenizer,
  sizes: DemoSizes,
  trace: RoutingTraceEntry[][] | undefined,
): string[] {
  const out: string[] = [];
  for (let start = 0; start < prepared.prompts.length; start += sizes.evalBatch) {
    const prompts = prepared.prompts.slice(start, start + sizes.evalBatch);
    const tasks = prepared.evalSet.slice(start, start + sizes.evalBatch).map((e) => e.task);
    const entries: RoutingTraceEntry[] | undefined = trace === undefined ? undefined : [];
    const generated = model.generate(prompts, {
      maxNewTokens: 9,
      temperature: 0,
      routing: { ...(setup.usesTaskIds ? { taskIds: tasks } : {}), ...(entries === undefined ? {} : { trace: entries }) },
    });
    if (entries !== undefined) trace?.push(entries);
    generated.forEach((ids, b) => out.push(decodeCompletion(tokenizer, ids, prompts[b]?.length ?? 0)));
  }
  return out;
}

/**
 * Mean token loss on documents (text with EOS), for base retention; with `choices`, also the share of
 * documents whose route decision gives the null expert the largest gate or applies nothing.
 */
function documentLoss(
  model: AdaptedModel,
  select: SelectionInput,
  tokenizer: Tokenizer,
  documents: readonly string[],
  maxLength: number,
  choices?: readonly string[],
): { loss: number; nullShare: number | null } {
  const tokenized = tokenizeExamples(
    documents.map((text, i) => ({ kind: 'text' as const, text, line: i + 1 })),
    tokenizer,
    { maxLength, addEos: true },
  );
  const batches = makeBatches(tokenized, { batchSize: 64, shuffle: false });
  let weighted = 0;
  let targets = 0;
  let sequences = 0;
  let toNull = 0;
  for (const batch of batches) {
    const n = batch.lossMask.reduce((s, row) => s + row.reduce((a, m) => a + m, 0), 0);
    const trace: RoutingTraceEntry[] | undefined = choices === undefined ? undefined : [];
    const loss = tf.tidy(() => causalLmLoss(model.forward({ ids: batch.ids, mask: batch.mask, select, routing: { trace } }), batch).dataSync()[0] as number);
    weighted += loss * n;
    targets += n;
    // One decision per sequence (the model router's): its first entry per row.
    const seen = new Set<number>();
    for (const entry of trace ?? []) {
      if (seen.has(entry.batch)) continue;
      seen.add(entry.batch);
      sequences++;
      let top = -1;
      entry.weights.forEach((w, k) => {
        if (w > 0 && (top < 0 || w > (entry.weights[top] ?? 0))) top = k;
      });
      if (top < 0 || entry.experts[top] === NULL_EXPERT) toNull++;
    }
  }
  return { loss: weighted / targets, nullShare: choices === undefined || sequences === 0 ? null : toNull / sequences };
}

/** Per-layer routing of the served sequences, from the prefill trace entries (one decision per sequence). */
function routingOf(
  trace: readonly (readonly RoutingTraceEntry[])[],
  prepared: Prepared,
  sizes: DemoSizes,
  experts: readonly string[],
  nLayers: number,
): RoutingSummary {
  const taskCount = DEMO_TASKS.length;
  const layers: LayerRouting[] = [];
  for (let layer = 0; layer < nLayers; layer++) {
    const sums = Array.from({ length: taskCount }, () => experts.map(() => 0));
    const counts = Array.from({ length: taskCount }, () => 0);
    const assignments: { task: number; expert: string }[] = [];
    let router = 'layer';
    trace.forEach((entries, chunk) => {
      const seen = new Set<number>();
      for (const entry of entries) {
        if (entry.layer !== layer || seen.has(entry.batch)) continue;
        seen.add(entry.batch);
        router = entry.site;
        const example = prepared.evalSet[chunk * sizes.evalBatch + entry.batch];
        if (example === undefined) continue;
        const gates = experts.map((name) => {
          const k = entry.experts.indexOf(name);
          return k < 0 ? 0 : (entry.weights[k] ?? 0);
        });
        gates.forEach((g, e) => {
          (sums[example.task] as number[])[e] = ((sums[example.task] as number[])[e] as number) + g;
        });
        counts[example.task] = (counts[example.task] as number) + 1;
        const top = gates.indexOf(Math.max(...gates));
        assignments.push({ task: example.task, expert: experts[top] as string });
      }
    });
    if (assignments.length === 0) continue;
    const shares = sums.map((row, t) => row.map((s) => s / Math.max(1, counts[t] as number)));
    const total = counts.reduce((a, b) => a + b, 0);
    const load = experts.map((_, e) => sums.reduce((s, row) => s + (row[e] as number), 0) / total);
    const purity = routingPurity(assignments);
    layers.push({ layer, router, experts: [...experts], shares, load, purity: purity.purity, mutualInformation: purity.mutualInformation });
  }
  const mean = (values: readonly number[]): number => (values.length === 0 ? 0 : values.reduce((a, b) => a + b, 0) / values.length);
  return {
    purity: mean(layers.map((l) => l.purity)),
    mutualInformation: mean(layers.map((l) => l.mutualInformation)),
    load: Object.fromEntries(experts.map((name, e) => [name, mean(layers.map((l) => l.load[e] as number))])),
    layers,
  };
}

/** `all layers` for a model-level router (it reads one layer and routes every layer), else `layer N`. */
export function routerLabel(routing: Pick<LayerRouting, 'layer' | 'router'>): string {
  return routing.router === 'model' ? 'all layers' : `layer ${routing.layer}`;
}

export function accuracyOf(predictions: readonly string[], evalSet: readonly DemoExample[]): TaskAccuracy {
  const perTask = DEMO_TASKS.map((task) => {
    const indices = evalSet.map((e, i) => (e.task === task.id ? i : -1)).filter((i) => i >= 0);
    const right = indices.filter((i) => exactMatch(predictions[i] ?? '', evalSet[i]?.completion ?? '')).length;
    return [task.name, indices.length === 0 ? 0 : right / indices.length] as const;
  });
  const mean = perTask.reduce((s, [, a]) => s + a, 0) / perTask.length;
  return { ...Object.fromEntries(perTask), mean } as TaskAccuracy;
}

// ---------------------------------------------------------------------------------------------------------
// The demo

/** What one run (one seed) measured. */
interface RunResult {
  readonly seed: number;
  readonly setups: ReadonlyMap<SetupName, SetupSummary>;
  readonly predictions: ReadonlyMap<SetupName, readonly string[]>;
  readonly routing: RoutingSummary;
  readonly retention: BaseRetention;
  readonly retainedRouting: RoutingSummary;
  readonly retainedRetention: BaseRetention;
  readonly evalSet: readonly DemoExample[];
}

interface RunContext {
  readonly base: Transformer;
  readonly tokenizer: Tokenizer;
  readonly routers: RouterRegistry;
  readonly sizes: DemoSizes;
  readonly design: typeof DEMO_ADAPTERS;
  readonly log: (line: string) => void;
}

const seconds = (since: number): number => (performance.now() - since) / 1000;
const mean = (values: readonly number[]): number => (values.length === 0 ? 0 : values.reduce((a, b) => a + b, 0) / values.length);

/** Trains, serves and measures the three setups once, from one seed. */
function runOnce(context: RunContext, seed: number): RunResult {
  const { base, tokenizer, routers, sizes, design, log } = context;
  const prepared = prepare(tokenizer, seed, sizes);
  const setups = buildSetups(base, routers, { tasks: DEMO_TASKS.map((t) => t.name), seed, ...design });
  const budget = (setups.find((s) => s.name === 'routed') as DemoSetup).trainableParams;
  log(`seed ${seed}: budgets ${setups.map((s) => `${s.name} ${s.trainableParams}`).join(', ')}; ${sizes.steps} steps of ${sizes.batchSize}, lr ${sizes.lr}`);
  const retentionDocs = pretrainingDocuments(sizes.retentionDocuments, 4242);
  const results = new Map<SetupName, SetupSummary>();
  const predictions = new Map<SetupName, string[]>();
  let routing: RoutingSummary | undefined;
  let retention: BaseRetention | undefined;
  let retainedRouting: RoutingSummary | undefined;
  let retainedRetention: BaseRetention | undefined;
  for (const setup of setups) {
    const model = AdaptedModel.create(base, setup.spec, { routers });
    try {
      const report = model.parameterReport();
      const trainStart = performance.now();
      const losses = trainSetup(model, setup, prepared, sizes, log);
      const trainSeconds = seconds(trainStart);
      const evalStart = performance.now();
      const trace: RoutingTraceEntry[][] | undefined = setup.choices !== undefined ? [] : undefined;
      const predicted = serve(model, setup, prepared, tokenizer, sizes, trace);
      let retentionDelta: number | null = null;
      let nullShare: number | null = null;
      if (!setup.usesTaskIds) {
        const adapted = documentLoss(model, 'spec', tokenizer, retentionDocs, base.config.maxSeqLen, setup.choices);
        const baseLoss = documentLoss(model, 'base', tokenizer, retentionDocs, base.config.maxSeqLen).loss;
        retentionDelta = adapted.loss - baseLoss;
        nullShare = adapted.nullShare;
        if (setup.name === 'routed') retention = baseRetention(adapted.loss, baseLoss);
        if (setup.name === 'retained') retainedRetention = baseRetention(adapted.loss, baseLoss);
      }
      const setupRouting =
        trace === undefined || setup.choices === undefined ? undefined : routingOf(trace, prepared, sizes, setup.choices, base.config.nLayers);
      if (setup.name === 'routed') routing = setupRouting;
      if (setup.name === 'retained') retainedRouting = setupRouting;
      const accuracy = accuracyOf(predicted, prepared.evalSet);
      predictions.set(setup.name, predicted);
      results.set(setup.name, {
        description: setup.description,
        accuracy,
        trainableParams: report.trainable,
        trainableFraction: report.trainableFraction,
        budgetDifference: (report.trainable - budget) / budget,
        firstLoss: losses.firstLoss,
        finalLoss: losses.finalLoss,
        retentionDelta,
        nullShare,
        purity: setupRouting?.purity ?? null,
        trainSeconds,
        evalSeconds: seconds(evalStart),
      });
      log(
        `${setup.name}: mean accuracy ${(accuracy.mean * 100).toFixed(1)}% (${DEMO_TASKS.map((t) => `${t.name} ${((accuracy[t.name] ?? 0) * 100).toFixed(0)}%`).join(', ')}), train ${trainSeconds.toFixed(1)}s`,
      );
    } finally {
      model.dispose();
    }
  }
  if (routing === undefined || retention === undefined) throw new Error('the routed setup did not run');
  if (retainedRouting === undefined || retainedRetention === undefined) throw new Error('the retained setup did not run');
  return { seed, setups: results, predictions, routing, retention, retainedRouting, retainedRetention, evalSet: prepared.evalSet };
}

/** One setup's figures averaged over runs (times summed: they are what the user waited for). */
function meanSetup(runs: readonly RunResult[], name: SetupName): SetupSummary {
  const all = runs.map((r) => r.setups.get(name) as SetupSummary);
  const first = all[0] as SetupSummary;
  const names = [...DEMO_TASKS.map((t) => t.name), 'mean'];
  const nullableMean = (values: readonly (number | null)[]): number | null => (values.some((v) => v === null) ? null : mean(values as number[]));
  return {
    ...first,
    accuracy: Object.fromEntries(names.map((task) => [task, mean(all.map((s) => s.accuracy[task] ?? 0))])) as TaskAccuracy,
    firstLoss: nullableMean(all.map((s) => s.firstLoss)),
    finalLoss: nullableMean(all.map((s) => s.finalLoss)),
    retentionDelta: nullableMean(all.map((s) => s.retentionDelta)),
    nullShare: nullableMean(all.map((s) => s.nullShare)),
    purity: nullableMean(all.map((s) => s.purity)),
    trainSeconds: all.reduce((t, s) => t + s.trainSeconds, 0),
    evalSeconds: all.reduce((t, s) => t + s.evalSeconds, 0),
  };
}

/** Routing averaged over runs, layer by layer (each run's experts are its own: e0 of one seed is not e0 of another). */
function meanRouting(runs: readonly RunResult[], which: 'routing' | 'retainedRouting' = 'routing'): RoutingSummary {
  const routings = runs.map((r) => r[which]);
  const first = routings[0] as RoutingSummary;
  return {
    purity: mean(routings.map((r) => r.purity)),
    mutualInformation: mean(routings.map((r) => r.mutualInformation)),
    load: Object.fromEntries(Object.keys(first.load).map((expert) => [expert, mean(routings.map((r) => r.load[expert] ?? 0))])),
    layers: first.layers,
  };
}

export async function runDemo(options: DemoOptions): Promise<DemoSummary> {
  const started = performance.now();
  const seed = options.seed ?? 0;
  const quick = options.quick ?? false;
  const sizes: DemoSizes = { ...(quick ? QUICK_SIZES : FULL_SIZES), ...options.sizes };
  if (!Number.isInteger(sizes.runs) || sizes.runs < 1) throw new RoutedPeftError(`demo: runs must be a whole number >= 1, got ${sizes.runs}`);
  const design = { ...DEMO_ADAPTERS, ...options.adapters };
  const log = options.log ?? ((): void => {});

  await selectBackend();
  const modelDir = resolve(options.modelDir ?? demoModelDir());
  const { model: base } = await loadBaseModel(modelDir);
  const startTensors = tf.memory().numTensors;
  try {
    const tokenizer = await loadTokenizer(modelDir);
    log(
      `base ${modelDir}: ${base.config.nLayers} layers, D=${base.config.dim}, ${base.parameterCount} parameters; backend ${getBackendReport()?.chosen ?? tf.getBackend()}`,
    );
    const context: RunContext = { base, tokenizer, routers: options.routers, sizes, design, log };
    const runs = Array.from({ length: sizes.runs }, (_, i) => runOnce(context, seed + i));
    const firstRun = runs[0] as RunResult;

    const setupSummaries = Object.fromEntries(SETUP_NAMES.map((name) => [name, meanSetup(runs, name)])) as Record<SetupName, SetupSummary>;
    const routing = meanRouting(runs);
    const retention = baseRetention(mean(runs.map((r) => r.retention.routedLoss)), mean(runs.map((r) => r.retention.baseLoss)));
    const retainedRetention = baseRetention(mean(runs.map((r) => r.retainedRetention.routedLoss)), mean(runs.map((r) => r.retainedRetention.baseLoss)));
    const demoRuns: DemoRun[] = runs.map((r) => {
      const accuracy = Object.fromEntries(SETUP_NAMES.map((name) => [name, r.setups.get(name)?.accuracy.mean ?? 0])) as Record<SetupName, number>;
      return { seed: r.seed, accuracy, margin: accuracy.routed - accuracy.shared, purity: r.routing.purity, mutualInformation: r.routing.mutualInformation };
    });
    const examples: DemoPrediction[] = firstRun.evalSet.slice(0, 8).map((e, i) => ({
      task: DEMO_TASKS[e.task]?.name ?? String(e.task),
      prompt: e.prompt,
      expected: e.completion,
      predicted: Object.fromEntries(SETUP_NAMES.map((name) => [name, firstRun.predictions.get(name)?.[i] ?? ''])) as Record<SetupName, string>,
    }));

    const outDir = resolve(options.outDir);
    await mkdir(outDir, { recursive: true });
    const heatmapPath = join(outDir, 'routing-heatmap.svg');
    const summaryPath = join(outDir, 'summary.json');
    const summary: DemoSummary = {
      seed,
      quick,
      backend: getBackendReport()?.chosen ?? tf.getBackend(),
      model: { path: modelDir, parameters: base.parameterCount, layers: base.config.nLayers, dim: base.config.dim, vocab: base.config.vocabSize },
      tasks: DEMO_TASKS.map((t) => {
        const sample = taskExamples(1, 1, [t])[0];
        return { name: t.name, description: t.description, example: sample === undefined ? '' : `${sample.prompt}${sample.completion}` };
      }),
      sizes,
      setups: setupSummaries,
      routing,
      retention,
      retainedRetention,
      retainedRouting: meanRouting(runs, 'retainedRouting'),
      margin: mean(demoRuns.map((r) => r.margin)),
      runs: demoRuns,
      budgetTolerance: Math.max(...SETUP_NAMES.map((n) => Math.abs(setupSummaries[n].budgetDifference))),
      examples,
      files: { heatmap: heatmapPath, summary: summaryPath },
      seconds: seconds(started),
    };
    await writeFile(
      heatmapPath,
      renderHeatmap({
        title: `Routing of served requests: mean gate weight per task and expert (seed ${seed}${quick ? ', quick' : ''})`,
        columns: firstRun.routing.layers[0]?.experts ?? [],
        groups: firstRun.routing.layers.map((l) => ({ label: routerLabel(l), rows: DEMO_TASKS.map((t, i) => ({ label: t.name, values: l.shares[i] ?? [] })) })),
      }),
    );
    await writeFile(summaryPath, `${JSON.stringify(summary, null, 2)}\n`);
    if (tf.memory().numTensors !== startTensors) log(`warning: ${tf.memory().numTensors - startTensors} tensors leaked`);
    return summary;
  } finally {
    base.dispose();
  }
}
