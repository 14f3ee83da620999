/**
 * `routed-peft serve`: an OpenAI-compatible HTTP server (src/server/) over a RoutedRuntime on one frozen
 * base, serving the base, PEFT LoRA adapters and routed models by name. Runs until SIGTERM or SIGINT, then
 * drains (stops accepting, finishes running requests) and exits 0.
 */
import { existsSync, statSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { optional, parseStrict, toChoice, toInt, toNumber } from './args.js';
import type { CliCommand, CliContext } from './command.js';
import type { CliIo } from './io.js';
import { MODEL_FLAGS, MODEL_USAGE, cliTokenizerPath, loadCliModel } from './model-options.js';
import { UsageError } from '../errors.js';
import { RuntimePool } from '../runtime/pool.js';
import { RoutedRuntime } from '../runtime/runtime.js';
import { poolServingRuntime, type ServingRuntime } from '../server/serving-runtime.js';
import { loadTokenizer } from '../tokenizers/load-tokenizer.js';
import { RoutedServer } from '../server/server.js';
import { TargetName } from '../server/schemas.js';

export const API_KEY_ENV_VAR = 'ROUTED_PEFT_API_KEY';

/** The runtime serve runs on: one RoutedRuntime here, or a RuntimePool of `workers` threads. */
async function startRuntime(
  values: { readonly model?: string | undefined; readonly tokenizer?: string | undefined; readonly 'allow-non-finite'?: boolean | undefined },
  workers: number,
  context: CliContext,
  settings: { readonly memoryBudgetBytes: number | undefined; readonly batching: { readonly windowMs: number; readonly maxBatchSize: number } },
  io: CliIo,
): Promise<{ readonly runtime: ServingRuntime; close(): Promise<void> }> {
  if (workers === 1) {
    const loaded = await loadCliModel(values);
    const runtime = RoutedRuntime.create({ base: loaded.model, routers: context.routers, tokenizer: loaded.tokenizer, ...settings });
    return {
      runtime,
      close: async () => {
        runtime.dispose();
        await runtime.idle();
        loaded.model.dispose();
      },
    };
  }
  if (values.model === undefined) throw new UsageError('--model is required');
  const tokenizerPath = cliTokenizerPath(values.model, values.tokenizer);
  const pool = await RuntimePool.create({
    base: {
      model: resolve(values.model),
      tokenizer: tokenizerPath === undefined ? undefined : resolve(tokenizerPath),
      allowNonFinite: values['allow-non-finite'] === true,
    },
    workers,
    ...settings,
  });
  try {
    const tokenizer = tokenizerPath === undefined ? undefined : await loadTokenizer(tokenizerPath, { vocabSize: pool.config.vocabSize });
    const runtime = await poolServingRuntime(pool, tokenizer, { onError: (error) => io.stderr(`routed-peft serve: ${(error as Error).message}\n`) });
    return {
      runtime,
      close: async () => {
        runtime.close();
        await pool.close();
      },
    };
  } catch (error) {
    await pool.close();
    throw error;
  }
}

const usage = `Usage: routed-peft serve --model PATH [--tokenizer PATH] [--adapter NAME=DIR]... [--routed NAME=DIR]...
                       [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--max-concurrency N] [--max-queue N]
                       [--memory-budget BYTES] [--max-tokens N] [--max-body-bytes N]
                       [--adapter-dir DIR [--allow-runtime-loading]] [--drain-timeout S] [--log-level LEVEL]
                       [--workers N]

Serve the base model, PEFT LoRA adapters and routed models over an OpenAI-compatible HTTP API: a request's
"model" is "base", an adapter name or a routed-model name. Concurrent requests for different targets share
the runtime's batched passes. Stops on SIGTERM/SIGINT after the running requests finish (exit 0).

Endpoints: POST /v1/completions, POST /v1/chat/completions (both with "stream": true), GET /v1/models,
POST /v1/load_lora_adapter, POST /v1/unload_lora_adapter, GET /health, GET /metrics (Prometheus).

Options:
${MODEL_USAGE}
  --adapter NAME=DIR       Serve the PEFT LoRA adapter in DIR as model NAME (repeatable; DIR alone: its name)
  --routed NAME=DIR        Serve the routed-model directory DIR as model NAME (repeatable)
  --host HOST              Address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  --port N                 Port (default 8000; 0 picks a free one)
  --api-key KEY            Require "Authorization: Bearer KEY" on every request but GET /health and /metrics
                           (default: the ${API_KEY_ENV_VAR} environment variable; unset: no key)
  --max-concurrency N      Requests generating at once (default 32); the runtime batches them
  --max-queue N            Requests waiting beyond those before 429 + Retry-After (default 64)
  --memory-budget BYTES    Upper bound on resident target weights (e.g. 512M, 2G); least recently used
                           idle targets are evicted and reloaded on demand (default: no bound)
  --max-tokens N           Most tokens one choice may ask for (default 512)
  --max-body-bytes N       Largest request body (default 1048576); larger ones get 413
  --adapter-dir DIR        The only directory run-time loading reads from: POST /v1/load_lora_adapter takes
                           the name of an entry in DIR, never a path
  --allow-runtime-loading  Enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter (needs --adapter-dir)
  --drain-timeout S        On SIGTERM, seconds to wait for running requests before cancelling them (default 30)
  --batch-window-ms MS     How long the runtime waits to batch arriving requests (default 2)
  --max-batch-size N       Most requests per runtime pass (default 16)
  --workers N              Worker threads, each a runtime with its own copy of the base on one wasm thread;
                           requests go to the least busy (default 1: one runtime in this thread). About N
                           times the memory; --memory-budget then bounds each worker
  --log-level LEVEL        info | warn | error | silent: request log as JSON lines on stderr (default warn)
`;

const SIZE = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)$/i;

