// Prefix tuning (Li & Liang 2021): config defaults and rejections, slot shapes [1, P, Hk, Dh], plain and
// reparameterised variables, collapse() keeping the output, dispose, gradients, and prefixes wired into a
// tiny llama by hand (KV-cached generation = recomputation; left padding = each row alone).
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { ModuleContext, ModulePlacement } from '../../src/adapters/adapter.js';
import { PREFIX_INIT_STD, PrefixConfig, type PrefixTuningModule, prefixKind } from '../../src/adapters/prefix/index.js';
import { AdapterSpec, adapterKind } from '../../src/adapters/registry.js';
import { resolveLayers } from '../../src/adapters/targets.js';
import { ModelConfig } from '../../src/base/config.js';
import { generate, padLeft } from '../../src/base/generate.js';
import type { AttentionPrefix, ForwardContext, ForwardHooks } from '../../src/base/hooks.js';
import type { Transformer } from '../../src/base/transformer.js';
import { parseConfig } from '../../src/config/parse.js';
import { ConfigError } from '../../src/errors.js';
import { expectClose, expectNoLeak } from '../helpers/tensor-asserts.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const TOL = { rtol: 1e-4, atol: 1e-5 } as const;
/** D 16, H 4, Hk 2 → Dh 4. */
const MODEL = ModelConfig.parse({
  family: 'llama',
  vocabSize: 8,
  dim: 16,
  hiddenDim: 8,
  nLayers: 2,
  nHeads: 4,
  nKvHeads: 2,
  maxSeqLen: 8,
  normEps: 1e-5,
  tiedEmbeddings: false,
});

function parse(value: Record<string, unknown>): PrefixConfig {
  return parseConfig(PrefixConfig, { kind: 'prefix', name: 'p', ...value }, 'adapters.p');
}

function placement(model: ModelConfig = MODEL, layer = 0, seed = 3): ModulePlacement {
  return { adapter: 'p', layer, point: { kind: 'attention-prefix' }, inFeatures: model.dim, outFeatures: model.dim, model, seed };
}

function create(config: Record<string, unknown>, place: ModulePlacement = placement()): PrefixTuningModule {
  return prefixKind.create(parse(config), place) as PrefixTuningModule;
}

function moduleContext(training = false): ModuleContext {
  const forward = {
    batch: 1,
    tokens: 1,
    ids: [[0]],
    mask: undefined as unknown as tf.Tensor2D,
    pastLength: 0,
    cache: undefined,
    training,
  } satisfies ForwardContext;
  return { training, forward };
}

/** The module's slots as host arrays (computed in a tidy, as inside a forward). */
function slots(module: PrefixTuningModule): { keys: number[]; values: number[]; shapes: number[][] } {
  return tf.tidy(() => {
    const { keys, values } = module.prefix(moduleContext());
    return { keys: Array.from(keys.dataSync()), values: Array.from(values.dataSync()), shapes: [keys.shape, values.shape] };
  });
}

function values(t: tf.Tensor): number[] {
  return Array.from(t.dataSync());
}

describe('prefix config', () => {
  test('defaults: P 8, no reparameterisation (hidden 64 when on), random init, all layers', () => {
    const config = parse({});
    expect(config).toEqual({
      kind: 'prefix',
      name: 'p',
      targets: { layers: 'all' },
      prefixLength: 8,
      reparameterize: false,
      reparamHiddenDim: 64,
      init: 'random',
    });
    expect(parseConfig(AdapterSpec, { kind: 'prefix', name: 'p' }, 'adapters.p')).toEqual(config);
    expect(adapterKind('prefix')).toBe(prefixKind);
    expect(prefixKind.defaultSites).toEqual([]);
    expect(prefixKind.points(config, [], MODEL)).toEqual([{ kind: 'attention-prefix' }]);
  });

  test.each([
    [{ prefixLength: 0 }, 'adapters.p.prefixLength'],
    [{ prefixLength: 2.5 }, 'adapters.p.prefixLength'],
    [{ reparamHiddenDim: 0 }, 'adapters.p.reparamHiddenDim'],
    [{ reparameterize: 'yes' }, 'adapters.p.reparameterize'],
    [{ init: 'zeros' }, 'adapters.p.init'],
    [{ targets: { layers: [] } }, 'adapters.p.targets.layers'],
    [{ prefix_length: 4 }, 'adapters.p'],
  ])('rejects %j with a ConfigError at %s', (bad, path) => {
    let error: unknown;
    try {
      parse(bad);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).path).toBe(path);
  });

  test('targets.sites is rejected; targets.layers is kept', () => {
    const call = (): unknown => parse({ targets: { sites: ['attn.k'] } });
    expect(call).toThrow(ConfigError);
    expect(call).toThrow(/not to sites/);
    try {
      call();
    } catch (e) {
      expect((e as ConfigError).path).toBe('adapters.p.targets.sites');
    }
    expect(parse({ targets: { layers: [1] } }).targets.layers).toEqual([1]);
  });
});

