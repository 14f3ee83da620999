// Data-parallel training (src/train/data-parallel.ts): worker replicas compute their shards' gradients, and a
// step computes what gradient accumulation over the same shards computes — the whole batch's step exactly when
// the spec has no per-forward terms. The base stays untouched; failures reach the caller typed and leave the
// group usable.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import type { Transformer } from '../../src/base/transformer.js';
import { listWeightTensors } from '../../src/base/weights.js';
import { ConfigError, RoutedPeftError } from '../../src/errors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { DataParallelGroup } from '../../src/train/data-parallel.js';
import { splitRows } from '../../src/train/shards.js';
import { Trainer, type TrainBatch } from '../../src/train/trainer.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { tinyLlama } from '../helpers/tiny-models.js';

let base: Transformer;
beforeAll(() => {
  base = tinyLlama();
});
afterAll(() => base.dispose());

const batch: TrainBatch = {
  ids: [
    [1, 5, 9, 3, 7, 2],
    [1, 6, 10, 12, 14, 3],
    [1, 4, 8, 15, 11, 2],
  ],
  mask: [
    [1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 0, 0],
  ],
  lossMask: [
    [0, 0, 0, 1, 1, 1], // 3 targets
    [0, 1, 1, 1, 1, 1], // 5 targets
    [0, 1, 1, 1, 0, 0], // 3 targets
  ],
};

const loraSpec = { seed: 9, adapters: [{ kind: 'lora', name: 'a', r: 4, alpha: 8, init: 'random', targets: { sites: 'all-linear' } }] };
const routedSpec = {
  seed: 7,
  adapters: [0, 1, 2, 3].map((i) => ({ kind: 'lora', name: `e${i}`, r: 2, alpha: 4, init: 'random', targets: { sites: ['attn.q', 'attn.v', 'mlp.down'] } })),
  composition: { kind: 'route', experts: ['e0', 'e1', 'e2', 'e3'], router: { kind: 'top-k', k: 2 }, aux: { balance: 0.05 } },
};
const config = { optimizer: { lr: 1e-2, weightDecay: 0.05 }, maxGradNorm: 1 };

function expectSameVariables(actual: Trainer, expected: Trainer): void {
  const other = [...actual.namedVariables()];
  [...expected.namedVariables()].forEach(([name, v], i) => {
    const [otherName, w] = other[i] as [string, tf.Variable];
    expect(otherName).toBe(name);
    expectClose(w.dataSync(), v.dataSync(), { rtol: 1e-5, atol: 1e-6, label: name });
  });
}

/**
 * A one-replica trainer and a `replicas`-replica one over two models of the same spec, handed to `body` and
 * freed after it (`reference` config overrides the one-replica trainer's, e.g. gradAccumulation).
 */
async function withTrainers(
  spec: object,
  replicas: number,
  body: (one: Trainer, parallel: Trainer) => void,
  reference: object = {},
  options: { readonly routers?: boolean; readonly both?: object } = {},
): Promise<void> {
  const routers = options.routers === true ? { routers: builtinRouters() } : {};
  const single = AdaptedModel.create(base, spec, routers);
  const replicated = AdaptedModel.create(base, spec, routers);
  const group = await DataParallelGroup.start(replicated, config, { replicas });
  const one = new Trainer(single, { ...config, ...options.both, ...reference });
  const parallel = new Trainer(replicated, { ...config, ...options.both }, { dataParallel: group });
  try {
    body(one, parallel);
  } finally {
    one.dispose();
    parallel.dispose();
    await group.close();
    single.dispose();
    replicated.dispose();
  }
}

