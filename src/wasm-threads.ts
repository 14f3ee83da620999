/**
 * Multi-threaded tfjs-wasm in Node: a small loader for tfjs-wasm's own threaded-SIMD build, whose XNNPACK
 * thread pool (pthreadpool over emscripten pthreads, i.e. worker_threads sharing the wasm memory) then splits
 * the large kernels — the matmuls of prefill and training above all — across cores.
 *
 * tfjs-wasm 4.22 ships that build but, in Node, never uses it, and even when forced it runs one thread:
 *
 * 1. The flag `WASM_HAS_MULTITHREAD_SUPPORT` is false in Node (tensorflow/tfjs#3830). We set it true.
 * 2. Its init hands the pthread worker script and the main script to emscripten as `Blob`s with
 *    `URL.createObjectURL`, which Node's `worker_threads` cannot start. While the backend initialises, a
 *    `Blob` stand-in writes each script to a file in a temporary folder (removed at exit) and
 *    `URL.createObjectURL` returns that file's path. The worker evaluates the main script's factory
 *    (`wasmFactory.toString()` of the Node bundle), which names the bundle's own module variables
 *    (`require$$0`…, `commonjsGlobal`, `_scriptDir`); a prelude defines them in the worker.
 * 3. The cause of "XNNPACK reports one thread": tfjs-wasm's C++ (`backend.cc`) caps its pool at
 *    `emscripten_num_logical_cores() / 2` ("many x86-64 processors have 2 threads per core"), read once when
 *    the module instantiates; in Node that is `os.cpus().length / 2` — 1 on a 2-core machine, whatever
 *    `setThreadsCount` asks. While the module instantiates, `os.cpus()` reports twice the wanted count so
 *    the cap lets the asked count through; `setThreadsCount(n)` then sizes the pool.
 *
 * The pool's workers start with no Node flags (worker_threads would pass the parent's `execArgv` on, and a
 * parent started with `--input-type` or a loader would break or slow them).
 *
 * Everything patched is restored as soon as the backend is ready. Afterwards the pool's workers are unref'd
 * (a process exits when its work is done) and the pre-started workers the pool does not use are terminated.
 * One thread keeps today's path exactly: the plain SIMD build, no loader.
 *
 * The thread count is fixed for the life of the process: tfjs-wasm creates its module and pool once.
 *
 * In a browser tfjs-wasm uses its threaded build by itself where `crossOriginIsolated` is true (it then
 * sizes the pool from `navigator.hardwareConcurrency / 2`, capped by `setThreadsCount`); this loader only
 * asks for the count there.
 */
import * as tf from '@tensorflow/tfjs';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { BackendError } from './errors.js';

export const THREADS_ENV_VAR = 'ROUTED_PEFT_THREADS';
/** tfjs-wasm's threaded build pre-starts 8 workers; its C++ caps the pool there. */
export const MAX_WASM_THREADS = 8;
/**
 * From this many multiply-adds a BatchMatMul runs on the pool: ≈ 0.5 ms of one thread's work here, so a
 * thread hand-off (microseconds on idle cores) stays small against it. At prefill 4 × 128 (d = 512) the
 * projections (134–360 M), attention's products (33.5 M) and the LoRA products of routed experts (≈ 17 M; 8.4 M
 * in a 2 × 128 training step) go to the pool; routers and decode-sized products (1 × 512 × 1376 ≈ 0.7 M) stay on
 * the calling thread. Measured on 2 cores at load ≈ 2, in separate processes alternated (2 threads, after the
 * wasm kernels of wasm-fallbacks.ts): routed prefill 4 × 128 747 / 744 ms at 32 M against 705 / 731 ms at 8 M;
 * a routed training step 1,465 / 1,517 ms against 1,392 / 1,376 ms. On a machine whose cores other processes
 * hold, a hand-off can cost a scheduler time slice instead, and smaller products then lose more (at load ≈ 4.5,
 * routed prefill one thread 2.7 s: 4 M → 2.9 s, 32 M → 1.8 s); `--threads 1` is the answer there.
 */
