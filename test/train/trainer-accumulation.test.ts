// Gradient accumulation: two micro-batches of one row give the same update as one batch of both rows, even
// when the rows hold different numbers of loss targets (micro-batch gradients are weighted by their targets).
import type * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, expect, test } from 'vitest';
import type { Transformer } from '../../src/base/transformer.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { Trainer, type TrainBatch } from '../../src/train/trainer.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { tinyLlama } from '../helpers/tiny-models.js';

let base: Transformer;
beforeAll(() => {
  base = tinyLlama();
});
afterAll(() => base.dispose());

const rows = {
  ids: [
    [1, 5, 9, 3, 7, 2],
    [1, 6, 10, 12, 14, 3],
  ],
  mask: [
    [1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1],
  ],
  lossMask: [
    [0, 0, 0, 1, 1, 1], // 3 targets
    [0, 1, 1, 1, 1, 1], // 5 targets
  ],
};
const whole: TrainBatch = rows;
const row = (i: number): TrainBatch => ({ ids: [rows.ids[i] as number[]], mask: [rows.mask[i] as number[]], lossMask: [rows.lossMask[i] as number[]] });

test('accumulating 2 micro-batches of 1 equals one batch of 2 (same update within 1e-5, over 2 optimizer steps)', () => {
  const spec = { seed: 9, adapters: [{ kind: 'lora', name: 'a', r: 4, alpha: 8, init: 'random', targets: { sites: 'all-linear' } }] };
  const config = { optimizer: { lr: 1e-2, weightDecay: 0.05 }, maxGradNorm: 1 };
  const single = AdaptedModel.create(base, spec);
  const accumulated = AdaptedModel.create(base, spec);
  const one = new Trainer(single, config);
  const two = new Trainer(accumulated, { ...config, gradAccumulation: 2 });
  const initial = [...one.namedVariables().values()].map((v) => Array.from(v.dataSync()));
  [...two.namedVariables().values()].forEach((v, i) => expect(Array.from(v.dataSync())).toEqual(initial[i]));

  for (let s = 0; s < 2; s++) {
    const a = one.step(whole);
    const first = two.step(row(0));
    expect(first).toMatchObject({ applied: false, skipped: false, gradNorm: null, microBatch: 1, step: s });
    const b = two.step(row(1));
    expect(b).toMatchObject({ applied: true, microBatch: 2, step: s + 1 });
    expect(b.loss).toBeCloseTo(a.loss, 5);
    expect(b.gradNorm as number).toBeCloseTo(a.gradNorm as number, 4);
  }
  const twoVars = [...two.namedVariables()];
  let moved = 0;
  [...one.namedVariables()].forEach(([name, v], i) => {
    const [otherName, other] = twoVars[i] as [string, tf.Variable];
    expect(otherName).toBe(name);
    expectClose(other.dataSync(), v.dataSync(), { rtol: 1e-5, atol: 1e-5, label: name });
    if (Array.from(v.dataSync()).some((x, j) => x !== initial[i]?.[j])) moved++;
  });
  expect(moved).toBe(twoVars.length);
  one.dispose();
  two.dispose();
  single.dispose();
  accumulated.dispose();
});
