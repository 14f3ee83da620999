// AdaLoRA: the budget schedule's shape, the allocation, the orthogonality term, exact parameter accounting,
// training that drives the total rank to the target (alone and as routed experts), the export as a plain
// LoRA and through a PEFT directory (same output, pruned triplets dropped), no leaks, the base untouched.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { allocate, budgetAt, checkSchedule, type BudgetSchedule } from '../../src/adapters/adalora/budget.js';
import { AdaloraBudget } from '../../src/adapters/adalora/controller.js';
import { adaloraRanks, adaloraToLora } from '../../src/adapters/adalora/export.js';
import type { AdaloraModule } from '../../src/adapters/adalora/layer.js';
import type { AdapterInstance } from '../../src/adapters/instance.js';
import type { Transformer } from '../../src/base/transformer.js';
import { listWeightTensors } from '../../src/base/weights.js';
import { ConfigError } from '../../src/errors.js';
import { readPeftAdapter, writePeftAdapter } from '../../src/io/peft-adapter.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { TrainingError } from '../../src/train/errors.js';
import { Trainer, type TrainBatch } from '../../src/train/trainer.js';
import { expectClose } from '../helpers/tensor-asserts.js';
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

const adalora = (name: string, extra: Record<string, unknown> = {}) => ({
  kind: 'adalora',
  name,
  initR: 4,
  targetR: 2,
  alpha: 8,
  tinit: 2,
  tfinal: 2,
  deltaT: 1,
  targets: { sites: ['attn.q', 'attn.v', 'mlp.down'] },
  ...extra,
});

function logits(model: AdaptedModel, select?: unknown): Float32Array {
  return tf.tidy(() => model.forward({ ids: batch.ids, ...(select === undefined ? {} : { select: select as never }) }).dataSync() as Float32Array);
}

function baseBytes(base: Transformer): Buffer[] {
  return listWeightTensors(base.weights).map((t) => Buffer.from(new Uint8Array(t.dataSync().buffer.slice(0))));
}

function train(model: AdaptedModel, steps: number, config: Record<string, unknown> = {}): void {
  const trainer = new Trainer(model, { optimizer: { lr: 2e-2 }, schedule: { totalSteps: steps }, ...config });
  try {
    for (let i = 0; i < steps; i++) trainer.step(batch);
  } finally {
    trainer.dispose();
  }
}

describe('AdaLoRA budget schedule', () => {
  const schedule: BudgetSchedule = { initial: 48, target: 16, tinit: 10, tfinal: 20, deltaT: 5, totalSteps: 100 };

  test('constant through warm-up, cubic and non-increasing while budgeting, the target from T − tfinal on', () => {
    const budgets = Array.from({ length: 110 }, (_, i) => budgetAt(schedule, i + 1));
    for (const p of budgets.slice(0, 10)) expect(p).toEqual({ phase: 'warmup', budget: 48, allocate: false, final: false });
    // eq. 11 at t = 45: 16 + 32·(1 − 35/70)³ = 20
    expect(budgetAt(schedule, 45)).toEqual({ phase: 'budgeting', budget: 20, allocate: true, final: false });
    expect(budgetAt(schedule, 46).allocate).toBe(false);
    const budgeting = budgets.slice(10, 79);
    expect(budgeting.every((p) => p.phase === 'budgeting')).toBe(true);
    budgeting.forEach((p, i) => expect(p.budget).toBeLessThanOrEqual(i === 0 ? 48 : (budgeting[i - 1]?.budget ?? 48)));
    expect(budgetAt(schedule, 80)).toEqual({ phase: 'final', budget: 16, allocate: true, final: true });
    for (const p of budgets.slice(80)) expect(p).toEqual({ phase: 'final', budget: 16, allocate: false, final: false });
  });

  test('a schedule without a budgeting phase is a ConfigError naming the adapter', () => {
    expect(() => checkSchedule({ ...schedule, tinit: 80 }, 'adapters.a')).toThrow(/no budgeting phase.*adapters\.a/);
  });

  test('an allocation keeps exactly the budget: the highest scores across modules, ties to the earlier triplet', () => {
    const keep = allocate([Float32Array.from([0.1, 0.9, 0.5]), Float32Array.from([0.5, Number.NaN, 0.7])], 3);
    expect(keep).toEqual([
      [false, true, true],
      [false, false, true],
    ]);
    expect(allocate([Float32Array.from([0, 0, 0]), Float32Array.from([0, 0])], 2)).toEqual([
      [true, true, false],
      [false, false],
    ]);
  });
});

