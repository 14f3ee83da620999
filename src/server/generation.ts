/**
 * One choice of a completion: a runtime generation with the request's sampling, stop sequences applied to
 * the streamed text, and cancellation when the request's signal aborts (the client went away). Text is
 * released through `onText` as soon as it cannot be part of a stop sequence; the result holds everything.
 *
 * The runtime does the batching: concurrent choices (of one request or of many) share its passes.
 */
import type { RoutingTraceEntry } from '../routing/trace.js';
import type { ServingRuntime } from './serving-runtime.js';
import type { FinishReason, Selection } from '../runtime/types.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import { StopMatcher } from './stop.js';

export interface ChoiceRequest {
  readonly ids: readonly number[];
  readonly select: Selection;
  readonly taskIds: readonly number[] | undefined;
  readonly maxNewTokens: number;
  readonly temperature: number;
  readonly topP: number | undefined;
  readonly topK: number | undefined;
  readonly seed: number | undefined;
  readonly stop: readonly string[];
  readonly ignoreEos: boolean;
  readonly trace: boolean;
  /** Aborted when the client disconnects or the server gives up draining. */
  readonly signal: AbortSignal;
}

/** OpenAI's finish reasons, plus `cancelled` (the client went away: nothing is sent). */
export type ChoiceFinish = 'stop' | 'length' | 'cancelled';

export interface ChoiceResult {
  readonly text: string;
  /** Every token generated (EOS included when it ended the choice). */
  readonly tokens: readonly number[];
  readonly finishReason: ChoiceFinish;
  /** What the runtime reported (`cancelled` also when a stop sequence ended the choice). */
  readonly runtimeReason: FinishReason;
  readonly trace: RoutingTraceEntry[] | undefined;
}

export interface ChoiceCallbacks {
  /** New text (may be empty when only held-back text arrived) and the token that brought it. */
  readonly onText?: (text: string, token: number) => void;
}

/** Runs one choice to its end. Rejects only on runtime errors (bad ids, a target unloaded meanwhile). */
export function runChoice(
  runtime: ServingRuntime,
  tokenizer: Tokenizer | undefined,
  request: ChoiceRequest,
  callbacks: ChoiceCallbacks = {},
): Promise<ChoiceResult> {
  const stopper = new AbortController();
  const onAbort = (): void => stopper.abort();
  if (request.signal.aborted) stopper.abort();
  else request.signal.addEventListener('abort', onAbort, { once: true });
  const matcher = new StopMatcher(tokenizer === undefined ? [] : request.stop);
  let text = '';
  return new Promise<ChoiceResult>((resolve, reject) => {
    const finish = (): void => request.signal.removeEventListener('abort', onAbort);
    runtime
      .generate$([...request.ids], {
        select: request.select,
        taskIds: request.taskIds,
        trace: request.trace,
        maxNewTokens: request.maxNewTokens,
        temperature: request.temperature,
        topP: request.topP,
        topK: request.topK,
        seed: request.seed,
        ...(request.ignoreEos ? { eosId: null } : {}),
        signal: stopper.signal,
      })
      .subscribe({
        next: (event) => {
          if (event.kind === 'token') {
            if (matcher.stopped) return;
            const step = matcher.push(event.text ?? '');
            text += step.text;
            callbacks.onText?.(step.text, event.token);
            if (step.stopped) stopper.abort();
            return;
          }
          finish();
          const tail = matcher.flush();
          if (tail !== '') {
            text += tail;
            callbacks.onText?.(tail, -1);
          }
          const finishReason: ChoiceFinish = matcher.stopped || event.reason === 'eos' ? 'stop' : event.reason === 'length' ? 'length' : 'cancelled';
          resolve({ text, tokens: event.tokens, finishReason, runtimeReason: event.reason, trace: event.trace });
        },
        error: (error: unknown) => {
          finish();
          reject(error);
        },
      });
  });
}

/** One generated position's log-probabilities (natural log). */
export interface TokenLogprob {
  readonly token: number;
  readonly logprob: number;
  /** The most likely tokens at that position, best first. */
  readonly top: readonly { readonly token: number; readonly logprob: number }[];
}

/**
 * Log-probabilities of the generated tokens under the selection, from one forward pass over the prompt and
 * the generated tokens (the model's own distribution, before temperature and top-p).
 */
export async function choiceLogprobs(
  runtime: ServingRuntime,
  request: Pick<ChoiceRequest, 'ids' | 'select' | 'taskIds'>,
  tokens: readonly number[],
  topN: number,
): Promise<TokenLogprob[]> {
  if (tokens.length === 0) return [];
  const row = [...request.ids, ...tokens.slice(0, -1)];
  const { logits, shape } = await runtime.forward([row], { select: request.select, taskIds: request.taskIds });
  const [, width, vocab] = shape;
  return tokens.map((token, j) => {
    const position = width - tokens.length + j; // logits at the position before token j predict it
    const values = logits.subarray(position * vocab, (position + 1) * vocab);
    let max = Number.NEGATIVE_INFINITY;
    for (const v of values) max = Math.max(max, v);
    let total = 0;
    for (const v of values) total += Math.exp(v - max);
    const logZ = max + Math.log(total);
    const logprob = (values[token] as number) - logZ;
    const top: { token: number; logprob: number }[] = [];
    if (topN > 0) {
      const order = Array.from({ length: vocab }, (_, i) => i).sort((a, b) => (values[b] as number) - (values[a] as number));
      for (const id of order.slice(0, topN)) top.push({ token: id, logprob: (values[id] as number) - logZ });
    }
    return { token, logprob, top };
  });
}
