/**
 * GET /health: 200 `{"status": "ok"}` while serving, 503 `{"status": "draining"}` once a shutdown began (so a
 * load balancer or Kubernetes' readiness probe stops sending traffic). GET /metrics: Prometheus text format.
 */
import type { FastifyInstance } from 'fastify';
import type { ServerContext } from './context.js';

export function registerHealthRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.get('/health', async (_request, reply) => {
    if (ctx.draining()) return reply.code(503).send({ status: 'draining' });
    return {
      status: 'ok',
      targets: ctx.runtime.targets().length,
      running: ctx.admission.running,
      queued: ctx.admission.queued,
    };
  });
  app.get('/metrics', async (_request, reply) => {
    const text = await ctx.metrics.text();
    return reply.type(ctx.metrics.contentType).send(text);
  });
}
