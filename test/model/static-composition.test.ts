// Static compositions of LoRA adapters on a tiny llama: the identities a user relies on when stacking,
// summing or averaging adapters, the bare base staying bit-identical, and parameter accounting.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { Transformer } from '../../src/base/transformer.js';
import { loadBaseModel } from '../../src/base/checkpoints/load-model.js';
import { listWeightTensors } from '../../src/base/weights.js';
import { ConfigError } from '../../src/errors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { adaptSite } from '../helpers/site-hooks.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { SHARED_MODELS_SKIP_NOTE, hasSharedModels, stories260kPath, tinyGpt2, tinyLlama } from '../helpers/tiny-models.js';

const ids = [
  [1, 5, 9, 3, 7],
  [0, 0, 1, 4, 2],
];
const mask = [
  [1, 1, 1, 1, 1],
  [0, 0, 1, 1, 1],
];

function logits(model: AdaptedModel, select: Parameters<AdaptedModel['forward']>[0]['select']): Float32Array {
  const out = model.forward({ ids, mask, select });
  const values = out.dataSync() as Float32Array;
  out.dispose();
  return values;
}

function baseLogits(base: Transformer): Float32Array {
  const out = base.forward({ ids, mask });
  const values = out.dataSync() as Float32Array;
  out.dispose();
  return values;
}

const lora = (name: string, extra: Record<string, unknown> = {}) => ({
  kind: 'lora',
  name,
  r: 4,
  alpha: 8,
  init: 'random',
  targets: { sites: 'all-linear' },
  ...extra,
});

describe.each([
  ['llama', tinyLlama],
  ['gpt2', tinyGpt2],
] as const)('static compositions on tiny %s', (_family, make) => {
  let base: Transformer;
  beforeAll(() => {
    base = make();
  });
  afterAll(() => base.dispose());

  test('a fresh (B = 0) LoRA leaves the output bit-identical to the base; select "base" is the base exactly', () => {
    const model = AdaptedModel.create(base, { adapters: [{ kind: 'lora', name: 'fresh', targets: { sites: 'all-linear' } }] });
    const expected = baseLogits(base);
    expect(logits(model, 'spec')).toEqual(expected);
    expect(logits(model, 'base')).toEqual(expected);
    model.dispose();
  });

  test('parallel equals the sum of deltas, average the weighted sum, stack of LoRAs the same as parallel', () => {
    const model = AdaptedModel.create(base, { seed: 3, adapters: [lora('a'), lora('b')] });
    const b0 = baseLogits(base);
    // LoRA deltas depend on each site's input only, so stacking LoRAs equals running them in parallel.
    const a = logits(model, { adapter: 'a' });
    expect(a).not.toEqual(b0);
    expect(logits(model, { adapter: 'b' })).not.toEqual(a);
    const parallel = logits(model, { combine: 'parallel', adapters: ['a', 'b'] });
    const stack = logits(model, { combine: 'stack', adapters: ['a', 'b'] });
    expectClose(stack, parallel, { rtol: 1e-5, atol: 1e-6 });
    const averageEqualToParallel = logits(model, { combine: 'average', adapters: ['a', 'b'], weights: [1, 1] });
    expectClose(averageEqualToParallel, parallel, { rtol: 1e-6, atol: 1e-7 });
    const onlyA = logits(model, { combine: 'average', adapters: ['a', 'b'], weights: [1, 0] });
    expectClose(onlyA, a, { rtol: 1e-6, atol: 1e-7 });
    const nothing = logits(model, { combine: 'average', adapters: ['a', 'b'], weights: [0, 0] });
    expectClose(nothing, b0, { rtol: 1e-6, atol: 1e-7 });
    model.dispose();
  });

  test('per-site: parallel adds both deltas, average weighs them (checked at one site with a single layer)', () => {
    const model = AdaptedModel.create(base, {
      seed: 5,
      adapters: [lora('a', { targets: { sites: ['attn.q'], layers: [0] } }), lora('b', { targets: { sites: ['attn.q'], layers: [0] } })],
    });
    const x = tf.randomNormal([6, base.config.dim], 0, 1, 'float32', 1) as tf.Tensor2D;
    const y = tf.randomNormal([6, base.config.dim], 0, 1, 'float32', 2) as tf.Tensor2D;
    const context = {
      training: false,
      forward: { batch: 1, tokens: 6, ids: [[1, 1, 1, 1, 1, 1]], mask: tf.ones([1, 6]) as tf.Tensor2D, pastLength: 0, cache: undefined, training: false },
    };
    const point = { kind: 'site-output', site: 'attn.q' } as const;
    const moduleA = model.adapters.get('a')?.module(0, point);
    const moduleB = model.adapters.get('b')?.module(0, point);
    if (moduleA?.role !== 'delta' || moduleB?.role !== 'delta') throw new Error('modules missing');
    const dA = moduleA.delta(x, y, context);
    const dB = moduleB.delta(x, y, context);
    const hooks = model.hooks({ select: { combine: 'average', adapters: ['a', 'b'], weights: [0.25, -2] } });
    hooks?.begin?.(context.forward);
    const adapted = adaptSite(hooks, base, 0, 'attn.q', x, y);
    const expected = tf.add(y, tf.add(tf.mul(dA, 0.25), tf.mul(dB, -2)));
    expectClose(adapted.dataSync(), expected.dataSync(), { rtol: 1e-5, atol: 1e-6 });
    tf.dispose([x, y, dA, dB, adapted, expected, context.forward.mask]);
    model.dispose();
  });

  test('training-free use never touches base weights, and nothing leaks', () => {
    const before = listWeightTensors(base.weights).map((t) => t.dataSync().slice());
    const start = tf.memory().numTensors;
    const model = AdaptedModel.create(base, { adapters: [lora('a'), lora('b')] });
    for (let i = 0; i < 3; i++) logits(model, { combine: 'stack', adapters: ['a', 'b'] });
    model.generate([[1, 2], [3]], { maxNewTokens: 4, temperature: 0, eosId: null });
    model.dispose();
    expect(tf.memory().numTensors).toBe(start);
    listWeightTensors(base.weights).forEach((t, i) => expect(t.dataSync()).toEqual(before[i]));
  });

  test('unknown adapters, duplicate names, unknown sites and layers are ConfigErrors that list what exists', () => {
    expect(() => AdaptedModel.create(base, { adapters: [lora('a'), lora('a')] })).toThrow(/two adapters are named "a"/);
    expect(() => AdaptedModel.create(base, { adapters: [lora('a')], composition: 'b' })).toThrow(/unknown adapter "b".*Known adapters: a/s);
    expect(() => AdaptedModel.create(base, { adapters: [lora('a', { targets: { sites: ['attn.x'] } })] })).toThrow(ConfigError);
    expect(() => AdaptedModel.create(base, { adapters: [lora('a', { targets: { sites: ['attn.x'] } })] })).toThrow(/Available sites: attn.q/);
    expect(() => AdaptedModel.create(base, { adapters: [lora('a', { targets: { layers: [99] } })] })).toThrow(/layer 99 does not exist/);
    expect(() => AdaptedModel.create(base, { adapters: [lora('a', { r: 0 })] })).toThrow(/spec.adapters\[0\].r/);
    const model = AdaptedModel.create(base, { adapters: [lora('a')] });
    expect(() => model.forward({ ids, select: { composition: { kind: 'route', experts: ['a'], router: { kind: 'top-k' } } } })).toThrow(
      /only use routes the model spec defines/,
    );
    model.dispose();
  });
});

