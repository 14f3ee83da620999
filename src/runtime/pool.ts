/**
 * RuntimePool: serving throughput on every CPU core. N worker threads each run a whole RoutedRuntime
 * (pool-worker.ts) on one wasm thread with its own replica of the same base; the pool sends each call to
 * the worker with the fewest calls in flight (ties: the next in turn), so concurrent requests compute in
 * parallel, and splits a forward or classify of several rows over the workers (call-rows.ts), so one
 * request's prefill computes on every core. Targets are the same everywhere: load, swap, unload, merge and unmerge go to every worker and
 * resolve when all have done it. Each worker keeps the runtime's own semantics — batching of the calls it
 * gets, hot swap under running requests, the memory budget (per worker: each holds its own copy of the
 * resident targets) — and results and typed errors are what a single runtime gives.
 *
 *   const pool = await RuntimePool.create({ base: { model: 'stories260K.bin', tokenizer: 'tok512.bin' }, workers: 2 });
 *   await pool.load('moe', { kind: 'routed', dir: 'models/moe' });
 *   const summary = await pool.generate([1, 5], { select: { routed: 'moe' }, maxNewTokens: 20 });
 *   await pool.close();
 *
 * Memory: every worker holds the base and its resident targets, so N workers take about N times the memory
 * of one runtime. Sources are directories (peft, routed); an in-process model instance cannot cross a thread
 * and is refused by name.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { Observable, Subject } from 'rxjs';
import { z } from 'zod';
import type { ModelConfig } from '../base/config.js';
import { parseConfig } from '../config/parse.js';
import { ConfigError, RoutedPeftError } from '../errors.js';
import { checkCallRows, joinForward, rowParts } from './call-rows.js';
import { type FromWorker, type PoolBaseSource, type PoolMethod, reviveError, type ToWorker } from './pool-protocol.js';
import { RuntimeSettings } from './runtime.js';
import type {
  BatchEvent,
  CallOptions,
  Classification,
  ClassifyOptions,
  ForwardResult,
  GenerationEvent,
  GenerationSummary,
  LoadOptions,
  RuntimeGenerateOptions,
  RuntimeStats,
  ScoreResult,
  TargetInfo,
  TargetSource,
} from './types.js';

export type { PoolBaseSource } from './pool-protocol.js';

const PoolSettings = RuntimeSettings.extend({
  /** Worker threads (default: the machine's available parallelism). */
  workers: z.number().int().min(1).max(256).optional(),
  /** wasm threads inside each worker (default 1: the pool's parallelism is its workers). */
  threadsPerWorker: z.number().int().min(1).max(8).default(1),
  /** Module (URL or path) whose `builtinRouters()` every worker uses (default: the package's routers). */
  routersModule: z.string().optional(),
}).strict();

export interface RuntimePoolOptions {
  readonly base: PoolBaseSource;
  readonly workers?: number | undefined;
  readonly threadsPerWorker?: number | undefined;
  readonly batching?: { readonly windowMs?: number | undefined; readonly maxBatchSize?: number | undefined } | undefined;
  /** Per worker: the bytes of resident targets each worker may hold. */
  readonly memoryBudgetBytes?: number | undefined;
  readonly memoryQueue?: { readonly maxWaiting?: number | undefined; readonly timeoutMs?: number | undefined } | undefined;
  readonly batchCoupledRouters?: readonly string[] | undefined;
  readonly routersModule?: string | undefined;
}

/** Where this file's sibling modules are: the TypeScript sources (tests, tsx) or the built JavaScript. */
const FROM_SOURCE = import.meta.url.endsWith('.ts');
const WORKER_URL = new URL(FROM_SOURCE ? './pool-worker.ts' : './pool-worker.js', import.meta.url);
const DEFAULT_ROUTERS = new URL(FROM_SOURCE ? '../../routers/index.ts' : '../../routers/index.js', import.meta.url).href;

