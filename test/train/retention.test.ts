// Retention data in training: base-domain rows mixed into a batch are scored by KL(p_base ‖ p_model), with
// p_base from the same model with adapters off. The term is exactly zero where the adapters add nothing,
// positive where they do, and training with it keeps the adapted model closer to the base on those rows;
// the base never changes and nothing leaks. Refusals are by name.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import type { Transformer } from '../../src/base/transformer.js';
import { listWeightTensors } from '../../src/base/weights.js';
import { ConfigError } from '../../src/errors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { baseLogProbs, mixRetentionRows, retentionKl } from '../../src/train/retention.js';
import { Trainer, type TrainBatch } from '../../src/train/trainer.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const task: TrainBatch = {
  ids: [
    [1, 5, 9, 3, 7, 2],
    [0, 1, 6, 10, 12, 14],
  ],
  mask: [
    [1, 1, 1, 1, 1, 1],
    [0, 1, 1, 1, 1, 1],
  ],
  lossMask: [
    [0, 0, 0, 1, 1, 1],
    [0, 0, 0, 0, 1, 1],
  ],
};
const retention = {
  ids: [
    [1, 20, 21, 22, 23, 24, 25, 26],
    [1, 30, 31, 0, 0, 0, 0, 0],
  ],
  mask: [
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 0, 0, 0, 0, 0],
  ],
};

const lora = (init: 'zero-b' | 'random') => ({
  seed: 3,
  adapters: [{ kind: 'lora', name: 'a', r: 4, alpha: 8, init, targets: { sites: 'all-linear' } }],
});

/** KL of the model to the base on the retention rows, measured by a fresh Trainer's first report (lr ~0). */
function klNow(model: AdaptedModel): number {
  const probe = new Trainer(model, { optimizer: { lr: 1e-12 }, schedule: { totalSteps: 1 } });
  try {
    return probe.step({ ...task, retention }).retentionLoss ?? Number.NaN;
  } finally {
    probe.dispose();
  }
}

describe('retention rows in the Trainer', () => {
  let base: Transformer;
  beforeAll(() => {
    base = tinyLlama();
  });
  afterAll(() => base.dispose());

  test('mixing: task rows first, both padded to one width, no task targets on retention rows, routers pool every real token', () => {
    const mixed = mixRetentionRows(task, retention);
    expect(mixed.ids).toHaveLength(4);
    expect(mixed.ids.every((r) => r.length === 8)).toBe(true);
    expect(mixed.retentionRows).toEqual([0, 0, 1, 1]);
    expect(
      mixed.lossMask
        .slice(2)
        .flat()
        .every((m) => m === 0),
    ).toBe(true);
    expect(mixed.lossMask[0]).toEqual([0, 0, 0, 1, 1, 1, 0, 0]);
    expect(mixed.routingMask.slice(2)).toEqual(retention.mask);
    // Targets: every real token after the first (7 and 2).
    expect(mixed.retentionTargets).toBe(9);
  });

  test('the KL term is zero when adapters are off, and with adapters that add nothing (LoRA B = 0)', () => {
    const start = tf.memory().numTensors;
    const random = AdaptedModel.create(base, lora('random'));
    // Adapters off in the scored forward too: exactly zero.
    const mixed = mixRetentionRows(task, retention);
    const forwardBase = (ids: number[][], mask: number[][]): tf.Tensor => random.forward({ ids, mask, select: 'base' });
    const baseLog = baseLogProbs(forwardBase, mixed);
    const kl = tf.tidy(() => retentionKl(forwardBase(mixed.ids, mixed.mask), baseLog, mixed).dataSync()[0]);
    baseLog.dispose();
    expect(kl).toBe(0);
    // The same model with its adapters on: a real divergence.
    expect(klNow(random)).toBeGreaterThan(1e-4);
    random.dispose();

    const zero = AdaptedModel.create(base, lora('zero-b'));
    expect(klNow(zero)).toBeLessThan(1e-7);
    zero.dispose();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('training with retention rows keeps the model closer to the base there than training without; base bytes unchanged', () => {
    const baseBytes = listWeightTensors(base.weights).map((t) => Array.from(t.dataSync()));
    const start = tf.memory().numTensors;
    const train = (weight: number): number => {
      const model = AdaptedModel.create(base, lora('zero-b'));
      const trainer = new Trainer(model, { optimizer: { lr: 3e-2 }, schedule: { totalSteps: 12 }, retentionWeight: weight });
      try {
        let last = Number.NaN;
        for (let i = 0; i < 12; i++) last = trainer.step({ ...task, retention }).taskLoss;
        expect(Number.isFinite(last)).toBe(true);
        return klNow(model);
      } finally {
        trainer.dispose();
        model.dispose();
      }
    };
    const without = train(0);
    const withRetention = train(5);
    expect(without).toBeGreaterThan(0);
    expect(withRetention).toBeLessThan(without / 2);
    expect(listWeightTensors(base.weights).map((t) => Array.from(t.dataSync()))).toEqual(baseBytes);
    expect(tf.memory().numTensors).toBe(start);
  });

  test('refuses retention rows on a task-routed model, and with the classification objective, by name', () => {
    const tasked = AdaptedModel.create(
      base,
      { ...lora('zero-b'), composition: { kind: 'route', experts: ['a'], router: { kind: 'task' }, placement: 'model', granularity: 'sequence' } },
      { routers: builtinRouters() },
    );
    const trainer = new Trainer(tasked, {});
    const model = AdaptedModel.create(base, lora('zero-b'));
    const classify = new Trainer(model, { objective: { kind: 'classification', classes: 2 } });
    try {
      expect(() => trainer.step({ ...task, taskIds: [0, 0], retention })).toThrow(ConfigError);
      expect(() => trainer.step({ ...task, taskIds: [0, 0], retention })).toThrow(/task router/);
      expect(() => classify.step({ ...task, labels: [0, 1], retention })).toThrow(/causal-lm/);
    } finally {
      trainer.dispose();
      classify.dispose();
      tasked.dispose();
      model.dispose();
    }
  });
});
