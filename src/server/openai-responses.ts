/**
 * Response bodies and stream chunks in OpenAI's formats, for text completions (`text_completion`) and chat
 * (`chat.completion`, `chat.completion.chunk`). Only plain data goes in; the routes decide what to send.
 *
 * The `routed_peft` extension of a choice (present only when the request asked for it with its own
 * `routed_peft` object) holds `trace` (routing trace entries), `token_ids` and `prompt_token_ids`.
 */
import type { RoutingTraceEntry } from '../routing/trace.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import type { TokenLogprob } from './generation.js';

export type Endpoint = 'completions' | 'chat';

export interface Usage {
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  readonly total_tokens: number;
}

export interface ChoiceExtension {
  readonly trace?: RoutingTraceEntry[];
  readonly token_ids?: readonly number[];
  readonly prompt_token_ids?: readonly number[];
}

export interface FinishedChoice {
  readonly index: number;
  readonly text: string;
  readonly finishReason: 'stop' | 'length';
  readonly logprobs: readonly TokenLogprob[] | undefined;
  readonly extension: ChoiceExtension | undefined;
}

export interface ResponseHeader {
  readonly id: string;
  readonly created: number;
  readonly model: string;
}

export function usageOf(promptTokens: number, completionTokens: number): Usage {
  return { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
}

const tokenString = (tokenizer: Tokenizer | undefined, id: number): string => (tokenizer === undefined ? String(id) : tokenizer.tokenText(id));
const bytesOf = (text: string): number[] => [...Buffer.from(text, 'utf8')];

/** Completions' legacy logprobs object: tokens, token_logprobs, top_logprobs (one map per position), text_offset. */
function completionLogprobs(logprobs: readonly TokenLogprob[], tokenizer: Tokenizer | undefined, offset: number) {
  const tokens = logprobs.map((l) => tokenString(tokenizer, l.token));
  const textOffset: number[] = [];
  let at = offset;
  for (const t of tokens) {
    textOffset.push(at);
    at += t.length;
  }
  return {
    tokens,
    token_logprobs: logprobs.map((l) => l.logprob),
    top_logprobs: logprobs.map((l) => Object.fromEntries(l.top.map((t) => [tokenString(tokenizer, t.token), t.logprob]))),
    text_offset: textOffset,
  };
}

/** Chat's logprobs object: `content`, one entry per token with its top alternatives. */
function chatLogprobs(logprobs: readonly TokenLogprob[], tokenizer: Tokenizer | undefined) {
  return {
    content: logprobs.map((l) => {
      const token = tokenString(tokenizer, l.token);
      return {
        token,
        logprob: l.logprob,
        bytes: bytesOf(token),
        top_logprobs: l.top.map((t) => {
          const alt = tokenString(tokenizer, t.token);
          return { token: alt, logprob: t.logprob, bytes: bytesOf(alt) };
        }),
      };
    }),
    refusal: null,
  };
}

const withExtension = (extension: ChoiceExtension | undefined): { routed_peft?: ChoiceExtension } =>
  extension === undefined ? {} : { routed_peft: extension };

export function completionResponse(
  header: ResponseHeader,
  choices: readonly FinishedChoice[],
  usage: Usage,
  tokenizer: Tokenizer | undefined,
  echoOffsets: readonly number[],
) {
  return {
    id: header.id,
    object: 'text_completion' as const,
    created: header.created,
    model: header.model,
    choices: choices.map((c, i) => ({
      index: c.index,
      text: c.text,
      logprobs: c.logprobs === undefined ? null : completionLogprobs(c.logprobs, tokenizer, echoOffsets[i] ?? 0),
      finish_reason: c.finishReason,
      ...withExtension(c.extension),
    })),
    usage,
  };
}

export function chatResponse(header: ResponseHeader, choices: readonly FinishedChoice[], usage: Usage, tokenizer: Tokenizer | undefined) {
  return {
    id: header.id,
    object: 'chat.completion' as const,
    created: header.created,
    model: header.model,
    choices: choices.map((c) => ({
      index: c.index,
      message: { role: 'assistant' as const, content: c.text, refusal: null },
      logprobs: c.logprobs === undefined ? null : chatLogprobs(c.logprobs, tokenizer),
      finish_reason: c.finishReason,
      ...withExtension(c.extension),
    })),
    usage,
  };
}

/** A stream chunk carrying new text (or, with `finishReason`, the end of one choice). */
export function streamChunk(
  endpoint: Endpoint,
  header: ResponseHeader,
  index: number,
  text: string,
  finishReason: 'stop' | 'length' | null,
  extension?: ChoiceExtension,
  role?: 'assistant',
) {
  const common = { id: header.id, created: header.created, model: header.model };
  if (endpoint === 'completions') {
    return {
      ...common,
      object: 'text_completion' as const,
      choices: [{ index, text, logprobs: null, finish_reason: finishReason, ...withExtension(extension) }],
    };
  }
  const delta = finishReason !== null && text === '' ? {} : { ...(role === undefined ? {} : { role }), content: text };
  return {
    ...common,
    object: 'chat.completion.chunk' as const,
    choices: [{ index, delta, logprobs: null, finish_reason: finishReason, ...withExtension(extension) }],
  };
}

/** The last chunk before [DONE] when the request asked for stream_options.include_usage: no choices, the usage. */
export function usageChunk(endpoint: Endpoint, header: ResponseHeader, usage: Usage) {
  return {
    id: header.id,
    object: endpoint === 'completions' ? ('text_completion' as const) : ('chat.completion.chunk' as const),
    created: header.created,
    model: header.model,
    choices: [],
    usage,
  };
}
