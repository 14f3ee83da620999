/**
 * tfjs backend selection.
 *
 * `selectBackend()` picks the backend named by the `preference` option or the `ROUTED_PEFT_BACKEND`
 * environment variable (`tensorflow` | `webgpu` | `wasm` | `cpu` | `auto`, default `auto`):
 *
 * - `auto` tries `@tensorflow/tfjs-node-gpu`, then `@tensorflow/tfjs-node` (both register the native
 *   `tensorflow` backend), then `webgpu` on a hardware adapter only, then `@tensorflow/tfjs-backend-wasm`,
 *   then the pure-JS `cpu` backend, and records why each one that did not load failed.
 * - `webgpu` (optional packages `webgpu` and `@tensorflow/tfjs-backend-webgpu`): in a browser it uses
 *   `navigator.gpu`; in Node the `webgpu` package's Dawn build (`dawn.node`) provides it. `auto` never picks a
 *   software adapter (lavapipe, SwiftShader: slower than wasm); `ROUTED_PEFT_BACKEND=webgpu` forces it.
 *   The adapter (vendor, architecture, limits) is recorded on the attempt.
 * - An explicit preference never falls back: if it cannot load, a BackendError says why and how to fix it.
 *
 * `getBackendCapabilities()` says what the active backend allows: host-side shortcuts (decisions read back
 * on the host) and synchronous reads are taken only where it says so, never by checking backend names.
 *
 * The result is remembered (`getBackendReport()`); asking again for the same preference does not
 * re-initialise anything. Whatever tfjs prints while a backend loads goes to stderr, never stdout.
 *
 * Threads (wasm): the `threads` option, else `setDefaultThreads` (the CLI's `--threads`), else
 * `ROUTED_PEFT_THREADS`, else the machine's available parallelism. More than one loads tfjs-wasm's
 * threaded-SIMD build through `wasm-threads.ts`; if that cannot start, wasm loads on one thread and the
 * report's `threads.note` (also printed on stderr) says why. One thread is the plain SIMD build, exactly as
 * before. The count is measured after loading (`report.threads`) and fixed for the life of the process.
 */
import * as tf from '@tensorflow/tfjs';
import { format } from 'node:util';
import { BackendError } from './errors.js';
import { registerWasmFallbacks } from './wasm-fallbacks.js';
import { setTransposeCacheLimit, transposeCacheLimitFromEnv } from './wasm-transpose-cache.js';
import { registerWebGpuFallbacks } from './webgpu-fallbacks.js';
import {
  activateThreadedWasm,
  loadedWasmThreads,
  rememberWasmThreads,
  resolveThreads,
  threadedWasmUnavailable,
  type WasmPackage,
  type WasmThreadsReport,
} from './wasm-threads.js';

export {
  THREADS_ENV_VAR,
  MAX_WASM_THREADS,
  MIN_PARALLEL_MACS,
  MIN_PARALLEL_ELEMENTS,
  resolveThreads,
  withWasmThreads,
  wasmThreadsStats,
  wasmPoolSwitchable,
  type WasmThreadsReport,
} from './wasm-threads.js';

/** What the user asked for. */
export type BackendPreference = 'tensorflow' | 'webgpu' | 'wasm' | 'cpu' | 'auto';
/** The tfjs backend that ended up active. */
export type BackendName = 'tensorflow' | 'webgpu' | 'wasm' | 'cpu';
/** One thing that was tried: the two native packages are reported separately. */
export type BackendAttemptName = 'tensorflow-gpu' | 'tensorflow' | 'webgpu' | 'wasm' | 'cpu';

export const BACKEND_ENV_VAR = 'ROUTED_PEFT_BACKEND';
export const BACKEND_PREFERENCES: readonly BackendPreference[] = ['tensorflow', 'webgpu', 'wasm', 'cpu', 'auto'];

export { getBackendCapabilities, readSync, requireSyncReads, type BackendCapabilities } from './backend-capabilities.js';