/**
 * A worker thread running pool-worker: the compiled file, or from the TypeScript sources (tests, `node
 * --import tsx`) pool-worker-source.mjs, which registers tsx's loader in the worker's thread first.
 */
function startWorker(): Worker {
  return new Worker(FROM_SOURCE ? new URL('./pool-worker-source.mjs', import.meta.url) : WORKER_URL, { execArgv: [] });
}

interface Pending {
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
  readonly onEvent?: (event: unknown) => void;
}

/** One worker thread and the calls it has in flight. */
class PoolWorker {
  readonly pending = new Map<number, Pending>();
  /** Calls sent to this worker (target operations included). */
  calls = 0;
  private failure: Error | undefined;

  constructor(
    readonly index: number,
    readonly thread: Worker,
    private readonly onBatch: (event: BatchEvent) => void,
  ) {
    thread.on('message', (message: FromWorker) => this.receive(message));
    thread.on('error', (error) => this.fail(error));
    thread.on('exit', (code) => this.fail(new RoutedPeftError(`pool worker ${index} exited (code ${code})`)));
  }

  get inFlight(): number {
    return this.pending.size;
  }

  send(message: ToWorker, pending: Pending): void {
    if (this.failure !== undefined) {
      pending.reject(this.failure);
      return;
    }
    this.pending.set((message as { id: number }).id, pending);
    this.calls++;
    this.thread.postMessage(message);
  }

  private receive(message: FromWorker): void {
    if (message.type === 'ready' || message.type === 'failed') return; // handled by the start-up listener
    if (message.type === 'batch') {
      this.onBatch(message.event as BatchEvent);
      return;
    }
    const pending = this.pending.get(message.id);
    if (pending === undefined) return;
    if (message.type === 'event') {
      pending.onEvent?.(message.event);
      return;
    }
    this.pending.delete(message.id);
    if (message.type === 'result') pending.resolve(message.value);
    else pending.reject(reviveError(message.error));
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }
}

export class RuntimePool {
  private nextId = 1;
  private turn = 0;
  private closed = false;
  /** Per loaded target: whether a call's rows compute together (TargetInfo.rowsCoupled). */
  private readonly coupled = new Map<string, boolean>();
  /** Loads, swaps, unloads, merges and unmerges running: while one runs, calls are not split. */
  private targetChanges = 0;
  private readonly batchSubject: Subject<BatchEvent>;
  private readonly workers: readonly PoolWorker[];
  /** One event per pass any worker's batcher runs (plain data, as RoutedRuntime.batches$). */
  readonly batches$: Observable<BatchEvent>;

  private constructor(
    threads: readonly Worker[],
    batchSubject: Subject<BatchEvent>,
    /** The base's architecture (every worker loaded the same). */
    readonly config: ModelConfig,
    /** The tokenizer's vocabulary size when the base came with one. */
    readonly tokenizerVocab: number | undefined,
  ) {
    this.batchSubject = batchSubject;
    this.batches$ = batchSubject.asObservable();
    this.workers = threads.map((thread, i) => new PoolWorker(i, thread, (event) => batchSubject.next(event)));
  }

