/**
 * RoutedServer: an OpenAI-compatible HTTP server over a RoutedRuntime (or a RuntimePool through
 * serving-runtime.ts `poolServingRuntime`).
 *
 *   const server = await RoutedServer.create({ runtime, tokenizer, apiKey: 'secret' });
 *   const { url } = await server.listen({ host: '127.0.0.1', port: 8000 });
 *   ...
 *   await server.close(); // drains: stops accepting, lets running requests finish, then resolves
 *
 * The server holds no state of its own beyond what the runtime has loaded, so replicas behind a load
 * balancer that share one adapter directory are interchangeable. It never disposes the runtime: whoever
 * created the runtime disposes it after close().
 */
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import type { Subscription } from 'rxjs';
import { z } from 'zod';
import { parseConfig } from '../config/parse.js';
import { ConfigError } from '../errors.js';
import type { ServingRuntime } from './serving-runtime.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import { Admission } from './admission.js';
import { buildApp } from './app.js';
import { ApiKeyCheck } from './auth.js';
import { loadChatTemplate, type ChatTemplate } from './chat-template.js';
import type { ServerContext } from './context.js';
import { ServerMetrics } from './metrics.js';
import { ServedTargets } from './targets.js';

const ServerSettings = z
  .object({
    apiKey: z.string().min(1).optional(),
    maxConcurrency: z.number().int().min(1).default(32),
    maxQueue: z.number().int().min(0).default(64),
    maxTokens: z.number().int().min(1).default(512),
    bodyLimitBytes: z
      .number()
      .int()
      .min(1024)
      .default(1024 * 1024),
    adapterDir: z.string().min(1).optional(),
    allowRuntimeLoading: z.boolean().default(false),
    drainTimeoutMs: z.number().min(0).default(30_000),
    logLevel: z.union([z.enum(['info', 'warn', 'error']), z.literal(false)]).default(false),
    templateDirs: z.array(z.string()).default([]),
  })
  .strict();

export interface RoutedServerOptions {
  readonly runtime: ServingRuntime;
  /** Defaults to the runtime's tokenizer. */
  readonly tokenizer?: Tokenizer | undefined;
  /** Bearer key every request but GET /health and GET /metrics must send. */
  readonly apiKey?: string | undefined;
  /** Requests generating at once (default 32); the runtime batches them. */
  readonly maxConcurrency?: number | undefined;
  /** Requests waiting for a slot before 429s start (default 64). */
  readonly maxQueue?: number | undefined;
  /** Most tokens a choice may ask for (default 512). */
  readonly maxTokens?: number | undefined;
  /** Largest request body (default 1 MiB). */
  readonly bodyLimitBytes?: number | undefined;
  /** The only directory run-time loading reads from (entries are adapter or routed-model directories). */
  readonly adapterDir?: string | undefined;
  /** Enables POST /v1/load_lora_adapter and /v1/unload_lora_adapter (needs adapterDir). */
  readonly allowRuntimeLoading?: boolean | undefined;
  /** How long close() waits for running requests before cancelling them (default 30 s). */
  readonly drainTimeoutMs?: number | undefined;
  /** Request log level (pino JSON lines on stderr); default false: silent. */
  readonly logLevel?: 'info' | 'warn' | 'error' | false | undefined;
  /** A chat template; default: the first tokenizer_config.json chat_template in templateDirs, else the plain format. */
  readonly chatTemplate?: ChatTemplate | undefined;
  /** Directories to look for tokenizer_config.json in (the tokenizer's, the model's). */
  readonly templateDirs?: readonly string[] | undefined;
}

export interface ListenOptions {
  readonly host?: string;
  /** 0 picks a free port. */
  readonly port?: number;
}

export class RoutedServer {
  private draining = false;
  private closing: Promise<void> | undefined;

  private constructor(
    readonly app: FastifyInstance,
    private readonly ctx: ServerContext,
    private readonly batches: Subscription,
    private readonly drainTimeoutMs: number,
  ) {}

  static async create(options: RoutedServerOptions): Promise<RoutedServer> {
    const { runtime, tokenizer: givenTokenizer, chatTemplate: givenTemplate, ...rest } = options;
    const settings = parseConfig(ServerSettings, rest, 'server options');
    if (settings.allowRuntimeLoading && settings.adapterDir === undefined) {
      throw new ConfigError('allowRuntimeLoading needs an adapter directory to load from', {
        path: 'server options.adapterDir',
        hint: 'Pass adapterDir (the CLI: --adapter-dir DIR)',
      });
    }
    const tokenizer = givenTokenizer ?? runtime.tokenizer;
    const usesBos = runtime.base.config.family === 'llama' && tokenizer?.bosId !== undefined;
    const chatTemplate = givenTemplate ?? (await loadChatTemplate(settings.templateDirs, tokenizer, usesBos));
    const admission = new Admission({ maxConcurrency: settings.maxConcurrency, maxQueue: settings.maxQueue });
    const metrics = new ServerMetrics({ queued: () => admission.queued, running: () => admission.running, stats: () => runtime.stats() });
    let server: RoutedServer | undefined;
    const ctx: ServerContext = {
      runtime,
      tokenizer,
      addBos: usesBos,
      chatTemplate,
      targets: new ServedTargets(runtime, settings.adapterDir),
      admission,
      metrics,
      limits: { maxTokens: settings.maxTokens, bodyLimitBytes: settings.bodyLimitBytes },
      allowRuntimeLoading: settings.allowRuntimeLoading,
      inflight: new Set(),
      draining: () => server?.draining === true,
    };
    const app = buildApp(ctx, { apiKey: settings.apiKey === undefined ? undefined : new ApiKeyCheck(settings.apiKey), logLevel: settings.logLevel });
    const batches = runtime.batches$.subscribe((event) => {
      metrics.batchRows.observe({ kind: event.kind }, event.rows);
      metrics.batchGroups.observe({ kind: event.kind }, event.groups);
    });
    server = new RoutedServer(app, ctx, batches, settings.drainTimeoutMs);
    return server;
  }

  /** Starts listening; resolves to the bound address (the real port when `port` was 0). */
  async listen(options: ListenOptions = {}): Promise<{ readonly host: string; readonly port: number; readonly url: string }> {
    await this.app.listen({ host: options.host ?? '127.0.0.1', port: options.port ?? 8000 });
    const address = this.app.server.address() as AddressInfo;
    const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    return { host: address.address, port: address.port, url: `http://${host}:${address.port}` };
  }

  /** Requests running and waiting. */
  get load(): { readonly running: number; readonly queued: number } {
    return { running: this.ctx.admission.running, queued: this.ctx.admission.queued };
  }

  get metrics(): ServerMetrics {
    return this.ctx.metrics;
  }

  /**
   * Drains and stops: refuses new requests (503, /health turns 503), closes idle connections, waits for
   * running requests to finish — cancelling those still running after drainTimeoutMs — then resolves.
   * Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.drain();
    return this.closing;
  }

  private async drain(): Promise<void> {
    this.draining = true;
    const timer = setTimeout(() => {
      for (const controller of this.ctx.inflight) controller.abort(new Error('drain timeout'));
    }, this.drainTimeoutMs);
    timer.unref();
    // Keep-alive connections go idle as their last response ends; close them then, not at the client's timeout.
    const sweep = setInterval(() => this.app.server.closeIdleConnections(), 50);
    sweep.unref();
    try {
      await this.app.close();
    } finally {
      clearTimeout(timer);
      clearInterval(sweep);
      this.batches.unsubscribe();
    }
  }
}
