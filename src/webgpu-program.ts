/**
 * The part of tfjs-backend-webgpu's program API the library's own WGSL kernels use (webgpu-fallbacks.ts, the
 * LoRA bank's mix, the gating kernel), typed here once: the package stays an optional dependency, so
 * nothing imports it for its types.
 */
import * as tf from '@tensorflow/tfjs';

/** What a kernel fills in of a WebGPUProgram. `size: true` adds uniforms.size and a flat main(index). */
export interface WebGpuProgram {
  readonly outputShape: number[];
  readonly shaderKey: string;
  readonly dispatchLayout: { readonly x: number[]; readonly y?: number[] };
  readonly dispatch: [number, number, number];
  readonly variableNames: string[];
  readonly workgroupSize: [number, number, number];
  readonly size?: boolean;
  getUserCode(): string;
}

/** A backend that runs programs (the webgpu backend). */
export interface WebGpuBackendLike {
  runWebGPUProgram(program: WebGpuProgram, inputs: tf.TensorInfo[], outputDtype: tf.DataType): tf.TensorInfo;
}

/** The active backend when it runs WebGPU programs; undefined on any other backend. */
export function activeWebGpuBackend(): WebGpuBackendLike | undefined {
  const backend = tf.backend() as unknown as Partial<WebGpuBackendLike>;
  return typeof backend.runWebGPUProgram === 'function' ? (backend as WebGpuBackendLike) : undefined;
}