/** Bytes from `1048576`, `512M`, `2G`, `1.5GiB` (binary multiples). */
export function toBytes(flag: string, raw: string): number {
  const match = SIZE.exec(raw.trim());
  const unit = match?.[2]?.toLowerCase() ?? '';
  const value = match === null ? Number.NaN : Number(match[1]) * 1024 ** ['', 'k', 'm', 'g', 't'].indexOf(unit);
  if (!Number.isFinite(value) || value <= 0) throw new UsageError(`Invalid value for --${flag}: '${raw}' (expected a size in bytes like 1048576, 512M or 2G)`);
  return Math.floor(value);
}

/** `NAME=DIR` (or `DIR`, named after its last path component) → [name, dir]. */
export function parseNamed(flag: string, raw: string): [string, string] {
  const eq = raw.indexOf('=');
  const name = eq > 0 ? raw.slice(0, eq) : basename(resolve(raw));
  const dir = eq > 0 ? raw.slice(eq + 1) : raw;
  const valid = TargetName.safeParse(name);
  if (!valid.success) throw new UsageError(`Invalid name in --${flag} '${raw}': ${JSON.stringify(name)} ${valid.error.issues[0]?.message ?? 'is not allowed'}`);
  if (dir === '' || !existsSync(dir) || !statSync(dir).isDirectory()) throw new UsageError(`--${flag} ${raw}: ${JSON.stringify(dir)} is not a directory`);
  return [name, dir];
}

const dirOf = (path: string): string => (statSync(path).isDirectory() ? path : dirname(path));

