// Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020): config defaults and rejections, placement
// points, a fresh adapter's exactly-zero delta, a delta computed by hand, variables, dispose, gradients, and
// the module wired into a tiny llama by hand (fresh = bit-identical; random = cache/padding invariant).
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { ModuleContext, ModulePlacement } from '../../src/adapters/adapter.js';
import { BottleneckConfig, type BottleneckModule, bottleneckKind, bottleneckWidth } from '../../src/adapters/bottleneck/index.js';
import { AdapterSpec, adapterKind } from '../../src/adapters/registry.js';
import { ModelConfig } from '../../src/base/config.js';
import { generate, padLeft } from '../../src/base/generate.js';
import type { ForwardContext, ForwardHooks } from '../../src/base/hooks.js';
import type { BlockName } from '../../src/base/sites.js';
import type { Transformer } from '../../src/base/transformer.js';
import { parseConfig } from '../../src/config/parse.js';
import { ConfigError } from '../../src/errors.js';
import { expectClose, expectNoLeak } from '../helpers/tensor-asserts.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const TOL = { rtol: 1e-4, atol: 1e-5 } as const;
const MODEL = ModelConfig.parse({
  family: 'gpt2',
  vocabSize: 8,
  dim: 3,
  hiddenDim: 4,
  nLayers: 1,
  nHeads: 1,
  nKvHeads: 1,
  maxSeqLen: 8,
  normEps: 1e-5,
  tiedEmbeddings: false,
});

function parse(value: Record<string, unknown>): BottleneckConfig {
  return parseConfig(BottleneckConfig, { kind: 'bottleneck', name: 'b', ...value }, 'adapters.b');
}

function placement(block: BlockName, dim: number, overrides: Partial<ModulePlacement> = {}): ModulePlacement {
  return { adapter: 'b', layer: 0, point: { kind: 'block-output', block }, inFeatures: dim, outFeatures: dim, model: MODEL, seed: 7, ...overrides };
}

function create(config: Record<string, unknown>, place: ModulePlacement = placement('mlp', 3)): BottleneckModule {
  return bottleneckKind.create(parse(config), place) as BottleneckModule;
}

