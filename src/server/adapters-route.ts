/**
 * vLLM's run-time adapter endpoints, off unless the server runs with --allow-runtime-loading (and an
 * --adapter-dir to load from):
 *   POST /v1/load_lora_adapter   {"lora_name": "sql", "lora_path": "sql-v2"}  loads, or hot-swaps a served name
 *   POST /v1/unload_lora_adapter {"lora_name": "sql"}                          unloads (running requests finish)
 * `lora_path` is an entry name inside the adapter directory (targets.ts), never a filesystem path.
 */
import type { FastifyInstance } from 'fastify';
import type { ServerContext } from './context.js';
import { ServerError, parseBody } from './errors.js';
import { LoadAdapterRequest, UnloadAdapterRequest } from './schemas.js';

function disabled(): ServerError {
  return new ServerError('run-time adapter loading is disabled on this server', {
    status: 403,
    code: 'loading_disabled',
    hint: 'Start the server with --adapter-dir DIR --allow-runtime-loading',
  });
}

export function registerAdapterRoutes(app: FastifyInstance, ctx: ServerContext): void {
  app.post('/v1/load_lora_adapter', async (request) => {
    if (!ctx.allowRuntimeLoading) throw disabled();
    const body = parseBody(LoadAdapterRequest, request.body);
    const result = await ctx.targets.load(body.lora_name, body.lora_path ?? body.lora_name);
    return {
      object: 'lora_adapter',
      id: result.name,
      kind: result.kind,
      replaced: result.replaced,
      bytes: result.bytes,
      message: `${result.replaced ? 'swapped' : 'loaded'} ${result.kind} ${JSON.stringify(result.name)}`,
    };
  });
  app.post('/v1/unload_lora_adapter', async (request) => {
    if (!ctx.allowRuntimeLoading) throw disabled();
    const body = parseBody(UnloadAdapterRequest, request.body);
    ctx.targets.unload(body.lora_name);
    return { object: 'lora_adapter', id: body.lora_name, deleted: true, message: `unloaded ${JSON.stringify(body.lora_name)}` };
  });
}
