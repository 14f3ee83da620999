/**
 * What the active tfjs backend allows: host-side shortcuts (decisions read back on the host) and
 * synchronous reads are taken only where it says so, never by checking backend names. Separate from backend
 * selection (`backend.ts`, Node; `browser-backend.ts`, a page) so the model code imports no loader.
 */
import * as tf from '@tensorflow/tfjs';
import { SyncReadError } from './errors.js';

/** What a backend allows the library to do. */
export interface BackendCapabilities {
  /** Tensors live in host memory: a read-back is a copy, so small decisions are best made on the host. */
  readonly hostMemory: boolean;
  /** `dataSync()` works (webgpu reads only asynchronously in Node: use the async paths there). */
  readonly syncReads: boolean;
}

const CAPABILITIES: Readonly<Record<string, BackendCapabilities>> = {
  wasm: { hostMemory: true, syncReads: true },
  cpu: { hostMemory: true, syncReads: true },
  tensorflow: { hostMemory: false, syncReads: true },
  webgpu: { hostMemory: false, syncReads: false },
  webgl: { hostMemory: false, syncReads: true },
};

/** The capabilities of `backend` (default: the active tfjs backend); unknown backends get the safe answer (device memory, async reads). */
export function getBackendCapabilities(backend: string = tf.getBackend()): BackendCapabilities {
  return CAPABILITIES[backend] ?? { hostMemory: false, syncReads: false };
}

/** Throws the SyncReadError `readSync` would, before any work, when the active backend cannot read synchronously. */
export function requireSyncReads(what: string, alternative: string): void {
  const backend = tf.getBackend();
  if (!getBackendCapabilities(backend).syncReads) {
    throw new SyncReadError(`${what} reads tensors synchronously, which the '${backend}' backend cannot do`, { hint: alternative });
  }
}

/**
 * `tensor.dataSync()` where the active backend reads synchronously; elsewhere a SyncReadError naming `what`
 * needed the read and `alternative` (what to call instead), never the backend's own cryptic failure.
 */
export function readSync(tensor: tf.Tensor, what: string, alternative: string): Float32Array | Int32Array | Uint8Array {
  const backend = tf.getBackend();
  if (!getBackendCapabilities(backend).syncReads) {
    throw new SyncReadError(`${what} reads a tensor synchronously, which the '${backend}' backend cannot do`, { hint: alternative });
  }
  return tensor.dataSync() as Float32Array | Int32Array | Uint8Array; // numeric tensors only (no strings here)
}