/** A ModuleContext whose forward facts are never read by a bottleneck module. */
function moduleContext(training: boolean): ModuleContext {
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

/** The module's delta, computed in a tidy as the forward would (only the result survives). */
function deltaOf(module: BottleneckModule, h: tf.Tensor2D, training = false): tf.Tensor2D {
  return tf.tidy(() => module.delta(h, h, moduleContext(training)));
}

function values(t: tf.Tensor): number[] {
  return Array.from(t.dataSync());
}

describe('bottleneck config', () => {
  test('defaults: reductionFactor 16, pfeiffer, relu, dropout 0, zero-up, all layers', () => {
    const config = parse({});
    expect(config).toEqual({
      kind: 'bottleneck',
      name: 'b',
      targets: { layers: 'all' },
      reductionFactor: 16,
      placement: 'pfeiffer',
      activation: 'relu',
      dropout: 0,
      init: 'zero-up',
    });
    expect(parseConfig(AdapterSpec, { kind: 'bottleneck', name: 'b' }, 'adapters.b')).toEqual(config);
    expect(adapterKind('bottleneck')).toBe(bottleneckKind);
    expect(bottleneckKind.defaultSites).toEqual([]);
  });

  test.each([
    [{ reductionFactor: 0 }, 'adapters.b.reductionFactor'],
    [{ reductionFactor: 2.5 }, 'adapters.b.reductionFactor'],
    [{ bottleneckDim: 0 }, 'adapters.b.bottleneckDim'],
    [{ placement: 'after-attn' }, 'adapters.b.placement'],
    [{ activation: 'swish' }, 'adapters.b.activation'],
    [{ dropout: 1 }, 'adapters.b.dropout'],
    [{ dropout: -0.1 }, 'adapters.b.dropout'],
    [{ init: 'zero-b' }, 'adapters.b.init'],
    [{ rank: 4 }, 'adapters.b'],
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

  test('targets.sites is rejected: placement decides where bottleneck adapters sit', () => {
    const call = (): unknown => parse({ targets: { sites: ['attn.q'] } });
    expect(call).toThrow(ConfigError);
    expect(call).toThrow(/placed by `placement`/);
    try {
      call();
    } catch (e) {
      expect((e as ConfigError).path).toBe('adapters.b.targets.sites');
    }
    expect(parse({ targets: { layers: [0] } }).targets.layers).toEqual([0]);
  });

  test('width = bottleneckDim, else max(1, round(D / reductionFactor))', () => {
    expect(bottleneckWidth(parse({}), 768)).toBe(48);
    expect(bottleneckWidth(parse({ reductionFactor: 4 }), 10)).toBe(3); // round(2.5)
    expect(bottleneckWidth(parse({}), 4)).toBe(1); // round(0.25) = 0 → 1
    expect(bottleneckWidth(parse({ bottleneckDim: 5, reductionFactor: 2 }), 64)).toBe(5);
  });

  test('points: pfeiffer after the FFN; houlsby after attention and the FFN', () => {
    expect(bottleneckKind.points(parse({}), [], MODEL)).toEqual([{ kind: 'block-output', block: 'mlp' }]);
    expect(bottleneckKind.points(parse({ placement: 'houlsby' }), [], MODEL)).toEqual([
      { kind: 'block-output', block: 'attn' },
      { kind: 'block-output', block: 'mlp' },
    ]);
  });
});

describe('bottleneck module', () => {
  let baseline: number;
  beforeAll(() => {
    baseline = tf.memory().numTensors;
  });
  afterAll(() => expect(tf.memory().numTensors).toBe(baseline));

  test('a fresh (zero-up) adapter returns exactly zero for any input', () => {
    const module = create({ reductionFactor: 1, activation: 'gelu' });
    const h = tf.randomNormal<tf.Rank.R2>([5, 3], 0, 10, 'float32', 3); // [N, D]
    const delta = deltaOf(module, h);
    expect(delta.shape).toEqual([5, 3]);
    expect(values(delta).every((v) => v === 0)).toBe(true);
    tf.dispose([h, delta]);
    module.dispose();
  });

  test('delta by hand: up(act(down(h))) with biases, for relu and tanh', () => {
    for (const activation of ['relu', 'tanh'] as const) {
      const module = create({ bottleneckDim: 2, activation, init: 'random' });
      tf.tidy(() => {
        module.downWeight.assign(
          tf.tensor2d([
            [1, 0, 1],
            [0, 1, -1],
          ]),
        ); // [r, D]
        module.downBias.assign(tf.tensor1d([0.5, -4])); // [r]
        module.upWeight.assign(
          tf.tensor2d([
            [2, 1],
            [0, 3],
            [-1, 1],
          ]),
        ); // [D, r]
        module.upBias.assign(tf.tensor1d([0.1, 0, 0])); // [D]
      });
      const h = tf.tensor2d([[1, 2, -1]]); // [1, D]
      const delta = deltaOf(module, h);
      // down = [1 − 1 + 0.5, 2 + 1 − 4] = [0.5, −1]
      const [a, b] = activation === 'relu' ? [0.5, 0] : [Math.tanh(0.5), Math.tanh(-1)];
      expectClose(delta, [2 * a + b + 0.1, 3 * b, -a + b], { label: activation });
      tf.dispose([h, delta]);
      module.dispose();
    }
  });

  test.each(['relu', 'gelu', 'silu', 'tanh'] as const)('random init (%s): shape [N, D] and the host reference', (activation) => {
    const module = create({ bottleneckDim: 4, activation, init: 'random' }, placement('attn', 6));
    const h = tf.randomNormal<tf.Rank.R2>([3, 6], 0, 1, 'float32', 11); // [N, D]
    const delta = deltaOf(module, h);
    expect(delta.shape).toEqual([3, 6]);
    const [down, downBias, up, upBias] = module.variables().map((v) => values(v)) as [number[], number[], number[], number[]];
    const x = values(h);
    const act = (z: number): number =>
      activation === 'relu'
        ? Math.max(z, 0)
        : activation === 'tanh'
          ? Math.tanh(z)
          : activation === 'silu'
            ? z / (1 + Math.exp(-z))
            : 0.5 * z * (1 + erf(z / Math.SQRT2));
    const expected: number[] = [];
    for (let n = 0; n < 3; n++) {
      const hidden = Array.from({ length: 4 }, (_, j) =>
        act((downBias[j] as number) + Array.from({ length: 6 }, (_, i) => (down[j * 6 + i] as number) * (x[n * 6 + i] as number)).reduce((s, v) => s + v, 0)),
      );
      for (let d = 0; d < 6; d++) expected.push((upBias[d] as number) + hidden.reduce((s, v, j) => s + (up[d * 4 + j] as number) * v, 0));
    }
    expect(expected.some((v) => Math.abs(v) > 1e-3)).toBe(true);
    expectClose(delta, expected, { rtol: 1e-4, atol: 1e-5, label: activation });
    tf.dispose([h, delta]);
    module.dispose();
  });

  test('dropout acts in training only', () => {
    const module = create({ bottleneckDim: 4, dropout: 0.5, init: 'random', activation: 'tanh' }, placement('mlp', 8));
    const h = tf.randomNormal<tf.Rank.R2>([16, 8], 0, 1, 'float32', 5); // [N, D]
    const plain = tf.tidy(() => values(deltaOf(module, h)));
    const dropped = tf.tidy(() => values(deltaOf(module, h, true)));
    expect(dropped.filter((v) => v === 0).length).toBeGreaterThan(0);
    dropped.forEach((v, i) => {
      if (v !== 0) expect(v).toBeCloseTo(2 * (plain[i] as number), 5);
    });
    tf.dispose(h);
    module.dispose();
  });

  test('variables are four trainable tf.Variables of the expected shapes, and dispose frees them', () => {
    const start = tf.memory().numTensors;
    const module = create({ bottleneckDim: 2 }, placement('attn', 5));
    const vars = module.variables();
    expect(vars.map((v) => v.shape)).toEqual([[2, 5], [2], [5, 2], [5]]);
    for (const v of vars) {
      expect(v).toBeInstanceOf(tf.Variable);
      expect(v.trainable).toBe(true);
    }
    expect(values(module.downBias).every((v) => v === 0) && values(module.upBias).every((v) => v === 0)).toBe(true);
    expect(new Set(vars.map((v) => v.name)).size).toBe(4);
    tf.tidy(() => {
      module.delta(tf.ones([2, 5]), tf.ones([2, 5]), moduleContext(false));
    });
    module.dispose();
    expect(vars.every((v) => v.isDisposed)).toBe(true);
    expect(tf.memory().numTensors).toBe(start);
  });

  test('gradients reach every variable (random and zero-up init)', () => {
    for (const init of ['random', 'zero-up'] as const) {
      const module = create({ bottleneckDim: 3, init, activation: 'tanh' }, placement('mlp', 4));
      const h = tf.randomNormal<tf.Rank.R2>([5, 4], 0, 1, 'float32', 9); // [N, D]
      const { value, grads } = tf.variableGrads(() => tf.sum(deltaOf(module, h, true)), [...module.variables()]);
      for (const v of module.variables()) {
        const grad = grads[v.name];
        expect(grad?.shape, v.name).toEqual(v.shape);
        // With a zero up-projection the down-projection's gradient is zero: only up receives signal at first.
        const mustMove = init === 'random' || v === module.upWeight || v === module.upBias;
        if (mustMove)
          expect(
            values(grad as tf.Tensor).some((g) => g !== 0),
            `${init} ${v.name}`,
          ).toBe(true);
      }
      tf.dispose([h, value, ...Object.values(grads)]);
      module.dispose();
    }
  });
});

/** Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7). */
function erf(x: number): number {
  const t = 1 / (1 + 0.3275911 * Math.abs(x));
  const poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  return Math.sign(x) * (1 - poly * Math.exp(-x * x));
}

/** Adds each layer's bottleneck deltas at block outputs, as a composition would (y + Σ Δ). */
function bottleneckHooks(modules: readonly BottleneckModule[], training = false): ForwardHooks {
  let forward: ForwardContext | undefined;
  return {
    begin: (context) => {
      forward = context;
    },
    blockOutput: (layer, block, h) => {
      let out = h; // [N, D]
      for (const m of modules) {
        if (m.layer === layer && m.block === block) out = tf.add(out, m.delta(h, h, { training, forward: forward as ForwardContext })); // [N, D]
      }
      return out;
    },
  };
}

describe('bottleneck adapters in a tiny llama', () => {
  let model: Transformer;
  beforeAll(() => {
    model = tinyLlama();
  });
  afterAll(() => model.dispose());

  function attach(config: Record<string, unknown>): BottleneckModule[] {
    const spec = parseConfig(BottleneckConfig, { kind: 'bottleneck', name: 'b', ...config }, 'adapters.b');
    const dim = model.config.dim;
    const modules: BottleneckModule[] = [];
    for (let layer = 0; layer < model.config.nLayers; layer++) {
      for (const point of bottleneckKind.points(spec, [], model.config)) {
        modules.push(
          bottleneckKind.create(spec, {
            adapter: 'b',
            layer,
            point,
            inFeatures: dim,
            outFeatures: dim,
            model: model.config,
            seed: 100 + layer * 10 + (point.kind === 'block-output' && point.block === 'attn' ? 0 : 1),
          }) as BottleneckModule,
        );
      }
    }
    return modules;
  }

  function logits(options: Parameters<Transformer['forward']>[0]): Float32Array {
    const out = model.forward(options);
    const data = out.dataSync() as Float32Array;
    out.dispose();
    return data;
  }

  test('a fresh houlsby adapter leaves logits bit-identical; a random one changes them', () => {
    const ids = [[1, 5, 9, 3]];
    const base = logits({ ids });
    const fresh = attach({ placement: 'houlsby', reductionFactor: 4 });
    expect(fresh).toHaveLength(2 * model.config.nLayers);
    expect(expectNoLeak(() => logits({ ids, hooks: bottleneckHooks(fresh) }))).toEqual(base);
    for (const m of fresh) m.dispose();
    const random = attach({ placement: 'houlsby', reductionFactor: 4, init: 'random' });
    const changed = logits({ ids, hooks: bottleneckHooks(random) });
    expect(changed.some((v, i) => Math.abs(v - (base[i] as number)) > 1e-3)).toBe(true);
    for (const m of random) m.dispose();
  });

  test('random adapters: KV-cached greedy generation equals recomputation; left padding equals each row alone', () => {
    const modules = attach({ placement: 'houlsby', bottleneckDim: 3, init: 'random', activation: 'gelu' });
    const hooks = bottleneckHooks(modules);
    const prompts = [[5, 9, 1, 30], [3], [7, 8, 9, 10, 11]];
    const options = { maxNewTokens: 6, temperature: 0, eosId: null, hooks } as const;
    const cached = expectNoLeak(() => generate(model, prompts, options));
    expect(generate(model, prompts, { ...options, noCache: true })).toEqual(cached);
    const { ids, mask } = padLeft(prompts, 17);
    const vocab = model.config.vocabSize;
    const batch = logits({ ids, mask, hooks, output: 'last-logits' });
    prompts.forEach((prompt, b) => {
      expectClose(batch.subarray(b * vocab, (b + 1) * vocab), logits({ ids: [prompt], hooks, output: 'last-logits' }), { ...TOL, label: `row ${b}` });
    });
    for (const m of modules) m.dispose();
  });

  test('training through the frozen model: gradients reach every adapter variable', () => {
    const modules = attach({ placement: 'pfeiffer', bottleneckDim: 2, init: 'random', activation: 'silu' });
    const vars = modules.flatMap((m) => m.variables());
    expectNoLeak(() => {
      const { value, grads } = tf.variableGrads(
        () => tf.mean(model.forward({ ids: [[1, 2, 3]], hooks: bottleneckHooks(modules, true), training: true })) as tf.Scalar,
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
  });
});
