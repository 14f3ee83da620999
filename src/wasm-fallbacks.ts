/**
 * Kernels the wasm backend lacks, registered as plain-JS fallbacks so every op this library uses — and
 * the gradients tfjs derives from them — runs on wasm. Today that is UnsortedSegmentSum, which the
 * gradient of tf.gather needs (routing by gathered rows, trainable embeddings).
 */
import * as tf from '@tensorflow/tfjs';

interface WasmBackendLike {
  readSync(dataId: object): ArrayLike<number>;
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
}

let registered = false;

/** Registers missing wasm kernels once; harmless when called again or when wasm is not in use. */
export function registerWasmFallbacks(): void {
  if (registered) return;
  registered = true;
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
