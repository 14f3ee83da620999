// The one gating function (src/routing/gating.ts) and its host implementation (src/routing/host-gating.ts):
// for random logits of G routers, the host picks exactly the experts the device's TopK picks and gives them the
// same weights (softmax over the k chosen, temperature applied, zero on padding); the training path (one-hot
// read-back, differentiable) gives the weights of the inference path.
import { fc, test as fcTest } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { describe, expect } from 'vitest';
import { topKSlots } from '../../src/routing/gating.js';
import { topKSlotsOnHost } from '../../src/routing/host-gating.js';
import { expectClose } from '../helpers/tensor-asserts.js';

describe('the one gating function', () => {
  fcTest.prop(
    {
      rows: fc.integer({ min: 1, max: 9 }),
      routers: fc.integer({ min: 1, max: 3 }),
      choices: fc.integer({ min: 2, max: 6 }),
      kRaw: fc.integer({ min: 1, max: 6 }),
      temperature: fc.constantFrom(1, 0.5, 2),
      seed: fc.integer({ min: 0, max: 10_000 }),
      padFirst: fc.boolean(),
    },
    { numRuns: 40 },
  )('host and device decide the same experts and weights', ({ rows, routers, choices, kRaw, temperature, seed, padFirst }) => {
    const k = Math.min(kRaw, choices);
    const logits = tf.randomNormal<tf.Rank.R2>([rows, routers * choices], 0, 2, 'float32', seed); // [N, G·E]
    const mask = Array.from({ length: rows }, (_, n) => (padFirst && n === 0 ? 0 : 1));
    const host = topKSlotsOnHost({ values: logits.dataSync(), stride: routers * choices, rows, routers, choices }, k, temperature, mask);
    tf.tidy(() => {
      const scores = tf.div<tf.Tensor2D>(tf.reshape(logits, [rows * routers, choices]), temperature); // [N·G, E]
      const rowMask = tf.tensor1d(mask.flatMap((m) => Array.from({ length: routers }, () => m))); // [N·G]
      const device = topKSlots(scores, rowMask, { k, training: false });
      const trained = topKSlots(scores, rowMask, { k, training: true });
      const deviceIds = device.expertIds.dataSync();
      for (let r = 0; r < rows * routers; r++) {
        if (mask[Math.floor(r / routers)] === 0) continue; // padding: the host leaves its slots empty
        expect(Array.from(host.ids.subarray(r * k, (r + 1) * k)), `row ${r}`).toEqual(Array.from(deviceIds.subarray(r * k, (r + 1) * k)));
      }
      expectClose(host.weights, device.weights, { rtol: 1e-6, atol: 1e-7, label: 'host vs device weights' });
      expectClose(trained.weights, device.weights, { rtol: 1e-5, atol: 1e-6, label: 'training vs inference weights' });
    });
    logits.dispose();
  });

  fcTest.prop({ rows: fc.integer({ min: 1, max: 30 }), factor: fc.constantFrom(0.3, 1, 1.25), seed: fc.integer({ min: 0, max: 1000 }) }, { numRuns: 20 })(
    'capacity keeps at most C = ceil(real rows · factor / E) rows per expert, in row order, and never counts padding',
    ({ rows, factor, seed }) => {
      const choices = 3;
      tf.tidy(() => {
        const scores = tf.randomNormal<tf.Rank.R2>([rows, choices], 0, 1, 'float32', seed);
        const maskValues = Array.from({ length: rows }, (_, n) => (n % 4 === 3 ? 0 : 1));
        const slots = topKSlots(scores, tf.tensor1d(maskValues), { k: 1, weighting: 'probability', capacityFactor: factor, training: false });
        const real = maskValues.reduce<number>((s, m) => s + m, 0);
        const capacity = Math.ceil((real * factor) / choices - 1e-9);
        const ids = slots.expertIds.dataSync();
        const kept = slots.kept?.dataSync() ?? new Float32Array();
        const seen = new Map<number, number>();
        for (let n = 0; n < rows; n++) {
          if (maskValues[n] === 0) {
            expect(kept[n]).toBe(0);
            continue;
          }
          const e = ids[n] as number;
          const place = (seen.get(e) ?? 0) + 1;
          seen.set(e, place);
          expect(kept[n], `row ${n}`).toBe(place <= capacity ? 1 : 0);
        }
      });
    },
  );
});
