/**
 * Slice, SplitV and GatherV2 on tfjs-wasm as copies from a view of the heap.
 *
 * tfjs-wasm 4.22's Slice reads its input with `readSync`, which copies the entire tensor off the heap, and
 * then copies the piece: a slice costs the input's size, not the piece's. SplitV calls that Slice once per
 * piece, so splitting a tensor into n pieces copies it n times (a routed layer splits its expert outputs
 * this way; splitting an optimizer's concatenated 5 M-element vector into 900 pieces took 18 s here).
 *
 * These kernels read the input as a view of the heap and copy only the piece: a contiguous piece in one
 * copy, any other as its contiguous innermost runs. Values are copied, never computed, so results are
 * exactly tfjs's. String tensors keep tfjs-wasm's own kernels.
 *
 * tfjs-wasm's GatherV2 copies element by element: 512 embedding rows of 512 floats took 8.8 ms here. The
 * heap-view gather copies each gathered row in one piece (batchDims 0; others keep tfjs-wasm's kernel), and
 * refuses an index outside the axis as tfjs-wasm does.
 */
import * as tf from '@tensorflow/tfjs';

/** The parts of tfjs-wasm's backend these kernels use (tfjs-backend-wasm 4.22's `BackendWasm`). */
interface WasmBackendLike {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

/** x[begin : begin + size] as a new tensor on the wasm heap (numeric dtypes; `size` already resolved). */
function sliceFromHeap(x: tf.TensorInfo, begin: number[], size: number[], backend: WasmBackendLike): tf.TensorInfo {
  const out = backend.makeOutput([...size], x.dtype); // [...size]
  if (tf.util.sizeFromShape(size) === 0) return out;
  const source = backend.typedArrayFromHeap(x); // a view, no copy
  const target = backend.typedArrayFromHeap(out);
  const strides = tf.util.computeStrides(x.shape); // element strides of x's leading dims
  if (tf.slice_util.isSliceContinous(x.shape, begin, size)) {
    const offset = tf.slice_util.computeFlatOffset(begin, strides);
    target.set(source.subarray(offset, offset + target.length));
    return out;
  }
  const rank = size.length;
  const run = size[rank - 1] as number; // innermost contiguous run
  const outer = size.slice(0, -1);
  const index = new Array<number>(outer.length).fill(0);
  for (let written = 0; written < target.length; written += run) {
    let offset = begin[rank - 1] as number;
    for (let d = 0; d < outer.length; d++) offset += ((begin[d] as number) + (index[d] as number)) * (strides[d] as number);
    target.set(source.subarray(offset, offset + run), written);
    for (let d = outer.length - 1; d >= 0; d--) {
      index[d] = (index[d] as number) + 1;
      if ((index[d] as number) < (outer[d] as number)) break;
      index[d] = 0;
    }
  }
  return out;
}

/** x gathered along `axis` at `indices` (int32, checked in range) as a new tensor on the wasm heap. */
function gatherFromHeap(x: tf.TensorInfo, indices: ArrayLike<number>, indicesShape: readonly number[], axis: number, backend: WasmBackendLike): tf.TensorInfo {
  const dimSize = x.shape[axis] as number;
  for (let i = 0; i < indices.length; i++) {
    const index = indices[i] as number;
    if (!(index >= 0 && index <= dimSize - 1)) throw new Error(`GatherV2: the index value ${index} is not in [0, ${dimSize - 1}]`);
  }
  const outer = tf.util.sizeFromShape(x.shape.slice(0, axis)); // rows before the axis
  const run = tf.util.sizeFromShape(x.shape.slice(axis + 1)); // values per gathered slice
  const out = backend.makeOutput([...x.shape.slice(0, axis), ...indicesShape, ...x.shape.slice(axis + 1)], x.dtype); // [...x before axis, ...indices, ...x after axis]
  if (tf.util.sizeFromShape(out.shape) === 0) return out;
  const source = backend.typedArrayFromHeap(x); // a view, no copy
  const target = backend.typedArrayFromHeap(out);
  let written = 0;
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < indices.length; i++) {
      const from = (o * dimSize + (indices[i] as number)) * run;
      target.set(source.subarray(from, from + run), written);
      written += run;
    }
  }
  return out;
}

/** Registers the heap-view Slice, SplitV and GatherV2 over tfjs-wasm's (string tensors go to the originals). */
export function registerHeapViewSlicing(): void {
  const slice = tf.getKernel('Slice', 'wasm');
  const splitV = tf.getKernel('SplitV', 'wasm');
  if (slice === undefined || splitV === undefined) return;
  const copyingSlice = slice.kernelFunc;
  const copyingSplitV = splitV.kernelFunc;
  const sliceKernel: tf.KernelFunc = (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype === 'string') return copyingSlice(args);
    const { begin, size } = args.attrs as { begin: number | number[]; size: number | number[] };
    const [begin_, size_] = tf.slice_util.parseSliceParams(x as tf.Tensor, begin, size);
    return sliceFromHeap(x, begin_ as number[], size_ as number[], args.backend as unknown as WasmBackendLike);
  };
  const splitKernel: tf.KernelFunc = (args) => {
    const { x } = args.inputs as { x: tf.TensorInfo };
    if (x.dtype === 'string') return copyingSplitV(args);
    const { numOrSizeSplits, axis } = args.attrs as { numOrSizeSplits: number | number[]; axis: number };
    const along = tf.util.parseAxisParam(axis, x.shape)[0] as number;
    const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, numOrSizeSplits, along);
    const begin = new Array<number>(x.shape.length).fill(0);
    return sizes.map((piece) => {
      const size = [...x.shape];
      size[along] = piece;
      const out = sliceFromHeap(x, begin, size, args.backend as unknown as WasmBackendLike); // [..., piece, ...]
      begin[along] = (begin[along] as number) + piece;
      return out;
    });
  };
  tf.unregisterKernel('Slice', 'wasm');
  tf.registerKernel({ ...slice, kernelFunc: sliceKernel });
  tf.unregisterKernel('SplitV', 'wasm');
  tf.registerKernel({ ...splitV, kernelFunc: splitKernel });
  const gather = tf.getKernel('GatherV2', 'wasm');
  if (gather === undefined) return;
  const copyingGather = gather.kernelFunc;
  const gatherKernel: tf.KernelFunc = (args) => {
    const { x, indices } = args.inputs as { x: tf.TensorInfo; indices: tf.TensorInfo };
    const { axis, batchDims } = args.attrs as { axis: number; batchDims: number };
    if (x.dtype === 'string' || batchDims !== 0) return copyingGather(args);
    const backend = args.backend as unknown as WasmBackendLike & { readSync(dataId: object): ArrayLike<number> };
    const along = tf.util.parseAxisParam(axis, x.shape)[0] as number;
    return gatherFromHeap(x, backend.readSync(indices.dataId), indices.shape, along, backend);
  };
  tf.unregisterKernel('GatherV2', 'wasm');
  tf.registerKernel({ ...gather, kernelFunc: gatherKernel });
}
