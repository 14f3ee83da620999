// The WebGPU routed-site kernel (src/routing/webgpu-routed-site.ts: router scores, top-k gating, the chosen
// LoRA experts and the add to the frozen output in one dispatch per site) against its reference, the same
// computation in tfjs ops on the same backend (router matmul, gating.ts topKSlots, the LoRA bank's mix, add),
// over random shapes (fast-check): k = 1…4, E up to 64, ranks that differ per expert, a null expert, masked
// rows, temperatures other than 1, 1–3 sites. Router inputs and weights are multiples of 1/4, so scores are
// exact in any summation order and ties (broken towards the lower index) must agree too.
import { fc } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { registerLoraMixKernel, unregisterLoraMixKernel } from '../../src/adapters/lora/bank.js';
import { webgpuLoraMix } from '../../src/adapters/lora/webgpu-mix.js';
import { registerTopKSlotsKernel, topKSlots, unregisterTopKSlotsKernel } from '../../src/routing/gating.js';
import type { LinearTopK } from '../../src/routing/router.js';
import { webgpuTopKSlots } from '../../src/routing/webgpu-gating.js';
import { webgpuRoutedSiteOutputs } from '../../src/routing/webgpu-routed-site.js';
import { randomLoraBank, seededValues } from '../helpers/lora-banks.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { WEBGPU_SKIP_NOTE, countDispatches, hasWebGpu, onBackend } from '../helpers/webgpu.js';

interface Case {
  readonly rows: number;
  readonly inputWidth: number;
  readonly outputs: readonly number[]; // O_g per site
  readonly ranks: readonly number[]; // per choice; 0: the null expert
  readonly k: number;
  readonly temperature: number;
  readonly mask: readonly number[] | undefined;
  readonly seed: number;
}

const caseArb: fc.Arbitrary<Case> = fc
  .record({
    rows: fc.integer({ min: 1, max: 40 }),
    inputWidth: fc.integer({ min: 1, max: 40 }),
    outputs: fc.array(fc.integer({ min: 1, max: 70 }), { minLength: 1, maxLength: 3 }),
    ranks: fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 63 }),
    nullExpert: fc.boolean(),
    kWanted: fc.integer({ min: 1, max: 4 }),
    temperature: fc.constantFrom(1, 0.5, 2),
    masked: fc.boolean(),
    seed: fc.integer({ min: 0, max: 10_000 }),
  })
  .chain((c) => {
    const ranks = c.nullExpert ? [...c.ranks, 0] : c.ranks;
    return fc.record({
      rows: fc.constant(c.rows),
      inputWidth: fc.constant(c.inputWidth),
      outputs: fc.constant(c.outputs),
      ranks: fc.constant(ranks),
      k: fc.constant(Math.min(c.kWanted, ranks.length)),
      temperature: fc.constant(c.temperature),
      mask: c.masked ? fc.array(fc.constantFrom(0, 1), { minLength: c.rows, maxLength: c.rows }) : fc.constant(undefined),
      seed: fc.constant(c.seed),
    });
  });

/** A bank of one LoRA per expert at every site, a linear gate per site, the router input and frozen outputs. */
function build(c: Case) {
  const E = c.ranks.length;
  const { bank, dispose: disposeBank } = randomLoraBank(c.outputs, c.ranks, c.inputWidth, c.seed);
  const gates: LinearTopK[] = c.outputs.map((_, g) => ({
    gate: tf.tensor2d(seededValues(c.inputWidth * E, c.seed + 31 * g + 5, true), [c.inputWidth, E]), // [I, E]
    k: c.k,
    temperature: c.temperature,
  }));
  const x = tf.tensor2d(seededValues(c.rows * c.inputWidth, c.seed + 7, true), [c.rows, c.inputWidth]); // [N, I]
  const ys = c.outputs.map((out, g) => tf.tensor2d(seededValues(c.rows * out, c.seed + 11 * g + 2), [c.rows, out])); // G × [N, O_g]
  const mask = c.mask === undefined ? undefined : tf.tensor1d([...c.mask]); // [N]
  return {
    bank,
    gates,
    x,
    ys,
    mask,
    dispose: () => {
      disposeBank();
      tf.dispose([x, ...ys, ...gates.map((g) => g.gate), ...(mask === undefined ? [] : [mask])]);
    },
  };
}