export const serveCommand: CliCommand = {
  name: 'serve',
  summary: 'Serve the base, adapters and routed models over an OpenAI-compatible HTTP API',
  usage,
  async run(args: string[], io: CliIo, context: CliContext): Promise<number> {
    const { values } = parseStrict(args, {
      ...MODEL_FLAGS,
      adapter: { type: 'string', multiple: true },
      routed: { type: 'string', multiple: true },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '8000' },
      'api-key': { type: 'string' },
      'max-concurrency': { type: 'string', default: '32' },
      'max-queue': { type: 'string', default: '64' },
      'memory-budget': { type: 'string' },
      'max-tokens': { type: 'string', default: '512' },
      'max-body-bytes': { type: 'string', default: '1048576' },
      'adapter-dir': { type: 'string' },
      'allow-runtime-loading': { type: 'boolean', default: false },
      'drain-timeout': { type: 'string', default: '30' },
      'batch-window-ms': { type: 'string', default: '2' },
      'max-batch-size': { type: 'string', default: '16' },
      'log-level': { type: 'string', default: 'warn' },
      workers: { type: 'string', default: '1' },
    });
    const port = toInt('port', values.port, { min: 0, max: 65535 });
    const maxConcurrency = toInt('max-concurrency', values['max-concurrency'], { min: 1 });
    const maxQueue = toInt('max-queue', values['max-queue'], { min: 0 });
    const maxTokens = toInt('max-tokens', values['max-tokens'], { min: 1 });
    const bodyLimitBytes = toInt('max-body-bytes', values['max-body-bytes'], { min: 1024 });
    const drainTimeoutMs = toNumber('drain-timeout', values['drain-timeout'], { min: 0 }) * 1000;
    const windowMs = toNumber('batch-window-ms', values['batch-window-ms'], { min: 0 });
    const maxBatchSize = toInt('max-batch-size', values['max-batch-size'], { min: 1 });
    const workers = toInt('workers', values.workers, { min: 1, max: 256 });
    const memoryBudgetBytes = optional(values['memory-budget'], (raw) => toBytes('memory-budget', raw), undefined);
    const logLevel = toChoice('log-level', values['log-level'], ['info', 'warn', 'error', 'silent'] as const);
    const apiKey = values['api-key'] ?? (process.env[API_KEY_ENV_VAR] || undefined);
    const adapterDir = values['adapter-dir'];
    if (values['allow-runtime-loading'] && adapterDir === undefined) throw new UsageError('--allow-runtime-loading needs --adapter-dir DIR');
    if (adapterDir !== undefined && (!existsSync(adapterDir) || !statSync(adapterDir).isDirectory())) {
      throw new UsageError(`--adapter-dir ${adapterDir}: not a directory`);
    }
    const targets = [
      ...(values.adapter ?? []).map((raw) => ['peft', ...parseNamed('adapter', raw)] as const),
      ...(values.routed ?? []).map((raw) => ['routed', ...parseNamed('routed', raw)] as const),
    ];
    const names = new Set<string>();
    for (const [, name] of targets) {
      if (names.has(name)) throw new UsageError(`two targets are named ${JSON.stringify(name)}; give each --adapter/--routed a distinct NAME=`);
      names.add(name);
    }

    const serving = await startRuntime(values, workers, context, { memoryBudgetBytes, batching: { windowMs, maxBatchSize } }, io);
    const runtime = serving.runtime;
    let server: RoutedServer | undefined;
    try {
      for (const [kind, name, dir] of targets) {
        const info = await runtime.load(name, { kind, dir: resolve(dir) });
        for (const w of info.warnings) io.stderr(`warning: ${name}: ${w}\n`);
      }
      const model = values.model as string;
      const templateDirs = [...(values.tokenizer === undefined ? [] : [dirOf(values.tokenizer)]), dirOf(model)];
      server = await RoutedServer.create({
        runtime,
        apiKey,
        maxConcurrency,
        maxQueue,
        maxTokens,
        bodyLimitBytes,
        adapterDir: adapterDir === undefined ? undefined : resolve(adapterDir),
        allowRuntimeLoading: values['allow-runtime-loading'],
        drainTimeoutMs,
        logLevel: logLevel === 'silent' ? false : logLevel,
        templateDirs,
      });
      const running = server;
      const stopped = new Promise<string>((done) => {
        const onSignal = (signal: string): void => {
          process.off('SIGTERM', onSignal);
          process.off('SIGINT', onSignal);
          done(signal);
        };
        process.on('SIGTERM', onSignal);
        process.on('SIGINT', onSignal);
      });
      const { url } = await running.listen({ host: values.host, port });
      io.stderr(
        `routed-peft serve: listening on ${url} (models: ${['base', ...runtime.targets()].join(', ')}; ${apiKey === undefined ? 'no API key' : 'API key required'})\n`,
      );
      const signal = await stopped;
      const { running: busy, queued } = running.load;
      io.stderr(`routed-peft serve: ${signal}: draining ${busy} running and ${queued} queued requests\n`);
      await running.close();
      io.stderr('routed-peft serve: stopped\n');
      return 0;
    } finally {
      await server?.close();
      await serving.close();
    }
  },
};
