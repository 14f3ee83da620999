/**
 * Evaluation of a routed model on a language-modelling dataset:
 *
 *  - loss: mean next-token cross-entropy over the targets the trainer would score (batches.ts convention:
 *    completions + EOS for prompt/completion lines, every token after the first for text), and perplexity;
 *  - per task: token-weighted loss, count, and for prompt/completion examples exact-match accuracy of the
 *    greedy completion (generated from the tokens the model saw before the completion, compared with
 *    metrics.ts exactMatch, i.e. after trimming);
 *  - routing, from the traces of the scoring forwards: per-(layer, point) expert load, the dropped rate,
 *    and how well routing separates tasks: every routed decision of every real token is assigned to its
 *    sequence's task with its top (largest-weight) expert, and purity and normalised mutual information
 *    are computed over those assignments (metrics.ts routingPurity);
 *  - base retention, when base-domain texts are given: their loss with the model against the bare base
 *    (`select: 'base'`).
 *
 * Scoring forwards run with training false (no router noise, no dropout), batch by batch, each in a tidy.
 * Shape letters: B batch, T tokens, V vocabulary.
 */
import * as tf from '@tensorflow/tfjs';
import { oneHotFloat } from '../base/one-hot.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import type { AdaptedModel } from '../model/adapted-model.js';
import { MultimodalModel, type RowImages } from '../model/multimodal-model.js';
import type { SelectionInput } from '../model/selection.js';
import { DeferredTraceReads, NULL_EXPERT, type RoutingTraceEntry } from '../routing/trace.js';
import { ConfigError } from '../errors.js';
import { makeBatches, tokenizeExamples, type TokenizedExample, type TrainBatch } from './batches.js';
import { DatasetError } from './dataset-errors.js';
import type { Dataset, Example } from './dataset.js';
import { exampleImageLoader, hasImages } from './example-images.js';
import { lmTargetWeights } from './losses.js';
import {
  baseRetention,
  exactMatch,
  expertLoad,
  nullShare,
  perplexity,
  routingPurity,
  type BaseRetention,
  type ExpertLoad,
  type RoutingAssignment,
} from './metrics.js';

/** Name under which examples without a task are reported. */
export const NO_TASK = '(none)';

export interface EvaluateOptions {
  /** A MultimodalModel reads the rows' images (PNG paths or generated specs); an AdaptedModel refuses them. */
  readonly model: AdaptedModel | MultimodalModel;
  readonly tokenizer: Tokenizer;
  /** A language-modelling dataset (text and/or prompt/completion lines). */
  readonly dataset: Dataset;
  readonly batchSize: number;
  /**
   * Greedy tokens generated per prompt/completion example for exact match. Default: as many as the expected
   * completion has (EOS included); 0 skips generation (accuracy null).
   */
  readonly maxNewTokens?: number;
  /** Longest scored row, BOS and EOS included (default: the model's maxSeqLen). */
  readonly maxLength?: number;
  /** Adapters applied (default: the spec's composition). */
  readonly select?: SelectionInput | undefined;
  /** Base-domain texts: their loss with the model vs the bare base gives `baseRetention`. */
  readonly baseText?: readonly string[];
}

export interface TaskEvaluation {
  /** Token-weighted mean loss over the task's targets (null without targets). */
  readonly loss: number | null;
  /** Exact-match rate over the task's prompt/completion examples (null when none was generated). */
  readonly accuracy: number | null;
  /** Examples. */
  readonly count: number;
  /** Scored target tokens. */
  readonly tokens: number;
}

export interface RoutingEvaluation {
  /** Share of routed decisions whose top expert is their task's most frequent one (null without tasks). */
  readonly purity: number | null;
  /** Normalised mutual information I(task; top expert) / min(H(task), H(expert)) (null without tasks). */
  readonly mutualInformation: number | null;
  /** Expert load per (layer, routed point, route). */
  readonly load: ExpertLoad[];
  /** Dropped decisions / decisions, over every route and layer. */
  readonly droppedRate: number;
  /** Trace entries (routed decisions × real tokens). */
  readonly decisions: number;
}