/** The WebGPU adapter found while trying `webgpu`. */
export interface GpuAdapterReport {
  readonly vendor: string;
  readonly architecture: string;
  readonly device: string;
  readonly description: string;
  /** A software rasteriser (lavapipe/llvmpipe, SwiftShader, WARP) or a fallback adapter. */
  readonly software: boolean;
  readonly limits: Readonly<Record<string, number>>;
}

export interface BackendAttempt {
  readonly backend: BackendAttemptName;
  readonly ok: boolean;
  /** Why it did not load (the import or initialisation error message); absent when `ok`. */
  readonly reason?: string;
  /** Wall time spent on this attempt, in milliseconds. */
  readonly ms: number;
  /** `webgpu` only: the adapter that was found, when one was. */
  readonly adapter?: GpuAdapterReport;
}

export interface BackendReport {
  readonly chosen: BackendName;
  readonly preference: BackendPreference;
  readonly attempts: readonly BackendAttempt[];
  /** The wasm backend's threads, measured after it loaded; absent for the other backends. */
  readonly threads?: WasmThreadsReport;
}

export interface SelectBackendOptions {
  /** Overrides the environment variable. */
  readonly preference?: BackendPreference;
  /** Where to read `ROUTED_PEFT_BACKEND` from; defaults to `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Threads for the wasm backend (≥ 1); overrides `setDefaultThreads` and `ROUTED_PEFT_THREADS`. */
  readonly threads?: number;
}

interface Candidate {
  readonly attempt: BackendAttemptName;
  readonly backend: BackendName;
  /** Package to import first; it registers the backend with tfjs. */
  readonly packageName?: string;
  /** Runs before the package import; may record an adapter and refuse (throw) with a reason. */
  readonly prepare?: (preference: BackendPreference, found: { adapter?: GpuAdapterReport }) => Promise<void>;
}

const TF_NODE_GPU: Candidate = { attempt: 'tensorflow-gpu', backend: 'tensorflow', packageName: '@tensorflow/tfjs-node-gpu' };
const TF_NODE: Candidate = { attempt: 'tensorflow', backend: 'tensorflow', packageName: '@tensorflow/tfjs-node' };
const WASM: Candidate = { attempt: 'wasm', backend: 'wasm', packageName: '@tensorflow/tfjs-backend-wasm' };
const CPU: Candidate = { attempt: 'cpu', backend: 'cpu' };
const WEBGPU: Candidate = {
  attempt: 'webgpu',
  backend: 'webgpu',
  packageName: '@tensorflow/tfjs-backend-webgpu',
  prepare: async (preference, found) => {
    const adapter = await findGpuAdapter();
    found.adapter = adapter;
    if (preference === 'auto' && adapter.software) {
      throw new Error(
        `the WebGPU adapter is a software one (${adapter.device || adapter.description || adapter.vendor}, architecture ${adapter.architecture || 'unknown'}), slower than wasm; set ${BACKEND_ENV_VAR}=webgpu to use it anyway`,
      );
    }
  },
};

const PLANS: Readonly<Record<BackendPreference, readonly Candidate[]>> = {
  auto: [TF_NODE_GPU, TF_NODE, WEBGPU, WASM, CPU],
  tensorflow: [TF_NODE_GPU, TF_NODE],
  webgpu: [WEBGPU],
  wasm: [WASM],
  cpu: [CPU],
};

const FIX_HINTS: Readonly<Record<BackendPreference, string>> = {
  tensorflow:
    'On a Linux machine with an NVIDIA GPU and CUDA, run `npm install @tensorflow/tfjs-node-gpu` ' +
    '(or `npm install @tensorflow/tfjs-node` for native CPU), or choose ROUTED_PEFT_BACKEND=wasm or cpu',
  webgpu:
    'Install the optional packages (`npm install webgpu @tensorflow/tfjs-backend-webgpu`) and a Vulkan, Metal or D3D12 driver ' +
    '(on Debian without a GPU: mesa-vulkan-drivers 25 or newer, lavapipe), or choose ROUTED_PEFT_BACKEND=wasm',
  wasm: 'Reinstall dependencies (`npm ci`) so @tensorflow/tfjs-backend-wasm and its .wasm files are present, or choose ROUTED_PEFT_BACKEND=cpu',
  cpu: 'Reinstall dependencies (`npm ci`) so @tensorflow/tfjs is complete',
  auto: 'Reinstall dependencies (`npm ci`)',
};

