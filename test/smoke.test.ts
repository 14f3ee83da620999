import * as tf from '@tensorflow/tfjs';
import { expect, test } from 'vitest';

test('tests run on the requested backend', () => {
  expect(tf.getBackend()).toBe(process.env.ROUTED_PEFT_BACKEND ?? 'wasm');
});
