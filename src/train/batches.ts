/**
 * From examples to rectangular batches of token ids: tokenisation with a loss mask, seeded shuffling and
 * padding, packing, and a deterministic train/validation split. All plain arrays; no tensors.
 *
 * Loss-mask convention (shared with the trainer): `lossMask[t] = 1` means token `ids[t]` is a target, i.e. the
 * logits at position t − 1 are scored against `ids[t]`. So `lossMask[0]` is always 0 (nothing predicts the
 * first token), padding is always 0, and a row's loss is Σ_t lossMask[t] · CE(logits[t − 1], ids[t]) / Σ lossMask.
 *
 *   text               every token after the first
 *   prompt/completion  the completion tokens and the EOS (never BOS or the prompt)
 *   labelled           none (their loss comes from `label`); Σ lossMask may therefore be 0
 */
import { z } from 'zod';
import { parseConfig } from '../config/parse.js';
import { ConfigError } from '../errors.js';
import { seededRandom } from '../base/sampling.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import { DatasetError } from './dataset-errors.js';
import type { Example } from './dataset.js';

// ---------------------------------------------------------------------------------------------------------
// Tokenisation

/** Tokens removed to fit maxLength. */
export interface Truncation {
  /** Prompt tokens dropped from the left (after BOS). Text and labelled examples never lose their start. */
  readonly fromStart: number;
  /** Tokens dropped from the end: of the completion (EOS included) or of the text. */
  readonly fromEnd: number;
  /**
   * `false` when the text was so much longer than maxLength that only a window of it was encoded (tokenising
   * stays linear in what is used): the counts are then lower bounds — the tokens dropped inside that window.
   */
  readonly exact?: false;
}

export interface TokenizedExample {
  readonly ids: readonly number[];
  /** 1 where ids[t] is a target (see the file header); same length as ids. */
  readonly lossMask: readonly number[];
  readonly task?: number;
  readonly label?: number;
  /** Source line of the example, when known. */
  readonly line?: number;
  /** Present when the example was cut to fit maxLength. */
  readonly truncated?: Truncation;
  /** Prompt/completion examples: how many leading ids (BOS and prompt) are the prompt, what routers may read. */
  readonly promptLength?: number;
}

export const TokenizeOptions = z
  .object({
    /** Longest row in tokens, BOS and EOS included. */
    maxLength: z.number().int().min(2),
    /** Prepend BOS. Default: when the tokenizer has one. */
    addBos: z.boolean().optional(),
    /**
     * Append EOS. Default: for prompt/completion examples when the tokenizer has one (the model learns where a
     * completion stops); not for text or labelled examples. `true` appends it to every example.
     */
    addEos: z.boolean().optional(),
  })
  .strict()
  .readonly();
export type TokenizeOptions = z.input<typeof TokenizeOptions>;

function specialId(tokenizer: Tokenizer, which: 'bos' | 'eos', explicit: boolean | undefined): number | undefined {
  const id = which === 'bos' ? tokenizer.bosId : tokenizer.eosId;
  if (explicit === true && id === undefined) {
    throw new ConfigError(`add${which === 'bos' ? 'Bos' : 'Eos'} is true but the ${tokenizer.kind} tokenizer has no ${which.toUpperCase()} id`, {
      path: `tokenize options.add${which === 'bos' ? 'Bos' : 'Eos'}`,
      hint: 'Leave the option unset to use the special token only when the tokenizer has one',
    });
  }
  return explicit === false ? undefined : id;
}

