/**
 * float32 one-hot of int32 ids: [...] → [..., E], the one the library uses everywhere (routing, losses, the LoRA
 * bank). Not tf.oneHot(…, 'float32'): the wasm OneHot kernel writes the integer bit pattern into a float buffer
 * (1 reads as 1.4e−45); and tf.oneHot rejects depth 1 (a single choice), where every entry is 1.
 */
import * as tf from '@tensorflow/tfjs';

export function oneHotFloat<T extends tf.Tensor>(ids: tf.Tensor, depth: number): T {
  if (depth === 1) return tf.onesLike(tf.cast(tf.expandDims(ids, -1), 'float32')) as T; // [..., 1]
  return tf.cast(tf.oneHot(ids, depth), 'float32') as T; // [..., E]
}
