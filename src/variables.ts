/**
 * Creating trainable variables. tfjs keeps a global registry of variable names and rejects a repeated
 * name, so two models built from one spec would collide; each name gets a process-wide counter. The
 * initial value is created inside a tidy, so only the variable survives.
 */
import * as tf from '@tensorflow/tfjs';

let created = 0;

export function trainableVariable<R extends tf.Rank>(label: string, initial: () => tf.Tensor<R>): tf.Variable<R> {
  created += 1;
  return tf.tidy(() => tf.variable(initial(), true, `${label}#${created}`));
}
