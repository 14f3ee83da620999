/**
 * Load test of `routed-peft serve` (a benchmark script, not a unit test). The server runs as its own process
 * (the CLI, on 127.0.0.1, port chosen by the OS) over the shipped demo base with four PEFT LoRA adapters and
 * one routed model (top-2 of three LoRA experts); this process fires a burst of REQUESTS concurrent requests
 * at it through the official `openai` client — mixed targets (base, the four adapters, the routed model),
 * completions and chat, streamed and not, every CANCEL_EVERY-th cancelled by its client mid-generation.
 * Every request is greedy, so its answer is known in advance: each distinct request is first sent alone (the
 * "solo" result; the server tests check solo answers equal RoutedRuntime called directly), then the burst
 * checks that every request either completes with exactly its solo text, is refused with 429 (with
 * Retry-After), or — the ones the client cancels — ends early, and that the server's live tensor count
 * (routed_peft_tensors on /metrics) is back where it was. Finally SIGTERM: the server must exit 0.
 *
 * Reported: end-to-end latency p50/p99 of completed requests, time to first token of streams, generated
 * tokens per second over the burst (client- and server-counted), 429s, cancellations (client-side and the
 * runtime's own count), mismatches, tensors before/after. Loopback only; bounded: it gives up after
 * DEADLINE_MS (exit 1, the server killed) and exits 0 when every check holds.
 *
 *   node --import tsx benchmarks/serve-load.ts [--requests 200] [--max-concurrency 32] [--max-queue 32] [--quick]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { builtinRouters } from '../routers/index.js';
import type { AdapterInstance } from '../src/adapters/instance.js';
import { loadBaseModel } from '../src/base/checkpoints/load-model.js';
import { writePeftAdapter } from '../src/io/peft-adapter.js';
import { saveRoutedModel } from '../src/io/routed-model-dir.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import { machineInfo, round, useBackend, writeResult } from './lib/harness.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const ROOT = fileURLToPath(new URL('../', import.meta.url));
const DEMO_MODEL = join(ROOT, 'demo-model');
const ADAPTERS = ['a', 'b', 'c', 'd'] as const;
const MODELS = ['base', ...ADAPTERS, 'moe'] as const;
/** Prompts in the demo tokenizer's alphabet (lowercase, digits, | : + = < > ?). */
const PROMPTS = ['kq3z|', 'abc abc ', '1 2 3 4 ', 'hello wor', 'x+y=', 'zz|zz|', 'run 5 6 ', 'q:'];
const MAX_TOKENS = [8, 16, 24];
/**
 * Every CANCEL_EVERY-th request asks for CANCEL_TOKENS tokens (no early stop) and is cancelled by its client:
 * streams after their first chunk, others after CANCEL_AFTER_MS (while queued or while generating).
 */
const CANCEL_EVERY = 10;
const CANCEL_TOKENS = 36;
const CANCEL_AFTER_MS = 200;
const DEADLINE_MS = 300_000;
// ---------------------------------------------------------------------------------------------------------

