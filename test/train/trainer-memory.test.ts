// Memory stays flat over 200 training steps on a routed model (aux losses, router annealing, gradient
// accumulation, clipping and some skipped non-finite steps all exercised), and everything is freed on dispose.
import * as tf from '@tensorflow/tfjs';
import { expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { Trainer } from '../../src/train/trainer.js';
import { tinyLlama } from '../helpers/tiny-models.js';

test('tf.memory().numTensors is flat across 200 training steps and returns to its start after dispose', () => {
  const base = tinyLlama({ nLayers: 1 });
  const start = tf.memory().numTensors;
  const lora = (name: string) => ({ kind: 'lora', name, r: 2, alpha: 4, init: 'random', targets: { sites: ['attn.q', 'attn.v'] } });
  const model = AdaptedModel.create(
    base,
    { seed: 1, adapters: [lora('a'), lora('b')], composition: { kind: 'route', experts: ['a', 'b'], router: { kind: 'noisy-top-k', k: 1 } } },
    { routers: builtinRouters() },
  );
  const trainer = new Trainer(
    model,
    {
      optimizer: { lr: 1e-3, weightDecay: 0.01 },
      schedule: { warmupSteps: 5, totalSteps: 100 },
      gradAccumulation: 2,
      maxGradNorm: 0.5,
      routerAnnealing: { noise: { from: 1, to: 0 } },
    },
    { transformLoss: (loss, { step }) => (step % 17 === 16 ? tf.mul(loss, Number.NaN) : loss) },
  );
  const batch = { ids: [[1, 4, 7, 2, 9]], mask: [[1, 1, 1, 1, 1]], lossMask: [[0, 1, 1, 1, 1]] };
  trainer.step(batch);
  trainer.step(batch);
  const afterFirstStep = tf.memory().numTensors;
  let skipped = 0;
  for (let i = 2; i < 200; i++) {
    const report = trainer.step(batch);
    if (report.skipped) skipped++;
    if (i % 50 === 1) expect(tf.memory().numTensors).toBe(afterFirstStep);
  }
  expect(tf.memory().numTensors).toBe(afterFirstStep);
  expect(trainer.steps).toBe(100);
  expect(skipped).toBeGreaterThan(0);
  trainer.dispose();
  model.dispose();
  expect(tf.memory().numTensors).toBe(start);
  base.dispose();
});