/** The same outputs in tfjs ops: router matmuls, topKSlots on [N·G, E], the bank's mix, the add. */
function reference(c: Case, parts: ReturnType<typeof build>): tf.Tensor2D[] {
  const { bank, gates, x, ys, mask } = parts;
  const G = c.outputs.length;
  return tf.tidy(() => {
    const raw = tf.concat(
      gates.map((g) => tf.matMul(x, g.gate)),
      1,
    ); // [N, G·E]
    const scores = c.temperature === 1 ? raw : tf.div<tf.Tensor2D>(raw, c.temperature); // [N, G·E]
    const groupMask = mask === undefined ? undefined : tf.reshape<tf.Rank.R1>(tf.tile(tf.reshape(mask, [c.rows, 1]), [1, G]), [c.rows * G]); // [N·G]
    const slots = topKSlots(tf.reshape<tf.Rank.R2>(scores, [c.rows * G, c.ranks.length]), groupMask, { k: c.k, training: false }); // [N·G, K]
    const deltas = bank.mix(x, { kind: 'slots', ids: slots.expertIds, weights: slots.weights }, { training: false }); // G × [N, O_g]
    return ys.map((y, g) => tf.keep(tf.add<tf.Tensor2D>(y, deltas[g] as tf.Tensor2D))); // [N, O_g]
  });
}

async function read(tensors: readonly tf.Tensor[]): Promise<Float32Array[]> {
  const out = await Promise.all(tensors.map(async (t) => (await t.data()) as Float32Array));
  tf.dispose([...tensors]);
  return out;
}

describe.skipIf(!hasWebGpu)(`routed-site WGSL kernel on webgpu${WEBGPU_SKIP_NOTE}`, () => {
  test('equals router matmul + topKSlots + bank mix + add in tfjs ops (k = 1…4, E ≤ 64, ranks per expert, null expert, masked rows, τ), one dispatch per site', async () => {
    await onBackend('webgpu', async () => {
      const start = tf.memory().numTensors;
      await fc.assert(
        fc.asyncProperty(caseArb, async (c) => {
          const parts = build(c);
          try {
            unregisterTopKSlotsKernel('webgpu');
            unregisterLoraMixKernel('webgpu');
            const expected = await read(reference(c, parts));
            registerTopKSlotsKernel('webgpu', webgpuTopKSlots);
            registerLoraMixKernel('webgpu', webgpuLoraMix);
            const {
              result: actual,
              total,
              byKey,
            } = await countDispatches(async () => {
              const outputs = tf.tidy(() => webgpuRoutedSiteOutputs(parts.gates, parts.bank, parts.x, parts.ys, parts.mask)?.map((t) => tf.keep(t)));
              expect(outputs).toBeDefined();
              return read(outputs ?? []);
            });
            expect(byKey.get('routedSite')).toBe(c.outputs.length);
            expect(total).toBe(c.outputs.length); // nothing else (the bank's operands were built by the reference)
            actual.forEach((a, g) => expectClose(a, expected[g] as Float32Array, { rtol: 1e-4, atol: 1e-5, label: `site ${g}` }));
          } finally {
            registerTopKSlotsKernel('webgpu', webgpuTopKSlots);
            registerLoraMixKernel('webgpu', webgpuLoraMix);
            parts.dispose();
          }
        }),
        { numRuns: 8, seed: 12 },
      );
      expect(tf.memory().numTensors).toBe(start);
    });
  }, 300_000);

  test('hands back what it does not cover: another backend, frozen outputs of the wrong width', async () => {
    const c: Case = { rows: 3, inputWidth: 8, outputs: [5, 6], ranks: [2, 3, 0], k: 2, temperature: 1, mask: undefined, seed: 1 };
    await onBackend('wasm', async () => {
      const parts = build(c);
      try {
        expect(webgpuRoutedSiteOutputs(parts.gates, parts.bank, parts.x, parts.ys, undefined)).toBeUndefined();
      } finally {
        parts.dispose();
      }
    });
    await onBackend('webgpu', async () => {
      const parts = build(c);
      try {
        const swapped = [parts.ys[1], parts.ys[0]] as tf.Tensor2D[];
        expect(tf.tidy(() => webgpuRoutedSiteOutputs(parts.gates, parts.bank, parts.x, swapped, undefined))).toBeUndefined();
      } finally {
        parts.dispose();
      }
    });
  });
});