export interface EvaluationResult {
  /** Mean loss over every scored target token (nats; null when there is none). */
  readonly loss: number | null;
  readonly perplexity: number | null;
  readonly tokens: number;
  readonly count: number;
  /** By task name (dataset.tasks), or NO_TASK for examples without one. */
  readonly tasks: Record<string, TaskEvaluation>;
  /** null when the applied composition routes nothing. */
  readonly routing: RoutingEvaluation | null;
  /**
   * With base-domain texts: their loss with the model vs the bare base, and `nullShare`, the share of their
   * routed decisions × tokens that apply no expert (the null expert's gate is the largest, or every gate is
   * 0); null when the selection routes nothing.
   */
  readonly baseRetention?: BaseRetention & { readonly nullShare: number | null };
}

/** Per-row Σ target NLL and target counts of one forward's logits [B, T, V]. */
async function rowLosses(logits: tf.Tensor, batch: TrainBatch): Promise<{ sums: Float32Array; counts: number[] }> {
  const weights = lmTargetWeights(batch.mask, batch.lossMask);
  const counts = weights.map((row) => row.reduce((s, w) => s + w, 0));
  const [rows, tokens, vocab] = logits.shape as [number, number, number];
  if (tokens < 2) return { sums: new Float32Array(rows), counts };
  const sums = tf.tidy(() => {
    const predicting = tf.slice(logits, [0, 0, 0], [rows, tokens - 1, vocab]); // [B, T−1, V]
    const logProbs = tf.logSoftmax(predicting); // [B, T−1, V]
    const targetIds = tf.tensor2d(
      batch.ids.map((r) => r.slice(1)),
      [rows, tokens - 1],
      'int32',
    ); // [B, T−1]
    const targets = oneHotFloat<tf.Tensor3D>(targetIds, vocab); // [B, T−1, V]
    const nll = tf.neg(tf.sum(tf.mul(targets, logProbs), -1)); // [B, T−1]
    const w = tf.tensor2d(weights, [rows, tokens - 1], 'float32'); // [B, T−1]
    return tf.sum(tf.mul(nll, w), 1); // [B]
  });
  try {
    return { sums: Float32Array.from(await sums.data()), counts }; // one read per batch, never blocking a GPU
  } finally {
    sums.dispose();
  }
}

interface Scored {
  lossSum: number;
  tokens: number;
  perExample: { loss: number; tokens: number }[];
  trace: RoutingTraceEntry[];
}

/** The images of a batch's rows by example index; undefined: the examples have none. */
type ImageLoader = ((indices: readonly number[]) => Promise<RowImages>) | undefined;

/** Scores tokenized examples (in their order) with the selection; traces routing when asked. */
async function score(
  model: AdaptedModel | MultimodalModel,
  tokenized: readonly TokenizedExample[],
  batchSize: number,
  select: SelectionInput | undefined,
  withTrace: boolean,
  images: ImageLoader = undefined,
): Promise<Scored> {
  const perExample = tokenized.map(() => ({ loss: 0, tokens: 0 }));
  const trace: RoutingTraceEntry[] = [];
  let lossSum = 0;
  let tokens = 0;
  for (const batch of makeBatches(tokenized, { batchSize, shuffle: false })) {
    const batchTrace: RoutingTraceEntry[] | undefined = withTrace ? [] : undefined;
    const traceReads = withTrace ? new DeferredTraceReads() : undefined; // the trace is read after the forward, like the losses
    let logits: tf.Tensor | undefined;
    const rowImages = images === undefined ? undefined : await images(batch.indices);
    try {
      logits = model.forward({
        ids: batch.ids,
        mask: batch.mask,
        training: false,
        routing: { routingMask: batch.routingMask, taskIds: batch.taskIds, trace: batchTrace, traceReads },
        select,
        ...(rowImages === undefined ? {} : { images: rowImages }),
      }); // [B, T, V]
      const { sums, counts } = await rowLosses(logits, batch);
      await traceReads?.flush();
      batch.indices.forEach((index, b) => {
        const n = counts[b] ?? 0;
        const sum = sums[b] ?? 0;
        perExample[index] = { loss: n === 0 ? 0 : sum / n, tokens: n };
        lossSum += sum;
        tokens += n;
      });
    } finally {
      logits?.dispose();
      traceReads?.dispose();
    }
    // Map the trace's batch rows back to example positions.
    for (const entry of batchTrace ?? []) trace.push({ ...entry, batch: batch.indices[entry.batch] ?? entry.batch });
  }
  return { lossSum, tokens, perExample, trace };
}

