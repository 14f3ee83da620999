/**
 * Batched matrix products on tfjs-wasm's fast path.
 *
 * tfjs-wasm 4.22 sends a BatchMatMul to XNNPACK's gemm only when both operands have a batch of 1 and neither
 * is transposed; any batched product (attention's q·kᵀ and p·v, and their gradients) runs on a naive blocked
 * loop instead — about 1.2 G multiply-adds/s against XNNPACK's ≈ 16 G here, single-threaded, so attention
 * took a third of a 4 × 128 prefill while being 4 % of its arithmetic.
 *
 * `batchedMatMulBySlices` computes such a product as one XNNPACK product per batch slice, without copying:
 * each slice of a, b and the output is registered with the wasm module as a view (a tensor id over the
 * slice's bytes of the operand's own buffer), multiplied with the module's BatchMatMul on shapes [1, M, K] ·
 * [1, K, N], and unregistered. Each slice is a whole product of its own, so results do not depend on the
 * thread count (XNNPACK splits a product by output tiles, never along the sum).
 */
import * as tf from '@tensorflow/tfjs';

/** The parts of tfjs-wasm's backend this module reads (tfjs-backend-wasm 4.22's `BackendWasm`). */
interface WasmBackendInternals {
  dataIdNextNumber: number;
  readonly dataIdMap: { get(dataId: object): { id: number; memoryOffset: number } | undefined };
  readonly wasm: {
    cwrap(name: string, returnType: null, argTypes: string[]): (...args: unknown[]) => void;
    readonly tfjs: { registerTensor(id: number, size: number, memoryOffset: number): void; disposeData(id: number): void };
  };
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
}

/**
 * Slices of fewer rows keep the naive loop: decode's one-row products, where creating and packing an XNNPACK
 * operator per slice would cost as much as the product (not tuned further).
 */
export const MIN_SLICE_ROWS = 8;

const BYTES_PER_FLOAT = 4;
const wasmMatMuls = new WeakMap<object, (...args: unknown[]) => void>();
let slicedProducts = 0;

/** How many batched products ran slice by slice since the process started (for tests and reports). */
export function slicedMatMulCount(): number {
  return slicedProducts;
}

function shapeBytes(shape: readonly number[]): Uint8Array {
  return new Uint8Array(new Int32Array(shape).buffer); // what the module's 'array' arguments take
}

/**
 * a [...batchA, M, K] · b [...batchB, K, N] → [...batch, M, N], neither transposed, float32, as one XNNPACK
 * product per batch slice. Returns undefined where the slice path does not apply (no batch, too few rows,
 * batch dims that are neither equal nor one of them 1, not float32, an empty operand, not tfjs-wasm's
 * backend): the caller then runs the kernel as before.
 */
export function batchedMatMulBySlices(a: tf.TensorInfo, b: tf.TensorInfo, backendLike: unknown): tf.TensorInfo | undefined {
  if (a.dtype !== 'float32' || b.dtype !== 'float32' || a.shape.length < 2 || b.shape.length < 2) return undefined;
  const backend = backendLike as Partial<WasmBackendInternals>;
  if (backend.wasm?.tfjs?.registerTensor === undefined || backend.dataIdMap === undefined || typeof backend.dataIdNextNumber !== 'number') return undefined;
  const [m, k] = a.shape.slice(-2) as [number, number];
  const [kb, n] = b.shape.slice(-2) as [number, number];
  const batchShapeA = a.shape.slice(0, -2);
  const batchShapeB = b.shape.slice(0, -2);
  const batchA = tf.util.sizeFromShape(batchShapeA);
  const batchB = tf.util.sizeFromShape(batchShapeB);
  const batch = Math.max(batchA, batchB);
  const sameBatch = tf.util.arraysEqual(batchShapeA, batchShapeB);
  if (k !== kb || m < MIN_SLICE_ROWS || batch < 2 || m * k * n === 0) return undefined;
  if (!sameBatch && batchA !== 1 && batchB !== 1) return undefined;
  const aData = backend.dataIdMap.get(a.dataId);
  const bData = backend.dataIdMap.get(b.dataId);
  if (aData === undefined || bData === undefined) return undefined;
  const internals = backend as WasmBackendInternals;
  const outShape = [...tf.broadcast_util.assertAndGetBroadcastShape(batchShapeA, batchShapeB), m, n];
  const out = internals.makeOutput(outShape, 'float32'); // [...batch, M, N]
  const outData = internals.dataIdMap.get(out.dataId) as { memoryOffset: number };
  const matMul = moduleMatMul(internals);
  slicedProducts++;
  const register = internals.wasm.tfjs.registerTensor;
  const unregister = internals.wasm.tfjs.disposeData;
  const shared: number[] = [];
  const open: number[] = []; // the current slice's views
  const view = (memoryOffset: number, size: number, into: number[]): number => {
    const id = internals.dataIdNextNumber++;
    register(id, size, memoryOffset);
    into.push(id);
    return id;
  };
  const aShape = shapeBytes([1, m, k]);
  const bShape = shapeBytes([1, k, n]);
  try {
    // An operand with a batch of 1 is one view for every slice, so XNNPACK packs it once.
    const sharedA = batchA === 1 ? view(aData.memoryOffset, m * k, shared) : undefined;
    const sharedB = batchB === 1 ? view(bData.memoryOffset, k * n, shared) : undefined;
    for (let s = 0; s < batch; s++) {
      const aId = sharedA ?? view(aData.memoryOffset + s * m * k * BYTES_PER_FLOAT, m * k, open); // [1, M, K]
      const bId = sharedB ?? view(bData.memoryOffset + s * k * n * BYTES_PER_FLOAT, k * n, open); // [1, K, N]
      const outId = view(outData.memoryOffset + s * m * n * BYTES_PER_FLOAT, m * n, open); // [1, M, N]
      matMul(aId, aShape, 3, bId, bShape, 3, false, false, outId);
      // Unregistering b's view also drops the XNNPACK operator the module cached on its id.
      while (open.length > 0) unregister(open.pop() as number);
    }
  } finally {
    for (const id of [...open, ...shared]) unregister(id);
  }
  return out;
}

function moduleMatMul(backend: WasmBackendInternals): (...args: unknown[]) => void {
  let matMul = wasmMatMuls.get(backend.wasm);
  if (matMul === undefined) {
    matMul = backend.wasm.cwrap('BatchMatMul', null, ['number', 'array', 'number', 'number', 'array', 'number', 'number', 'number', 'number']);
    wasmMatMuls.set(backend.wasm, matMul);
  }
  return matMul;
}
