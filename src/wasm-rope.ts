/**
 * Rotary position embeddings as one kernel on tfjs-wasm. The op-by-op rotation (base/rope.ts: two slices,
 * four products, a difference, a sum and a concat per tensor) takes 4–6 ms for a [4, 128, 8, 64] query
 * here, twice per layer; this kernel reads the input as a view of the wasm heap and writes each rotated pair
 * in one pass (0.7 ms). Every value goes through the same float32 operations in the same order as the op
 * path — x₁·cos − x₂·sin and x₂·cos + x₁·sin, each product and the sum rounded to float32 — so results are
 * the same bits. Its gradient is the inverse rotation, the same kernel with −sin.
 *
 * Shape letters: B batch, T tokens, H heads, Dh head width.
 */
import * as tf from '@tensorflow/tfjs';

export const ROPE_KERNEL = 'RoutedPeftRotateHalf';

/** The parts of tfjs-wasm's backend this kernel uses (tfjs-backend-wasm 4.22's `BackendWasm`). */
interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

/** Whether the current backend has the fused kernel (wasm once its kernels are registered). */
export function hasFusedRope(): boolean {
  return tf.getBackend() === 'wasm' && tf.getKernel(ROPE_KERNEL, 'wasm') !== undefined;
}

/** x [B, T, H, Dh] rotated by cos, sin [B, T, 1, Dh/2] (rotate-half layout) in one kernel. */
export function fusedRope(x: tf.Tensor4D, cos: tf.Tensor4D, sin: tf.Tensor4D): tf.Tensor4D {
  return tf.engine().runKernel(ROPE_KERNEL, { x, cos, sin }) as tf.Tensor4D; // [B, T, H, Dh]
}

const f32 = Math.fround;

function rotateOnHeap(args: { inputs: tf.NamedTensorInfoMap; backend: unknown }): tf.TensorInfo {
  const { x, cos, sin } = args.inputs as { x: tf.TensorInfo; cos: tf.TensorInfo; sin: tf.TensorInfo };
  const [b, t, h, dh] = x.shape as [number, number, number, number];
  const half = dh / 2;
  const expected = [b, t, 1, half];
  for (const [name, info] of [['cos', cos] as const, ['sin', sin] as const]) {
    if (info.dtype !== 'float32' || info.shape.length !== 4 || info.shape.some((d, i) => d !== expected[i])) {
      throw new Error(`${ROPE_KERNEL}: ${name} must be float32 [${expected.join(', ')}], got ${info.dtype} [${info.shape.join(', ')}]`);
    }
  }
  if (x.dtype !== 'float32' || x.shape.length !== 4 || dh % 2 !== 0) throw new Error(`${ROPE_KERNEL}: x must be float32 [B, T, H, Dh] with an even Dh`);
  const backend = args.backend as WasmBackendLike;
  const out = backend.makeOutput([...x.shape], 'float32'); // [B, T, H, Dh]
  // Views only after the output is allocated (an allocation may grow the heap and detach earlier views).
  const source = backend.typedArrayFromHeap(x) as Float32Array;
  const cosines = backend.typedArrayFromHeap(cos) as Float32Array;
  const sines = backend.typedArrayFromHeap(sin) as Float32Array;
  const target = backend.typedArrayFromHeap(out) as Float32Array;
  for (let token = 0; token < b * t; token++) {
    const angle = token * half; // this token's cos/sin row
    for (let head = 0; head < h; head++) {
      const row = (token * h + head) * dh;
      for (let i = 0; i < half; i++) {
        const first = source[row + i] as number;
        const second = source[row + half + i] as number;
        const c = cosines[angle + i] as number;
        const s = sines[angle + i] as number;
        target[row + i] = f32(f32(first * c) - f32(second * s));
        target[row + half + i] = f32(f32(second * c) + f32(first * s));
      }
    }
  }
  return out;
}

let registered = false;

/** Registers the kernel on wasm and its gradient (once). */
export function registerFusedRope(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({ kernelName: ROPE_KERNEL, backendName: 'wasm', kernelFunc: rotateOnHeap as unknown as tf.KernelFunc });
  tf.registerGradient({
    kernelName: ROPE_KERNEL,
    inputsToSave: ['cos', 'sin'],
    gradFunc: (dy, saved) => {
      const [cos, sin] = saved as [tf.Tensor4D, tf.Tensor4D];
      return {
        // The rotation is orthogonal: its transpose rotates by −angle.
        x: () => fusedRope(dy as tf.Tensor4D, cos, tf.neg(sin)), // [B, T, H, Dh]
        cos: () => tf.zerosLike(cos), // the angles are constants
        sin: () => tf.zerosLike(sin),
      };
    },
  });
}