let lastReport: BackendReport | undefined;
/** Set by `setDefaultThreads` (the CLI's --threads). */
let defaultThreads: number | undefined;
/** Selections run one at a time, so concurrent callers never initialise twice. */
let queue: Promise<unknown> = Promise.resolve();

export function isBackendPreference(value: unknown): value is BackendPreference {
  return typeof value === 'string' && (BACKEND_PREFERENCES as readonly string[]).includes(value);
}

/** The last successful selection, or undefined if `selectBackend` has not succeeded yet. */
export function getBackendReport(): BackendReport | undefined {
  return lastReport;
}

/**
 * The thread count used when `selectBackend` is not given one (the CLI's `--threads`); undefined clears it.
 * Takes effect when wasm is first loaded in this process.
 */
export function setDefaultThreads(threads: number | undefined): void {
  defaultThreads = threads === undefined ? undefined : resolveThreads({ threads });
}

/** The thread count `setDefaultThreads` set (the CLI's --threads), or undefined. */
export function getDefaultThreads(): number | undefined {
  return defaultThreads;
}

/** Resolves the preference from the option or the environment; throws BackendError on an invalid value. */
export function resolveBackendPreference(options: SelectBackendOptions = {}): BackendPreference {
  if (options.preference !== undefined) {
    if (!isBackendPreference(options.preference)) {
      throw new BackendError(`Invalid backend preference '${String(options.preference)}'`, {
        hint: `Use one of: ${BACKEND_PREFERENCES.join(', ')}`,
      });
    }
    return options.preference;
  }
  const raw = (options.env ?? process.env)[BACKEND_ENV_VAR];
  const value = raw?.trim().toLowerCase() ?? '';
  if (value === '') return 'auto';
  if (!isBackendPreference(value)) {
    throw new BackendError(`Invalid ${BACKEND_ENV_VAR} value '${raw ?? ''}'`, {
      hint: `Use one of: ${BACKEND_PREFERENCES.join(', ')} (default auto)`,
    });
  }
  return value;
}

/**
 * Selects and activates a tfjs backend. Returns the report (also kept for `getBackendReport()`).
 * Calling again with the same preference returns the remembered report without re-initialising
 * (it re-activates the chosen backend if something else switched tfjs away from it meanwhile).
 */
export function selectBackend(options: SelectBackendOptions = {}): Promise<BackendReport> {
  const explicitThreads = options.threads ?? defaultThreads;
  const run = queue.then(() => {
    const transposeCacheBytes = transposeCacheLimitFromEnv(options.env ?? process.env);
    if (transposeCacheBytes !== undefined) setTransposeCacheLimit(transposeCacheBytes);
    return selectNow(
      resolveBackendPreference(options),
      resolveThreads({
        ...(explicitThreads === undefined ? {} : { threads: explicitThreads }),
        ...(options.env === undefined ? {} : { env: options.env }),
      }),
      explicitThreads !== undefined,
    );
  });
  queue = run.catch(() => undefined);
  return run;
}

