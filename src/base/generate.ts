/**
 * Autoregressive generation with a KV cache. Prompts of different lengths are padded on the left so every
 * row's next token sits in the last column; padding is masked and does not shift positions.
 *
 * Shape letters: B prompts, T longest prompt, V vocabulary.
 */
import { readSync } from '../backend-capabilities.js';
import { parseConfig } from '../config/parse.js';
import { ShapeError } from '../errors.js';
import type { ForwardHooks } from './hooks.js';
import { SamplingOptions, sampleToken, seededRandom } from './sampling.js';
import type { PrefixEmbeddings, Transformer } from './transformer.js';

export interface GenerateOptions extends Partial<SamplingOptions> {
  readonly maxNewTokens: number;
  /** Stop a row at this token (default: the model's EOS when it has one). null: never stop early. */
  readonly eosId?: number | null;
  readonly hooks?: ForwardHooks;
  /** Recompute the whole sequence each step instead of using the KV cache (for checking the cache). */
  readonly noCache?: boolean;
  /**
   * Embedding vectors before every prompt (image tokens, see PrefixEmbeddings): the prefill reads them and the
   * KV cache keeps their keys and values, so decoding steps attend to them without recomputing (without the
   * cache every step reads them again). The caller keeps ownership.
   */
  readonly prefix?: PrefixEmbeddings;
}

export interface PaddedBatch {
  readonly ids: number[][];
  readonly mask: number[][];
}

/** Left-pads rows to one length with id `padId` and mask 0. */
export function padLeft(rows: readonly (readonly number[])[], padId = 0): PaddedBatch {
  const width = Math.max(...rows.map((r) => r.length));
  return {
    ids: rows.map((r) => [...Array.from({ length: width - r.length }, () => padId), ...r]),
    mask: rows.map((r) => [...Array.from({ length: width - r.length }, () => 0), ...r.map(() => 1)]),
  };
}

/** One generation's state: the sequences so far, which rows stopped, the cache. */
interface Generation {
  readonly model: Transformer;
  readonly options: GenerateOptions;
  readonly prompts: readonly (readonly number[])[];
  readonly sampling: SamplingOptions;
  readonly random: () => number;
  readonly eos: number | undefined;
  readonly sequences: number[][];
  readonly masks: number[][];
  readonly done: boolean[];
  readonly cache: ReturnType<Transformer['newCache']> | undefined;
  nextIds: number[][];
  nextMask: number[][];
}

function startGeneration(model: Transformer, prompts: readonly (readonly number[])[], options: GenerateOptions): Generation {
  if (prompts.length === 0 || prompts.some((p) => p.length === 0)) {
    throw new ShapeError('every prompt needs at least one token', { path: 'prompts', hint: 'Start from the BOS id when there is no prompt text' });
  }
  if (!Number.isInteger(options.maxNewTokens) || options.maxNewTokens < 0) {
    throw new ShapeError(`maxNewTokens must be a non-negative integer, got ${options.maxNewTokens}`, { path: 'maxNewTokens' });
  }
  const sampling = parseConfig(
    SamplingOptions,
    { temperature: options.temperature, topK: options.topK, topP: options.topP, seed: options.seed },
    'sampling options',
  );
  const padded = padLeft(prompts);
  return {
    model,
    options,
    prompts,
    sampling,
    random: seededRandom(sampling.seed ?? Math.floor(Math.random() * 2 ** 31)),
    eos: options.eosId === undefined ? model.config.eosId : (options.eosId ?? undefined),
    sequences: padded.ids.map((r) => [...r]),
    masks: padded.mask.map((r) => [...r]),
    done: prompts.map(() => false),
    cache: options.noCache === true ? undefined : model.newCache(prompts.length),
    nextIds: padded.ids,
    nextMask: padded.mask,
  };
}

/** The next step's logits [B, V] (the caller reads and disposes them). */
function stepLogits(state: Generation): ReturnType<Transformer['forward']> {
  const { model, options, cache } = state;
  const input = cache === undefined ? { ids: state.sequences, mask: state.masks } : { ids: state.nextIds, mask: state.nextMask, cache };
  // The prefix enters once with a cache (the prefill), at every step without one.
  const prefix = options.prefix !== undefined && (cache === undefined || cache.length === 0) ? { prefix: options.prefix } : {};
  return model.forward({ ...input, ...prefix, output: 'last-logits', ...(options.hooks ? { hooks: options.hooks } : {}) }); // [B, V]
}

