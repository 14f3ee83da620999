/**
 * Autoregressive generation with a KV cache. Prompts of different lengths are padded on the left so every
 * row's next token sits in the last column; padding is masked and does not shift positions.
 *
 * Shape letters: B prompts, T longest prompt, V vocabulary.
 */
import { parseConfig } from '../config/parse.js';
import { ShapeError } from '../errors.js';
import type { ForwardHooks } from './hooks.js';
import { SamplingOptions, sampleToken, seededRandom } from './sampling.js';
import type { Transformer } from './transformer.js';

export interface GenerateOptions extends Partial<SamplingOptions> {
  readonly maxNewTokens: number;
  /** Stop a row at this token (default: the model's EOS when it has one). null: never stop early. */
  readonly eosId?: number | null;
  readonly hooks?: ForwardHooks;
  /** Recompute the whole sequence each step instead of using the KV cache (for checking the cache). */
  readonly noCache?: boolean;
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

/**
 * Yields, per step, the new token of every row (-1 for rows that already stopped). Disposes its cache when
 * finished or when the consumer stops early.
 */
export function* generateSteps(model: Transformer, prompts: readonly (readonly number[])[], options: GenerateOptions): Generator<number[], void, undefined> {
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
  const random = seededRandom(sampling.seed ?? Math.floor(Math.random() * 2 ** 31));
  const eos = options.eosId === undefined ? model.config.eosId : (options.eosId ?? undefined);
  const batch = prompts.length;
  const padded = padLeft(prompts);
  const sequences = padded.ids.map((r) => [...r]);
  const masks = padded.mask.map((r) => [...r]);
  const done = Array.from({ length: batch }, () => false);
  const cache = options.noCache === true ? undefined : model.newCache(batch);
  try {
    let nextIds: number[][] = padded.ids;
    let nextMask: number[][] = padded.mask;
    for (let step = 0; step < options.maxNewTokens; step++) {
      const input = cache === undefined ? { ids: sequences, mask: masks } : { ids: nextIds, mask: nextMask, cache };
      const logits = model.forward({ ...input, output: 'last-logits', ...(options.hooks ? { hooks: options.hooks } : {}) }); // [B, V]
      const values = logits.dataSync();
      logits.dispose();
      const vocab = model.config.vocabSize;
      const chosen = prompts.map((_, b) => {
        if (done[b]) return -1;
        const token = sampleToken(values.subarray(b * vocab, (b + 1) * vocab), sampling, random);
        if (token === eos) done[b] = true;
        return token;
      });
      // Finished rows keep running (their output is ignored) so the batch stays rectangular; they feed id 0.
      for (let b = 0; b < batch; b++) {
        (sequences[b] as number[]).push(Math.max(chosen[b] as number, 0));
        (masks[b] as number[]).push(1);
      }
      yield chosen;
      if (done.every(Boolean)) return;
      nextIds = chosen.map((t) => [Math.max(t, 0)]);
      nextMask = chosen.map(() => [1]);
    }
  } finally {
    cache?.dispose();
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
