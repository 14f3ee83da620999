/**
 * Transposed copies of recurring matmul operands on tfjs-wasm, kept while their source lives.
 *
 * A linear map's backward pass multiplies by the transposed weight (dx = dy·Wᵀ). tfjs-wasm's fast matmul
 * takes no transposed operand, so `wasm-fallbacks.ts` transposes W first — on one thread, every step — and
 * XNNPACK then packs the fresh copy again, also on one thread: for a [512, 1376] weight that is ≈ 7 ms of
 * serial work per product against ≈ 5 ms of two-thread arithmetic (benchmarks/results/ANALYSIS.md §8).
 *
 * A frozen weight is the same tensor every step, so its transpose need be made once. An operand is cached
 * the second time it is seen transposed (once means a one-off activation; twice means it recurs), as long
 * as the cache stays within its byte budget. The cached copy keeps a stable tensor id, so XNNPACK's operator
 * cache (keyed by the weight's id) also keeps its packed weights. A cached copy is freed when its source's
 * data is freed: the backend's `disposeData` is wrapped to free it in the same call, so nothing outlives its
 * source. Data under one id never changes in tfjs (a variable's assign takes a new id), which is what makes a
 * copy keyed by id exact — the same assumption XNNPACK's own cache makes.
 *
 * Budget: `ROUTED_PEFT_TRANSPOSE_CACHE_MB` (default 512; 0 turns the cache off) or setTransposeCacheLimit().
 */
import * as tf from '@tensorflow/tfjs';
import { ConfigError } from './errors.js';

export const TRANSPOSE_CACHE_ENV_VAR = 'ROUTED_PEFT_TRANSPOSE_CACHE_MB';
const DEFAULT_LIMIT_MB = 512;
const BYTES_PER_FLOAT = 4;
const MB = 1024 * 1024;

/** The parts of tfjs-wasm's backend this module touches (tfjs-backend-wasm 4.22's `BackendWasm`). */
interface WasmBackendInternals {
  readonly dataIdMap: { has(dataId: object): boolean };
  disposeData(dataId: object, force?: boolean): boolean;
}

interface CacheState {
  readonly seen: WeakSet<object>; // source ids seen transposed once
  readonly copies: Map<object, tf.TensorInfo>; // source id → its cached transpose
  bytes: number;
}

const states = new WeakMap<object, CacheState>();
let limitBytes = DEFAULT_LIMIT_MB * MB;
let hits = 0;

/** The cache's byte budget (512 MiB unless set). */
export function transposeCacheLimit(): number {
  return limitBytes;
}

/** Sets the byte budget (0 turns the cache off); copies already held stay until their sources are freed. */
export function setTransposeCacheLimit(bytes: number): void {
  if (!Number.isFinite(bytes) || bytes < 0) {
    throw new ConfigError(`transpose cache limit must be a finite number of bytes ≥ 0, got ${bytes}`, { path: 'transposeCacheLimit' });
  }
  limitBytes = bytes;
}

/** Bytes held by cached transposes on a backend, and how many products reused one since the process started. */
export function transposeCacheStats(backend: unknown): { readonly bytes: number; readonly copies: number; readonly hits: number } {
  const state = states.get(backend as object);
  return { bytes: state?.bytes ?? 0, copies: state?.copies.size ?? 0, hits };
}

/**
 * x with its last two dims swapped. `swap` makes a new transpose; the result says whether the caller owns
 * it (`temporary`: free it after use) or the cache does (never free it).
 */
export function cachedTranspose(
  x: tf.TensorInfo,
  backendLike: unknown,
  swap: (x: tf.TensorInfo) => tf.TensorInfo,
): { readonly info: tf.TensorInfo; readonly temporary: boolean } {
  const state = stateOf(backendLike);
  if (state === undefined) return { info: swap(x), temporary: true };
  const cached = state.copies.get(x.dataId);
  if (cached !== undefined) {
    hits++;
    return { info: cached, temporary: false };
  }
  const bytes = tf.util.sizeFromShape(x.shape) * BYTES_PER_FLOAT;
  const recurs = state.seen.has(x.dataId);
  state.seen.add(x.dataId);
  const swapped = swap(x); // [..., N, M]
  if (!recurs || x.dtype !== 'float32' || state.bytes + bytes > transposeCacheLimit()) return { info: swapped, temporary: true };
  state.copies.set(x.dataId, swapped);
  state.bytes += bytes;
  return { info: swapped, temporary: false };
}

/** The backend's cache state, hooking its disposeData on first use; undefined when it is not tfjs-wasm's. */
function stateOf(backendLike: unknown): CacheState | undefined {
  const backend = backendLike as Partial<WasmBackendInternals>;
  if (typeof backend.disposeData !== 'function' || backend.dataIdMap === undefined) return undefined;
  const existing = states.get(backend);
  if (existing !== undefined) return existing;
  const state: CacheState = { seen: new WeakSet(), copies: new Map(), bytes: 0 };
  states.set(backend, state);
  const internals = backend as WasmBackendInternals;
  const disposeData = internals.disposeData;
  internals.disposeData = function disposeDataAndItsTranspose(this: WasmBackendInternals, dataId: object, force?: boolean): boolean {
    const freed = disposeData.call(this, dataId, force);
    const copy = state.copies.get(dataId);
    if (copy !== undefined && !this.dataIdMap.has(dataId)) {
      state.copies.delete(dataId);
      state.bytes -= tf.util.sizeFromShape(copy.shape) * BYTES_PER_FLOAT;
      disposeData.call(this, copy.dataId, true);
    }
    return freed;
  };
  return state;
}

/**
 * The budget `ROUTED_PEFT_TRANSPOSE_CACHE_MB` asks for in bytes, or undefined when it is unset (Node's
 * backend selection applies it; a browser has no environment).
 */
export function transposeCacheLimitFromEnv(env: Readonly<Record<string, string | undefined>>): number | undefined {
  const raw = env[TRANSPOSE_CACHE_ENV_VAR];
  if (raw === undefined || raw.trim() === '') return undefined;
  const mb = Number(raw);
  if (!Number.isFinite(mb) || mb < 0) {
    throw new ConfigError(`${TRANSPOSE_CACHE_ENV_VAR} must be a number of MiB ≥ 0, got ${JSON.stringify(raw)}`, {
      path: TRANSPOSE_CACHE_ENV_VAR,
      hint: `Set it to e.g. 256, or 0 to turn the cache off (default ${DEFAULT_LIMIT_MB})`,
    });
  }
  return mb * MB;
}
