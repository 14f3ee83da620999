/** GET /v1/models (and /v1/models/:id): the base, every adapter and every routed model served now. */
import type { FastifyInstance } from 'fastify';
import type { ServerContext } from './context.js';

export function registerModelsRoute(app: FastifyInstance, ctx: ServerContext): void {
  app.get('/v1/models', async () => ({ object: 'list', data: ctx.targets.list() }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', async (request) => {
    const resolved = ctx.targets.resolve(request.params.id);
    return ctx.targets.list().find((m) => m.id === resolved.name);
  });
}