describe('data-parallel training', () => {
  test('two replicas give the one-replica step of the whole batch (no per-forward terms), step after step', async () => {
    await withTrainers(loraSpec, 2, (one, two) => {
      const initial = [...two.namedVariables().values()].map((v) => Array.from(v.dataSync()));
      const baseBefore = listWeightTensors(base.weights).map((t) => Array.from(t.dataSync()));
      for (let s = 0; s < 3; s++) {
        const a = one.step(batch);
        const b = two.step(batch);
        expect(b).toMatchObject({ applied: true, step: s + 1, targets: 11 });
        expect(b.loss).toBeCloseTo(a.loss, 5);
        expect(b.gradNorm as number).toBeCloseTo(a.gradNorm as number, 5);
      }
      expectSameVariables(two, one);
      // Every variable moved (so the workers got the new weights each step), and the base did not.
      [...two.namedVariables().values()].forEach((v, i) => expect(Array.from(v.dataSync())).not.toEqual(initial[i]));
      listWeightTensors(base.weights).forEach((t, i) => expect(Array.from(t.dataSync())).toEqual(baseBefore[i]));
    });
  });

  test('with router aux losses a step is gradient accumulation over the shards; three replicas; no tensor leaks', async () => {
    await withTrainers(
      routedSpec,
      3,
      (one, three) => {
        const shards = splitRows(batch, 3);
        expect(shards.map((s) => s.ids.length)).toEqual([1, 1, 1]);
        three.step(batch); // warm: the first step allocates the trainer's state
        for (const shard of shards) one.step(shard);
        const steady = tf.memory().numTensors;
        const last = three.step(batch);
        const reference = shards.map((shard) => one.step(shard)).at(-1);
        expect(tf.memory().numTensors).toBe(steady);
        expect(last.auxLoss).toBeGreaterThan(0);
        expect(last.auxLoss).toBeCloseTo(reference?.auxLoss as number, 5);
        expect(last.loss).toBeCloseTo(reference?.loss as number, 5);
        expectSameVariables(three, one);
      },
      { gradAccumulation: 3 },
      { routers: true },
    );
  });

  test('gradient accumulation on replicas: two micro-batches a step give the one-replica accumulation', async () => {
    const [first, second] = [splitRows(batch, 2)[0] as TrainBatch, batch];
    await withTrainers(
      loraSpec,
      2,
      (one, two) => {
        for (let s = 0; s < 2; s++) {
          expect(two.step(first)).toMatchObject({ applied: false, microBatch: 1 });
          one.step(first);
          const [a, b] = [one.step(second), two.step(second)];
          expect(b).toMatchObject({ applied: true, step: s + 1 });
          expect(b.loss).toBeCloseTo(a.loss, 5);
          expect(b.gradNorm as number).toBeCloseTo(a.gradNorm as number, 5);
        }
        expectSameVariables(two, one);
      },
      {},
      { both: { gradAccumulation: 2 } },
    );
  });

  test('fewer rows than replicas: the idle replicas sit the step out', async () => {
    const row: TrainBatch = { ids: [batch.ids[1] as number[]], mask: [batch.mask[1] as number[]], lossMask: [batch.lossMask[1] as number[]] };
    await withTrainers(loraSpec, 3, (one, three) => {
      for (let s = 0; s < 2; s++) expect(three.step(row).loss).toBeCloseTo(one.step(row).loss, 5);
      three.step(batch); // the idle workers take the weights of the two steps they sat out
      one.step(batch);
      expectSameVariables(three, one);
    });
  });

  test("a worker's error reaches the step typed, naming the bad value; the next step trains as if it had not happened", async () => {
    await withTrainers(loraSpec, 2, (one, two) => {
      const bad: TrainBatch = { ...batch, ids: [batch.ids[0] as number[], batch.ids[1] as number[], [1, 4, 8, 999, 11, 2]] }; // row 2 is the worker's
      let thrown: unknown;
      try {
        two.step(bad);
      } catch (error) {
        thrown = error;
      }
      expect(thrown).toBeInstanceOf(RoutedPeftError);
      expect((thrown as Error).message).toMatch(/999/);
      expect(two.step(batch).loss).toBeCloseTo(one.step(batch).loss, 5);
      expectSameVariables(two, one);
    });
  });

  test('what a replica cannot reproduce is refused by name', async () => {
    const model = AdaptedModel.create(base, loraSpec);
    await expect(DataParallelGroup.start(model, config, { replicas: 1 })).rejects.toThrow(ConfigError);
    const group = await DataParallelGroup.start(model, config, { replicas: 2 });
    try {
      expect(() => new Trainer(model, { ...config, routerAnnealing: { temperature: { from: 2, to: 1 } } }, { dataParallel: group })).toThrow(/routerAnnealing/);
      expect(() => new Trainer(model, { ...config, objective: { kind: 'classification', classes: 2 } }, { dataParallel: group })).toThrow(
        /replicates other variables/,
      );
      expect(() => new Trainer(model, config, { dataParallel: group, transformLoss: (loss) => loss })).toThrow(/transformLoss/);
      const trainer = new Trainer(model, config, { dataParallel: group });
      const retention = { ids: [[1, 2, 3]], mask: [[1, 1, 1]] };
      expect(() => trainer.step({ ...batch, retention })).toThrow(/retention rows/);
      trainer.dispose();
      const adalora = AdaptedModel.create(base, {
        seed: 1,
        adapters: [{ kind: 'adalora', name: 'x', initR: 4, targetR: 2, alpha: 8, tinit: 1, tfinal: 1, targets: { sites: ['attn.q'] } }],
      });
      try {
        expect(() => new Trainer(adalora, config, { dataParallel: group })).toThrow(/AdaLoRA/);
      } finally {
        adalora.dispose();
      }
    } finally {
      await group.close();
      model.dispose();
    }
  });
});
