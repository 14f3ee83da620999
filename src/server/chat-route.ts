/**
 * POST /v1/chat/completions: the messages go through the model's chat template (chat-template.ts) and the
 * reply is generated like a completion. `max_completion_tokens` (or the older `max_tokens`) defaults to what
 * fits in the model's context, up to the server's limit.
 */
import type { FastifyInstance } from 'fastify';
import type { ServerContext } from './context.js';
import { badField, parseBody } from './errors.js';
import { resolveMaxTokens, serveGeneration } from './generation-route.js';
import { ChatCompletionRequest } from './schemas.js';

export function registerChatRoute(app: FastifyInstance, ctx: ServerContext): void {
  app.post('/v1/chat/completions', async (request, reply) => {
    const body = parseBody(ChatCompletionRequest, request.body);
    const model = ctx.targets.resolve(body.model);
    const tokenizer = ctx.tokenizer;
    if (tokenizer === undefined) {
      throw badField(
        'messages',
        'chat needs a tokenizer, and this server has none',
        'Start the server with --tokenizer, or use /v1/completions with token ids',
      );
    }
    if (body.top_logprobs !== undefined && body.top_logprobs !== null && body.logprobs !== true) {
      throw badField('top_logprobs', 'top_logprobs needs logprobs: true', 'Set logprobs to true');
    }
    const both = body.max_tokens !== undefined && body.max_tokens !== null && body.max_completion_tokens !== undefined && body.max_completion_tokens !== null;
    if (both && body.max_tokens !== body.max_completion_tokens) {
      throw badField('max_tokens', 'max_tokens and max_completion_tokens disagree', 'Send only max_completion_tokens');
    }
    const messages = body.messages.map((m) => ({ role: m.role, content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join('') }));
    const text = ctx.chatTemplate.render(messages);
    const ids = tokenizer.encode(text, { addBos: ctx.chatTemplate.addBos });
    if (ids.length === 0) throw badField('messages', 'the messages encode to no tokens', 'Send at least one non-empty message');
    const asked = body.max_completion_tokens ?? body.max_tokens;
    const param = body.max_completion_tokens !== undefined && body.max_completion_tokens !== null ? 'max_completion_tokens' : 'max_tokens';
    const maxTokens = resolveMaxTokens(ctx, [ids.length], asked, 'fill', param, 'messages');
    return serveGeneration(ctx, request, reply, {
      endpoint: 'chat',
      model,
      prompts: [{ ids, echo: '' }],
      fields: body,
      maxTokens,
      logprobs: body.logprobs === true ? (body.top_logprobs ?? 0) : undefined,
    });
  });
}
