/**
 * The part of /v1/completions and /v1/chat/completions they share once the body is parsed and the prompts
 * are ids: admission (429 when full), one runtime generation per choice (n per prompt, all concurrent, so
 * the runtime batches them with everything else), cancellation when the client disconnects, and the answer
 * as one JSON body or as server-sent events.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ServerError, badField, toServerError } from './errors.js';
import type { ServerContext } from './context.js';
import { choiceLogprobs, runChoice, type ChoiceRequest, type ChoiceResult } from './generation.js';
import {
  chatResponse,
  completionResponse,
  streamChunk,
  usageChunk,
  usageOf,
  type ChoiceExtension,
  type Endpoint,
  type FinishedChoice,
  type ResponseHeader,
} from './openai-responses.js';
import type { RoutedPeftExtension } from './schemas.js';
import { SseStream } from './sse.js';
import type { ResolvedModel } from './targets.js';

export interface PreparedPrompt {
  readonly ids: readonly number[];
  /** Text put before the generated text (completions' `echo`), else ''. */
  readonly echo: string;
}

export interface SamplingFields {
  readonly temperature?: number | null | undefined;
  readonly top_p?: number | null | undefined;
  readonly top_k?: number | null | undefined;
  readonly seed?: number | null | undefined;
  readonly stop?: string | string[] | null | undefined;
  readonly n?: number | null | undefined;
  readonly stream?: boolean | null | undefined;
  readonly stream_options?: { readonly include_usage?: boolean | null | undefined } | null | undefined;
  readonly ignore_eos?: boolean | null | undefined;
  readonly routed_peft?: RoutedPeftExtension | undefined;
}

export interface GenerationJob {
  readonly endpoint: Endpoint;
  readonly model: ResolvedModel;
  readonly prompts: readonly PreparedPrompt[];
  readonly fields: SamplingFields;
  /** New tokens per choice, already checked against the limits. */
  readonly maxTokens: number;
  /** Alternatives per position when logprobs were asked for; undefined: no logprobs. */
  readonly logprobs: number | undefined;
}

/** Request decoration read by the metrics hook (app.ts). */
export interface ServedRequest {
  servedModel?: string;
}

/**
 * max_tokens for a prompt: the asked number (400 above --max-tokens or past the model's context) or, when
 * not given, `fallback` capped by both.
 */
export function resolveMaxTokens(
  ctx: ServerContext,
  promptLengths: readonly number[],
  asked: number | null | undefined,
  fallback: number | 'fill',
  param: string,
  promptParam: string,
): number {
  const context = ctx.runtime.base.config.maxSeqLen;
  const longest = Math.max(...promptLengths);
  if (longest > context) {
    throw badField(promptParam, `the prompt has ${longest} tokens, more than the model's context of ${context}`, 'Shorten the prompt');
  }
  const room = context - longest + 1; // the runtime needs prompt + max_tokens - 1 <= context
  if (asked !== undefined && asked !== null) {
    if (asked > ctx.limits.maxTokens) {
      throw badField(param, `${param} is ${asked}, more than this server's limit of ${ctx.limits.maxTokens}`, `Ask for at most ${ctx.limits.maxTokens} tokens`);
    }
    if (asked > room) {
      throw badField(
        param,
        `the prompt of ${longest} tokens plus ${param} ${asked} exceeds the model's context of ${context}`,
        `Ask for at most ${room} tokens`,
      );
    }
    return asked;
  }
  return Math.min(fallback === 'fill' ? room : fallback, room, ctx.limits.maxTokens);
}

function stopsOf(stop: string | string[] | null | undefined): string[] {
  if (stop === undefined || stop === null) return [];
  return typeof stop === 'string' ? [stop] : stop;
}

/** Task ids for the selection: the extension's task_id, one per row. */
function taskIdsOf(fields: SamplingFields): number[] | undefined {
  const id = fields.routed_peft?.task_id;
  return id === undefined ? undefined : [id];
}

class ClientGone extends Error {
  constructor() {
    super('the client closed the connection');
  }
}

