/**
 * Kernels the wasm backend lacks or runs slowly, registered once when wasm is selected:
 *
 * - UnsortedSegmentSum (missing): a plain-JS fallback; the gradient of tf.gather needs it (routing by
 *   gathered rows, trainable embeddings).
 * - BatchMatMul with a transposed operand (slow): tfjs-wasm multiplies a transposed operand on a much slower
 *   path than a plain one, and every backward pass of a linear map has one (dW = xᵀ·dy, dx = dy·Wᵀ). The
 *   wrapper materialises the transpose with the Transpose kernel and then multiplies plainly — the same
 *   products, about 3× faster for the backward passes of training here. An operand that recurs (a frozen
 *   weight, every step) keeps its transpose (`wasm-transpose-cache.ts`).
 * - Batched BatchMatMul (slow): one XNNPACK product per batch slice (`wasm-batched-matmul.ts`) instead of
 *   tfjs-wasm's naive loop.
 * - Identity (copies): tfjs-wasm's Identity copies its input, and tfjs clones every input a gradient saves
 *   (≈ 6,600 copies per routed training step here, all on one thread). The cpu backend's Identity shares the
 *   data instead (one more reference, as Reshape does): data under one id never changes in tfjs, so a
 *   shared clone is exact. Sharing also keeps a saved frozen weight's id stable from step to step, which is
 *   what lets its transpose be cached.
 * - Slice and SplitV (copy the whole input per piece): pieces copied from a view of the heap instead
 *   (`wasm-slice.ts`).
 * - Rotary embeddings (eight kernels per tensor): one fused kernel, the same bits (`wasm-rope.ts`).
 */
import * as tf from '@tensorflow/tfjs';
import { batchedMatMulBySlices } from './wasm-batched-matmul.js';
import { registerFusedRope } from './wasm-rope.js';
import { registerHeapViewSlicing } from './wasm-slice.js';
import { cachedTranspose } from './wasm-transpose-cache.js';

interface WasmBackendLike {
  readSync(dataId: object): ArrayLike<number>;
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

let registered = false;

/** Registers the wasm kernels above once; harmless when called again or when wasm is not in use. */
export function registerWasmFallbacks(): void {
  if (registered) return;
  registered = true;
  registerPlainTransposedMatMul();
  registerSharingIdentity();
  registerHeapViewSlicing();
  registerFusedRope();
  if (tf.getKernel('UnsortedSegmentSum', 'wasm') === undefined) {
    tf.registerKernel({
      kernelName: 'UnsortedSegmentSum',
      backendName: 'wasm',
      kernelFunc: ({ inputs, attrs, backend }) => {
        const { x, segmentIds } = inputs as { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
        const numSegments = (attrs as { numSegments: number }).numSegments;
        const wasm = backend as unknown as WasmBackendLike;
        const values = wasm.readSync(x.dataId);
        const ids = wasm.readSync(segmentIds.dataId);
        const rows = x.shape[0] ?? 0;
        const inner = rows === 0 ? 0 : values.length / rows;
        const out = wasm.makeOutput([numSegments, ...x.shape.slice(1)], x.dtype);
        const sums = wasm.typedArrayFromHeap(out);
        sums.fill(0);
        for (let r = 0; r < rows; r++) {
          const segment = ids[r] as number;
          if (segment < 0 || segment >= numSegments) continue; // out-of-range ids are dropped, as in TensorFlow
          for (let i = 0; i < inner; i++) sums[segment * inner + i] = (sums[segment * inner + i] as number) + (values[r * inner + i] as number);
        }
        return out;
      },
    });
  }
}

/** Wraps wasm's BatchMatMul so a transposed operand is transposed first, then multiplied plainly. */
function registerPlainTransposedMatMul(): void {
  const matMul = tf.getKernel('BatchMatMul', 'wasm');
  const transpose = tf.getKernel('Transpose', 'wasm');
  if (matMul === undefined || transpose === undefined) return;
  const plainMatMul = matMul.kernelFunc;
  const kernelFunc: tf.KernelFunc = (args) => {
    const { a, b } = args.inputs as { a: tf.TensorInfo; b: tf.TensorInfo };
    const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
    const plain = (inputs: { a: tf.TensorInfo; b: tf.TensorInfo }): tf.TensorInfo =>
      batchedMatMulBySlices(inputs.a, inputs.b, args.backend) ??
      (plainMatMul({ ...args, inputs, attrs: { ...args.attrs, transposeA: false, transposeB: false } }) as tf.TensorInfo);
    if (!transposeA && !transposeB) return plain({ a, b });
    const temporaries: tf.TensorInfo[] = [];
    const swap = (x: tf.TensorInfo): tf.TensorInfo => {
      const rank = x.shape.length;
      const perm = [...Array.from({ length: rank - 2 }, (_, i) => i), rank - 1, rank - 2];
      return transpose.kernelFunc({ inputs: { x }, attrs: { perm }, backend: args.backend }) as tf.TensorInfo; // [..., N, M]
    };
    const swapLastTwo = (x: tf.TensorInfo): tf.TensorInfo => {
      const { info, temporary } = cachedTranspose(x, args.backend, swap); // [..., N, M]
      if (temporary) temporaries.push(info);
      return info;
    };
    try {
      return plain({ a: transposeA ? swapLastTwo(a) : a, b: transposeB ? swapLastTwo(b) : b });
    } finally {
      const backend = args.backend as unknown as { disposeData(dataId: object): void };
      for (const t of temporaries) backend.disposeData(t.dataId);
    }
  };
  tf.unregisterKernel('BatchMatMul', 'wasm');
  tf.registerKernel({ ...matMul, kernelFunc });
}

/** Identity as a new reference to the same data (string tensors keep tfjs-wasm's own kernel). */
function registerSharingIdentity(): void {
  const identity = tf.getKernel('Identity', 'wasm');
  if (identity === undefined) return;
  const copying = identity.kernelFunc;
  const kernelFunc: tf.KernelFunc = (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype === 'string') return copying(args);
    (args.backend as unknown as { incRef(dataId: object): void }).incRef(x.dataId);
    return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
  };
  tf.unregisterKernel('Identity', 'wasm');
  tf.registerKernel({ ...identity, kernelFunc });
}
