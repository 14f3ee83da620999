/**
 * One worker of a RuntimePool (pool.ts): a whole RoutedRuntime — its own tfjs backend, base replica,
 * targets, batcher and memory budget — on its own thread. It loads the base the pool names, then serves
 * the pool's calls (pool-protocol.ts) one message at a time; calls run concurrently inside the runtime
 * exactly as they would in one process, so batching, hot swap and the memory budget are the runtime's own.
 */
import { parentPort } from 'node:worker_threads';
import { selectBackend } from '../backend.js';
import { loadBaseModel } from '../base/checkpoints/load-model.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import { loadTokenizer } from '../tokenizers/load-tokenizer.js';
import { type FromWorker, type PoolMethod, sendError, type ToWorker } from './pool-protocol.js';
import { RoutedRuntime } from './runtime.js';

const port = parentPort;
if (port === null) throw new Error('pool-worker.ts runs as a worker thread of a RuntimePool');

let runtime: RoutedRuntime | undefined;
/** Running generations by call id, so the pool can cancel them. */
const streams = new Map<number, AbortController>();

function post(message: FromWorker): void {
  port?.postMessage(message, message.type === 'result' ? ownedBuffers(message.value) : []);
}

/**
 * The logits buffer of a forward answer, moved to the pool instead of copied (a 4 × 128 prefill's is 8 MB):
 * only when the array is the whole of its own buffer — a fresh array per call (batcher.ts), which nothing
 * on this side reads again.
 */
function ownedBuffers(value: unknown): ArrayBuffer[] {
  const logits = (value as { logits?: unknown } | undefined)?.logits;
  if (!(logits instanceof Float32Array) || !(logits.buffer instanceof ArrayBuffer)) return [];
  return logits.byteOffset === 0 && logits.byteLength === logits.buffer.byteLength ? [logits.buffer] : [];
}

async function init(message: Extract<ToWorker, { type: 'init' }>): Promise<void> {
  await selectBackend({ preference: 'wasm', threads: message.threads });
  const { model } = await loadBaseModel(message.base.model, { allowNonFinite: message.base.allowNonFinite ?? false });
  const tokenizer = message.base.tokenizer === undefined ? undefined : await loadTokenizer(message.base.tokenizer, { vocabSize: model.config.vocabSize });
  const routers = ((await import(message.routersModule)) as { builtinRouters(): RouterRegistry }).builtinRouters();
  runtime = RoutedRuntime.create({ base: model, routers, tokenizer, ...message.runtime });
  runtime.batches$.subscribe((event) => post({ type: 'batch', event }));
  post({ type: 'ready', config: model.config, tokenizerVocab: tokenizer?.vocabSize });
}

function call(target: RoutedRuntime, method: PoolMethod, args: readonly unknown[]): unknown {
  const fn = (target as unknown as Record<PoolMethod, (...a: unknown[]) => unknown>)[method];
  return fn.apply(target, [...args]);
}

async function stream(target: RoutedRuntime, message: Extract<ToWorker, { type: 'stream' }>): Promise<void> {
  const controller = new AbortController();
  streams.set(message.id, controller);
  try {
    const options = { ...message.options, signal: controller.signal } as Parameters<RoutedRuntime['generateIterable']>[1];
    for await (const event of target.generateIterable(message.prompt, options)) post({ type: 'event', id: message.id, event });
    post({ type: 'result', id: message.id, value: undefined });
  } finally {
    streams.delete(message.id);
  }
}

port.on('message', (message: ToWorker) => {
  if (message.type === 'init') {
    init(message).catch((error: unknown) => post({ type: 'failed', error: sendError(error) }));
    return;
  }
  if (message.type === 'cancel') {
    streams.get(message.id)?.abort();
    return;
  }
  const target = runtime;
  const work =
    target === undefined
      ? Promise.reject(new Error('the pool worker has no runtime yet'))
      : message.type === 'stream'
        ? stream(target, message)
        : Promise.resolve(call(target, message.method, message.args)).then((value) => post({ type: 'result', id: message.id, value }));
  work.catch((error: unknown) => post({ type: 'error', id: message.id, error: sendError(error) }));
});
