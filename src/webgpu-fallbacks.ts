/**
 * Kernels tfjs-backend-webgpu 4.22 gets wrong, replaced once when webgpu is loaded:
 *
 * - Cast int32/bool → float32: the package only relabels the tensor (the buffer stays array<i32>), which is
 *   fine for programs that read inputs through their typed getters, but programs that copy raw elements
 *   (Transpose, and with it the backward pass of every matMul whose operand came from such a cast — masks,
 *   one-hot selections) then fail shader validation ("expected 'f32', got 'i32'"). The replacement converts
 *   for real (one elementwise dispatch; on the host for small tensors whose values live there), so a float32
 *   tensor always has an f32 buffer.
 * - AddN over more inputs than a shader stage may bind (maxStorageBuffersPerShaderStage − 1 inputs, 7 by
 *   default): the package binds them all in one program, which the device refuses (the backward pass of a
 *   value used at many points sums that many gradients). The replacement sums in chunks that fit, then sums
 *   the partial sums.
 */
import * as tf from '@tensorflow/tfjs';
import type { WebGpuBackendLike, WebGpuProgram } from './webgpu-program.js';

/** The webgpu backend's members the replacements use besides running programs. */
interface WebGpuBackendInternals extends WebGpuBackendLike {
  readonly device: { readonly limits: { readonly maxStorageBuffersPerShaderStage: number } };
  disposeData(dataId: object): void;
  shouldExecuteOnCPU(inputs: tf.TensorInfo[]): boolean;
  readonly tensorMap: { get(dataId: object): { values?: ArrayLike<number> } | undefined };
  makeTensorInfo(shape: number[], dtype: tf.DataType, values: Float32Array): tf.TensorInfo;
}

const WORKGROUP = 64;
/** Most workgroups along one dispatch dimension (WebGPU's guaranteed minimum). */
const MAX_GROUPS = 65535;

/** f32(x) element by element, output float32 of x's shape. */
function toFloatProgram(shape: number[]): WebGpuProgram {
  const size = shape.reduce((a, b) => a * b, 1);
  const groups = Math.ceil(size / WORKGROUP);
  const x = Math.min(groups, MAX_GROUPS);
  return {
    outputShape: shape,
    shaderKey: 'castToFloat32',
    dispatchLayout: { x: shape.map((_, i) => i) },
    dispatch: [x, Math.ceil(groups / x), 1],
    variableNames: ['X'],
    workgroupSize: [WORKGROUP, 1, 1],
    size: true,
    getUserCode: () => `
      fn main(index : i32) {
        if (index < uniforms.size) { setOutputAtIndex(index, f32(X[index])); }
      }
    `,
  };
}

let registered = false;

/** Replaces the kernels above once; harmless when called again. Needs the webgpu backend registered with tfjs. */
export function registerWebGpuFallbacks(): void {
  if (registered) return;
  const original = tf.getKernel('Cast', 'webgpu');
  const addN = tf.getKernel('AddN', 'webgpu');
  if (original === undefined || addN === undefined) return;
  registered = true;
  replaceCast(original);
  replaceAddN(addN);
}

function replaceAddN(original: tf.KernelConfig): void {
  tf.unregisterKernel('AddN', 'webgpu');
  tf.registerKernel({
    kernelName: 'AddN',
    backendName: 'webgpu',
    kernelFunc: (args) => {
      const backend = args.backend as unknown as WebGpuBackendInternals;
      const most = Math.max(2, backend.device.limits.maxStorageBuffersPerShaderStage - 1); // inputs one program binds
      let terms = args.inputs as unknown as tf.TensorInfo[];
      const partials: tf.TensorInfo[] = [];
      while (terms.length > most) {
        const sums: tf.TensorInfo[] = [];
        for (let at = 0; at < terms.length; at += most) {
          const chunk = terms.slice(at, at + most);
          const sum =
            chunk.length === 1
              ? (chunk[0] as tf.TensorInfo)
              : (original.kernelFunc({ ...args, inputs: chunk as unknown as tf.NamedTensorInfoMap }) as tf.TensorInfo);
          if (chunk.length > 1) partials.push(sum);
          sums.push(sum);
        }
        terms = sums;
      }
      const result = original.kernelFunc({ ...args, inputs: terms as unknown as tf.NamedTensorInfoMap }) as tf.TensorInfo;
      for (const partial of partials) backend.disposeData(partial.dataId);
      return result;
    },
  });
}

function replaceCast(original: tf.KernelConfig): void {
  tf.unregisterKernel('Cast', 'webgpu');
  tf.registerKernel({
    kernelName: 'Cast',
    backendName: 'webgpu',
    kernelFunc: (args) => {
      const x = (args.inputs as { x: tf.TensorInfo }).x;
      const { dtype } = args.attrs as unknown as { dtype: tf.DataType };
      const backend = args.backend as unknown as WebGpuBackendInternals;
      const relabelled = dtype === 'float32' && (x.dtype === 'int32' || x.dtype === 'bool');
      if (!relabelled || x.shape.some((d) => d === 0)) return original.kernelFunc(args);
      const onHost = backend.shouldExecuteOnCPU([x]) ? backend.tensorMap.get(x.dataId)?.values : undefined;
      if (onHost !== undefined) return backend.makeTensorInfo([...x.shape], 'float32', Float32Array.from(onHost)); // [...x]
      return backend.runWebGPUProgram(toFloatProgram([...x.shape]), [x], 'float32'); // [...x], f32 buffer
    },
  });
}