function commonPrefixLength(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

function sameIds(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Bounded tokenising. A line far longer than maxLength is never encoded whole (tokenizers can be quadratic
 * in the length of a word: a 200 KB line took 44 s): only a window of about (budget + WINDOW_MARGIN) ×
 * WINDOW_CHARS_PER_TOKEN characters next to the part that is kept is encoded, growing ×2 until the kept
 * tokens come out the same from two window sizes and lie WINDOW_MARGIN tokens away from the cut. Text up to
 * twice that window is encoded whole, so truncation counts there are exact.
 */
const WINDOW_CHARS_PER_TOKEN = 8;
const WINDOW_MARGIN = 16;

function windowChars(budget: number): number {
  return (budget + WINDOW_MARGIN) * WINDOW_CHARS_PER_TOKEN;
}

/** The first `k` UTF-16 units of `text`, not splitting a surrogate pair. */
function head(text: string, k: number): string {
  if (k >= text.length) return text;
  const code = text.charCodeAt(k - 1);
  return text.slice(0, code >= 0xd800 && code <= 0xdbff ? k - 1 : k);
}

/** The last `k` UTF-16 units of `text`, not splitting a surrogate pair. */
function tail(text: string, k: number): string {
  if (k >= text.length) return text;
  const start = text.length - k;
  const code = text.charCodeAt(start);
  return text.slice(code >= 0xdc00 && code <= 0xdfff ? start + 1 : start);
}

interface Pieces {
  readonly prefix: number[];
  readonly target: number[];
  readonly fromStart: number;
  readonly fromEnd: number;
  readonly exact: boolean;
}

/** Cuts prefix and target to `budget` tokens: the prompt loses its start first, then the target its end. */
function fitToBudget(prefix: number[], target: number[], budget: number): { prefix: number[]; target: number[]; fromStart: number; fromEnd: number } {
  const excess = prefix.length + target.length - budget;
  const fromStart = excess > 0 ? Math.min(prefix.length, excess) : 0;
  const fromEnd = excess > fromStart ? excess - fromStart : 0;
  return { prefix: prefix.slice(fromStart), target: target.slice(0, target.length - fromEnd), fromStart, fromEnd };
}

/** Prompt/completion pieces from windows of the prompt's end (`kp` units) and the completion's start (`kc`). */
function completionPieces(
  tokenizer: Tokenizer,
  prompt: string,
  completion: string,
  kp: number,
  kc: number,
  eosId: number | undefined,
  budget: number,
): Pieces & { readonly enough: boolean } {
  const promptWindow = tail(prompt, kp);
  const completionWindow = head(completion, kc);
  const promptCut = promptWindow.length < prompt.length;
  const completionCut = completionWindow.length < completion.length;
  const whole = tokenizer.encode(promptWindow + completionWindow);
  const promptOnly = promptWindow === '' ? [] : tokenizer.encode(promptWindow);
  const boundary = commonPrefixLength(whole, promptOnly);
  // Tokens near a cut may differ from the full encoding's: drop WINDOW_MARGIN of them on each cut side.
  let prefix = whole.slice(promptCut ? Math.min(boundary, WINDOW_MARGIN) : 0, boundary);
  let target = whole.slice(boundary, completionCut ? Math.max(boundary, whole.length - WINDOW_MARGIN) : whole.length);
  if (!completionCut && eosId !== undefined) target.push(eosId);
  if (completionCut && target.length < budget) return { prefix, target, fromStart: 0, fromEnd: 0, exact: false, enough: false };
  const kept = Math.min(target.length, budget);
  if (promptCut && prefix.length < budget - kept) return { prefix, target, fromStart: 0, fromEnd: 0, exact: false, enough: false };
  const fitted = fitToBudget(prefix, target, budget);
  prefix = fitted.prefix;
  target = fitted.target;
  return { prefix, target, fromStart: fitted.fromStart, fromEnd: fitted.fromEnd, exact: !promptCut && !completionCut, enough: true };
}

/** Encodes an example into prompt (`prefix`) and scored (`target`) tokens that fit `budget`. */
function examplePieces(example: Example, tokenizer: Tokenizer, eosId: number | undefined, addEos: boolean | undefined, budget: number): Pieces {
  const window = windowChars(budget);
  if (example.kind === 'prompt-completion') {
    // Default EOS: on for completions whenever the tokenizer has one.
    const eos = eosId !== undefined && addEos !== false ? eosId : undefined;
    const { prompt, completion } = example;
    if (prompt.length + completion.length <= 2 * window) {
      const whole = tokenizer.encode(prompt + completion);
      const promptOnly = prompt === '' ? [] : tokenizer.encode(prompt);
      const boundary = commonPrefixLength(whole, promptOnly);
      const target = whole.slice(boundary);
      if (eos !== undefined) target.push(eos);
      return { ...fitToBudget(whole.slice(0, boundary), target, budget), exact: true };
    }
    let kp = Math.min(prompt.length, window);
    let kc = Math.min(completion.length, window);
    let previous: Pieces | undefined;
    for (;;) {
      const pieces = completionPieces(tokenizer, prompt, completion, kp, kc, eos, budget);
      if (pieces.enough) {
        if (pieces.exact) return pieces;
        if (previous !== undefined && sameIds(previous.prefix, pieces.prefix) && sameIds(previous.target, pieces.target)) return pieces;
        previous = pieces;
      }
      kp = Math.min(prompt.length, 2 * kp);
      kc = Math.min(completion.length, 2 * kc);
    }
  }
  const eos = eosId !== undefined && addEos === true ? eosId : undefined;
  const text = example.text;
  if (text.length <= 2 * window) {
    const target = tokenizer.encode(text);
    if (eos !== undefined) target.push(eos);
    return { ...fitToBudget([], target, budget), exact: true };
  }
  // Keep the start: encode growing windows of the start until the first `budget` tokens are stable.
  let k = window;
  let previous: number[] | undefined;
  for (;;) {
    if (k >= text.length) {
      const target = tokenizer.encode(text);
      if (eos !== undefined) target.push(eos);
      return { ...fitToBudget([], target, budget), exact: true };
    }
    const ids = tokenizer.encode(head(text, k));
    if (ids.length >= budget + WINDOW_MARGIN) {
      const kept = ids.slice(0, budget);
      if (previous !== undefined && sameIds(previous, kept))
        return { prefix: [], target: kept, fromStart: 0, fromEnd: ids.length - WINDOW_MARGIN - budget, exact: false };
      previous = kept;
    }
    k *= 2;
  }
}

/**
 * Tokenises examples for training or scoring. Prompt/completion pairs are encoded as one text
 * (`prompt + completion`, exactly what the model sees when it continues the prompt); the completion starts
 * where that encoding stops agreeing with the prompt's own encoding, so a token straddling the boundary
 * counts as completion. Too long: prompt tokens are dropped from the left (BOS stays); if even the
 * completion does not fit, its end is dropped too (EOS first) and `truncated.fromEnd` says by how much.
 * Text and labelled examples keep their start and lose their end. Only the part of a very long line that
 * maxLength can use is encoded (see WINDOW_CHARS_PER_TOKEN), so tokenising is linear in the line's length.
 */
export function tokenizeExamples(examples: readonly Example[], tokenizer: Tokenizer, options: TokenizeOptions): TokenizedExample[] {
  const opts = parseConfig(TokenizeOptions, options, 'tokenize options');
  const bosId = specialId(tokenizer, 'bos', opts.addBos);
  const eosId = specialId(tokenizer, 'eos', opts.addEos);
  const bos = bosId === undefined ? [] : [bosId];
  const budget = opts.maxLength - bos.length; // ≥ 1

  return examples.map((example): TokenizedExample => {
    const meta = {
      ...(example.task === undefined ? {} : { task: example.task }),
      ...(example.kind === 'labelled' ? { label: example.label } : {}),
      line: example.line,
    };
    const { prefix, target, fromStart, fromEnd, exact } = examplePieces(example, tokenizer, eosId, opts.addEos, budget);
    const ids = [...bos, ...prefix, ...target];
    const scored = example.kind === 'labelled' ? 0 : 1;
    const lossMask = [...bos.map(() => 0), ...prefix.map(() => 0), ...target.map(() => scored)];
    if (lossMask.length > 0) lossMask[0] = 0;
    const promptLength = example.kind === 'prompt-completion' ? bos.length + prefix.length : undefined;
    const truncated = !exact ? { fromStart, fromEnd, exact: false as const } : fromStart + fromEnd > 0 ? { fromStart, fromEnd } : undefined;
    return {
      ids,
      lossMask,
      ...meta,
      ...(promptLength === undefined ? {} : { promptLength }),
      ...(truncated === undefined ? {} : { truncated }),
    };
  });
}

// ---------------------------------------------------------------------------------------------------------
// Batching

export interface TrainBatch {
  /** [B, T] token ids; padding holds padId. */
  readonly ids: number[][];
  /** [B, T] 1 on real tokens, 0 on padding. */
  readonly mask: number[][];
  /** [B, T] 1 on target tokens, 0 elsewhere (always 0 on padding). */
  readonly lossMask: number[][];
  /** [B] positions of the rows in the tokenized input. */
  readonly indices: number[];
  /** [B] task ids, when the examples have tasks. */
  readonly taskIds?: number[];
  /** [B] class ids, for labelled examples. */
  readonly labels?: number[];
  /**
   * [B, T] what sequence-level routers pool, when a row is a prompt/completion pair: 1 on its prompt
   * (BOS included), so training routes from what serving will see; other rows: 1 on every real token.
   */
  readonly routingMask?: number[][];
}

export const BatchOptions = z
  .object({
    batchSize: z.number().int().min(1),
    /** Seed of the shuffle; use a different one per epoch (e.g. seed + epoch) for a fresh order. */
    seed: z.number().int().default(0),
    shuffle: z.boolean().default(true),
    /** 'right' for training; 'left' lines up the last tokens, as generation wants. */
    padSide: z.enum(['right', 'left']).default('right'),
    padId: z.number().int().min(0).default(0),
    /** Drop a final batch smaller than batchSize. */
    dropLast: z.boolean().default(false),
  })
  .strict()
  .readonly();
export type BatchOptions = z.input<typeof BatchOptions>;

/** Fisher–Yates shuffle of a copy, driven by seededRandom(seed). */
export function seededShuffle<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  const random = seededRandom(seed);
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    const tmp = out[i] as T;
    out[i] = out[j] as T;
    out[j] = tmp;
  }
  return out;
}

