// The Trainer on a tiny llama: a LoRA learns a memorisation task while the base stays byte-identical; the
// non-finite guard skips bad steps without touching weights and aborts after maxBadSteps; events are plain
// data (Observable and AsyncIterable); zero-target batches are skipped; the variable list is checked.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { AdapterSpec } from '../../src/adapters/registry.js';
import { Transformer } from '../../src/base/transformer.js';
import { listWeightTensors } from '../../src/base/weights.js';
import { parseConfig } from '../../src/config/parse.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { TrainingError } from '../../src/train/errors.js';
import { Trainer, type TrainBatch, type TrainEvent } from '../../src/train/trainer.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const batch: TrainBatch = {
  ids: [
    [1, 5, 9, 3, 7, 2, 4, 8],
    [1, 6, 10, 12, 14, 3, 5, 9],
  ],
  mask: [
    [1, 1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1, 1],
  ],
  lossMask: [
    [0, 0, 1, 1, 1, 1, 1, 1],
    [0, 0, 1, 1, 1, 1, 1, 1],
  ],
};

const loraSpec = (init: 'zero-b' | 'random' = 'zero-b') => ({
  seed: 2,
  adapters: [{ kind: 'lora', name: 'mem', r: 4, alpha: 8, init, targets: { sites: 'all-linear' } }],
});

function snapshot(variables: ReadonlyMap<string, tf.Variable>): Map<string, number[]> {
  return new Map([...variables].map(([name, v]) => [name, Array.from(v.dataSync())]));
}