  /** Starts the workers and loads the base in each; rejects (stopping them) if any fails. */
  static async create(options: RuntimePoolOptions): Promise<RuntimePool> {
    const { base, ...rest } = options;
    const settings = parseConfig(PoolSettings, rest, 'pool options');
    if (typeof base?.model !== 'string' || base.model.length === 0) {
      throw new ConfigError('a RuntimePool needs base.model: the checkpoint path every worker loads', {
        path: 'base.model',
        hint: 'Pass { base: { model: PATH, tokenizer?: PATH } }',
      });
    }
    const count = settings.workers ?? availableParallelism();
    const { workers: _workers, threadsPerWorker, routersModule, ...runtime } = settings; // the rest: each worker's RoutedRuntime settings
    const threads = Array.from({ length: count }, () => startWorker());
    try {
      const ready = await Promise.all(
        threads.map(
          (thread, i) =>
            new Promise<Extract<FromWorker, { type: 'ready' }>>((resolve, reject) => {
              const onMessage = (message: FromWorker) => {
                if (message.type === 'ready') resolve(message);
                else if (message.type === 'failed') reject(reviveError(message.error));
                else return;
                thread.off('message', onMessage);
              };
              thread.on('message', onMessage);
              thread.once('error', reject);
              thread.once('exit', (code) => reject(new RoutedPeftError(`pool worker ${i} exited while starting (code ${code})`)));
              const init: ToWorker = {
                type: 'init',
                base,
                runtime,
                threads: threadsPerWorker,
                routersModule: routersModule ?? DEFAULT_ROUTERS,
              };
              thread.postMessage(init);
            }),
        ),
      );
      const first = ready[0] as Extract<FromWorker, { type: 'ready' }>;
      return new RuntimePool(threads, new Subject<BatchEvent>(), first.config, first.tokenizerVocab);
    } catch (error) {
      await Promise.all(threads.map((t) => t.terminate()));
      throw error;
    }
  }

  /** Worker threads serving calls. */
  get size(): number {
    return this.workers.length;
  }

  /** Calls and generations each worker was sent so far (target operations count on every worker). */
  get dispatched(): number[] {
    return this.workers.map((w) => w.calls);
  }

  // ---------------------------------------------------------------------------------------------------
  // Targets: every worker

  async load(name: string, source: TargetSource, options: LoadOptions = {}): Promise<TargetInfo> {
    const info = await this.changing<TargetInfo>('load', [name, this.portable(source), options], name);
    this.coupled.set(name, info.rowsCoupled);
    return info;
  }

  async swap(name: string, source: TargetSource, options: LoadOptions = {}): Promise<TargetInfo> {
    const info = await this.changing<TargetInfo>('swap', [name, this.portable(source), options], name);
    this.coupled.set(name, info.rowsCoupled);
    return info;
  }

  async unload(name: string): Promise<void> {
    await this.changing('unload', [name], name);
  }

  async merge(name: string): Promise<void> {
    await this.changing('merge', [name], name);
  }

  async unmerge(name: string): Promise<void> {
    await this.changing('unmerge', [name], name);
  }

  async targets(): Promise<string[]> {
    return (await this.on(this.workers[0] as PoolWorker, 'targets', [])) as string[];
  }

  /** Each worker's runtime statistics, in worker order. */
  async stats(): Promise<RuntimeStats[]> {
    return Promise.all(this.workers.map((w) => this.on(w, 'stats', []) as Promise<RuntimeStats>));
  }

  // ---------------------------------------------------------------------------------------------------
  // Calls: one worker each (a forward or classify of several rows: its rows over the workers)

  /**
   * Logits [B, T, V]. A call of several rows is split over the workers (contiguous parts, one per worker
   * while rows last) and joined: one request's prefill on every core, each row's values as one runtime gives
   * them up to float round-off. Not split: a target whose router couples the rows (TargetInfo.rowsCoupled),
   * or while a load, swap, merge or unmerge is running (workers may hold different versions until it ends).
   */
  forward(ids: readonly (readonly number[])[], options: CallOptions): Promise<ForwardResult> {
    const parts = this.splitting(ids, options);
    if (parts === undefined) return this.anywhere('forward', [ids, options]) as Promise<ForwardResult>;
    const answers = parts.map(([first, last]) => this.anywhere('forward', [ids.slice(first, last), partOptions(options, first, last)]));
    return Promise.all(answers).then((results) => joinForward(results as ForwardResult[], parts));
  }

  score(prompt: readonly number[] | string, continuation: readonly number[] | string, options: CallOptions): Promise<ScoreResult> {
    return this.anywhere('score', [prompt, continuation, options]) as Promise<ScoreResult>;
  }