/** Throws unless `field` is set on every example or on none. */
function allOrNone(tokenized: readonly TokenizedExample[], field: 'task' | 'label'): boolean {
  const withField = tokenized.findIndex((e) => e[field] !== undefined);
  if (withField < 0) return false;
  const without = tokenized.findIndex((e) => e[field] === undefined);
  if (without >= 0) {
    const describe = (i: number): string => {
      const line = tokenized[i]?.line;
      return line === undefined ? `example ${i}` : `example ${i} (line ${line})`;
    };
    throw new DatasetError(`${describe(withField)} has a ${field} but ${describe(without)} has none; a batch needs a ${field} for every row or for none`, {
      path: `examples[${without}].${field}`,
      hint: `Give every line a "${field}", or none`,
    });
  }
  return true;
}

/** One epoch of batches: every example exactly once (unless dropLast drops the remainder). */
export function makeBatches(tokenized: readonly TokenizedExample[], options: BatchOptions): TrainBatch[] {
  const opts = parseConfig(BatchOptions, options, 'batch options');
  const empty = tokenized.findIndex((e) => e.ids.length === 0);
  if (empty >= 0) throw new DatasetError(`example ${empty} has no tokens`, { path: `examples[${empty}]`, hint: 'Drop empty examples before batching' });
  tokenized.forEach((e, i) => {
    if (e.lossMask.length !== e.ids.length) {
      throw new DatasetError(`example ${i}: lossMask has ${e.lossMask.length} entries for ${e.ids.length} ids`, { path: `examples[${i}].lossMask` });
    }
  });
  const withTasks = allOrNone(tokenized, 'task');
  const withLabels = allOrNone(tokenized, 'label');

  const order = tokenized.map((_, i) => i);
  const shuffled = opts.shuffle ? seededShuffle(order, opts.seed) : order;
  const batches: TrainBatch[] = [];
  for (let start = 0; start < shuffled.length; start += opts.batchSize) {
    const indices = shuffled.slice(start, start + opts.batchSize);
    if (opts.dropLast && indices.length < opts.batchSize) break;
    const rows = indices.map((i) => tokenized[i] as TokenizedExample);
    const width = Math.max(...rows.map((r) => r.ids.length));
    const pad = <T>(values: readonly T[], fill: T): T[] => {
      const padding = Array.from({ length: width - values.length }, () => fill);
      return opts.padSide === 'right' ? [...values, ...padding] : [...padding, ...values];
    };
    batches.push({
      ids: rows.map((r) => pad(r.ids, opts.padId)),
      mask: rows.map((r) =>
        pad(
          r.ids.map(() => 1),
          0,
        ),
      ),
      lossMask: rows.map((r) => pad(r.lossMask, 0)),
      ...(rows.some((r) => r.promptLength !== undefined)
        ? {
            routingMask: rows.map((r) =>
              pad(
                r.ids.map((_, t) => (t < (r.promptLength ?? r.ids.length) ? 1 : 0)),
                0,
              ),
            ),
          }
        : {}),
      indices,
      ...(withTasks ? { taskIds: rows.map((r) => r.task as number) } : {}),
      ...(withLabels ? { labels: rows.map((r) => r.label as number) } : {}),
    });
  }
  return batches;
}

