// The routed suite on webgpu against wasm: the same seeded models built on each backend give the same
// forward logits (≤ 1e-4 relative) for routed LoRA, static compositions, prefix and (IA)³ on llama and gpt2,
// the same greedy ids from generateAsync (KV cache) and from the runtime's mixed batches, and the
// synchronous paths fail on webgpu with a SyncReadError naming the async alternative. Skips (saying why)
// where no WebGPU adapter exists; on machines without a GPU CI installs lavapipe (software Vulkan).
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { generateAsync } from '../../src/base/generate.js';
import type { Transformer } from '../../src/base/transformer.js';
import { SyncReadError } from '../../src/errors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import type { RoutingTraceEntry } from '../../src/routing/trace.js';
import { RoutedRuntime } from '../../src/runtime/runtime.js';
import type { Selection } from '../../src/runtime/types.js';
import { Trainer } from '../../src/train/trainer.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { tinyGpt2, tinyLlama } from '../helpers/tiny-models.js';
import { WEBGPU_SKIP_NOTE, hasWebGpu, onBackend } from '../helpers/webgpu.js';
import { makeFixture, PREFIX_SPEC, type RuntimeFixture } from '../runtime/fixtures.js';

const routers = builtinRouters();
/** ≤ 1e-4 relative (plus 1e-5 absolute for logits near zero). */
const TOLERANCE = { rtol: 1e-4, atol: 1e-5 };
const ids = [
  [1, 5, 9, 3, 7, 4],
  [0, 0, 1, 4, 2, 8],
];
const mask = [
  [1, 1, 1, 1, 1, 1],
  [0, 0, 1, 1, 1, 1],
];

const lora = (name: string, extra: Record<string, unknown> = {}) => ({
  kind: 'lora',
  name,
  r: 4,
  alpha: 8,
  init: 'random',
  targets: { sites: 'all-linear' },
  ...extra,
});

/** Specs whose forward logits must agree across backends. */
const SPECS: Readonly<Record<string, unknown>> = {
  'routed LoRA, top-2 of 4 experts + null expert (fused group path)': {
    seed: 5,
    adapters: [lora('e0'), lora('e1', { r: 2 }), lora('e2'), lora('e3', { r: 8 })],
    composition: { kind: 'route', experts: ['e0', 'e1', 'e2', 'e3'], router: { kind: 'top-k', k: 2 }, nullExpert: true },
  },
  'routed LoRA, top-1 (switch-like k = 1)': {
    seed: 6,
    adapters: [lora('e0'), lora('e1')],
    composition: { kind: 'route', experts: ['e0', 'e1'], router: { kind: 'top-k', k: 1 } },
  },
  'static composition: stack, parallel and average of LoRAs': {
    seed: 7,
    adapters: [lora('a'), lora('b', { r: 2 }), lora('c'), lora('d')],
    composition: {
      kind: 'stack',
      children: ['a', { kind: 'parallel', children: ['b'] }, { kind: 'average', children: ['d', 'c'], weights: [0.25, 0.75] }],
    },
  },
  'prefix and LoRA': PREFIX_SPEC,
  '(IA)³ (vectors moved off their initial ones)': { seed: 9, adapters: [{ kind: 'ia3', name: 'i', targets: { sites: ['attn.k', 'attn.v', 'mlp.down'] } }] },
};

const FAMILIES = [
  ['llama', tinyLlama],
  ['gpt2', tinyGpt2],
] as const;

/** Builds base + model on the current backend, runs fn, frees both. */
async function withModel<T>(make: () => Transformer, spec: unknown, fn: (model: AdaptedModel, base: Transformer) => Promise<T>): Promise<T> {
  const base = make();
  const model = AdaptedModel.create(base, spec, { routers });
  // Move every variable a little (seeded, generated on the host: the same on each backend), so fresh
  // adapters such as (IA)³'s ones are not trivially the identity.
  for (const v of model.variables()) tf.tidy(() => v.assign(tf.add(v, tf.randomUniform(v.shape, -0.2, 0.2, 'float32', 42))));
  try {
    return await fn(model, base);
  } finally {
    model.dispose();
    base.dispose();
  }
}

async function logitsOf(model: AdaptedModel): Promise<Float32Array> {
  const out = model.forward({ ids, mask });
  const values = (await out.data()) as Float32Array;
  out.dispose();
  return values;
}

