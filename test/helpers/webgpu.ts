// Whether this machine has a WebGPU adapter (hardware, or software such as lavapipe), found once per test
// file. Tests that compare webgpu against wasm skip with WEBGPU_SKIP_NOTE in their describe name where there
// is none (a user's plain clone without a Vulkan driver).
import * as tf from '@tensorflow/tfjs';
import { getBackendReport, selectBackend } from '../../src/backend.js';

async function probe(): Promise<string | undefined> {
  const previous = tf.getBackend();
  const before = getBackendReport();
  try {
    await selectBackend({ preference: 'webgpu' });
    return undefined;
  } catch (error) {
    return error instanceof Error ? error.message.split('. ')[0] : String(error);
  } finally {
    if (before !== undefined) await selectBackend({ preference: before.preference }); // the report the tests expect
    if (tf.getBackend() !== previous) await tf.setBackend(previous);
  }
}

/** Why webgpu is unavailable, or undefined when it loads. */
export const webgpuMissing: string | undefined = await probe();
export const hasWebGpu = webgpuMissing === undefined;
/** Suffix for the name of a describe that needs webgpu, so the skip says why. */
export const WEBGPU_SKIP_NOTE = hasWebGpu
  ? ''
  : ` — SKIPPED: no WebGPU adapter (${webgpuMissing ?? ''}); install a Vulkan driver (Debian: mesa-vulkan-drivers ≥ 25) to run it`;

/** Runs `fn` on `backend` and switches back to the previous backend afterwards. */
export async function onBackend<T>(backend: 'webgpu' | 'wasm', fn: () => Promise<T> | T): Promise<T> {
  const previous = tf.getBackend();
  await tf.setBackend(backend);
  try {
    return await fn();
  } finally {
    await tf.setBackend(previous);
  }
}

/** Counts WebGPU program dispatches (calls of the webgpu backend's runWebGPUProgram) while fn runs, by shader key prefix. */
export async function countDispatches<T>(fn: () => Promise<T>): Promise<{ result: T; total: number; byKey: Map<string, number> }> {
  const backend = tf.findBackend('webgpu') as unknown as { runWebGPUProgram: (p: { shaderKey: string }, ...rest: unknown[]) => unknown };
  const original = backend.runWebGPUProgram;
  const byKey = new Map<string, number>();
  let total = 0;
  backend.runWebGPUProgram = function (this: unknown, program, ...rest) {
    total++;
    const key = program.shaderKey.split('_')[0] ?? program.shaderKey;
    byKey.set(key, (byKey.get(key) ?? 0) + 1);
    return original.call(this, program, ...rest);
  };
  try {
    return { result: await fn(), total, byKey };
  } finally {
    backend.runWebGPUProgram = original;
  }
}
