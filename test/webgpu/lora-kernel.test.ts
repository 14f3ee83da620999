// The WebGPU routed-LoRA kernel (src/adapters/lora/webgpu-mix.ts) against its reference, the bank's tfjs ops
// on the same backend, over random shapes (fast-check): k = 1 up to 4, E up to 64, ranks that differ per
// expert, a null expert (a choice with no terms) and rows whose slots carry zero weight, 1–3 sites with
// different output widths, rows on both sides of the reference's gather/dense threshold. Also: the
// kernel really runs (one dispatch per site), hands back what it does not cover, and leaks nothing.
import { fc } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { registerLoraMixKernel, unregisterLoraMixKernel } from '../../src/adapters/lora/bank.js';
import { choiceRuns, webgpuLoraMix } from '../../src/adapters/lora/webgpu-mix.js';
import { randomLoraBank, seededValues } from '../helpers/lora-banks.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { WEBGPU_SKIP_NOTE, countDispatches, hasWebGpu, onBackend } from '../helpers/webgpu.js';

const CLOSE = { rtol: 1e-4, atol: 1e-5 };

interface Case {
  readonly rows: number;
  readonly inputWidth: number;
  readonly outputs: readonly number[]; // O_g per site
  readonly ranks: readonly number[]; // per expert; 0: the null expert (no terms)
  readonly k: number;
  readonly zeroRows: readonly boolean[];
  readonly seed: number;
}

const caseArb: fc.Arbitrary<Case> = fc
  .record({
    rows: fc.integer({ min: 1, max: 70 }),
    inputWidth: fc.integer({ min: 1, max: 40 }),
    outputs: fc.array(fc.integer({ min: 1, max: 70 }), { minLength: 1, maxLength: 3 }),
    ranks: fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 64 }),
    nullExpert: fc.boolean(),
    kWanted: fc.integer({ min: 1, max: 4 }),
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
      zeroRows: fc.array(fc.boolean(), { minLength: c.rows, maxLength: c.rows }),
      seed: fc.constant(c.seed),
    });
  });

/** A bank of one LoRA per expert (rank per expert, shared by every site), slots with distinct ids per row. */
function build(c: Case) {
  const { bank, dispose: disposeBank } = randomLoraBank(c.outputs, c.ranks, c.inputWidth, c.seed);
  const slotRows = c.rows * c.outputs.length;
  const ids = new Int32Array(slotRows * c.k);
  const weights = new Float32Array(slotRows * c.k);
  const noise = seededValues(slotRows * c.ranks.length, c.seed + 99);
  for (let r = 0; r < slotRows; r++) {
    const order = c.ranks.map((_, e) => e).sort((p, q) => (noise[r * c.ranks.length + q] as number) - (noise[r * c.ranks.length + p] as number));
    for (let slot = 0; slot < c.k; slot++) {
      ids[r * c.k + slot] = order[slot] as number;
      weights[r * c.k + slot] = c.zeroRows[Math.floor(r / c.outputs.length)] ? 0 : Math.fround(0.1 + Math.abs(noise[r * c.ranks.length + slot] as number));
    }
  }
  const x = tf.tensor2d(seededValues(c.rows * c.inputWidth, c.seed + 7), [c.rows, c.inputWidth]);
  const gates = { kind: 'slots' as const, ids: tf.tensor2d(ids, [slotRows, c.k], 'int32'), weights: tf.tensor2d(weights, [slotRows, c.k]) };
  return {
    bank,
    x,
    gates,
    dispose: () => {
      disposeBank();
      tf.dispose([x, gates.ids, gates.weights]);
    },
  };
}

async function read(tensors: readonly tf.Tensor[]): Promise<Float32Array[]> {
  const out = await Promise.all(tensors.map(async (t) => (await t.data()) as Float32Array));
  tf.dispose([...tensors]);
  return out;
}