describe('Trainer on tiny llama', () => {
  let base: Transformer;
  beforeAll(() => {
    base = tinyLlama();
  });
  afterAll(() => base.dispose());

  test('a LoRA memorises two sequences: loss falls; base bytes and select "base" logits unchanged; events are plain data', async () => {
    const baseBytes = listWeightTensors(base.weights).map((t) => Buffer.from(Float32Array.from(t.dataSync() as Float32Array).buffer));
    const before = base.forward({ ids: batch.ids, mask: batch.mask });
    const baseLogits = Array.from(before.dataSync());
    before.dispose();

    const model = AdaptedModel.create(base, loraSpec());
    const trainer = new Trainer(model, { optimizer: { lr: 1e-2 }, schedule: { warmupSteps: 3, totalSteps: 30 } });
    const observed: TrainEvent[] = [];
    const subscription = trainer.events$.subscribe((e) => observed.push(e));
    const iterated: TrainEvent[] = [];
    const consumer = (async () => {
      for await (const event of trainer.eventsIterable()) iterated.push(event);
    })();

    const losses: number[] = [];
    for (let i = 0; i < 30; i++) losses.push(trainer.step(batch).loss);
    const summary = trainer.finish();
    await consumer;
    subscription.unsubscribe();

    const mean = (xs: number[]): number => xs.reduce((s, x) => s + x, 0) / xs.length;
    expect(mean(losses.slice(-5))).toBeLessThan(0.5 * mean(losses.slice(0, 5)));
    expect(summary).toMatchObject({ steps: 30, appliedSteps: 30, skippedTotal: 0, firstLoss: losses[0], lastLoss: losses[29] });

    expect(observed.filter((e) => e.type === 'step')).toHaveLength(30);
    expect(observed.at(-1)?.type).toBe('done');
    expect(iterated).toEqual(observed);
    for (const event of observed) expect(JSON.parse(JSON.stringify(event))).toEqual(event); // numbers and plain objects only
    const first = observed[0];
    if (first?.type !== 'step') throw new Error('first event should be a step');
    expect(first.lr.expert).toBeCloseTo(1e-2 / 3, 12);
    expect(first.lr.router).toBeCloseTo(1e-2 / 3, 12);
    expect(first.gradNorm).toBeGreaterThan(0);
    expect(first.tokens).toBe(16);
    expect(first.targets).toBe(12);

    listWeightTensors(base.weights).forEach((t, i) => {
      expect(Buffer.from(Float32Array.from(t.dataSync() as Float32Array).buffer).equals(baseBytes[i] as Buffer)).toBe(true);
    });
    const after = model.forward({ ids: batch.ids, mask: batch.mask, select: 'base' });
    expect(Array.from(after.dataSync())).toEqual(baseLogits);
    after.dispose();
    expect(() => trainer.step(batch)).toThrow(TrainingError);
    trainer.dispose();
    model.dispose();
  });

  test('a non-finite step is skipped and counted, leaves weights and optimizer state unchanged, then training continues', () => {
    const model = AdaptedModel.create(base, loraSpec('random'));
    const bad = new Set([1]);
    const trainer = new Trainer(
      model,
      { optimizer: { lr: 1e-2, weightDecay: 0.1 } },
      { transformLoss: (loss, { step }) => (bad.has(step) ? tf.mul(loss, Number.NaN) : loss) },
    );
    const events: TrainEvent[] = [];
    trainer.events$.subscribe((e) => events.push(e));

    expect(trainer.step(batch).applied).toBe(true);
    const weights = snapshot(trainer.namedVariables());
    const state = trainer.optimizer.getState();
    const report = trainer.step(batch);
    expect(report).toMatchObject({ step: 2, skipped: true, applied: false, skippedTotal: 1 });
    expect(report.loss).toBeNaN();
    expect(snapshot(trainer.namedVariables())).toEqual(weights);
    expect(trainer.optimizer.getState()).toEqual(state);
    for (const values of weights.values()) expect(values.every(Number.isFinite)).toBe(true);
    const skipped = events.find((e) => e.type === 'skipped');
    expect(skipped).toMatchObject({ type: 'skipped', step: 2 });
    expect(skipped?.type === 'skipped' ? skipped.reason : '').toMatch(/loss is NaN/);

    const next = trainer.step(batch);
    expect(next).toMatchObject({ step: 3, skipped: false, applied: true, skippedTotal: 1 });
    expect(snapshot(trainer.namedVariables())).not.toEqual(weights);
    trainer.dispose();
    model.dispose();
  });

  test('maxBadSteps consecutive non-finite steps throw a TrainingError that says how to fix it', () => {
    const model = AdaptedModel.create(base, loraSpec('random'));
    const trainer = new Trainer(model, { maxBadSteps: 3 }, { transformLoss: (loss) => tf.div(loss, 0) });
    let streamError: unknown;
    trainer.events$.subscribe({ error: (e: unknown) => (streamError = e) });
    const weights = snapshot(trainer.namedVariables());
    expect(trainer.step(batch).skipped).toBe(true);
    expect(trainer.step(batch).skipped).toBe(true);
    let thrown: unknown;
    try {
      trainer.step(batch);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(TrainingError);
    expect(String(thrown)).toMatch(/3 consecutive optimizer steps were skipped/);
    expect(String(thrown)).toMatch(/Lower the learning rate/);
    expect(String(thrown)).toMatch(/check the data/);
    expect(streamError).toBe(thrown);
    expect(() => trainer.step(batch)).toThrow(TrainingError);
    expect(snapshot(trainer.namedVariables())).toEqual(weights);
    trainer.dispose();
    model.dispose();
  });

  test('a batch without loss targets is skipped with a reason, without running the model', () => {
    const model = AdaptedModel.create(base, loraSpec('random'));
    const trainer = new Trainer(model, {});
    const weights = snapshot(trainer.namedVariables());
    const reasons: string[] = [];
    trainer.events$.subscribe((e) => e.type === 'skipped' && reasons.push(e.reason));
    const report = trainer.step({ ...batch, lossMask: batch.lossMask.map((r) => r.map(() => 0)) });
    expect(report).toMatchObject({ skipped: true, targets: 0, gradNorm: null });
    expect(reasons[0]).toMatch(/no loss targets/);
    expect(snapshot(trainer.namedVariables())).toEqual(weights);
    trainer.dispose();
    model.dispose();
  });

  test('classification objective: a head over pooled hidden states learns two labels', () => {
    const model = AdaptedModel.create(base, loraSpec());
    const trainer = new Trainer(model, { objective: { kind: 'classification', classes: 2 }, optimizer: { lr: 2e-2 }, seed: 3 });
    expect([...trainer.namedVariables().keys()].slice(-2)).toEqual(['head/weight', 'head/bias']);
    const labelled = { ...batch, labels: [0, 1] };
    const losses = Array.from({ length: 15 }, () => trainer.step(labelled).loss);
    expect(losses[14]).toBeLessThan(0.5 * (losses[0] as number));
    expect(() => trainer.step(batch)).toThrow(/labels/);
    trainer.dispose();
    model.dispose();
  });

  test('refuses a base with variable weights, and a model whose adapters changed after construction', () => {
    const variableHead = tf.variable(base.weights.head, true, `base-head#${Math.random()}`);
    const leaky = new Transformer(base.config, { ...base.weights, head: variableHead }, { owned: [] });
    const leakyModel = AdaptedModel.create(leaky, loraSpec());
    expect(() => new Trainer(leakyModel, {})).toThrow(/base must stay frozen/);
    leakyModel.dispose();
    variableHead.dispose();

    const model = AdaptedModel.create(base, loraSpec());
    const trainer = new Trainer(model, {});
    // addAdapter takes a parsed spec (it does not apply schema defaults), so parse it here.
    model.addAdapter(parseConfig(AdapterSpec, { kind: 'lora', name: 'extra', targets: { sites: ['attn.q'] } }, 'adapter'));
    expect(() => trainer.step(batch)).toThrow(/trainable variables changed/);
    model.removeAdapter('extra');
    expect(trainer.step(batch).applied).toBe(true);
    trainer.dispose();
    model.dispose();
  });

  test('rejects invalid config with the path', () => {
    const model = AdaptedModel.create(base, loraSpec());
    expect(() => new Trainer(model, { gradAccumulation: 0 })).toThrow(/trainer.gradAccumulation/);
    expect(() => new Trainer(model, { optimizer: { lr: 0 } })).toThrow(/trainer.optimizer.lr/);
    expect(() => new Trainer(model, { routerAnnealing: { noise: { from: 1, to: 0 } } })).toThrow(/routerAnnealing.steps/);
    model.dispose();
  });
});