describe('AdaLoRA on tiny llama', () => {
  let base: Transformer;
  let start: number;
  beforeAll(() => {
    base = tinyLlama();
    start = tf.memory().numTensors;
  });
  afterAll(() => {
    expect(tf.memory().numTensors).toBe(start);
    base.dispose();
  });

  test('the spec refuses targetR above initR and a run without a length, naming the field', () => {
    expect(() => AdaptedModel.create(base, { adapters: [adalora('a', { initR: 2, targetR: 3 })] })).toThrow(/targetR/);
    const model = AdaptedModel.create(base, { adapters: [adalora('a')] });
    try {
      expect(() => new Trainer(model, {})).toThrow(ConfigError);
      expect(() => new Trainer(model, {})).toThrow(/adapters\.a\.totalSteps/);
    } finally {
      model.dispose();
    }
  });

  test('the reported trainable count is exactly the sum of the variables: Σ (O·r + r + r·I)', () => {
    const model = AdaptedModel.create(base, { adapters: [adalora('a')] });
    try {
      const instance = model.adapters.get('a') as AdapterInstance;
      const sizes = [...instance.modules.values()].flatMap((m) => m.variables().map((v) => v.size));
      const sum = sizes.reduce((s, n) => s + n, 0);
      // tiny llama: D 16, 4 heads, 2 kv heads → q [16, 16], v [8, 16], down [16, 40]; r = 4; 2 layers.
      expect(sum).toBe(2 * (16 * 4 + 4 + 4 * 16 + (8 * 4 + 4 + 4 * 16) + (16 * 4 + 4 + 4 * 40)));
      expect(model.parameterReport().trainable).toBe(sum);
      expect(adaloraRanks(instance).trainableParameters).toBe(sum);
    } finally {
      model.dispose();
    }
  });

  test('the orthogonality term is zero for orthonormal P and Q and positive otherwise', () => {
    const model = AdaptedModel.create(base, { adapters: [adalora('a', { targets: { sites: ['attn.q'], layers: [0] } })] });
    try {
      const module = [...(model.adapters.get('a') as AdapterInstance).modules.values()][0] as AdaloraModule;
      const value = (): number => tf.tidy(() => module.orthogonality().dataSync()[0] as number);
      expect(value()).toBeGreaterThan(1); // P, Q ~ N(0, 0.02²): far from orthonormal
      tf.tidy(() => {
        module.p.assign(tf.slice(tf.eye(16), [0, 0], [16, 4])); // [O, r]: orthonormal columns
        module.q.assign(tf.slice(tf.eye(16), [4, 0], [4, 16])); // [r, I]: orthonormal rows
      });
      expect(value()).toBe(0);
    } finally {
      model.dispose();
    }
  });

  test('training drives the total rank along the schedule to the target and keeps the base bit-identical', () => {
    const before = baseBytes(base);
    const model = AdaptedModel.create(base, { seed: 3, adapters: [adalora('a')] });
    const instance = model.adapters.get('a') as AdapterInstance;
    const trainer = new Trainer(model, { optimizer: { lr: 2e-2 }, schedule: { totalSteps: 10 } });
    try {
      const controller = trainer.controllers[0] as AdaloraBudget;
      expect(controller).toBeInstanceOf(AdaloraBudget);
      expect(controller.schedule).toMatchObject({ initial: 24, target: 12, totalSteps: 10 });
      const totals: number[] = [];
      const afterFirst = (() => {
        trainer.step(batch);
        totals.push(adaloraRanks(instance).totalRank);
        return tf.memory().numTensors;
      })();
      for (let step = 2; step <= 10; step++) {
        const report = trainer.step(batch);
        expect(report.auxLoss).toBeGreaterThan(0); // the orthogonality term
        totals.push(adaloraRanks(instance).totalRank);
        expect(controller.totalRank()).toBe(budgetAt(controller.schedule, step).budget);
        // Flat while scoring; after the final allocation (step 8) the scores (Ī, Ū of 18 variables) are freed.
        expect(tf.memory().numTensors).toBe(step < 8 ? afterFirst : afterFirst - 36);
      }
      // Λ starts at 0 and moves after step 1; warm-up (tinit 2) keeps all 24, then the cubic takes it to 12 at step 8.
      expect(totals.slice(1, 2)).toEqual([24]);
      expect(totals[7]).toBe(12);
      expect(totals.slice(8)).toEqual([12, 12]);
      expect(adaloraRanks(instance).modules.every((m) => m.rank <= 4)).toBe(true);
    } finally {
      trainer.dispose();
    }
    expect(baseBytes(base)).toEqual(before);
    const bare = AdaptedModel.create(base, { adapters: [adalora('b')] });
    try {
      expect(logits(model, 'base')).toEqual(logits(bare, 'base'));
    } finally {
      bare.dispose();
      model.dispose();
    }
  });

  test('a resumed AdaLoRA run is refused by name (its importance scores are not checkpointed)', () => {
    const model = AdaptedModel.create(base, { adapters: [adalora('a')] });
    const trainer = new Trainer(model, { schedule: { totalSteps: 10 } });
    try {
      const progress = { ...trainer.progress(), steps: 3, appliedSteps: 3 };
      expect(() => trainer.restoreProgress(progress)).toThrow(TrainingError);
      expect(() => trainer.restoreProgress(progress)).toThrow(/AdaLoRA adapter "a"/);
    } finally {
      trainer.dispose();
      model.dispose();
    }
  });

  test('the export is a plain LoRA of the live triplets with the same output, and round-trips through a PEFT directory', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'adalora-peft-'));
    const model = AdaptedModel.create(base, { seed: 5, adapters: [adalora('a', { init: 'random' })] });
    try {
      train(model, 10);
      const instance = model.adapters.get('a') as AdapterInstance;
      // Prune one module entirely: it must vanish from the export, not be stored as zeros.
      const down1 = instance.module(1, { kind: 'site-output', site: 'mlp.down' }) as AdaloraModule;
      const trained = adaloraRanks(instance);
      expect(trained.totalRank).toBe(12);
      const pruned = trained.modules.find((m) => m.layer === 1 && m.site === 'mlp.down')?.rank ?? 0;
      tf.tidy(() => down1.lambda.assign(tf.zerosLike(down1.lambda)));
      const ranks = adaloraRanks(instance);
      expect(ranks.totalRank).toBe(12 - pruned);
      const exported = adaloraToLora(instance, base.config, { name: 'exported' });
      model.addAdapter(exported);
      expect(exported.module(1, { kind: 'site-output', site: 'mlp.down' })).toBeUndefined();
      for (const m of ranks.modules) {
        const lora = exported.module(m.layer, { kind: 'site-output', site: m.site });
        expect(lora === undefined ? 0 : (lora.variables()[0] as tf.Variable).shape[0]).toBe(m.rank);
      }
      expect(exported.parameterCount()).toBe(ranks.exportedLoraParameters);
      const adapted = logits(model, { adapter: 'a' });
      const viaLora = logits(model, { adapter: 'exported' });
      expect(adapted).not.toEqual(logits(model, 'base'));
      expectClose(viaLora, adapted, { rtol: 1e-4, atol: 1e-5, label: 'exported LoRA vs AdaLoRA' });

      await writePeftAdapter(dir, exported, base);
      const config = JSON.parse(await readFile(join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      expect(typeof config['target_modules']).toBe('string'); // a regex: layer 1 has no down_proj
      expect(config['rank_pattern']).toEqual(
        Object.fromEntries(
          ranks.modules
            .filter((m) => m.rank > 0 && m.rank !== config['r'])
            .map((m) => [
              `model.layers.${m.layer}.${m.site === 'attn.q' ? 'self_attn.q_proj' : m.site === 'attn.v' ? 'self_attn.v_proj' : 'mlp.down_proj'}`,
              m.rank,
            ]),
        ),
      );
      const read = await readPeftAdapter(dir, base, { name: 'reread' });
      expect(read.warnings).toEqual([]);
      expect(read.instance.module(1, { kind: 'site-output', site: 'mlp.down' })).toBeUndefined();
      model.addAdapter(read.instance);
      expect(logits(model, { adapter: 'reread' })).toEqual(viaLora);
    } finally {
      model.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('routed AdaLoRA experts train: each expert runs its own budget to its target, nothing leaks, the base is untouched', () => {
    const before = baseBytes(base);
    const startTensors = tf.memory().numTensors;
    const model = AdaptedModel.create(
      base,
      {
        seed: 7,
        adapters: [adalora('e0', { init: 'random' }), adalora('e1', { init: 'random', targetR: 1 })],
        composition: { kind: 'route', experts: ['e0', 'e1'], router: { kind: 'top-k', k: 1 } },
      },
      { routers: builtinRouters() },
    );
    try {
      const initial = logits(model);
      const trainer = new Trainer(model, { optimizer: { lr: 2e-2 }, schedule: { totalSteps: 8 } });
      try {
        expect(trainer.controllers.map((c) => c.adapter)).toEqual(['e0', 'e1']);
        let firstLoss = Number.NaN;
        let lastLoss = Number.NaN;
        for (let i = 0; i < 8; i++) {
          const report = trainer.step(batch);
          if (i === 0) firstLoss = report.taskLoss;
          lastLoss = report.taskLoss;
        }
        expect(lastLoss).toBeLessThan(firstLoss);
      } finally {
        trainer.dispose();
      }
      expect(adaloraRanks(model.adapters.get('e0') as AdapterInstance).totalRank).toBe(12);
      expect(adaloraRanks(model.adapters.get('e1') as AdapterInstance).totalRank).toBe(6);
      expect(logits(model)).not.toEqual(initial);
    } finally {
      model.dispose();
    }
    expect(tf.memory().numTensors).toBe(startTensors);
    expect(baseBytes(base)).toEqual(before);
  });
});
