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
  const workers = settleWorkers(module);
  const used = wasm.getThreadsCount();
  const note =
    used < threads
      ? threads > MAX_WASM_THREADS
        ? `tfjs-wasm's pool holds at most ${MAX_WASM_THREADS} threads`
        : `tfjs-wasm's pool started ${used} of ${capped} threads`
      : undefined;
  return { requested: threads, used, workers, build: 'threaded-simd', ...(note === undefined ? {} : { note }) };
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
  const saved = { Blob: globalThis.Blob, createObjectURL: URL.createObjectURL, cpus: os.cpus };
  (globalThis as { Blob: unknown }).Blob = ScriptFile;
  URL.createObjectURL = (object: unknown): string => (object instanceof ScriptFile ? object.path : saved.createObjectURL(object as Blob));
  const cpus = saved.cpus();
  const first = cpus[0];
  os.cpus = () => Array.from({ length: Math.max(cpus.length, 2 * threads) }, (_, i) => cpus[i] ?? first);
  return () => {
    (globalThis as { Blob: unknown }).Blob = saved.Blob;
    URL.createObjectURL = saved.createObjectURL;
    os.cpus = saved.cpus;
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