async function selectNow(preference: BackendPreference, threads: number, threadsExplicit: boolean): Promise<BackendReport> {
  const remembered = lastReport;
  if (remembered !== undefined && remembered.preference === preference) {
    const loaded = remembered.threads;
    if (threadsExplicit && loaded !== undefined && loaded.requested !== threads) {
      throw new BackendError(`The wasm backend is already running on ${loaded.used} thread(s) in this process; ${threads} were asked`, {
        hint: 'tfjs-wasm creates its thread pool once per process: start a new process with the thread count you want (--threads N or ROUTED_PEFT_THREADS)',
      });
    }
    if (tf.getBackend() !== remembered.chosen && !(await quietly(() => tf.setBackend(remembered.chosen)))) {
      throw new BackendError(`The '${remembered.chosen}' backend loaded earlier can no longer be activated`, {
        hint: FIX_HINTS[preference],
      });
    }
    return remembered;
  }
  const attempts: BackendAttempt[] = [];
  for (const candidate of PLANS[preference]) {
    const { attempt, threadsReport } = await tryCandidate(candidate, preference, threads);
    attempts.push(attempt);
    if (attempt.ok) {
      lastReport = { chosen: candidate.backend, preference, attempts, ...(threadsReport === undefined ? {} : { threads: threadsReport }) };
      return lastReport;
    }
  }
  throw failure(preference, attempts);
}

async function tryCandidate(
  candidate: Candidate,
  preference: BackendPreference,
  threads: number,
): Promise<{ attempt: BackendAttempt; threadsReport?: WasmThreadsReport }> {
  const start = performance.now();
  const ms = (): number => Math.round((performance.now() - start) * 10) / 10;
  const warnings: string[] = [];
  const found: { adapter?: GpuAdapterReport } = {};
  const withAdapter = (): { adapter?: GpuAdapterReport } => (found.adapter === undefined ? {} : { adapter: found.adapter });
  let threadsReport: WasmThreadsReport | undefined;
  try {
    await quietly(async () => {
      await candidate.prepare?.(preference, found);
      const loaded = candidate.packageName === undefined ? undefined : await importPackage(candidate.packageName);
      if (tf.findBackendFactory(candidate.backend) == null) {
        throw new Error(`loading ${candidate.packageName ?? '@tensorflow/tfjs'} did not register the '${candidate.backend}' backend`);
      }
      const activate = async (): Promise<void> => {
        const ok = await tf.setBackend(candidate.backend);
        if (!ok) {
          const detail = warnings.length > 0 ? `: ${warnings.join(' ').replace(/\s+/g, ' ').trim()}` : '';
          warnings.length = 0;
          throw new Error(`tf.setBackend('${candidate.backend}') failed to initialise${detail}`);
        }
        await tf.ready();
      };
      if (candidate.backend === 'wasm') {
        threadsReport = await activateWasm(loaded as WasmPackage, threads, activate);
        registerWasmFallbacks();
      } else {
        await activate();
        if (candidate.backend === 'webgpu') registerWebGpuFallbacks();
      }
    }, warnings);
    return { attempt: { backend: candidate.attempt, ok: true, ms: ms(), ...withAdapter() }, ...(threadsReport === undefined ? {} : { threadsReport }) };
  } catch (error) {
    return { attempt: { backend: candidate.attempt, ok: false, reason: errorMessage(error), ms: ms(), ...withAdapter() } };
  }
}

/** wasm on `threads` threads; when the threaded build cannot start, one thread and a note saying why. */
async function activateWasm(wasm: WasmPackage, threads: number, activate: () => Promise<void>): Promise<WasmThreadsReport> {
  const loaded = loadedWasmThreads();
  if (loaded !== undefined) {
    // tfjs loaded wasm earlier in this process (through another instance of this module): it is reused as is.
    await activate();
    return loaded;
  }
  const single = async (note?: string): Promise<WasmThreadsReport> => {
    await activate();
    if (note !== undefined) process.stderr.write(`routed-peft: ${note}\n`);
    const used = wasm.getThreadsCount();
    return rememberWasmThreads({ requested: threads, used, workers: 0, build: 'simd', ...(note === undefined ? {} : { note }) });
  };
  if (threads <= 1) return single();
  const unavailable = threadedWasmUnavailable();
  if (unavailable !== undefined) return single(`wasm runs on one thread: ${unavailable}`);
  try {
    return rememberWasmThreads(await activateThreadedWasm(wasm, threads, activate));
  } catch (error) {
    return single(`wasm runs on one thread: its threaded build did not start (${errorMessage(error)})`);
  }
}