// ---------------------------------------------------------------------------------------------------------
// Packing

export interface PackedSegment {
  /** Position of the example in the input. */
  readonly index: number;
  /** Where it starts in the packed row. */
  readonly start: number;
  readonly length: number;
}

export interface PackedExample extends TokenizedExample {
  readonly segments: readonly PackedSegment[];
}

export const PackOptions = z
  .object({
    /** Longest packed row in tokens. */
    length: z.number().int().min(1),
    /** Shuffle the examples with this seed before packing (default: keep their order). */
    seed: z.number().int().optional(),
  })
  .strict()
  .readonly();
export type PackOptions = z.input<typeof PackOptions>;

/**
 * Packs whole examples, in order, into rows of at most `length` tokens (a new row starts when the next
 * example does not fit), so less compute goes to padding. Only examples of the same task share a row, so a
 * row keeps one task id. Each example keeps its loss mask, so the first token of an example is never a
 * target of the one before it.
 *
 * Attention is NOT separated at example boundaries: our attention mask is causal plus padding, so a token
 * can attend to the earlier examples in its row, as in GPT-style packing. Examples are not split; tokenise
 * with maxLength ≤ length. Labelled examples cannot be packed (a row has one label).
 */
export function packExamples(tokenized: readonly TokenizedExample[], options: PackOptions): PackedExample[] {
  const opts = parseConfig(PackOptions, options, 'pack options');
  allOrNone(tokenized, 'task');
  tokenized.forEach((e, i) => {
    if (e.label !== undefined) {
      throw new DatasetError(`example ${i} is labelled; labelled examples cannot be packed (one label per row)`, {
        path: `examples[${i}]`,
        hint: 'Batch classification data with makeBatches instead',
      });
    }
    if (e.ids.length > opts.length) {
      throw new DatasetError(`example ${i} has ${e.ids.length} tokens, more than the packed row length ${opts.length}`, {
        path: `examples[${i}]`,
        hint: `Tokenize with maxLength ≤ ${opts.length}`,
      });
    }
    if (e.lossMask.length !== e.ids.length) {
      throw new DatasetError(`example ${i}: lossMask has ${e.lossMask.length} entries for ${e.ids.length} ids`, { path: `examples[${i}].lossMask` });
    }
  });
  const indices = tokenized.map((_, i) => i);
  const order = opts.seed === undefined ? indices : seededShuffle(indices, opts.seed);

  interface OpenRow {
    ids: number[];
    lossMask: number[];
    segments: PackedSegment[];
    task: number | undefined;
  }
  const rows: OpenRow[] = [];
  const openByTask = new Map<number | undefined, OpenRow>();
  for (const i of order) {
    const example = tokenized[i] as TokenizedExample;
    let row = openByTask.get(example.task);
    if (row === undefined || row.ids.length + example.ids.length > opts.length) {
      row = { ids: [], lossMask: [], segments: [], task: example.task };
      rows.push(row);
      openByTask.set(example.task, row);
    }
    row.segments.push({ index: i, start: row.ids.length, length: example.ids.length });
    row.ids.push(...example.ids);
    row.lossMask.push(...example.lossMask);
  }
  return rows.map((r) => ({ ids: r.ids, lossMask: r.lossMask, segments: r.segments, ...(r.task === undefined ? {} : { task: r.task }) }));
}