describe(`parameter accounting on stories260K${SHARED_MODELS_SKIP_NOTE}`, () => {
  test.skipIf(!hasSharedModels)('LoRA r=8 on q and v: trainable count and fraction are exact', async () => {
    const { model: base } = await loadBaseModel(stories260kPath);
    const model = AdaptedModel.create(base, { adapters: [{ kind: 'lora', name: 'qv', r: 8, targets: { sites: ['attn.q', 'attn.v'] } }] });
    const report = model.parameterReport();
    // Per layer: q A[8,64] + B[64,8] = 1024; v A[8,64] + B[32,8] = 768 (4 kv heads × 8). Five layers.
    expect(report.trainable).toBe(5 * (1024 + 768));
    // Frozen: embedding 512·64 + 5 × (2·64 norms + 4096 + 2048 + 2048 + 4096 + 3 × 172·64) + final norm 64.
    expect(report.frozen).toBe(512 * 64 + 5 * (128 + 4096 + 2048 + 2048 + 4096 + 3 * 172 * 64) + 64);
    expect(report.trainableFraction).toBeCloseTo(8960 / (8960 + 260032), 12);
    expect(report.adapters[0]).toMatchObject({ name: 'qv', kind: 'lora', modules: 10, trainable: 8960, bytes: 8960 * 4 });
    model.dispose();
    base.dispose();
  });
});

describe('stack applies modules one after the other', () => {
  test('two bottleneck adapters stacked at a block output equal applying them by hand', () => {
    const base = tinyLlama();
    const bottleneck = (name: string) => ({ kind: 'bottleneck', name, init: 'random', activation: 'tanh', placement: 'pfeiffer', targets: { layers: [0] } });
    const model = AdaptedModel.create(base, { seed: 8, adapters: [bottleneck('first'), bottleneck('second')] });
    const h = tf.randomNormal([5, base.config.dim], 0, 1, 'float32', 4) as tf.Tensor2D;
    const forward = { batch: 1, tokens: 5, ids: [[1, 2, 3, 4, 5]], mask: tf.ones([1, 5]) as tf.Tensor2D, pastLength: 0, cache: undefined, training: false };
    const context = { training: false, forward };
    const point = { kind: 'block-output', block: 'mlp' } as const;
    const first = model.adapters.get('first')?.module(0, point);
    const second = model.adapters.get('second')?.module(0, point);
    if (first?.role !== 'delta' || second?.role !== 'delta') throw new Error('modules missing');
    const h1 = tf.add(h, first.delta(h, h, context)) as tf.Tensor2D;
    const byHand = tf.add(h1, second.delta(h1, h1, context)) as tf.Tensor2D;
    const hooks = model.hooks({ select: { combine: 'stack', adapters: ['first', 'second'] } });
    hooks?.begin?.(forward);
    const stacked = hooks?.blockOutput?.(0, 'mlp', h) as tf.Tensor2D;
    expectClose(stacked.dataSync(), byHand.dataSync(), { rtol: 1e-6, atol: 1e-7 });
    // Order matters for non-linear modules: the reverse stack differs.
    const reversed = model.hooks({ select: { combine: 'stack', adapters: ['second', 'first'] } });
    reversed?.begin?.(forward);
    const other = reversed?.blockOutput?.(0, 'mlp', h) as tf.Tensor2D;
    expect(Array.from(other.dataSync())).not.toEqual(Array.from(stacked.dataSync()));
    tf.dispose([h, h1, byHand, stacked, other, forward.mask]);
    model.dispose();
    base.dispose();
  });
});