export const MIN_PARALLEL_MACS = 8_000_000;
/**
 * From this many elements a Sigmoid, Softmax or broadcasting binary op runs on the pool (see
 * POOLED_ELEMENTWISE). Measured on 2 cores, one process (µs per call, calling thread → pool): sigmoid of
 * 65,536 elements 57 → 313 (waking the pool costs more than the work), of 262,144 231 → 126, of 704,512
 * 603 → 308; a [512, 1376] + [1376] add 242 → 138; a softmax over [32, 128, 128] 504 → 256.
 */
export const MIN_PARALLEL_ELEMENTS = 262_144;

/** How many threads the wasm backend computes on, as measured after it loaded. */
export interface WasmThreadsReport {
  /** The count asked for (option, --threads, ROUTED_PEFT_THREADS, or the available parallelism). */
  readonly requested: number;
  /** Threads in XNNPACK's pool, as tfjs-wasm reports it (`getThreadsCount()`), the calling thread included. */
  readonly used: number;
  /** Pool workers actually running (emscripten pthreads), besides the calling thread. */
  readonly workers: number;
  /** Which tfjs-wasm build is running. */
  readonly build: 'simd' | 'threaded-simd';
  /**
   * Which kernels run on the pool: `large-matmuls` (BatchMatMul of at least `minParallelMacs`
   * multiply-adds, and Sigmoid, Softmax and broadcasting binary ops of at least `minParallelElements`
   * elements; everything else on the calling thread, so decode-sized work pays no thread hand-off) or
   * `all` (every XNNPACK kernel; used when the pool cannot be switched per call). Absent on one thread.
   */
  readonly parallel?: 'large-matmuls' | 'all';
  /** The size, in multiply-adds (batch·M·K·N), from which a BatchMatMul runs on the pool. */
  readonly minParallelMacs?: number;
  /** The size, in elements, from which a pooled elementwise kernel runs on the pool. */
  readonly minParallelElements?: number;
  /** Why fewer threads than asked are in use, when that is the case. */
  readonly note?: string;
}

export interface ResolveThreadsOptions {
  readonly threads?: number;
  readonly env?: Readonly<Record<string, string | undefined>>;
}

/** The thread count from the option, else `ROUTED_PEFT_THREADS`, else the machine's available parallelism. */
export function resolveThreads(options: ResolveThreadsOptions = {}): number {
  if (options.threads !== undefined) return checkThreads(options.threads, 'the threads option');
  const raw = (options.env ?? process.env)[THREADS_ENV_VAR]?.trim() ?? '';
  if (raw === '') return Math.max(1, availableParallelism());
  if (!/^\d+$/.test(raw)) {
    throw new BackendError(`Invalid ${THREADS_ENV_VAR} value '${raw}'`, {
      hint: `Use a whole number of threads ≥ 1 (default: the available parallelism, ${availableParallelism()} here)`,
    });
  }
  return checkThreads(Number(raw), THREADS_ENV_VAR);
}

function checkThreads(threads: number, what: string): number {
  if (!Number.isInteger(threads) || threads < 1) {
    throw new BackendError(`Invalid thread count ${String(threads)} from ${what}`, {
      hint: `Use a whole number ≥ 1 (1 = the single-threaded path; default: the available parallelism, ${availableParallelism()} here)`,
    });
  }
  return threads;
}

/** The part of `@tensorflow/tfjs-backend-wasm` the loader uses. */
export interface WasmPackage {
  setThreadsCount(threads: number): void;
  getThreadsCount(): number;
}

interface EmscriptenWorker {
  unref?(): void;
  terminate(): unknown;
}