// ---------------------------------------------------------------------------------------------------------
// Train / validation split

export const SplitOptions = z
  .object({
    /** Fraction held out for validation, in [0, 1). */
    validationFraction: z.number().min(0).lt(1).default(0.1),
    seed: z.number().int().default(0),
  })
  .strict()
  .readonly();
export type SplitOptions = z.input<typeof SplitOptions>;

export interface TrainValidationSplit<T> {
  readonly train: T[];
  readonly validation: T[];
}

/**
 * Holds out round(n · validationFraction) items chosen by a seeded shuffle (at least one, and never all,
 * when the fraction is > 0 and n ≥ 2). Both parts keep the input order. Same input and seed, same split.
 */
export function splitTrainValidation<T>(items: readonly T[], options: SplitOptions = {}): TrainValidationSplit<T> {
  const opts = parseConfig(SplitOptions, options, 'split options');
  const n = items.length;
  let held = Math.round(n * opts.validationFraction);
  if (opts.validationFraction > 0 && n >= 2) held = Math.min(Math.max(held, 1), n - 1);
  const chosen = new Set(
    seededShuffle(
      items.map((_, i) => i),
      opts.seed,
    ).slice(0, held),
  );
  const train: T[] = [];
  const validation: T[] = [];
  items.forEach((item, i) => (chosen.has(i) ? validation : train).push(item));
  return { train, validation };
}