describe.skipIf(!hasWebGpu)(`webgpu against wasm${WEBGPU_SKIP_NOTE}`, () => {
  describe.each(FAMILIES)('tiny %s', (_family, make) => {
    test.each(Object.entries(SPECS))('forward logits agree ≤ 1e-4 relative: %s', async (_name, spec) => {
      const expected = await onBackend('wasm', () => withModel(make, spec, logitsOf));
      const actual = await onBackend('webgpu', () => withModel(make, spec, logitsOf));
      expectClose(actual, expected, TOLERANCE);
    });

    test('generateAsync (KV cache, greedy) gives the same ids; on webgpu the sync generate throws SyncReadError naming generateAsync', async () => {
      const spec = SPECS['routed LoRA, top-2 of 4 experts + null expert (fused group path)'];
      const prompts = [
        [1, 5, 9],
        [1, 7],
      ];
      const options = { maxNewTokens: 12, temperature: 0, eosId: null };
      const expected = await onBackend('wasm', () => withModel(make, spec, async (model) => model.generateAsync(prompts, options)));
      expect(await onBackend('wasm', () => withModel(make, spec, async (model) => model.generate(prompts, options)))).toEqual(expected);
      const actual = await onBackend('webgpu', () =>
        withModel(make, spec, async (model, base) => {
          expect(() => model.generate(prompts, options)).toThrow(SyncReadError);
          expect(() => model.generate(prompts, options)).toThrow(/generateAsync/);
          expect(await generateAsync(base, prompts, options)).toHaveLength(2); // the bare base too
          return model.generateAsync(prompts, options);
        }),
      );
      expect(actual).toEqual(expected);
    });
  });

  test('generateAsync with a routing trace: on webgpu the trace is read after each step and equals the trace of wasm', async () => {
    const spec = SPECS['routed LoRA, top-2 of 4 experts + null expert (fused group path)'];
    const traced = (backend: 'wasm' | 'webgpu') =>
      onBackend(backend, () =>
        withModel(tinyLlama, spec, async (model) => {
          const options = { maxNewTokens: 5, temperature: 0, eosId: null };
          await model.generateAsync([[1, 5, 9]], { ...options, routing: { trace: [] } }); // warm: cached bank and router operands are built once
          const trace: RoutingTraceEntry[] = [];
          const before = tf.memory().numTensors;
          const out = await model.generateAsync([[1, 5, 9]], { ...options, routing: { trace } });
          expect(tf.memory().numTensors).toBe(before); // the deferred trace reads are freed
          return { out, trace };
        }),
      );
    const expected = await traced('wasm');
    const actual = await traced('webgpu');
    expect(actual.out).toEqual(expected.out);
    expect(expected.trace.length).toBeGreaterThan(0);
    expect(actual.trace.map(({ weights, ...rest }) => rest)).toEqual(expected.trace.map(({ weights, ...rest }) => rest));
    actual.trace.forEach((entry, i) =>
      expectClose(Float32Array.from(entry.weights), Float32Array.from(expected.trace[i]?.weights ?? []), { rtol: 1e-4, atol: 1e-6 }),
    );
  });

  test('no tensor or GPU-buffer leaks over 200 generated tokens on webgpu (tf.memory())', async () => {
    const spec = SPECS['routed LoRA, top-2 of 4 experts + null expert (fused group path)'];
    await onBackend('webgpu', () =>
      withModel(
        () => tinyLlama({ maxSeqLen: 256 }),
        spec,
        async (model) => {
          const options = { maxNewTokens: 8, temperature: 0, eosId: null };
          await model.generateAsync([[1, 5]], options); // warm: cached bank operands and router operands are built once
          const before = tf.memory() as tf.MemoryInfo & { numBytesInGPU?: number };
          const out = await model.generateAsync([[1, 5]], { ...options, maxNewTokens: 200 });
          expect(out[0]).toHaveLength(202);
          const after = tf.memory() as tf.MemoryInfo & { numBytesInGPU?: number };
          expect(after.numTensors).toBe(before.numTensors);
          expect(after.numDataBuffers).toBe(before.numDataBuffers);
          expect(after.numBytes).toBe(before.numBytes);
          if (before.numBytesInGPU !== undefined) expect(after.numBytesInGPU).toBe(before.numBytesInGPU);
        },
      ),
    );
  });

  test('a training step on webgpu (stepAsync) gives the loss, gradient norm and updated weights of wasm; the sync step throws SyncReadError naming stepAsync', async () => {
    const spec = SPECS['routed LoRA, top-2 of 4 experts + null expert (fused group path)'];
    const row = [1, 5, 9, 3, 7];
    const batch = {
      ids: [row, [2, 6, 4, 8, 1]],
      mask: [row.map(() => 1), row.map(() => 1)],
      lossMask: [row.map((_, i) => (i === 0 ? 0 : 1)), row.map((_, i) => (i === 0 ? 0 : 1))],
    };
    const train = (backend: 'wasm' | 'webgpu') =>
      onBackend(backend, () =>
        withModel(tinyLlama, spec, async (model) => {
          const trainer = new Trainer(model, { optimizer: { lr: 1e-2 }, maxGradNorm: 1 });
          try {
            if (backend === 'webgpu') {
              expect(() => trainer.step(batch)).toThrow(SyncReadError);
              expect(() => trainer.step(batch)).toThrow(/stepAsync/);
            }
            const before = tf.memory().numTensors;
            const report = await trainer.stepAsync(batch);
            expect(tf.memory().numTensors).toBe(before);
            const weights = await Promise.all(model.variables().map(async (v) => Float32Array.from(await v.data())));
            return { loss: report.loss, gradNorm: report.gradNorm ?? Number.NaN, applied: report.applied, weights };
          } finally {
            trainer.dispose();
          }
        }),
      );
    const expected = await train('wasm');
    const actual = await train('webgpu');
    expect(actual.applied).toBe(true);
    expect(expected.applied).toBe(true);
    expect(Math.abs(actual.loss - expected.loss)).toBeLessThanOrEqual(1e-4 * Math.abs(expected.loss));
    expect(Math.abs(actual.gradNorm - expected.gradNorm)).toBeLessThanOrEqual(1e-3 * expected.gradNorm);
    expected.weights.forEach((w, i) => expectClose(actual.weights[i] as Float32Array, w, { rtol: 1e-3, atol: 1e-5 }));
  });

  describe("the runtime's mixed batches", () => {
    let fx: RuntimeFixture;
    beforeAll(async () => {
      fx = await onBackend('wasm', () => makeFixture()); // directories written on wasm (saving reads synchronously)
    });
    afterAll(async () => {
      await onBackend('wasm', () => fx.dispose());
    });

    async function serve(): Promise<{ logits: Float32Array[]; tokens: number[][] }> {
      const base = tinyLlama({ maxSeqLen: 160 });
      const runtime = RoutedRuntime.create({ base, routers, batching: { windowMs: 20, maxBatchSize: 16 } });
      try {
        await runtime.load('a', { kind: 'peft', dir: fx.peft.a });
        await runtime.load('b', { kind: 'peft', dir: fx.peft.b });
        await runtime.load('moe', { kind: 'routed', dir: fx.routed });
        const selects: Selection[] = ['base', { adapter: 'a' }, { adapter: 'b' }, { combine: 'average', adapters: ['a', 'b'] }, { routed: 'moe' }];
        const forwards = selects.map((select, i) => runtime.forward([[1, 4 + i, 9, 3]], { select }));
        const generations = selects.map((select, i) => runtime.generate([1, 6 + i, 2 + i], { select, maxNewTokens: 6, temperature: 0, eosId: null }));
        const logits = (await Promise.all(forwards)).map((f) => Float32Array.from(f.logits as ArrayLike<number>));
        const tokens = (await Promise.all(generations)).map((g) => g.tokens);
        return { logits, tokens };
      } finally {
        runtime.dispose();
        await runtime.idle();
        base.dispose();
      }
    }

    test('forwards and greedy generations of different targets sharing passes agree with wasm', async () => {
      const expected = await onBackend('wasm', serve);
      const actual = await onBackend('webgpu', serve);
      expect(actual.tokens).toEqual(expected.tokens);
      actual.logits.forEach((l, i) => expectClose(l, expected.logits[i] as Float32Array, TOLERANCE));
    });
  });
});