export async function serveGeneration(ctx: ServerContext, request: FastifyRequest, reply: FastifyReply, job: GenerationJob): Promise<unknown> {
  const { fields } = job;
  const stream = fields.stream === true;
  if (stream && job.logprobs !== undefined) {
    throw badField('logprobs', 'logprobs are not available with stream: true', 'Ask for logprobs without streaming');
  }
  if (ctx.tokenizer === undefined && stopsOf(fields.stop).length > 0) {
    throw badField('stop', 'stop sequences need a tokenizer, and this server has none', 'Start the server with --tokenizer, or leave stop out');
  }
  const n = fields.n ?? 1;
  const extension = fields.routed_peft;
  const started = performance.now();
  const controller = new AbortController();
  const onClose = (): void => {
    if (!reply.raw.writableFinished) controller.abort(new ClientGone());
  };
  reply.raw.on('close', onClose);
  if (reply.raw.destroyed || request.raw.socket.destroyed) controller.abort(new ClientGone()); // gone while the body was parsed
  ctx.inflight.add(controller);
  (request as ServedRequest).servedModel = job.model.name;
  let release: (() => void) | undefined;
  try {
    try {
      release = await ctx.admission.acquire(controller.signal);
    } catch (error) {
      if (error instanceof ClientGone) {
        ctx.metrics.cancelled.inc({ model: job.model.name, stage: 'queued' });
        return reply.hijack();
      }
      if (error instanceof ServerError && error.status === 429) ctx.metrics.rejected.inc({ reason: 'queue_full' });
      throw error;
    }
    const promptTokens = job.prompts.reduce((s, p) => s + p.ids.length, 0);
    ctx.metrics.promptTokens.inc({ model: job.model.name }, promptTokens);
    const header: ResponseHeader = {
      id: `${job.endpoint === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replaceAll('-', '')}`,
      created: Math.floor(Date.now() / 1000),
      model: job.model.name,
    };
    const requests: ChoiceRequest[] = job.prompts.flatMap((prompt) =>
      Array.from({ length: n }, (_, j) => ({
        ids: prompt.ids,
        select: job.model.select,
        taskIds: taskIdsOf(fields),
        maxNewTokens: job.maxTokens,
        temperature: fields.temperature ?? 1,
        topP: fields.top_p ?? undefined,
        topK: fields.top_k === undefined || fields.top_k === null || fields.top_k <= 0 ? undefined : fields.top_k,
        seed: fields.seed === undefined || fields.seed === null ? undefined : fields.seed + j,
        stop: stopsOf(fields.stop),
        ignoreEos: fields.ignore_eos === true,
        trace: extension?.trace === true,
        signal: controller.signal,
      })),
    );
    let firstToken = true;
    const onFirstToken = (): void => {
      if (!firstToken) return;
      firstToken = false;
      ctx.metrics.firstToken.observe({ model: job.model.name }, (performance.now() - started) / 1000);
    };
    const extensionOf = (i: number, result: ChoiceResult): ChoiceExtension | undefined => {
      if (extension === undefined) return undefined;
      return {
        ...(extension.trace === true ? { trace: result.trace ?? [] } : {}),
        ...(extension.return_token_ids === true ? { token_ids: result.tokens, prompt_token_ids: requests[i]?.ids ?? [] } : {}),
      };
    };
    const account = (results: readonly ChoiceResult[]): number => {
      const generated = results.reduce((s, r) => s + r.tokens.length, 0);
      ctx.metrics.generationTokens.inc({ model: job.model.name }, generated);
      const cancelled = results.filter((r) => r.finishReason === 'cancelled').length;
      if (cancelled > 0) ctx.metrics.cancelled.inc({ model: job.model.name, stage: 'running' }, cancelled);
      return generated;
    };

    if (stream) {
      reply.hijack();
      const sse = new SseStream(reply.raw);
      sse.open();
      if (job.endpoint === 'chat') requests.forEach((_, i) => sse.send(streamChunk('chat', header, i, '', null, undefined, 'assistant')));
      const echoes = job.prompts.flatMap((p) => Array.from({ length: n }, () => p.echo));
      echoes.forEach((echo, i) => {
        if (echo !== '') sse.send(streamChunk(job.endpoint, header, i, echo, null));
      });
      try {
        const results = await Promise.all(
          requests.map(async (choice, i) => {
            const result = await runChoice(ctx.runtime, ctx.tokenizer, choice, {
              onText: (text) => {
                onFirstToken();
                if (text !== '') sse.send(streamChunk(job.endpoint, header, i, text, null));
              },
            });
            if (result.finishReason !== 'cancelled') sse.send(streamChunk(job.endpoint, header, i, '', result.finishReason, extensionOf(i, result)));
            return result;
          }),
        );
        const generated = account(results);
        if (controller.signal.aborted && !(controller.signal.reason instanceof ClientGone)) {
          sse.send(
            new ServerError('the server stopped before this request finished', { status: 503, code: 'shutting_down', hint: 'Retry on another replica' }).body(),
          );
        } else if (fields.stream_options?.include_usage === true) {
          sse.send(usageChunk(job.endpoint, header, usageOf(promptTokens, generated)));
        }
        sse.done();
      } catch (error) {
        controller.abort(error); // stop this request's other choices
        const failure = toServerError(error);
        request.log.error({ err: error }, 'generation failed mid-stream');
        sse.send(failure.body());
        sse.done();
      }
      return reply;
    }

    let results: ChoiceResult[];
    try {
      results = await Promise.all(requests.map((choice) => runChoice(ctx.runtime, ctx.tokenizer, choice, { onText: onFirstToken })));
    } catch (error) {
      controller.abort(error); // stop this request's other choices
      if (job.model.kind !== 'base') ctx.targets.resolve(job.model.name); // unloaded meanwhile: a 404, like any unknown model
      throw error;
    }
    const generated = account(results);
    if (controller.signal.aborted) {
      if (controller.signal.reason instanceof ClientGone) return reply.hijack();
      throw new ServerError('the server stopped before this request finished', { status: 503, code: 'shutting_down', hint: 'Retry on another replica' });
    }
    const finished: FinishedChoice[] = [];
    for (const [i, result] of results.entries()) {
      const choice = requests[i] as ChoiceRequest;
      const logprobs = job.logprobs === undefined ? undefined : await choiceLogprobs(ctx.runtime, choice, result.tokens, job.logprobs);
      const echo = job.prompts[Math.floor(i / n)]?.echo ?? '';
      finished.push({
        index: i,
        text: echo + result.text,
        finishReason: result.finishReason === 'cancelled' ? 'stop' : result.finishReason,
        logprobs,
        extension: extensionOf(i, result),
      });
    }
    const usage = usageOf(promptTokens, generated);
    if (job.endpoint === 'chat') return chatResponse(header, finished, usage, ctx.tokenizer);
    return completionResponse(
      header,
      finished,
      usage,
      ctx.tokenizer,
      finished.map((_, i) => job.prompts[Math.floor(i / n)]?.echo.length ?? 0),
    );
  } finally {
    release?.();
    ctx.inflight.delete(controller);
    reply.raw.off('close', onClose);
    if (release !== undefined) {
      const seconds = (performance.now() - started) / 1000;
      ctx.admission.observe(seconds);
      ctx.metrics.duration.observe({ endpoint: job.endpoint, model: job.model.name }, seconds);
    }
  }
}