function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const value = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} needs a positive integer`);
  return value;
}

const quick = process.argv.includes('--quick');
const REQUESTS = flag('requests', quick ? 40 : 200);
const MAX_CONCURRENCY = flag('max-concurrency', 32);
const MAX_QUEUE = flag('max-queue', quick ? 8 : 32);

interface Spec {
  readonly i: number;
  readonly model: (typeof MODELS)[number];
  readonly chat: boolean;
  readonly stream: boolean;
  readonly cancel: boolean;
  readonly prompt: string;
  readonly maxTokens: number;
  readonly ignoreEos: boolean;
}

type Outcome =
  | { readonly kind: 'done'; readonly text: string; readonly tokens: number; readonly ms: number; readonly firstMs: number | undefined }
  | { readonly kind: 'rejected'; readonly retryAfter: number }
  | { readonly kind: 'cancelled'; readonly ms: number }
  | { readonly kind: 'failed'; readonly error: string };

function specs(): Spec[] {
  return Array.from({ length: REQUESTS }, (_, i) => ({
    i,
    model: MODELS[i % MODELS.length] as Spec['model'],
    chat: i % 3 === 1,
    stream: i % 2 === 0,
    cancel: i % CANCEL_EVERY === CANCEL_EVERY - 1,
    prompt: PROMPTS[(i * 7) % PROMPTS.length] as string,
    maxTokens: i % CANCEL_EVERY === CANCEL_EVERY - 1 ? CANCEL_TOKENS : (MAX_TOKENS[i % MAX_TOKENS.length] as number),
    ignoreEos: i % CANCEL_EVERY === CANCEL_EVERY - 1 || i % 4 < 2,
  }));
}

function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] as number;
}

async function send(client: OpenAI, spec: Spec): Promise<Outcome> {
  const started = performance.now();
  const controller = new AbortController();
  const common = { model: spec.model, temperature: 0, ignore_eos: spec.ignoreEos };
  const messages = [{ role: 'user' as const, content: spec.prompt }];
  if (spec.cancel && !spec.stream) setTimeout(() => controller.abort(), CANCEL_AFTER_MS);
  try {
    if (!spec.stream) {
      const response = spec.chat
        ? await client.chat.completions.create({ ...common, messages, max_tokens: spec.maxTokens } as OpenAI.ChatCompletionCreateParamsNonStreaming, {
            signal: controller.signal,
          })
        : await client.completions.create({ ...common, prompt: spec.prompt, max_tokens: spec.maxTokens } as OpenAI.CompletionCreateParamsNonStreaming, {
            signal: controller.signal,
          });
      const text =
        'message' in (response.choices[0] ?? {})
          ? ((response as OpenAI.ChatCompletion).choices[0]?.message.content ?? '')
          : ((response as OpenAI.Completion).choices[0]?.text ?? '');
      return { kind: 'done', text, tokens: response.usage?.completion_tokens ?? 0, ms: performance.now() - started, firstMs: undefined };
    }
    const options = { signal: controller.signal };
    const stream = spec.chat
      ? await client.chat.completions.create(
          {
            ...common,
            messages,
            max_tokens: spec.maxTokens,
            stream: true,
            stream_options: { include_usage: true },
          } as OpenAI.ChatCompletionCreateParamsStreaming,
          options,
        )
      : await client.completions.create(
          {
            ...common,
            prompt: spec.prompt,
            max_tokens: spec.maxTokens,
            stream: true,
            stream_options: { include_usage: true },
          } as OpenAI.CompletionCreateParamsStreaming,
          options,
        );
    let text = '';
    let tokens = 0;
    let firstMs: number | undefined;
    for await (const chunk of stream as AsyncIterable<OpenAI.Completion | OpenAI.ChatCompletionChunk>) {
      const choice = chunk.choices[0];
      const piece = choice === undefined ? '' : 'delta' in choice ? (choice.delta.content ?? '') : choice.text;
      if (piece !== '' && firstMs === undefined) firstMs = performance.now() - started;
      text += piece;
      tokens = chunk.usage?.completion_tokens ?? tokens;
      if (spec.cancel && firstMs !== undefined) {
        controller.abort();
        break;
      }
    }
    if (spec.cancel && controller.signal.aborted) return { kind: 'cancelled', ms: performance.now() - started };
    return { kind: 'done', text, tokens, ms: performance.now() - started, firstMs };
  } catch (error) {
    if (error instanceof OpenAI.RateLimitError) return { kind: 'rejected', retryAfter: Number(error.headers?.get('retry-after')) };
    if (controller.signal.aborted) return { kind: 'cancelled', ms: performance.now() - started };
    return { kind: 'failed', error: error instanceof Error ? error.message : String(error) };
  }
}

/** Starts `routed-peft serve` from source (what bin/routed-peft.js does) and resolves to its URL. */
async function startServer(args: readonly string[]): Promise<{ child: ChildProcess; url: string; stderr: () => string; exited: Promise<number | null> }> {
  const launch = `import { main } from './src/cli/main.ts'; import { builtinRouters } from './routers/index.ts';