/** Samples each row's token from the logits read back; returns them (-1 for rows already stopped). */
function chooseTokens(state: Generation, values: Float32Array | Int32Array | Uint8Array): number[] {
  const vocab = state.model.config.vocabSize;
  const { done, sequences, masks } = state;
  const chosen = state.prompts.map((_, b) => {
    if (done[b]) return -1;
    const token = sampleToken(values.subarray(b * vocab, (b + 1) * vocab), state.sampling, state.random);
    if (token === state.eos) done[b] = true;
    return token;
  });
  // Finished rows keep running (their output is ignored) so the batch stays rectangular; they feed id 0.
  for (let b = 0; b < chosen.length; b++) {
    (sequences[b] as number[]).push(Math.max(chosen[b] as number, 0));
    (masks[b] as number[]).push(1);
  }
  state.nextIds = chosen.map((t) => [Math.max(t, 0)]);
  state.nextMask = chosen.map(() => [1]);
  return chosen;
}

const ASYNC_HINT = 'Use generateAsync / generateStepsAsync (or AdaptedModel.generateAsync, RoutedRuntime.generate) on this backend';

/**
 * Yields, per step, the new token of every row (-1 for rows that already stopped). Disposes its cache when
 * finished or when the consumer stops early. Reads logits synchronously: on a backend without synchronous
 * reads (webgpu) it throws a SyncReadError naming `generateStepsAsync`.
 */
export function* generateSteps(model: Transformer, prompts: readonly (readonly number[])[], options: GenerateOptions): Generator<number[], void, undefined> {
  const state = startGeneration(model, prompts, options);
  try {
    for (let step = 0; step < options.maxNewTokens; step++) {
      const logits = stepLogits(state); // [B, V]
      let values: Float32Array | Int32Array | Uint8Array;
      try {
        values = readSync(logits, 'generate / generateSteps', ASYNC_HINT);
      } finally {
        logits.dispose();
      }
      const chosen = chooseTokens(state, values);
      yield chosen;
      if (state.done.every(Boolean)) return;
    }
  } finally {
    state.cache?.dispose();
  }
}

/** `generateSteps` reading logits with `await data()`: the same tokens, on every backend (a GPU never stalls). */
export async function* generateStepsAsync(
  model: Transformer,
  prompts: readonly (readonly number[])[],
  options: GenerateOptions,
): AsyncGenerator<number[], void, undefined> {
  const state = startGeneration(model, prompts, options);
  try {
    for (let step = 0; step < options.maxNewTokens; step++) {
      const logits = stepLogits(state); // [B, V]
      let values: Float32Array | Int32Array | Uint8Array;
      try {
        values = (await logits.data()) as Float32Array;
      } finally {
        logits.dispose();
      }
      const chosen = chooseTokens(state, values);
      yield chosen;
      if (state.done.every(Boolean)) return;
    }
  } finally {
    state.cache?.dispose();
  }
}

/** Generates up to maxNewTokens per prompt; returns each prompt followed by its new tokens (EOS included). */
export function generate(model: Transformer, prompts: readonly (readonly number[])[], options: GenerateOptions): number[][] {
  const outputs = prompts.map((p) => [...p]);
  for (const step of generateSteps(model, prompts, options)) {
    step.forEach((token, b) => {
      if (token >= 0) (outputs[b] as number[]).push(token);
    });
  }
  return outputs;
}

/** `generate` with asynchronous reads: the same result on every backend. */
export function generateAsync(model: Transformer, prompts: readonly (readonly number[])[], options: GenerateOptions): Promise<number[][]> {
  return collectSteps(prompts, generateStepsAsync(model, prompts, options));
}

/** Each prompt followed by the new tokens of `steps` (one token per row per step, −1 once a row stopped). */
export async function collectSteps(prompts: readonly (readonly number[])[], steps: AsyncIterable<number[]>): Promise<number[][]> {
  const outputs = prompts.map((p) => [...p]);
  for await (const step of steps) {
    step.forEach((token, b) => {
      if (token >= 0) (outputs[b] as number[]).push(token);
    });
  }
  return outputs;
}
