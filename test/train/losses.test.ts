// Causal-LM cross-entropy against a host computation; prompt, padding and predictions from padding are
// excluded (changing those target ids leaves the loss unchanged); classification head and loss; gradients
// exist on the test backend; nothing leaks.
import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { seededRandom } from '../../src/base/sampling.js';
import { ClassificationHead, causalLmLoss, classificationLoss, countLmTargets } from '../../src/train/losses.js';
import { expectNoLeak } from '../helpers/tensor-asserts.js';

const B = 2;
const T = 5;
const V = 7;

function randomLogits(seed: number): number[] {
  const random = seededRandom(seed);
  return Array.from({ length: B * T * V }, () => 4 * random() - 2);
}

/** Host mean NLL of ids[b][t] under logits[b][t−1] over counted targets. */
function hostLoss(logits: number[], ids: number[][], mask: number[][], lossMask: number[][]): number {
  let sum = 0;
  let count = 0;
  for (let b = 0; b < B; b++) {
    for (let t = 1; t < T; t++) {
      if (lossMask[b]?.[t] !== 1 || mask[b]?.[t] !== 1 || mask[b]?.[t - 1] !== 1) continue;
      const row = logits.slice((b * T + t - 1) * V, (b * T + t) * V);
      const max = Math.max(...row);
      const logZ = max + Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0));
      sum += logZ - (row[ids[b]?.[t] as number] as number);
      count++;
    }
  }
  return sum / count;
}

const ids = [
  [1, 2, 3, 4, 5],
  [0, 0, 6, 2, 3],
];
const mask = [
  [1, 1, 1, 1, 1],
  [0, 0, 1, 1, 1],
];
// Row 0: prompt of 2 tokens; row 1: left padding, every real token a target (the first has no predictor).
const lossMask = [
  [0, 0, 1, 1, 1],
  [0, 0, 1, 1, 1],
];

function lossOf(logits: number[], targetIds: number[][]): number {
  return tf.tidy(() => causalLmLoss(tf.tensor3d(logits, [B, T, V]), { ids: targetIds, mask, lossMask }).dataSync()[0] as number);
}

describe('causalLmLoss', () => {
  test('equals the host mean NLL over counted targets', () => {
    const logits = randomLogits(11);
    expect(countLmTargets(mask, lossMask)).toBe(5);
    const value = expectNoLeak(() => lossOf(logits, ids));
    expect(value).toBeCloseTo(hostLoss(logits, ids, mask, lossMask), 5);
  });

  test('prompt targets, padding and the first real token after padding do not count', () => {
    const logits = randomLogits(12);
    const reference = lossOf(logits, ids);
    const changed = [
      [6, 5, 3, 4, 5], // prompt positions 0, 1
      [3, 4, 1, 2, 3], // padding 0, 1 and the first real token (predicted from padding)
    ];
    expect(lossOf(logits, changed)).toBe(reference);
    const counted = [
      [1, 2, 3, 4, 6],
      [0, 0, 6, 2, 3],
    ];
    expect(lossOf(logits, counted)).not.toBe(reference);
  });

  test('no counted targets gives NaN (the trainer skips such batches)', () => {
    const none = lossMask.map((r) => r.map(() => 0));
    const value = tf.tidy(() => causalLmLoss(tf.tensor3d(randomLogits(3), [B, T, V]), { ids, mask, lossMask: none }).dataSync()[0]);
    expect(value).toBeNaN();
  });

  test('has a gradient on this backend (logSoftmax, one-hot, sum)', () => {
    const logits = tf.variable(tf.tensor3d(randomLogits(5), [B, T, V]), true, `ce-logits#${Math.random()}`);
    expectNoLeak(() => {
      const { value, grads } = tf.variableGrads(() => causalLmLoss(logits, { ids, mask, lossMask }), [logits]);
      const g = grads[logits.name] as tf.Tensor;
      const values = g.dataSync();
      // Softmax rows minus one-hot, over 5 counted targets: each counted row sums to 0; the last column of
      // every row predicts nothing, so its gradient is 0.
      expect(Math.abs(Array.from(values).reduce((s, x) => s + x, 0))).toBeLessThan(1e-5);
      expect(Array.from(values.slice((T - 1) * V, T * V))).toEqual(Array.from({ length: V }, () => 0));
      value.dispose();
      g.dispose();
    });
    logits.dispose();
  });
});

describe('classification', () => {
  test('head pools over real tokens; loss equals the host softmax cross-entropy; gradients reach W and b', () => {
    const head = new ClassificationHead(3, 4, 9);
    const hiddenValues = Array.from({ length: 2 * 3 * 3 }, (_, i) => Math.sin(i));
    const poolMask = [
      [1, 1, 0],
      [0, 1, 1],
    ];
    const labels = [2, 0];
    const W = Array.from(head.weight.dataSync());
    const host = [0, 1].map((b) => {
      const pooled = [0, 1, 2].map((d) => {
        let s = 0;
        let n = 0;
        for (let t = 0; t < 3; t++)
          if (poolMask[b]?.[t] === 1) {
            s += hiddenValues[(b * 3 + t) * 3 + d] as number;
            n++;
          }
        return s / n;
      });
      const logits = [0, 1, 2, 3].map((c) => pooled.reduce((s, x, d) => s + x * (W[d * 4 + c] as number), 0));
      const max = Math.max(...logits);
      const logZ = max + Math.log(logits.reduce((s, x) => s + Math.exp(x - max), 0));
      return logZ - (logits[labels[b] as number] as number);
    });
    const hidden = tf.tensor3d(hiddenValues, [2, 3, 3]);
    expectNoLeak(() => {
      const { value, grads } = tf.variableGrads(() => classificationLoss(head.logits(hidden, poolMask), labels), head.variables());
      expect(value.dataSync()[0]).toBeCloseTo((host[0] as number) / 2 + (host[1] as number) / 2, 5);
      expect(Object.keys(grads).sort()).toEqual([head.bias.name, head.weight.name].sort());
      value.dispose();
      for (const g of Object.values(grads)) g.dispose();
    });
    expect(() => tf.tidy(() => classificationLoss(tf.zeros([2, 4]), [0, 4]))).toThrow(/label 4/);
    hidden.dispose();
    head.dispose();
  });
});
