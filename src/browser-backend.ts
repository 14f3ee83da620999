/**
 * tfjs backend selection in a browser page: `wasm` (tfjs-backend-wasm; its `.wasm` files are fetched from
 * `wasmPaths`), `webgpu` (`navigator.gpu` with tfjs-backend-webgpu, which the page imports itself: it is an
 * optional dependency) or `cpu`. An explicit choice never falls back: when it cannot load, a BackendError
 * says why (no `navigator.gpu`, no adapter, the package not imported, initialisation failed), so a page can
 * show the reason and keep the backend it had. `webgpuAvailability()` asks the same questions without
 * switching.
 *
 * Synchronous reads: on webgpu the library reads asynchronously (`generateAsync`, `generateStepsAsync`);
 * routing traces, training and evaluation read synchronously and throw a SyncReadError there
 * (`getBackendCapabilities`).
 */
import * as tf from '@tensorflow/tfjs';
import { getThreadsCount, setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import { BackendError } from './errors.js';
import { registerWasmFallbacks } from './wasm-fallbacks.js';

export type BrowserBackendName = 'webgpu' | 'wasm' | 'cpu';

export const BROWSER_BACKENDS: readonly BrowserBackendName[] = ['webgpu', 'wasm', 'cpu'];

export interface BrowserBackendOptions {
  /**
   * wasm: where tfjs-wasm's binaries are served — a URL prefix ending in `/` holding `tfjs-backend-wasm.wasm`,
   * `tfjs-backend-wasm-simd.wasm` and `tfjs-backend-wasm-threaded-simd.wasm`, or a map from those names to
   * URLs (what a bundler's asset URLs give). Required the first time wasm is selected.
   */
  readonly wasmPaths?: string | Readonly<Record<string, string>>;
}

/** The WebGPU adapter a page got. */
export interface BrowserGpuAdapter {
  readonly vendor: string;
  readonly architecture: string;
  readonly device: string;
  readonly description: string;
  /** A software rasteriser (SwiftShader, lavapipe, WARP) or a fallback adapter: slower than wasm. */
  readonly software: boolean;
}

export interface BrowserBackendReport {
  readonly chosen: BrowserBackendName;
  /** Milliseconds spent switching. */
  readonly ms: number;
  /** webgpu only. */
  readonly adapter?: BrowserGpuAdapter;
  /** wasm only: the threads tfjs-wasm runs on (more than one only on a crossOriginIsolated page). */
  readonly threads?: number;
}

interface GpuLike {
  requestAdapter(options?: object): Promise<GpuAdapterLike | null>;
}
interface GpuAdapterLike {
  readonly info?: Readonly<Record<string, unknown>>;
  readonly isFallbackAdapter?: boolean;
}

let wasmPathsSet = false;

/** Why webgpu cannot run here, or the adapter it would use. Never throws. */
export async function webgpuAvailability(): Promise<
  { readonly available: true; readonly adapter: BrowserGpuAdapter } | { readonly available: false; readonly reason: string }
> {
  const gpu = (globalThis as { navigator?: { gpu?: GpuLike } }).navigator?.gpu;
  if (gpu === undefined) return { available: false, reason: 'this browser has no navigator.gpu (WebGPU is off, or the page is not a secure context)' };
  let adapter: GpuAdapterLike | null;
  try {
    adapter = await gpu.requestAdapter();
  } catch (error) {
    return { available: false, reason: `navigator.gpu.requestAdapter() failed: ${error instanceof Error ? error.message : String(error)}` };
  }
  if (adapter === null) return { available: false, reason: 'navigator.gpu.requestAdapter() returned no adapter (no usable GPU or driver)' };
  const info = adapter.info ?? {};
  const text = (key: string): string => (typeof info[key] === 'string' ? (info[key] as string) : '');
  const [vendor, architecture, device, description] = [text('vendor'), text('architecture'), text('device'), text('description')];
  const software =
    adapter.isFallbackAdapter === true ||
    info['isFallbackAdapter'] === true ||
    /software|cpu/i.test(architecture) ||
    /llvmpipe|lavapipe|swiftshader|warp|software/i.test(`${vendor} ${device} ${description}`);
  return { available: true, adapter: { vendor, architecture, device, description, software } };
}

/** Makes `name` the active tfjs backend; a BackendError says why when it cannot (the previous backend stays active). */
export async function selectBrowserBackend(name: BrowserBackendName, options: BrowserBackendOptions = {}): Promise<BrowserBackendReport> {
  const start = performance.now();
  const ms = (): number => Math.round((performance.now() - start) * 10) / 10;
  if (!(BROWSER_BACKENDS as readonly string[]).includes(name)) {
    throw new BackendError(`unknown browser backend ${JSON.stringify(name)}`, { hint: `Choose one of ${BROWSER_BACKENDS.join(', ')}` });
  }
  let adapter: BrowserGpuAdapter | undefined;
  if (name === 'webgpu') {
    const availability = await webgpuAvailability();
    if (!availability.available) throw new BackendError(`webgpu is unavailable: ${availability.reason}`, { hint: 'Use the wasm backend' });
    adapter = availability.adapter;
    if (tf.findBackendFactory('webgpu') == null) {
      throw new BackendError('the webgpu backend is not registered', {
        hint: "Import '@tensorflow/tfjs-backend-webgpu' (an optional dependency) before selecting webgpu",
      });
    }
  }
  if (name === 'wasm' && !wasmPathsSet) {
    if (options.wasmPaths === undefined) {
      throw new BackendError('the wasm backend needs the URLs of its .wasm files', {
        hint: "Pass wasmPaths: a URL prefix ending in '/' or a map from tfjs-backend-wasm's file names to URLs",
      });
    }
    setWasmPaths(options.wasmPaths as string | Record<string, string>);
    wasmPathsSet = true;
  }
  const previous = tf.getBackend();
  let ok = false;
  try {
    ok = await tf.setBackend(name);
    if (ok) await tf.ready();
  } catch (error) {
    throw new BackendError(`the ${name} backend failed to initialise: ${error instanceof Error ? error.message : String(error)}`, {
      hint: 'Use the wasm backend',
    });
  }
  if (!ok) {
    if (previous !== undefined && previous !== name) await tf.setBackend(previous);
    throw new BackendError(`tf.setBackend('${name}') failed to initialise (see the browser console)`, { hint: 'Use the wasm backend' });
  }
  if (name === 'wasm') registerWasmFallbacks();
  const threads = name === 'wasm' ? getThreadsCount() : undefined;
  return { chosen: name, ms: ms(), ...(adapter === undefined ? {} : { adapter }), ...(threads === undefined ? {} : { threads }) };
}
