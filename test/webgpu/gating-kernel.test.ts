// The WebGPU top-k gating kernel (src/routing/webgpu-gating.ts) against its reference, gating.ts topKSlots
// with tfjs ops on the same backend: the same ids (ties: lower index first) and weights within 1e-5 over
// random shapes (k = 1…4, E ≤ 64, tied scores, masked rows), in two dispatches per decision.
import { fc } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { registerTopKSlotsKernel, topKSlots, unregisterTopKSlotsKernel } from '../../src/routing/gating.js';
import { webgpuTopKSlots } from '../../src/routing/webgpu-gating.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { WEBGPU_SKIP_NOTE, countDispatches, hasWebGpu, onBackend } from '../helpers/webgpu.js';

const caseArb = fc
  .record({ rows: fc.integer({ min: 1, max: 70 }), choices: fc.integer({ min: 1, max: 64 }), k: fc.integer({ min: 1, max: 4 }), masked: fc.boolean() })
  .chain((c) =>
    fc.record({
      rows: fc.constant(c.rows),
      choices: fc.constant(c.choices),
      k: fc.constant(Math.min(c.k, c.choices)),
      // small integers / 4: many ties
      scores: fc.array(fc.integer({ min: -12, max: 12 }), { minLength: c.rows * c.choices, maxLength: c.rows * c.choices }),
      mask: c.masked ? fc.array(fc.constantFrom(0, 1), { minLength: c.rows, maxLength: c.rows }) : fc.constant(undefined),
    }),
  );

async function decide(scores: tf.Tensor2D, mask: tf.Tensor1D | undefined, k: number) {
  const [ids, weights] = tf.tidy(() => {
    const slots = topKSlots(scores, mask, { k, training: false });
    return [slots.expertIds, slots.weights]; // the reference's intermediates are freed
  });
  const out = { ids: [...((await (ids as tf.Tensor).data()) as Int32Array)], weights: (await (weights as tf.Tensor).data()) as Float32Array };
  tf.dispose([ids as tf.Tensor, weights as tf.Tensor]);
  return out;
}

describe.skipIf(!hasWebGpu)(`top-k gating WGSL kernel on webgpu${WEBGPU_SKIP_NOTE}`, () => {
  test('equals topKSlots with tfjs ops: ids exactly, weights ≤ 1e-5 (k = 1…4, E ≤ 64, ties, masked rows), two dispatches', async () => {
    await onBackend('webgpu', async () => {
      const start = tf.memory().numTensors;
      await fc.assert(
        fc.asyncProperty(caseArb, async (c) => {
          const scores = tf.tensor2d(
            c.scores.map((v) => v / 4),
            [c.rows, c.choices],
          );
          const mask = c.mask === undefined ? undefined : tf.tensor1d(c.mask);
          try {
            unregisterTopKSlotsKernel('webgpu');
            const expected = await decide(scores, mask, c.k);
            registerTopKSlotsKernel('webgpu', webgpuTopKSlots);
            const { result: actual, byKey } = await countDispatches(() => decide(scores, mask, c.k));
            expect(byKey.get('routedTopK')).toBe(2);
            expect(actual.ids).toEqual(expected.ids);
            expectClose(actual.weights, expected.weights, { rtol: 1e-5, atol: 1e-6 });
          } finally {
            registerTopKSlotsKernel('webgpu', webgpuTopKSlots);
            tf.dispose([scores, ...(mask === undefined ? [] : [mask])]);
          }
        }),
        { numRuns: 25, seed: 4 },
      );
      expect(tf.memory().numTensors).toBe(start);
    });
  }, 300_000);
});