/** The tokens before the first target: what the model saw when the completion started. */
function promptPrefix(example: TokenizedExample): number[] {
  const first = example.lossMask.indexOf(1);
  return first < 0 ? [...example.ids] : example.ids.slice(0, first);
}

/** Greedy exact match of prompt/completion examples (indices into `examples`), batched. */
async function exactMatches(
  options: EvaluateOptions,
  examples: readonly Example[],
  tokenized: readonly TokenizedExample[],
  indices: readonly number[],
  images: ImageLoader,
): Promise<Map<number, boolean>> {
  const { model, tokenizer, batchSize } = options;
  const results = new Map<number, boolean>();
  const jobs = indices
    .map((i) => {
      const t = tokenized[i] as TokenizedExample;
      const budget = options.maxNewTokens ?? t.lossMask.reduce((s, m) => s + m, 0);
      return { i, prompt: promptPrefix(t), budget, task: t.task };
    })
    .filter((job) => job.prompt.length > 0 && job.budget > 0);
  for (let start = 0; start < jobs.length; start += batchSize) {
    const chunk = jobs.slice(start, start + batchSize);
    const maxNewTokens = Math.max(...chunk.map((j) => j.budget));
    const taskIds = chunk.every((j) => j.task !== undefined) ? chunk.map((j) => j.task as number) : undefined;
    const rowImages = images === undefined ? undefined : await images(chunk.map((j) => j.i));
    const outputs = await model.generateAsync(
      chunk.map((j) => j.prompt),
      {
        maxNewTokens,
        temperature: 0,
        eosId: tokenizer.eosId ?? null,
        routing: { taskIds },
        select: options.select,
        ...(rowImages === undefined ? {} : { images: rowImages }),
      },
    );
    chunk.forEach((job, b) => {
      const generated = (outputs[b] ?? []).slice(job.prompt.length, job.prompt.length + job.budget);
      const eos = tokenizer.eosId === undefined ? -1 : generated.indexOf(tokenizer.eosId);
      const completionIds = eos < 0 ? generated : generated.slice(0, eos);
      const before = tokenizer.decode(job.prompt);
      const whole = tokenizer.decode([...job.prompt, ...completionIds]);
      const predicted = whole.startsWith(before) ? whole.slice(before.length) : tokenizer.decode(completionIds);
      const example = examples[job.i];
      results.set(job.i, example?.kind === 'prompt-completion' && exactMatch(predicted, example.completion));
    });
  }
  return results;
}

function routingStatistics(model: AdaptedModel, trace: readonly RoutingTraceEntry[], taskOf: (example: number) => number | undefined): RoutingEvaluation {
  const load: ExpertLoad[] = [];
  for (const route of model.routes) {
    const entries = trace.filter((e) => e.route === route.index);
    if (entries.length > 0) load.push(...expertLoad(entries, { experts: route.expertNames }));
  }
  load.sort((a, b) => a.layer - b.layer || a.route - b.route || (a.site < b.site ? -1 : a.site > b.site ? 1 : 0));
  const assignments: RoutingAssignment[] = [];
  let dropped = 0;
  let withTasks = true;
  for (const entry of trace) {
    if (entry.dropped) dropped++;
    const task = taskOf(entry.batch);
    if (task === undefined) withTasks = false;
    if (entry.dropped || entry.experts.length === 0 || task === undefined) continue;
    let top = 0;
    entry.weights.forEach((w, k) => {
      if (w > (entry.weights[top] ?? -Infinity)) top = k;
    });
    assignments.push({ task, expert: entry.experts[top] as string });
  }
  const purity = withTasks && trace.length > 0 ? routingPurity(assignments) : undefined;
  return {
    purity: purity?.purity ?? null,
    mutualInformation: purity?.mutualInformation ?? null,
    load,
    droppedRate: trace.length === 0 ? 0 : dropped / trace.length,
    decisions: trace.length,
  };
}

/** Loads the rows' images for a MultimodalModel; an AdaptedModel has no encoder, so image rows are refused by name. */
export function imageLoader(model: AdaptedModel | MultimodalModel, examples: readonly Example[], source: string): NonNullable<ImageLoader> {
  if (!(model instanceof MultimodalModel)) {
    const first = examples.find((e) => e.kind !== 'labelled' && e.image !== undefined);
    throw new DatasetError(`${source}: line ${first?.line ?? '?'} carries an "image", but the model has no vision encoder`, {
      path: source,
      hint: 'Use a MultimodalModel (a language model joined with a vision encoder) for image rows, or remove the image fields',
    });
  }
  return exampleImageLoader(examples, model.encoder.config.imageSize);
}