/** Counts the dispatches of the routed-LoRA program while fn runs. */
async function countKernelDispatches<T>(fn: () => Promise<T>): Promise<{ result: T; dispatches: number }> {
  const backend = tf.backend() as unknown as { runWebGPUProgram: (p: { shaderKey: string }, ...rest: unknown[]) => unknown };
  const original = backend.runWebGPUProgram;
  let dispatches = 0;
  backend.runWebGPUProgram = function (program, ...rest) {
    if (program.shaderKey.startsWith('routedLora') || program.shaderKey.startsWith('denseLora')) dispatches++;
    return original.call(this, program, ...rest);
  };
  try {
    return { result: await fn(), dispatches };
  } finally {
    backend.runWebGPUProgram = original;
  }
}

test('choiceRuns: one run per choice (start, rank, factor), none for a choice without columns, undefined for two runs', () => {
  expect(choiceRuns([2, 2, 0, 0, 0, 0, 0, 3, 3, 3], 2, 5)).toEqual([
    { start: 0, rank: 2, factor: 2 },
    { start: 2, rank: 3, factor: 3 },
  ]);
  expect(choiceRuns([0, 0, 1, 1], 2, 2)).toEqual([
    { start: 0, rank: 0, factor: 0 },
    { start: 0, rank: 2, factor: 1 },
  ]);
  expect(choiceRuns([1, 0, 1], 1, 3)).toBeUndefined();
});