process.exitCode = await main(process.argv.slice(1), undefined, { routers: builtinRouters() });`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', launch, 'serve', ...args], {
    cwd: ROOT,
    env: { ...process.env, ROUTED_PEFT_BACKEND: 'wasm' },
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr?.on('data', () => {
      const match = /listening on (http:\/\/\S+)/.exec(stderr);
      if (match !== null) resolve(match[1] as string);
    });
    void exited.then((code) => reject(new Error(`the server exited (${code}) before listening:\n${stderr}`)));
  });
  return { child, url, stderr: () => stderr, exited };
}

/** The sum of every series of a Prometheus metric whose labels include `labels`. */
function metricValue(text: string, name: string, labels: Readonly<Record<string, string>> = {}): number {
  let total = 0;
  for (const line of text.split('\n')) {
    const match = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    if (Object.entries(labels).every(([k, v]) => (match[2] ?? '').includes(`${k}="${v}"`))) total += Number(match[3]);
  }
  return total;
}

async function main(): Promise<number> {
  const deadline = setTimeout(() => {
    console.error(`serve-load: gave up after ${DEADLINE_MS / 1000} s`);
    server?.child.kill('SIGKILL');
    process.exit(1);
  }, DEADLINE_MS);
  deadline.unref();
  let server: Awaited<ReturnType<typeof startServer>> | undefined;
  await useBackend('wasm');
  const dir = await mkdtemp(join(tmpdir(), 'serve-load-'));
  let exitCode = 0;
  try {
    // Adapter and routed-model directories for the demo base, written once and read by the server.
    const { model: base } = await loadBaseModel(DEMO_MODEL);
    const lora = (name: string, sites = ['attn.q', 'attn.v', 'mlp.down']) => ({ kind: 'lora', name, r: 4, alpha: 64, init: 'random', targets: { sites } });
    const source = AdaptedModel.create(base, { seed: 21, adapters: ADAPTERS.map((n) => lora(n)) });
    for (const name of ADAPTERS) await writePeftAdapter(join(dir, name), source.adapters.get(name) as AdapterInstance, base);
    source.dispose();
    const moe = AdaptedModel.create(
      base,
      {
        seed: 5,
        adapters: [lora('e0'), lora('e1'), lora('e2', ['attn.k', 'mlp.up'])],
        composition: { kind: 'route', experts: ['e0', 'e1', 'e2'], router: { kind: 'top-k', k: 2 } },
      },
      { routers: builtinRouters() },
    );
    await saveRoutedModel(join(dir, 'moe'), moe);
    moe.dispose();
    base.dispose();

    const args = ['--model', DEMO_MODEL, ...ADAPTERS.flatMap((n) => ['--adapter', `${n}=${join(dir, n)}`]), '--routed', `moe=${join(dir, 'moe')}`];
    server = await startServer([...args, '--host', '127.0.0.1', '--port', '0', '--max-concurrency', String(MAX_CONCURRENCY), '--max-queue', String(MAX_QUEUE)]);
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'local', maxRetries: 0, timeout: 120_000 });
    const scrape = async (): Promise<string> => (await fetch(`${server?.url}/metrics`)).text();

    // Solo results: each distinct request sent alone.
    const all = specs();
    const solo = new Map<string, string>();
    const key = (s: Spec): string => `${s.model}|${s.chat}|${s.prompt}|${s.maxTokens}|${s.ignoreEos}`;
    for (const s of all) {
      if (solo.has(key(s))) continue;
      const outcome = await send(client, { ...s, cancel: false, stream: false });
      if (outcome.kind !== 'done') throw new Error(`solo request ${key(s)} did not complete: ${JSON.stringify(outcome)}`);
      solo.set(key(s), outcome.text);
    }
    const idle = await scrape();
    const tensorsBefore = metricValue(idle, 'routed_peft_tensors');
    const cancelledBefore = metricValue(idle, 'routed_peft_cancelled_total', { stage: 'running' });
    const generatedBefore = metricValue(idle, 'routed_peft_generation_tokens_total');

    const burstStart = performance.now();
    let peakQueue = 0;
    let peakRunning = 0;
    let bursting = true;
    const watch = (async () => {
      while (bursting) {
        const health = (await (await fetch(`${server?.url}/health`)).json()) as { running: number; queued: number };
        peakQueue = Math.max(peakQueue, health.queued);
        peakRunning = Math.max(peakRunning, health.running);
        await new Promise((r) => setTimeout(r, 10));
      }
    })();
    const outcomes = await Promise.all(all.map((s) => send(client, s)));
    const burstMs = performance.now() - burstStart;
    bursting = false;
    await watch;

    // Wait until the server is idle again (cancelled passes finish their current step), then read it.
    let after = await scrape();
    for (let i = 0; i < 200 && (metricValue(after, 'routed_peft_running_requests') > 0 || metricValue(after, 'routed_peft_tensors') !== tensorsBefore); i++) {
      await new Promise((r) => setTimeout(r, 25));
      after = await scrape();
    }
    const tensorsAfter = metricValue(after, 'routed_peft_tensors');

    const done = outcomes.flatMap((o, i) => (o.kind === 'done' ? [{ o, s: all[i] as Spec }] : []));
    const mismatches = done.filter(({ o, s }) => o.text !== solo.get(key(s)));
    const rejected = outcomes.flatMap((o) => (o.kind === 'rejected' ? [o] : []));
    const cancelled = outcomes.filter((o) => o.kind === 'cancelled');
    const failed = outcomes.flatMap((o) => (o.kind === 'failed' ? [o.error] : []));
    const latencies = done.map(({ o }) => o.ms);
    const firsts = done.flatMap(({ o }) => (o.firstMs === undefined ? [] : [o.firstMs]));
    const generated = done.reduce((sum, { o }) => sum + o.tokens, 0);
    const serverGenerated = metricValue(after, 'routed_peft_generation_tokens_total') - generatedBefore;
    const summary = {
      requests: REQUESTS,
      completed: done.length,
      rejected429: rejected.length,
      retryAfterSeconds: [...new Set(rejected.map((r) => r.retryAfter))].sort((a, b) => a - b),
      cancelled: cancelled.length,
      cancelRequested: all.filter((s) => s.cancel).length,
      runtimeCancellations: metricValue(after, 'routed_peft_cancelled_total', { stage: 'running' }) - cancelledBefore,
      queueCancellations: metricValue(after, 'routed_peft_cancelled_total', { stage: 'queued' }),
      failed: failed.length,
      mismatches: mismatches.length,
      peakRunning,
      peakQueue,
      burstSeconds: round(burstMs / 1000, 2),
      latencyP50Ms: round(percentile(latencies, 50), 1),
      latencyP99Ms: round(percentile(latencies, 99), 1),
      firstTokenP50Ms: round(percentile(firsts, 50), 1),
      firstTokenP99Ms: round(percentile(firsts, 99), 1),
      generatedTokens: generated,
      tokensPerSecond: round(generated / (burstMs / 1000), 1),
      serverTokensPerSecond: round(serverGenerated / (burstMs / 1000), 1),
      tensorsBefore,
      tensorsAfter,
    };
    console.log(`serve-load: ${REQUESTS} concurrent requests, --max-concurrency ${MAX_CONCURRENCY} --max-queue ${MAX_QUEUE}`);
    for (const [k, v] of Object.entries(summary)) console.log(`  ${k.padEnd(22)} ${Array.isArray(v) ? v.join(', ') : v}`);
    if (failed.length > 0) console.error(`failures:\n  ${failed.slice(0, 5).join('\n  ')}`);
    for (const { s, o } of mismatches.slice(0, 5))
      console.error(`mismatch #${s.i} ${key(s)}: got ${JSON.stringify(o.text)}, solo ${JSON.stringify(solo.get(key(s)))}`);

    server.child.kill('SIGTERM');
    const code = await server.exited;
    const ok =
      failed.length === 0 &&
      mismatches.length === 0 &&
      done.length + rejected.length + cancelled.length === REQUESTS &&
      rejected.every((r) => r.retryAfter >= 1) &&
      tensorsAfter === tensorsBefore &&
      code === 0;
    if (!ok) exitCode = 1;
    const file = writeResult({
      name: 'serve-load',
      description: `${REQUESTS} concurrent mixed OpenAI-API requests (base, 4 LoRA adapters, 1 routed model; completions and chat; streamed and not; every ${CANCEL_EVERY}th cancelled) against routed-peft serve on 127.0.0.1`,
      quick,
      date: new Date().toISOString(),
      machine: machineInfo(),
      constants: {
        REQUESTS,
        MAX_CONCURRENCY,
        MAX_QUEUE,
        PROMPTS,
        MAX_TOKENS,
        CANCEL_EVERY,
        CANCEL_TOKENS,
        CANCEL_AFTER_MS,
        model: 'demo-model (3-layer llama, D=64, 48-token char vocabulary)',
      },
      ratios: [],
      details: { summary, serverExitCode: code, ok },
      seconds: round(burstMs / 1000, 2),
    });
    console.log(`  server exit on SIGTERM  ${code}`);
    console.log(
      `serve-load: ${ok ? 'every request completed with its solo result, was refused with 429, or was cancelled; no leak' : 'CHECKS FAILED'}; wrote ${relative(ROOT, file)}`,
    );
  } finally {
    server?.child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
  return exitCode;
}

process.exitCode = await main().catch((error: unknown) => {
  console.error(`serve-load: ${error instanceof Error ? error.message : String(error)}`);
  return 1;
});