/**
 * Evaluates a model on a language-modelling dataset: loss, per-task loss and exact match, routing statistics.
 * Every result is read with `await data()`, so it runs on every backend (webgpu included).
 */
export async function evaluateDataset(options: EvaluateOptions): Promise<EvaluationResult> {
  const { model, tokenizer, dataset, batchSize } = options;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new ConfigError(`batchSize must be an integer ≥ 1, got ${batchSize}`, { path: 'batchSize' });
  if (options.maxNewTokens !== undefined && (!Number.isInteger(options.maxNewTokens) || options.maxNewTokens < 0)) {
    throw new ConfigError(`maxNewTokens must be an integer ≥ 0, got ${options.maxNewTokens}`, { path: 'maxNewTokens' });
  }
  if (dataset.kind !== 'language-modelling') {
    throw new DatasetError(`${dataset.source}: evaluation needs language-modelling data (text or prompt/completion lines), not labelled classification lines`, {
      path: dataset.source,
      hint: 'Evaluate classification with the trainer’s head instead',
    });
  }
  const language = model instanceof MultimodalModel ? model.language : model;
  const examples = dataset.examples;
  const images = hasImages(examples) ? imageLoader(model, examples, dataset.source) : undefined;
  const maxLength = options.maxLength ?? language.base.config.maxSeqLen;
  const tokenized = tokenizeExamples(examples, tokenizer, { maxLength });
  const routed = language.resolveSelection(options.select) !== undefined && language.routes.length > 0;
  const scored = await score(model, tokenized, batchSize, options.select, routed, images);

  const completionIndices = examples.flatMap((e, i) => (e.kind === 'prompt-completion' ? [i] : []));
  const matches = options.maxNewTokens === 0 ? new Map<number, boolean>() : await exactMatches(options, examples, tokenized, completionIndices, images);

  const nameOf = (task: number | undefined): string => (task === undefined ? NO_TASK : (dataset.tasks[task] ?? String(task)));
  const groups = new Map<string, { lossSum: number; tokens: number; count: number; right: number; judged: number }>();
  examples.forEach((example, i) => {
    const key = nameOf(example.task);
    const g = groups.get(key) ?? { lossSum: 0, tokens: 0, count: 0, right: 0, judged: 0 };
    const s = scored.perExample[i] ?? { loss: 0, tokens: 0 };
    g.lossSum += s.loss * s.tokens;
    g.tokens += s.tokens;
    g.count++;
    const match = matches.get(i);
    if (match !== undefined) {
      g.judged++;
      if (match) g.right++;
    }
    groups.set(key, g);
  });
  const tasks: Record<string, TaskEvaluation> = {};
  for (const [name, g] of groups) {
    tasks[name] = {
      loss: g.tokens === 0 ? null : g.lossSum / g.tokens,
      accuracy: g.judged === 0 ? null : g.right / g.judged,
      count: g.count,
      tokens: g.tokens,
    };
  }

  const loss = scored.tokens === 0 ? null : scored.lossSum / scored.tokens;
  const routing = routed ? routingStatistics(language, scored.trace, (i) => examples[i]?.task) : null;
  const result: EvaluationResult = { loss, perplexity: loss === null ? null : perplexity(loss), tokens: scored.tokens, count: examples.length, tasks, routing };
  if (options.baseText === undefined || options.baseText.length === 0) return result;

  const baseExamples: Example[] = options.baseText.map((text, i) => ({ kind: 'text', text, line: i + 1 }));
  const baseTokenized = tokenizeExamples(baseExamples, tokenizer, { maxLength });
  const withModel = await score(model, baseTokenized, batchSize, options.select, routed);
  const bare = await score(model, baseTokenized, batchSize, 'base', false);
  if (withModel.tokens === 0) return result;
  const share = routed ? nullShare(withModel.trace, NULL_EXPERT) : null;
  return { ...result, baseRetention: { ...baseRetention(withModel.lossSum / withModel.tokens, bare.lossSum / bare.tokens), nullShare: share } };
}