describe.skipIf(!hasWebGpu)(`routed-LoRA WGSL kernel on webgpu${WEBGPU_SKIP_NOTE}`, () => {
  test('equals the tfjs-ops reference on random shapes (k = 1…4, E ≤ 64, ranks per expert, null expert, zero-weight rows)', async () => {
    await onBackend('webgpu', async () => {
      const start = tf.memory().numTensors;
      await fc.assert(
        fc.asyncProperty(caseArb, async (c) => {
          const { bank, x, gates, dispose } = build(c);
          const t0 = performance.now();
          try {
            unregisterLoraMixKernel('webgpu');
            const expected = await read(tf.tidy(() => [...bank.mix(x, gates, { training: false })].map((t) => tf.keep(t))));
            registerLoraMixKernel('webgpu', webgpuLoraMix);
            const { result: actual, dispatches } = await countKernelDispatches(() =>
              read(tf.tidy(() => [...bank.mix(x, gates, { training: false })].map((t) => tf.keep(t)))),
            );
            expect(dispatches).toBe(c.outputs.length); // one per site
            actual.forEach((a, g) => expectClose(a, expected[g] as Float32Array, { ...CLOSE, label: `site ${g}` }));
            if (process.env.KERNEL_TEST_TIMES) console.log(JSON.stringify(c).slice(0, 120), Math.round(performance.now() - t0), 'ms');
          } finally {
            registerLoraMixKernel('webgpu', webgpuLoraMix);
            dispose();
          }
        }),
        {
          numRuns: 25,
          seed: 12,
          examples: [
            // decode: one row, 64 experts + the null expert, k = 1
            [{ rows: 1, inputWidth: 32, outputs: [48], ranks: [...Array.from({ length: 64 }, (_, e) => 1 + (e % 8)), 0], k: 1, zeroRows: [false], seed: 5 }],
            // a prefill of 70 rows over 3 sites, 64 experts, k = 4, some rows zero-weighted
            [
              {
                rows: 70,
                inputWidth: 24,
                outputs: [40, 16, 16],
                ranks: Array.from({ length: 64 }, (_, e) => 2 + (e % 5)),
                k: 4,
                zeroRows: Array.from({ length: 70 }, (_, n) => n % 9 === 0),
                seed: 8,
              },
            ],
          ],
        },
      );
      expect(tf.memory().numTensors).toBe(start);
    });
  }, 300_000); // lavapipe compiles each new shape's pipelines on the CPU

  test('dense / membership gates (mixed-adapter batches): the variant equals the reference, shared and per-site gates, rows with no adapter', async () => {
    await onBackend('webgpu', async () => {
      const start = tf.memory().numTensors;
      await fc.assert(
        fc.asyncProperty(caseArb, fc.boolean(), fc.boolean(), async (c, membership, perSite) => {
          const { bank, x, dispose } = build(c);
          const E = c.ranks.length;
          const noise = seededValues(c.rows * E * c.outputs.length, c.seed + 5);
          const gateRows = (g: number) =>
            Array.from({ length: c.rows * E }, (_, i) => {
              const n = Math.floor(i / E);
              const e = i % E;
              if (c.zeroRows[n]) return 0; // a row of no adapter (the base's rows in a mixed batch)
              if (membership) return e === (n + g) % E ? 1 : 0; // one adapter per row
              const v = noise[g * c.rows * E + i] as number;
              return Math.abs(v) < 0.4 ? 0 : v; // sparse dense gates
            });
          const tensors = Array.from({ length: perSite ? c.outputs.length : 1 }, (_, g) => tf.tensor2d(gateRows(g), [c.rows, E]));
          const gates = { kind: 'dense' as const, gates: perSite ? tensors : (tensors[0] as tf.Tensor2D) };
          try {
            unregisterLoraMixKernel('webgpu');
            const expected = await read(tf.tidy(() => [...bank.mix(x, gates, { training: false })].map((t) => tf.keep(t))));
            registerLoraMixKernel('webgpu', webgpuLoraMix);
            const { result: actual, byKey } = await countDispatches(() =>
              read(tf.tidy(() => [...bank.mix(x, gates, { training: false })].map((t) => tf.keep(t)))),
            );
            expect(byKey.get('denseLora')).toBe(c.outputs.length);
            actual.forEach((a, g) => expectClose(a, expected[g] as Float32Array, { ...CLOSE, label: `site ${g}` }));
          } finally {
            registerLoraMixKernel('webgpu', webgpuLoraMix);
            tf.dispose(tensors);
            dispose();
          }
        }),
        { numRuns: 20, seed: 21 },
      );
      expect(tf.memory().numTensors).toBe(start);
    });
  }, 300_000);

  test('membership gates from a cast one-hot (tfjs-webgpu keeps the int32 buffer under a float32 tensor) still equal the reference', async () => {
    await onBackend('webgpu', async () => {
      const c: Case = { rows: 5, inputWidth: 7, outputs: [9, 4], ranks: [2, 3, 1], k: 1, zeroRows: [false, false, false, false, false], seed: 4 };
      const { bank, x, dispose } = build(c);
      const membership = tf.tidy(() => tf.oneHot(tf.tensor1d([0, 1, 2, 1, 0], 'int32'), 3).toFloat()) as tf.Tensor2D;
      try {
        const gates = { kind: 'dense' as const, gates: membership };
        unregisterLoraMixKernel('webgpu');
        const expected = await read(tf.tidy(() => [...bank.mix(x, gates, { training: false })].map((t) => tf.keep(t))));
        registerLoraMixKernel('webgpu', webgpuLoraMix);
        const actual = await read(tf.tidy(() => [...bank.mix(x, gates, { training: false })].map((t) => tf.keep(t))));
        actual.forEach((a, g) => expectClose(a, expected[g] as Float32Array, { ...CLOSE, label: `site ${g}` }));
      } finally {
        registerLoraMixKernel('webgpu', webgpuLoraMix);
        membership.dispose();
        dispose();
      }
    });
  });

  test('hands back to the reference what it does not cover: ones gates and training (which refuses slot gates)', async () => {
    await onBackend('webgpu', async () => {
      const c: Case = { rows: 3, inputWidth: 5, outputs: [4], ranks: [2, 3], k: 1, zeroRows: [false, false, false], seed: 1 };
      const { bank, x, gates, dispose } = build(c);
      try {
        const { dispatches } = await countKernelDispatches(async () => {
          await read(tf.tidy(() => [...bank.mix(x, { kind: 'ones' }, { training: false })].map((t) => tf.keep(t))));
          return read(tf.tidy(() => [...bank.mix(x, { kind: 'ones' }, { training: true })].map((t) => tf.keep(t))));
        });
        expect(dispatches).toBe(0);
        // Slot gates are an inference shortcut: a training mix refuses them by name (training uses dense gates).
        expect(() => tf.tidy(() => [...bank.mix(x, gates, { training: true })])).toThrow(/training mix takes 'ones' or 'dense' gates, not 'slots'/);
      } finally {
        dispose();
      }
    });
  });
});