describe('prefix module', () => {
  let baseline: number;
  beforeAll(() => {
    baseline = tf.memory().numTensors;
  });
  afterAll(() => expect(tf.memory().numTensors).toBe(baseline));

  test('plain prefixes: keys and values [1, P, Hk, Dh], two trainable variables drawn from N(0, 0.02²)', () => {
    const module = create({ prefixLength: 64 });
    const { keys, values: vals, shapes } = slots(module);
    expect(shapes).toEqual([
      [1, 64, 2, 4],
      [1, 64, 2, 4],
    ]);
    const vars = module.variables();
    expect(vars).toHaveLength(2);
    for (const v of vars) {
      expect(v).toBeInstanceOf(tf.Variable);
      expect(v.trainable).toBe(true);
    }
    const std = Math.sqrt(keys.reduce((s, v) => s + v * v, 0) / keys.length);
    expect(std).toBeGreaterThan(PREFIX_INIT_STD * 0.8);
    expect(std).toBeLessThan(PREFIX_INIT_STD * 1.2);
    expect(keys).not.toEqual(vals);
    expect(module.reparameterized).toBe(false);
    module.dispose();
  });

  test('reparameterised prefixes: five variables (embedding, W1, b1, W2, b2) and the same slot shapes', () => {
    const module = create({ prefixLength: 3, reparameterize: true, reparamHiddenDim: 5 });
    const c = 2 * 4; // Hk·Dh
    expect(module.variables().map((v) => v.shape)).toEqual([[3, 5], [5, 5], [5], [2 * c, 5], [2 * c]]);
    const count = module.variables().reduce((s, v) => s + v.size, 0);
    expect(count).toBe(3 * 5 + 5 * 5 + 5 + 2 * c * 5 + 2 * c);
    expect(module.variables().every((v) => v instanceof tf.Variable && v.trainable)).toBe(true);
    expect(new Set(module.variables().map((v) => v.name)).size).toBe(5);
    expect(slots(module).shapes).toEqual([
      [1, 3, 2, 4],
      [1, 3, 2, 4],
    ]);
    expect(module.reparameterized).toBe(true);
    module.dispose();
  });

  test('reparameterised prefixes by hand: tanh(e·W1ᵀ + b1)·W2ᵀ + b2, split into keys | values', () => {
    // gpt2-shaped config: D 2, H 1, Hk 1 → Dh 2, C 2.
    const tiny = ModelConfig.parse({
      family: 'gpt2',
      vocabSize: 4,
      dim: 2,
      hiddenDim: 4,
      nLayers: 1,
      nHeads: 1,
      nKvHeads: 1,
      maxSeqLen: 4,
      normEps: 1e-5,
      tiedEmbeddings: false,
    });
    const module = create({ prefixLength: 1, reparameterize: true, reparamHiddenDim: 2 }, placement(tiny));
    const [embedding, w1, b1, w2, b2] = module.variables() as [tf.Variable, tf.Variable, tf.Variable, tf.Variable, tf.Variable];
    tf.tidy(() => {
      embedding.assign(tf.tensor2d([[1, -1]])); // [P, E]
      w1.assign(
        tf.tensor2d([
          [1, 2],
          [0.5, 0],
        ]),
      ); // [E, E]
      b1.assign(tf.tensor1d([0, 0.25])); // [E]
      w2.assign(
        tf.tensor2d([
          [1, 0],
          [0, 1],
          [1, 1],
          [2, -1],
        ]),
      ); // [2·C, E]
      b2.assign(tf.tensor1d([0, 0, 0, 0.5])); // [2·C]
    });
    // hidden = tanh([1 − 2 + 0, 0.5 + 0.25]) = [tanh(−1), tanh(0.75)]
    const [a, b] = [Math.tanh(-1), Math.tanh(0.75)];
    const { keys, values: vals, shapes } = slots(module);
    expect(shapes).toEqual([
      [1, 1, 1, 2],
      [1, 1, 1, 2],
    ]);
    expectClose(keys, [a, b]);
    expectClose(vals, [a + b, 2 * a - b + 0.5]);
    module.dispose();
  });

  test('collapse() turns the MLP into plain prefixes with bit-identical slots, and frees the MLP', () => {
    const start = tf.memory().numTensors;
    const module = create({ prefixLength: 4, reparameterize: true, reparamHiddenDim: 6 });
    const mlpVars = module.variables();
    const before = slots(module);
    module.collapse();
    expect(module.reparameterized).toBe(false);
    expect(mlpVars.every((v) => v.isDisposed)).toBe(true);
    expect(module.variables().map((v) => v.shape)).toEqual([
      [1, 4, 2, 4],
      [1, 4, 2, 4],
    ]);
    expect(module.variables().every((v) => v instanceof tf.Variable && v.trainable)).toBe(true);
    expect(slots(module)).toEqual(before);
    module.collapse(); // a no-op on plain prefixes
    expect(slots(module)).toEqual(before);
    module.dispose();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('dispose frees every variable (plain and reparameterised)', () => {
    for (const reparameterize of [false, true]) {
      const start = tf.memory().numTensors;
      const module = create({ prefixLength: 2, reparameterize, reparamHiddenDim: 3 });
      slots(module);
      const vars = module.variables();
      module.dispose();
      expect(vars.every((v) => v.isDisposed)).toBe(true);
      expect(tf.memory().numTensors).toBe(start);
    }
  });

  test('gradients reach every variable (plain and reparameterised)', () => {
    for (const reparameterize of [false, true]) {
      const module = create({ prefixLength: 3, reparameterize, reparamHiddenDim: 4 });
      const weights = tf.randomNormal([1, 3, 2, 4], 0, 1, 'float32', 1); // [1, P, Hk, Dh]
      const { value, grads } = tf.variableGrads(() => {
        const { keys, values: vals } = module.prefix(moduleContext(true));
        return tf.add(tf.sum(tf.mul(keys, weights)), tf.sum(tf.mul(vals, vals)));
      }, [...module.variables()]);
      for (const v of module.variables()) {
        const grad = grads[v.name];
        expect(grad?.shape, v.name).toEqual(v.shape);
        expect(
          values(grad as tf.Tensor).some((g) => g !== 0),
          v.name,
        ).toBe(true);
      }
      tf.dispose([weights, value, ...Object.values(grads)]);
      module.dispose();
    }
  });
});

/** Hands each layer's prefix to the attention, as a composition of one prefix would. */
function prefixHooks(modules: readonly PrefixTuningModule[], training = false): ForwardHooks {
  let forward: ForwardContext | undefined;
  return {
    begin: (context) => {
      forward = context;
    },
    attentionPrefix: (layer): AttentionPrefix | undefined => modules.find((m) => m.layer === layer)?.prefix({ training, forward: forward as ForwardContext }),
  };
}

describe('prefixes in a tiny llama (4 query heads, 2 kv heads)', () => {
  let model: Transformer;
  beforeAll(() => {
    model = tinyLlama();
  });
  afterAll(() => model.dispose());

  /** One module per targeted layer; plain prefixes are redrawn with std `scale` so they clearly matter. */
  function attach(config: Record<string, unknown>, scale?: number): PrefixTuningModule[] {
    const spec = parse(config);
    return resolveLayers(spec.targets.layers, model.config, 'adapters.p.targets.layers').map((layer) => {
      const module = prefixKind.create(spec, placement(model.config, layer, 50 + layer)) as PrefixTuningModule;
      if (scale !== undefined && !module.reparameterized) {
        tf.tidy(() => module.variables().forEach((v, i) => v.assign(tf.randomNormal(v.shape, 0, scale, 'float32', 70 + 2 * layer + i))));
      }
      return module;
    });
  }

  function logits(options: Parameters<Transformer['forward']>[0]): Float32Array {
    const out = model.forward(options);
    const data = out.dataSync() as Float32Array;
    out.dispose();
    return data;
  }

  const prompts = [[5, 9, 1, 30], [3], [7, 8, 9, 10, 11, 12]];

  test.each([
    ['plain prefixes (std 1)', { prefixLength: 4 }, 1],
    ['fresh plain prefixes (std 0.02)', { prefixLength: 4 }, undefined],
    ['reparameterised prefixes', { prefixLength: 3, reparameterize: true, reparamHiddenDim: 8 }, undefined],
    ['a prefix on layer 1 only', { prefixLength: 5, targets: { layers: [1] } }, 1],
  ] as const)('%s: change the logits; KV-cached greedy generation equals recomputation; left padding equals each row alone', (_name, config, scale) => {
    const modules = attach(config, scale);
    const hooks = prefixHooks(modules);
    const ids = [[1, 5, 9, 3]];
    const base = logits({ ids });
    const withPrefix = logits({ ids, hooks });
    expect(withPrefix.some((v, i) => Math.abs(v - (base[i] as number)) > 1e-4)).toBe(true);

    const options = { maxNewTokens: 6, temperature: 0, eosId: null, hooks } as const;
    const cached = expectNoLeak(() => generate(model, prompts, options));
    expect(generate(model, prompts, { ...options, noCache: true })).toEqual(cached);

    const padded = padLeft(prompts, 17);
    const width = padded.ids[0]?.length ?? 0;
    const vocab = model.config.vocabSize;
    const batch = expectNoLeak(() => logits({ ...padded, hooks }));
    prompts.forEach((prompt, b) => {
      const alone = logits({ ids: [prompt], hooks });
      const rows = batch.subarray((b * width + width - prompt.length) * vocab, (b + 1) * width * vocab);
      expectClose(rows, alone, { ...TOL, label: `row ${b}` });
    });
    for (const m of modules) m.dispose();
  });

  test('collapse() leaves the model output bit-identical', () => {
    const modules = attach({ prefixLength: 3, reparameterize: true, reparamHiddenDim: 8 });
    const ids = [
      [4, 2, 6, 1],
      [3, 3, 9, 12],
    ];
    const before = logits({ ids, hooks: prefixHooks(modules) });
    for (const m of modules) m.collapse();
    expect(modules.every((m) => m.variables().length === 2)).toBe(true);
    expect(logits({ ids, hooks: prefixHooks(modules) })).toEqual(before);
    for (const m of modules) m.dispose();
  });

  test('training through the frozen model: gradients reach every prefix variable', () => {
    for (const reparameterize of [false, true]) {
      const modules = attach({ prefixLength: 2, reparameterize, reparamHiddenDim: 4 }, 1);
      const vars = modules.flatMap((m) => m.variables());
      expectNoLeak(() => {
        const { value, grads } = tf.variableGrads(
          () => tf.mean(tf.square(model.forward({ ids: [[1, 2, 3]], hooks: prefixHooks(modules, true), training: true }))) as tf.Scalar,
          vars,
        );
        for (const v of vars)
          expect(
            values(grads[v.name] as tf.Tensor).some((g) => g !== 0),
            v.name,
          ).toBe(true);
        tf.dispose([value, ...Object.values(grads)]);
      });
      for (const m of modules) m.dispose();
    }
  });
});