interface EmscriptenModule {
  PThread?: { unusedWorkers: EmscriptenWorker[]; runningWorkers: EmscriptenWorker[] };
  HEAPU32?: Uint32Array;
  tfjs?: { initWithThreadsCount(threads: number): void; getThreadsCount(): number };
}

/** Why the threaded build cannot run here, or undefined when it can be tried. */
export function threadedWasmUnavailable(): string | undefined {
  if (typeof SharedArrayBuffer === 'undefined') return 'SharedArrayBuffer is not available (in a browser the page must be crossOriginIsolated)';
  if (typeof Atomics === 'undefined') return 'Atomics is not available';
  return undefined;
}

/**
 * Activates the wasm backend on `threads` threads: `activate` is called (it runs `tf.setBackend('wasm')`)
 * with the loader's patches in place. Returns the measured report. Throws when the threaded build could not
 * initialise (the caller then falls back to one thread).
 */
export async function activateThreadedWasm(wasm: WasmPackage, threads: number, activate: () => Promise<void>): Promise<WasmThreadsReport> {
  const capped = Math.min(threads, MAX_WASM_THREADS);
  tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', true);
  wasm.setThreadsCount(capped);
  const isNode = typeof process !== 'undefined' && typeof process.versions?.node === 'string';
  const restore = isNode ? installNodeShims(capped) : () => undefined;
  try {
    await activate();
  } catch (error) {
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', false);
    wasm.setThreadsCount(-1);
    throw error;
  } finally {
    restore();
  }
  const module = (tf.backend() as unknown as { wasm?: EmscriptenModule }).wasm;
  const used = wasm.getThreadsCount();
  // Before the unused pre-started workers stop: a fallback re-creates the N-thread pool from them.
  const slot = module === undefined || used < 2 ? undefined : findPoolSlot(module, used);
  const workers = settleWorkers(module);
  const notes: string[] = [];
  if (used < threads) {
    notes.push(
      threads > MAX_WASM_THREADS ? `tfjs-wasm's pool holds at most ${MAX_WASM_THREADS} threads` : `tfjs-wasm's pool started ${used} of ${capped} threads`,
    );
  }
  if (slot !== undefined) {
    state.pools = slot;
    registerPoolSwitchingMatMul();
  } else if (used >= 2) {
    notes.push('the pool could not be switched per call, so every XNNPACK kernel runs on it (small ones pay a thread hand-off)');
  }
  const note = notes.length === 0 ? undefined : notes.join('; ');
  return {
    requested: threads,
    used,
    workers,
    build: 'threaded-simd',
    ...(used < 2
      ? {}
      : {
          parallel: slot === undefined ? 'all' : 'large-matmuls',
          ...(slot === undefined ? {} : { minParallelMacs: state.minParallelMacs, minParallelElements: state.minParallelElements }),
        }),
    ...(note === undefined ? {} : { note }),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Per-call choice of pool.
//
// tfjs-wasm runs every XNNPACK operator on one global `pthreadpool*` (backend.cc's `tfjs::backend::threadpool`),
// set by `init_with_threads_count`. After the N-thread pool is up, the loader calls `init_with_threads_count(1)`
// twice and compares snapshots of the module's static data: the one word that changes every time and, when set
// back to the first value, makes `get_threads_count()` report N again, is that global. Writing it then selects a
// pool: the 1-thread pool (no workers: the calling thread computes alone, exactly as one thread does) by
// default, the N-thread pool around large BatchMatMuls. If no single word passes that check, nothing is
// switched and the N-thread pool stays in place for every kernel.

interface PoolSlot {
  readonly module: EmscriptenModule & Required<Pick<EmscriptenModule, 'HEAPU32'>>;
  /** Index of the global `pthreadpool*` in the module's 32-bit heap view. */
  readonly word: number;
  readonly parallel: number;
  readonly single: number;
  readonly threads: number;
}

/**
 * Per process, not per module instance: tfjs and its wasm module are loaded once per process, while this
 * file may be evaluated more than once (a test runner re-evaluates the library for each test file).
 */
interface ProcessState {
  /** The report of the wasm backend this process loaded (set once). */
  report?: WasmThreadsReport;
  pools?: PoolSlot;
  /** Set by `withWasmThreads(1, …)`: large matmuls stay on the calling thread too. */
  singleOnly: boolean;
  /** BatchMatMuls run on the N-thread pool so far (what `wasmThreadsStats` reports). */
  parallelMatMuls: number;
  /** Elementwise kernels run on the N-thread pool so far. */
  parallelElementwise: number;
  kernelRegistered: boolean;
  /** From this many multiply-adds a BatchMatMul runs on the pool (MIN_PARALLEL_MACS unless set). */
  minParallelMacs: number;
  /** From this many elements a pooled elementwise kernel runs on the pool (MIN_PARALLEL_ELEMENTS unless set). */
  minParallelElements: number;
}

const STATE_KEY = Symbol.for('routed-peft.wasm-threads');
const holder = globalThis as Record<symbol, ProcessState | undefined>;
const state: ProcessState = holder[STATE_KEY] ?? {
  singleOnly: false,
  parallelMatMuls: 0,
  parallelElementwise: 0,
  kernelRegistered: false,
  minParallelMacs: MIN_PARALLEL_MACS,
  minParallelElements: MIN_PARALLEL_ELEMENTS,
};
holder[STATE_KEY] = state;

/** Sets the size (multiply-adds) from which a BatchMatMul runs on the pool; for measuring the threshold. */
export function setMinParallelMacs(macs: number): void {
  state.minParallelMacs = macs;
}

/** Sets the size (elements) from which a pooled elementwise kernel runs on the pool; for tests and measuring. */
export function setMinParallelElements(elements: number): void {
  state.minParallelElements = elements;
}

/** The threads of the wasm backend already loaded in this process, or undefined when it has not loaded. */
export function loadedWasmThreads(): WasmThreadsReport | undefined {
  return tf.findBackend('wasm') == null ? undefined : state.report;
}

/** Records the report of the wasm backend just loaded (once per process). */
export function rememberWasmThreads(report: WasmThreadsReport): WasmThreadsReport {
  state.report ??= report;
  return state.report;
}

/** Counts since the backend loaded: how many BatchMatMuls and elementwise kernels ran on the N-thread pool. */
export function wasmThreadsStats(): { readonly parallelMatMuls: number; readonly parallelElementwise: number } {
  return { parallelMatMuls: state.parallelMatMuls, parallelElementwise: state.parallelElementwise };
}

/** Words of static data searched for the pool pointer (the module's globals sit in its first few hundred KiB). */
const SEARCHED_WORDS = 1 << 20;

function findPoolSlot(module: EmscriptenModule, threads: number): PoolSlot | undefined {
  const init = module.tfjs?.initWithThreadsCount;
  const count = module.tfjs?.getThreadsCount;
  if (module.HEAPU32 === undefined || init === undefined || count === undefined) return undefined;
  const words = Math.min(SEARCHED_WORDS, view(module).length);
  const snapshot = (): Uint32Array => view(module).slice(0, words); // [words]
  const first = snapshot(); // [words]: the N-thread pool is current
  init(1);
  const second = snapshot(); // [words]
  init(1);
  const third = snapshot(); // [words]: the 1-thread pool is current
  const found: number[] = [];
  for (let i = 0; i < words; i++) {
    if (first[i] === second[i] || second[i] === third[i] || first[i] === third[i]) continue;
    const live = view(module);
    live[i] = first[i] as number;
    const seen = count();
    live[i] = third[i] as number;
    if (seen === threads) found.push(i);
  }
  const word = found[0];
  if (found.length !== 1 || word === undefined || count() !== 1) {
    init(threads); // no unique slot: a fresh N-thread pool for every kernel (the pre-started workers are still there)
    return undefined;
  }
  return { module: module as PoolSlot['module'], word, parallel: first[word] as number, single: third[word] as number, threads };
}

function view(module: EmscriptenModule): Uint32Array {
  return module.HEAPU32 as Uint32Array; // emscripten replaces this view when the memory grows
}

function usePool(parallel: boolean): void {
  const slot = state.pools;
  if (slot === undefined) return;
  view(slot.module)[slot.word] = parallel ? slot.parallel : slot.single;
}

/**
 * Runs `fn` with large matmuls on 1 thread (`threads` = 1) or on the pool (any other value); for comparing
 * the two paths in one process (tests, benchmarks). Without a switchable pool it just runs `fn`.
 */
export function withWasmThreads<T>(threads: number, fn: () => T): T {
  const saved = state.singleOnly;
  state.singleOnly = threads <= 1;
  try {
    return fn();
  } finally {
    state.singleOnly = saved;
  }
}

/** True when large matmuls can be sent to the pool per call (the threaded build with a found pool slot). */
export function wasmPoolSwitchable(): boolean {
  return state.pools !== undefined;
}

/** Runs `inner(args)` with the N-thread pool current. */
function onPool<T>(inner: () => T): T {
  usePool(true);
  try {
    return inner();
  } finally {
    usePool(false);
  }
}

/** Wraps wasm's BatchMatMul (after wasm-fallbacks' wrapper) so large products run on the N-thread pool. */
function registerPoolSwitchingMatMul(): void {
  const matMul = tf.getKernel('BatchMatMul', 'wasm');
  if (matMul === undefined || state.kernelRegistered) return;
  state.kernelRegistered = true;
  const inner = matMul.kernelFunc;
  const kernelFunc: tf.KernelFunc = (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA } = args.attrs as { transposeA: boolean };
    const aShape = a.shape; // [..., M, K] or [..., K, M]
    const bShape = b.shape; // [..., K, N] or [..., N, K]
    const size = tf.util.sizeFromShape;
    const k = (transposeA ? aShape[aShape.length - 2] : aShape[aShape.length - 1]) ?? 1;
    const batch = Math.max(size(aShape.slice(0, -2)), size(bShape.slice(0, -2)));
    const macs = batch * (size(aShape.slice(-2)) / k) * size(bShape.slice(-2)); // batch·M·K·N
    if (state.singleOnly || macs < state.minParallelMacs) return inner(args);
    state.parallelMatMuls++;
    return onPool(() => inner(args));
  };
  tf.unregisterKernel('BatchMatMul', 'wasm');
  tf.registerKernel({ ...matMul, kernelFunc });
  registerPoolSwitchingElementwise();
}

/**
 * The elementwise kernels tfjs-wasm runs through XNNPACK and that XNNPACK splits across its pool: Sigmoid and
 * Softmax by rows, and a binary op whose operands broadcast (a norm's weight row times activations) by its
 * outer dimensions. A binary op of two equal shapes is one contiguous run to XNNPACK, which it does not
 * split, so it stays on the calling thread (measured: no gain, only the hand-off). Every output element is
 * computed by the same code on whichever thread, so results are bit-identical to one thread.
 */
const POOLED_ELEMENTWISE: Readonly<Record<string, 'always' | 'broadcast'>> = {
  Sigmoid: 'always',
  Softmax: 'always',
  Add: 'broadcast',
  Sub: 'broadcast',
  Multiply: 'broadcast',
  RealDiv: 'broadcast',
};

function registerPoolSwitchingElementwise(): void {
  for (const [name, when] of Object.entries(POOLED_ELEMENTWISE)) {
    const kernel = tf.getKernel(name, 'wasm');
    if (kernel === undefined) continue;
    const inner = kernel.kernelFunc;
    const kernelFunc: tf.KernelFunc = (args) => {
      const inputs = Object.values(args.inputs) as tf.TensorInfo[];
      const first = inputs[0];
      if (state.singleOnly || first === undefined || inputs.some((x) => x.dtype !== 'float32')) return inner(args);
      const largest = Math.max(...inputs.map((x) => tf.util.sizeFromShape(x.shape))); // the output's size
      if (largest < state.minParallelElements) return inner(args);
      if (when === 'broadcast' && inputs.every((x) => tf.util.arraysEqual(x.shape, first.shape))) return inner(args);
      state.parallelElementwise++;
      return onPool(() => inner(args));
    };
    tf.unregisterKernel(name, 'wasm');
    tf.registerKernel({ ...kernel, kernelFunc });
  }
}

/** The pool's workers no longer keep the process alive; pre-started workers the pool does not use stop. */
function settleWorkers(module: EmscriptenModule | undefined): number {
  const pthread = module?.PThread;
  if (pthread === undefined) return 0;
  for (const worker of pthread.runningWorkers) worker.unref?.();
  for (const worker of pthread.unusedWorkers.splice(0)) void worker.terminate();
  return pthread.runningWorkers.length;
}

let scriptDir: string | undefined;

/** Installs the Blob / URL.createObjectURL / os.cpus patches described above; returns their undo. */
function installNodeShims(threads: number): () => void {
  const require = createRequire(import.meta.url);
  const os = require('node:os') as { cpus: () => unknown[] };
  const workerThreads = require('node:worker_threads') as { Worker: new (file: string, options?: object) => object };
  const dir = scriptFolder();
  const mainScript = join(dir, 'main.cjs');
  // Module variables of the Node bundle that the factory's source names, defined for the worker's eval.
  const prelude =
    "var require$$0=require('fs'),require$$1=require('path'),require$$3=require('perf_hooks'),require$$4=require('os');" +
    `var commonjsGlobal=globalThis;var _scriptDir=${JSON.stringify(mainScript)};` +
    '{const create=URL.createObjectURL;URL.createObjectURL=(b)=>b!==null&&typeof b==="object"&&typeof b.path==="string"?b.path:create(b);URL.revokeObjectURL=()=>{};}\n';
  let count = 0;
  class ScriptFile {
    /** Own and enumerable, so it survives the structured clone to a worker. */
    readonly path: string;
    constructor(parts: readonly unknown[]) {
      this.path = join(dir, `script-${count++}.cjs`);
      writeFileSync(this.path, prelude + parts.map(String).join(''));
    }
  }
  const saved = { Blob: globalThis.Blob, createObjectURL: URL.createObjectURL, cpus: os.cpus, Worker: workerThreads.Worker };
  // Pool workers run plain CommonJS: they get no Node flags (a parent's `--input-type`, `-e` or loader would
  // break or slow their start; worker_threads passes the parent's execArgv on by default).
  const NodeWorker = saved.Worker;
  workerThreads.Worker = class PoolWorker extends NodeWorker {
    constructor(file: string, options: object = {}) {
      super(file, { ...options, execArgv: [] });
    }
  };
  (globalThis as { Blob: unknown }).Blob = ScriptFile;
  URL.createObjectURL = (object: unknown): string => (object instanceof ScriptFile ? object.path : saved.createObjectURL(object as Blob));
  const cpus = saved.cpus();
  const first = cpus[0];
  os.cpus = () => Array.from({ length: Math.max(cpus.length, 2 * threads) }, (_, i) => cpus[i] ?? first);
  return () => {
    (globalThis as { Blob: unknown }).Blob = saved.Blob;
    URL.createObjectURL = saved.createObjectURL;
    os.cpus = saved.cpus;
    workerThreads.Worker = saved.Worker;
  };
}

/** One temporary folder per process for the worker scripts, removed when the process exits. */
function scriptFolder(): string {
  if (scriptDir !== undefined) return scriptDir;
  const dir = mkdtempSync(join(tmpdir(), 'routed-peft-wasm-'));
  scriptDir = dir;
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