  /** One classification per row; several rows are split over the workers as `forward` splits them. */
  classify(ids: readonly (readonly number[])[], options: ClassifyOptions): Promise<Classification[]> {
    const parts = this.splitting(ids, options);
    if (parts === undefined) return this.anywhere('classify', [ids, options]) as Promise<Classification[]>;
    const answers = parts.map(([first, last]) => this.anywhere('classify', [ids.slice(first, last), partOptions(options, first, last)]));
    return Promise.all(answers).then((results) => (results as Classification[][]).flat());
  }

  /** Runs a generation to its end on one worker and returns the summary. */
  async generate(prompt: readonly number[] | string, options: RuntimeGenerateOptions): Promise<GenerationSummary> {
    let summary: GenerationSummary | undefined;
    for await (const event of this.generateIterable(prompt, options)) if (event.kind === 'end') summary = event;
    if (summary === undefined) throw new RoutedPeftError('the generation ended without a summary');
    return summary;
  }

  /** Token events as the worker produces them; breaking out of the loop (or options.signal) cancels it. */
  async *generateIterable(prompt: readonly number[] | string, options: RuntimeGenerateOptions): AsyncGenerator<GenerationEvent, void, undefined> {
    this.checkOpen();
    const { signal, ...plain } = options;
    const worker = this.pick();
    const id = this.nextId++;
    const queue: GenerationEvent[] = [];
    let done = false;
    let failure: Error | undefined;
    let wake: (() => void) | undefined;
    const notify = () => {
      wake?.();
      wake = undefined;
    };
    worker.send(
      { type: 'stream', id, prompt, options: plain as Record<string, unknown> },
      {
        resolve: () => {
          done = true;
          notify();
        },
        reject: (error) => {
          failure = error;
          notify();
        },
        onEvent: (event) => {
          queue.push(event as GenerationEvent);
          notify();
        },
      },
    );
    const cancel = () => worker.thread.postMessage({ type: 'cancel', id } satisfies ToWorker);
    signal?.addEventListener('abort', cancel, { once: true });
    let finished = false;
    try {
      while (true) {
        const event = queue.shift();
        if (event !== undefined) {
          yield event;
          continue;
        }
        if (failure !== undefined) throw failure;
        if (done) break;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
      finished = true;
    } finally {
      signal?.removeEventListener('abort', cancel);
      if (!finished && !done && failure === undefined) cancel(); // the consumer stopped early
    }
  }

  /** Resolves when no worker has a call waiting or running. */
  async idle(): Promise<void> {
    await Promise.all(this.workers.map((w) => this.on(w, 'idle', [])));
  }

  /** Stops accepting calls, lets each worker's runtime dispose and finish what runs, and ends the threads. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(
      this.workers.map(async (w) => {
        try {
          await this.on(w, 'dispose', [], true);
          await this.on(w, 'idle', [], true);
        } finally {
          await w.thread.terminate();
        }
      }),
    );
    this.batchSubject.complete();
  }

  /** generateIterable as an rxjs Observable (unsubscribing cancels the generation), as RoutedRuntime.generate$. */
  generate$(prompt: readonly number[] | string, options: RuntimeGenerateOptions): Observable<GenerationEvent> {
    return new Observable<GenerationEvent>((subscriber) => {
      const stop = new AbortController();
      const outer = options.signal;
      const onOuter = () => stop.abort();
      outer?.addEventListener('abort', onOuter, { once: true });
      if (outer?.aborted === true) stop.abort();
      (async () => {
        for await (const event of this.generateIterable(prompt, { ...options, signal: stop.signal })) subscriber.next(event);
        subscriber.complete();
      })().catch((error: unknown) => subscriber.error(error));
      return () => {
        outer?.removeEventListener('abort', onOuter);
        stop.abort();
      };
    });
  }

  // ---------------------------------------------------------------------------------------------------

  private checkOpen(): void {
    if (this.closed) throw new RoutedPeftError('the runtime pool is closed', { hint: 'Create a new RuntimePool' });
  }

  /**
   * The row parts a call is split into, or undefined to send it whole: one worker, one row, a target change
   * in flight, task ids that do not match the rows (the worker refuses them), or a selection whose rows are
   * coupled or not known to be free (a routed target the pool has not loaded; a selection a runtime refuses),
   * or malformed rows (sent whole, a worker refuses them by their index in the whole call).
   */
  private splitting(ids: readonly (readonly number[])[], options: CallOptions): [number, number][] | undefined {
    this.checkOpen();
    if (this.workers.length < 2 || this.targetChanges > 0 || !Array.isArray(ids) || ids.length < 2) return undefined;
    if (options.taskIds !== undefined && options.taskIds.length !== ids.length) return undefined;
    try {
      checkCallRows(ids, this.config, 'ids');
    } catch {
      return undefined;
    }
    if (!this.rowsIndependent(options.select)) return undefined;
    return rowParts(ids.length, this.workers.length);
  }

  private rowsIndependent(select: unknown): boolean {
    if (select === 'base') return true;
    if (select === null || typeof select !== 'object') return false;
    if ('routed' in select) return this.coupled.get(String(select.routed)) === false;
    return 'adapter' in select || ('combine' in select && 'adapters' in select);
  }

  /** A target operation on every worker, counted as a change in flight while it runs. */
  private async changing<T>(method: PoolMethod, args: readonly unknown[], name: string): Promise<T> {
    this.targetChanges++;
    try {
      return await this.everywhere<T>(method, args);
    } finally {
      this.targetChanges--;
      if (method === 'unload') this.coupled.delete(name);
    }
  }

  /** The worker with the fewest calls in flight; ties go to the next in turn. */
  private pick(): PoolWorker {
    const n = this.workers.length;
    let best: PoolWorker | undefined;
    for (let i = 0; i < n; i++) {
      const w = this.workers[(this.turn + i) % n] as PoolWorker;
      if (best === undefined || w.inFlight < best.inFlight) best = w;
    }
    this.turn = (this.turn + 1) % n;
    return best as PoolWorker;
  }

  private anywhere(method: PoolMethod, args: readonly unknown[]): Promise<unknown> {
    this.checkOpen();
    return this.on(this.pick(), method, args);
  }

  /** Runs a target operation on every worker; the first worker's answer (they agree) or the first error. */
  private async everywhere<T>(method: PoolMethod, args: readonly unknown[]): Promise<T> {
    this.checkOpen();
    const results = await Promise.allSettled(this.workers.map((w) => this.on(w, method, args)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    return (results[0] as PromiseFulfilledResult<T>).value;
  }

  private on(worker: PoolWorker, method: PoolMethod, args: readonly unknown[], closing = false): Promise<unknown> {
    if (!closing) this.checkOpen();
    const id = this.nextId++;
    return new Promise((resolve, reject) => worker.send({ type: 'call', id, method, args: stripSignals(args) }, { resolve, reject }));
  }

  private portable(source: TargetSource): TargetSource {
    if (source.kind === 'instance') {
      throw new ConfigError('a RuntimePool cannot load an in-process model instance: each worker loads its targets itself', {
        path: 'source.kind',
        hint: "Save the model (saveRoutedModel) and load it with { kind: 'routed', dir }",
      });
    }
    return source;
  }
}

/** A part's call options: its rows' task ids. */
function partOptions<O extends CallOptions>(options: O, first: number, last: number): O {
  return options.taskIds === undefined ? options : { ...options, taskIds: options.taskIds.slice(first, last) };
}

/** Call arguments as plain data: an AbortSignal cannot cross a thread (generations cancel by message). */
function stripSignals(args: readonly unknown[]): unknown[] {
  return args.map((arg) => {
    if (arg === null || typeof arg !== 'object' || !('signal' in arg)) return arg;
    const { signal: _signal, ...rest } = arg as Record<string, unknown>;
    return rest;
  });
}