/** The subset of the WebGPU API read here (no dependency on @webgpu/types). */
interface GpuLike {
  requestAdapter(options?: object): Promise<GpuAdapterLike | null>;
}
interface GpuAdapterLike {
  readonly info?: Readonly<Record<string, unknown>>;
  readonly isFallbackAdapter?: boolean;
  readonly limits: object;
}

const REPORTED_LIMITS = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
] as const;

/**
 * Provides `navigator.gpu` (in Node from the `webgpu` package's Dawn build, once) and returns its adapter's
 * description. Throws when there is no WebGPU or no adapter.
 */
async function findGpuAdapter(): Promise<GpuAdapterReport> {
  const scope = globalThis as { navigator?: { gpu?: GpuLike } };
  if (scope.navigator?.gpu === undefined) {
    const dawn = (await importPackage('webgpu')) as { create(options: string[]): GpuLike; globals: object };
    Object.assign(globalThis, dawn.globals); // GPUBufferUsage and friends, which tfjs-backend-webgpu reads as globals
    if (scope.navigator === undefined) Object.defineProperty(globalThis, 'navigator', { value: {}, configurable: true, writable: true });
    Object.defineProperty(scope.navigator as object, 'gpu', { value: dawn.create([]), configurable: true });
  }
  const gpu = scope.navigator?.gpu;
  if (gpu === undefined) throw new Error('navigator.gpu is not available');
  const adapter = await gpu.requestAdapter();
  if (adapter === null) throw new Error('navigator.gpu.requestAdapter() returned no adapter (no Vulkan/Metal/D3D12 device or driver)');
  const info = adapter.info ?? {};
  const text = (key: string): string => (typeof info[key] === 'string' ? (info[key] as string) : '');
  const [vendor, architecture, device, description] = [text('vendor'), text('architecture'), text('device'), text('description')];
  const software =
    adapter.isFallbackAdapter === true ||
    info.isFallbackAdapter === true ||
    /software|cpu/i.test(architecture) ||
    /llvmpipe|lavapipe|swiftshader|warp|software/i.test(`${vendor} ${device} ${description}`);
  const limits: Record<string, number> = {};
  for (const name of REPORTED_LIMITS) {
    const value = (adapter.limits as Record<string, unknown>)[name];
    if (typeof value === 'number') limits[name] = value;
  }
  return { vendor, architecture, device, description, software, limits };
}

/** Imports a package by a runtime specifier (so optional, uninstalled packages do not break type checking or bundling). */
async function importPackage(specifier: string): Promise<unknown> {
  return import(specifier) as Promise<unknown>;
}

/**
 * Runs `fn` with console.log/info/debug redirected to stderr (stdout is reserved for CLI output),
 * and console.warn forwarded to stderr while also being collected into `warnings`.
 */
async function quietly<T>(fn: () => Promise<T>, warnings: string[] = []): Promise<T> {
  const saved = { log: console.log, info: console.info, debug: console.debug, warn: console.warn };
  const toStderr = (...args: unknown[]): void => {
    process.stderr.write(`${format(...args)}\n`);
  };
  console.log = toStderr;
  console.info = toStderr;
  console.debug = toStderr;
  console.warn = (...args: unknown[]): void => {
    warnings.push(format(...args));
    toStderr(...args);
  };
  try {
    return await fn();
  } finally {
    console.log = saved.log;
    console.info = saved.info;
    console.debug = saved.debug;
    console.warn = saved.warn;
  }
}

function failure(preference: BackendPreference, attempts: readonly BackendAttempt[]): BackendError {
  const reasons = attempts.map((a) => `${a.backend}: ${a.reason ?? 'unknown error'}`).join('; ');
  const what = preference === 'auto' ? 'No tfjs backend could be loaded' : `The '${preference}' backend could not be loaded`;
  return new BackendError(`${what} (${reasons})`, { hint: FIX_HINTS[preference] });
}

function errorMessage(error: unknown): string {
  const message = (error instanceof Error ? error.message : String(error)).replace(/\s*\n\s*/g, ' ').trim();
  return message === '' ? 'unknown error' : message;
}
