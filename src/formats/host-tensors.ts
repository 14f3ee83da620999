/**
 * Host-side tensors by name: what loaders produce before anything reaches tfjs. A family builder takes
 * tensors out of a source by their Hugging Face names and checks each shape, so every format (HF
 * safetensors directories, llama2.c .bin files) is validated by the same code.
 */
import * as tf from '@tensorflow/tfjs';
import { CheckpointError, formatShape } from '../errors.js';

export interface HostTensor {
  readonly shape: readonly number[];
  readonly values: Float32Array;
}

export interface TensorSource {
  /** Where the tensors come from, for error messages (a file or directory path). */
  readonly origin: string;
  has(name: string): boolean;
  /** Returns the tensor or undefined; decoding errors are thrown as CheckpointError naming the tensor. */
  get(name: string): HostTensor | undefined;
  names(): Iterable<string>;
}

export function mapSource(origin: string, tensors: ReadonlyMap<string, HostTensor>): TensorSource {
  return {
    origin,
    has: (name) => tensors.has(name),
    get: (name) => tensors.get(name),
    names: () => tensors.keys(),
  };
}

/** Takes a required tensor and checks its shape; the error names the tensor and both shapes. */
export function takeTensor(source: TensorSource, name: string, expected: readonly number[]): HostTensor {
  const tensor = source.get(name);
  if (tensor === undefined) {
    throw new CheckpointError(`missing tensor '${name}' (expected shape ${formatShape(expected)})`, {
      path: source.origin,
      hint: 'Check that the checkpoint matches config.json and was saved in Hugging Face naming',
    });
  }
  const same = tensor.shape.length === expected.length && tensor.shape.every((d, i) => d === expected[i]);
  if (!same) {
    throw new CheckpointError(`tensor '${name}' has shape ${formatShape(tensor.shape)} but the config implies ${formatShape(expected)}`, {
      path: source.origin,
      hint: 'The checkpoint and its config.json disagree; use the config saved with these weights',
    });
  }
  return tensor;
}

/** Transposes a row-major [rows, cols] matrix (gpt2 Conv1D [in, out] → linear [out, in]). */
export function transpose2d(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c] as number;
  }
  return out;
}

/**
 * Host copies of named tensors, read with `await data()` (every backend, webgpu included). Handles on the
 * current data are taken first, synchronously, so the copies describe one instant even if a variable is
 * assigned while the reads run.
 */
export async function readHostTensors(tensors: Iterable<readonly [string, tf.Tensor]>): Promise<Map<string, HostTensor>> {
  const held = [...tensors].map(([name, t]) => [name, tf.clone(t)] as const); // share the data, no copy
  try {
    const values = await Promise.all(held.map(([, t]) => t.data()));
    return new Map(held.map(([name, t], i) => [name, { shape: [...t.shape], values: Float32Array.from(values[i] as Float32Array) }]));
  } finally {
    tf.dispose(held.map(([, t]) => t));
  }
}
