/**
 * The fastify application: body limit, API-key check, the OpenAI error shape for every failure (bad JSON,
 * oversized bodies, unknown routes, validation, capacity), per-request metrics, and the routes.
 */
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import { PUBLIC_PATHS, type ApiKeyCheck } from './auth.js';
import { registerAdapterRoutes } from './adapters-route.js';
import { registerChatRoute } from './chat-route.js';
import { registerCompletionsRoute } from './completions-route.js';
import type { ServerContext } from './context.js';
import { ServerError, toServerError } from './errors.js';
import type { ServedRequest } from './generation-route.js';
import { registerHealthRoutes } from './health-route.js';
import { registerModelsRoute } from './models-route.js';

export interface AppOptions {
  readonly apiKey: ApiKeyCheck | undefined;
  /** Log requests and errors (pino, JSON lines on stderr) at this level; false: silent. */
  readonly logLevel: 'info' | 'warn' | 'error' | false;
}

/** Fastify's own errors (body parsing, limits) as OpenAI-shaped ServerErrors. */
function fromFastifyError(error: FastifyError): ServerError | undefined {
  switch (error.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new ServerError(`the body is not valid JSON: ${error.message}`, { status: 400, code: 'invalid_json', hint: 'Send a JSON object' });
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new ServerError('the body is empty', { status: 400, code: 'invalid_json', hint: 'Send a JSON object' });
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ServerError('the request body is larger than this server accepts', {
        status: 413,
        code: 'request_too_large',
        hint: 'Send a smaller request (the limit is set with --max-body-bytes)',
      });
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ServerError(`unsupported content type: ${error.message}`, {
        status: 415,
        code: 'unsupported_media_type',
        hint: 'Send Content-Type: application/json',
      });
    default:
      return error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500
        ? new ServerError(error.message, { status: error.statusCode, code: error.code })
        : undefined;
  }
}

export function buildApp(ctx: ServerContext, options: AppOptions): FastifyInstance {
  const app = Fastify({
    bodyLimit: ctx.limits.bodyLimitBytes,
    logger: options.logLevel === false ? false : { level: options.logLevel, stream: process.stderr },
    return503OnClosing: true,
    forceCloseConnections: 'idle',
  });

  app.addHook('onRequest', async (request, reply) => {
    const path = request.url.split('?')[0] ?? '';
    const endpoint = request.routeOptions.url ?? 'unmatched';
    reply.raw.once('close', () => {
      const status = reply.raw.writableFinished ? reply.raw.statusCode : 499; // 499: the client closed the connection first
      ctx.metrics.requests.inc({ endpoint, model: (request as ServedRequest).servedModel ?? '', status: String(status) });
    });
    if (ctx.draining() && !PUBLIC_PATHS.has(path)) {
      ctx.metrics.rejected.inc({ reason: 'draining' });
      reply.header('connection', 'close');
      throw new ServerError('the server is shutting down', { status: 503, type: 'server_error', code: 'shutting_down', hint: 'Retry on another replica' });
    }
    if (options.apiKey !== undefined && !PUBLIC_PATHS.has(path)) options.apiKey.check(request.headers.authorization);
  });

  app.setErrorHandler((error: FastifyError, request, reply) => {
    const failure = error instanceof ServerError ? error : (fromFastifyError(error) ?? toServerError(error));
    if (failure.status >= 500) request.log.error({ err: error }, 'request failed');
    for (const [name, value] of Object.entries(failure.headers)) reply.header(name, value);
    return reply.code(failure.status).send(failure.body());
  });

  app.setNotFoundHandler((request, reply) => {
    const failure = new ServerError(`no route ${request.method} ${request.url.split('?')[0]}`, {
      status: 404,
      code: 'unknown_route',
      hint: 'Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics',
    });
    return reply.code(404).send(failure.body());
  });

  registerHealthRoutes(app, ctx);
  registerModelsRoute(app, ctx);
  registerCompletionsRoute(app, ctx);
  registerChatRoute(app, ctx);
  registerAdapterRoutes(app, ctx);
  return app;
}
