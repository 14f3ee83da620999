// The AdaLoRA-vs-LoRA benchmark compares at an equal final budget: after AdaLoRA's schedule the live triplets
// equal the uniform LoRA's total rank, both parameter counts are the library's parameter report's, and a
// comparison at unequal ranks is refused. Tiny llama, a 6-step schedule.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { armSpecs, checkBudgets, uniformLoraParameters } from '../../benchmarks/adalora-vs-lora.js';
import type { SiteName } from '../../src/base/sites.js';
import type { Transformer } from '../../src/base/transformer.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { Trainer, type TrainBatch } from '../../src/train/trainer.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const SITES: readonly SiteName[] = ['attn.q', 'attn.v', 'mlp.down'];
const STEPS = 6;
const SCHEDULE = { tinit: 0.2, tfinal: 0.3, deltaT: 0.1, beta1: 0.85, beta2: 0.85, orthWeight: 0.1, lrScale: 1, loraLrScale: 1, initRankScale: 1.5 };
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

describe('adalora-vs-lora budget matching', () => {
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

  function trained(rank: number): { lora: AdaptedModel; adalora: AdaptedModel } {
    const specs = armSpecs({ seed: 3, steps: STEPS, sites: SITES, rank, initRank: 3, alpha: 8, schedule: SCHEDULE });
    const lora = AdaptedModel.create(base, specs.lora);
    const adalora = AdaptedModel.create(base, specs.adalora);
    const trainer = new Trainer(adalora, { optimizer: { lr: 2e-2 }, schedule: { totalSteps: STEPS } });
    try {
      for (let i = 0; i < STEPS; i++) trainer.step(batch);
    } finally {
      trainer.dispose();
    }
    return { lora, adalora };
  }

  test('after the schedule the live triplets equal the LoRA total rank; both counts are the parameter report', () => {
    const { lora, adalora } = trained(2);
    try {
      const check = checkBudgets(lora, adalora);
      // tiny llama: 2 layers, q [16, 16], v [8, 16], down [16, 40] → 6 modules of rank 2.
      expect(check.loraTotalRank).toBe(12);
      expect(check.adaloraTotalRank).toBe(12);
      expect(check.loraParameters).toBe(2 * 2 * (16 + 16 + (8 + 16) + (16 + 40)));
      expect(check.loraParameters).toBe(uniformLoraParameters(base.config, SITES, 2));
      // The export's count is Σ live rank · (O + I), the same as the rank report's.
      expect(check.adaloraParameters).toBe(check.ranks.exportedLoraParameters);
      const widths: Record<string, number> = { 'attn.q': 32, 'attn.v': 24, 'mlp.down': 56 };
      expect(check.adaloraParameters).toBe(check.ranks.modules.reduce((s, m) => s + m.rank * (widths[m.site] ?? Number.NaN), 0));
      // While training it held every triplet at the initial rank 3 (P, Λ, Q).
      expect(check.adaloraTrainingParameters).toBe(uniformLoraParameters(base.config, SITES, 3) + 2 * SITES.length * 3);
    } finally {
      lora.dispose();
      adalora.dispose();
    }
  });

  test('a comparison at unequal total ranks is refused', () => {
    const { lora, adalora } = trained(2);
    const other = AdaptedModel.create(base, armSpecs({ seed: 3, steps: STEPS, sites: SITES, rank: 1, initRank: 3, alpha: 8, schedule: SCHEDULE }).lora);
    try {
      expect(() => checkBudgets(other, adalora)).toThrow(/12 live triplets, the LoRA has total rank 6/);
    } finally {
      lora.dispose();
      adalora.dispose();
      other.dispose();
    }
  });
});
