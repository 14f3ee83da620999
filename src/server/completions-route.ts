/**
 * POST /v1/completions: `prompt` is text, token ids, or a list of either (one set of `n` choices per
 * prompt). Text is encoded with BOS where the model uses one (llama family with a BOS token), as
 * `routed-peft generate --prompt` does; token ids are used as given. `max_tokens` defaults to 16, as in
 * OpenAI's API.
 */
import type { FastifyInstance } from 'fastify';
import type { ServerContext } from './context.js';
import { badField, parseBody } from './errors.js';
import { resolveMaxTokens, serveGeneration, type PreparedPrompt } from './generation-route.js';
import { CompletionRequest, SCHEMA_LIMITS } from './schemas.js';

const DEFAULT_MAX_TOKENS = 16;

function preparePrompts(ctx: ServerContext, body: CompletionRequest): PreparedPrompt[] {
  const { prompt } = body;
  const vocab = ctx.runtime.base.config.vocabSize;
  const list: (string | number[])[] =
    typeof prompt === 'string' ? [prompt] : prompt.every((p) => typeof p === 'number') ? [prompt as number[]] : (prompt as (string | number[])[]);
  const single = list.length === 1 && (typeof prompt === 'string' || typeof prompt[0] === 'number');
  return list.map((item, i) => {
    const param = single ? 'prompt' : `prompt[${i}]`;
    if (typeof item === 'string') {
      const tokenizer = ctx.tokenizer;
      if (tokenizer === undefined)
        throw badField(param, 'text prompts need a tokenizer, and this server has none', 'Send token ids, or start the server with --tokenizer');
      const ids = tokenizer.encode(item, { addBos: ctx.addBos });
      if (ids.length === 0) throw badField(param, 'the prompt encodes to no tokens', 'Send a non-empty prompt');
      return { ids, echo: body.echo === true ? item : '' };
    }
    const bad = item.findIndex((id) => id >= vocab);
    if (bad >= 0) throw badField(`${param}[${bad}]`, `token id ${item[bad]} is outside the vocabulary [0, ${vocab})`, 'Send ids the model knows');
    return { ids: item, echo: body.echo === true && ctx.tokenizer !== undefined ? ctx.tokenizer.decode(item) : '' };
  });
}

export function registerCompletionsRoute(app: FastifyInstance, ctx: ServerContext): void {
  app.post('/v1/completions', async (request, reply) => {
    const body = parseBody(CompletionRequest, request.body);
    const model = ctx.targets.resolve(body.model);
    if (body.echo === true && body.logprobs !== undefined && body.logprobs !== null) {
      throw badField('echo', 'echo with logprobs is not supported', 'Ask for one of them');
    }
    const prompts = preparePrompts(ctx, body);
    const generations = prompts.length * (body.n ?? 1);
    if (generations > SCHEMA_LIMITS.maxGenerations) {
      throw badField(
        'n',
        `${prompts.length} prompts × n ${body.n ?? 1} is ${generations} generations, more than ${SCHEMA_LIMITS.maxGenerations} per request`,
        'Send fewer prompts or a smaller n per request',
      );
    }
    const maxTokens = resolveMaxTokens(
      ctx,
      prompts.map((p) => p.ids.length),
      body.max_tokens,
      DEFAULT_MAX_TOKENS,
      'max_tokens',
      'prompt',
    );
    return serveGeneration(ctx, request, reply, {
      endpoint: 'completions',
      model,
      prompts,
      fields: body,
      maxTokens,
      logprobs: body.logprobs ?? undefined,
    });
  });
}
