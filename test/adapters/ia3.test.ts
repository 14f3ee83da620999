// (IA)³ (Liu et al. 2022): config defaults and rejections, which sites are scaled at their input vs output,
// a fresh module's exactly-zero delta, deltas by hand, variables, dispose, gradients, and modules wired
// into a tiny llama by hand (fresh = bit-identical; trained-looking scales = cache/padding invariant).
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { AdapterPoint, ModuleContext, ModulePlacement } from '../../src/adapters/adapter.js';
import { Ia3Config, type Ia3Module, ia3Kind } from '../../src/adapters/ia3/index.js';
import { AdapterSpec, adapterKind } from '../../src/adapters/registry.js';
import { resolveLayers, resolveSites } from '../../src/adapters/targets.js';
import { ModelConfig, headDim } from '../../src/base/config.js';
import { generate, padLeft } from '../../src/base/generate.js';
import { type ForwardContext, type ForwardHooks, perSiteHooks } from '../../src/base/hooks.js';
import type { SiteName } from '../../src/base/sites.js';
import type { Transformer } from '../../src/base/transformer.js';
import { parseConfig } from '../../src/config/parse.js';
import { ConfigError } from '../../src/errors.js';
import { expectClose, expectNoLeak } from '../helpers/tensor-asserts.js';
import { tinyGpt2, tinyLlama } from '../helpers/tiny-models.js';

const TOL = { rtol: 1e-4, atol: 1e-5 } as const;
const LLAMA = ModelConfig.parse({
  family: 'llama',
  vocabSize: 8,
  dim: 8,
  hiddenDim: 12,
  nLayers: 2,
  nHeads: 2,
  nKvHeads: 1,
  maxSeqLen: 8,
  normEps: 1e-5,
  tiedEmbeddings: false,
});
const GPT2 = ModelConfig.parse({
  family: 'gpt2',
  vocabSize: 8,
  dim: 8,
  hiddenDim: 32,
  nLayers: 2,
  nHeads: 2,
  nKvHeads: 2,
  maxSeqLen: 8,
  normEps: 1e-5,
  tiedEmbeddings: false,
});

function parse(value: Record<string, unknown>): Ia3Config {
  return parseConfig(Ia3Config, { kind: 'ia3', name: 'i', ...value }, 'adapters.i');
}

/** (I, O) of a site. */
function siteWidths(config: ModelConfig, site: SiteName): [number, number] {
  const kv = config.nKvHeads * headDim(config);
  const widths: Record<SiteName, [number, number]> = {
    'attn.q': [config.dim, config.dim],
    'attn.k': [config.dim, kv],
    'attn.v': [config.dim, kv],
    'attn.o': [config.dim, config.dim],
    'mlp.gate': [config.dim, config.hiddenDim],
    'mlp.up': [config.dim, config.hiddenDim],
    'mlp.down': [config.hiddenDim, config.dim],
  };
  return widths[site];
}

function placement(point: AdapterPoint, model: ModelConfig = LLAMA, layer = 0): ModulePlacement {
  if (point.kind !== 'site-output' && point.kind !== 'site-input') throw new Error('sites only');
  const [inFeatures, outFeatures] = siteWidths(model, point.site);
  return { adapter: 'i', layer, point, inFeatures, outFeatures, model, seed: 1 };
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

function deltaOf(module: Ia3Module, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => module.delta(x, y, moduleContext()));
}

function values(t: tf.Tensor): number[] {
  return Array.from(t.dataSync());
}

describe('(IA)³ config', () => {
  test('defaults: sites attn.k, attn.v, mlp.down; feedforward mlp.down; all layers', () => {
    const config = parse({});
    expect(config).toEqual({ kind: 'ia3', name: 'i', targets: { layers: 'all' }, feedforwardSites: ['mlp.down'] });
    expect(parseConfig(AdapterSpec, { kind: 'ia3', name: 'i' }, 'adapters.i')).toEqual(config);
    expect(adapterKind('ia3')).toBe(ia3Kind);
    expect(ia3Kind.defaultSites).toEqual(['attn.k', 'attn.v', 'mlp.down']);
  });

  test.each([
    [{ feedforwardSites: 'mlp.down' }, 'adapters.i.feedforwardSites'],
    [{ feedforwardSites: [''] }, 'adapters.i.feedforwardSites[0]'],
    [{ targets: { sites: [] } }, 'adapters.i.targets.sites'],
    [{ targets: { sites: 'everything' } }, 'adapters.i.targets.sites'],
    [{ scale: 2 }, 'adapters.i'],
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

  test('points: feedforward sites are scaled at their input, the other targeted sites at their output', () => {
    for (const model of [LLAMA, GPT2]) {
      const config = parse({});
      const sites = resolveSites(config.targets.sites, ia3Kind.defaultSites, model, 'adapters.i.targets.sites');
      expect(ia3Kind.points(config, sites, model)).toEqual([
        { kind: 'site-output', site: 'attn.k' },
        { kind: 'site-output', site: 'attn.v' },
        { kind: 'site-input', site: 'mlp.down' },
      ]);
    }
    const all = parse({ targets: { sites: 'all-linear' }, feedforwardSites: ['mlp.*'] });
    const points = ia3Kind.points(all, resolveSites('all-linear', [], LLAMA, 'x'), LLAMA);
    expect(points.filter((p) => p.kind === 'site-input').map((p) => (p.kind === 'site-input' ? p.site : ''))).toEqual(['mlp.gate', 'mlp.up', 'mlp.down']);
    expect(points.filter((p) => p.kind === 'site-output')).toHaveLength(4);
    // A feedforward entry for a site that is not targeted is harmless; one that names no site is a typo.
    expect(ia3Kind.points(parse({ feedforwardSites: ['mlp.down', 'mlp.up'] }), ['attn.k'], LLAMA)).toEqual([{ kind: 'site-output', site: 'attn.k' }]);
    const typo = (): unknown => ia3Kind.points(parse({ feedforwardSites: ['mlp.dwn'] }), ['attn.k'], LLAMA);
    expect(typo).toThrow(ConfigError);
    expect(typo).toThrow(/adapters\.i\.feedforwardSites\[0\]/);
    expect(() => ia3Kind.points(parse({ feedforwardSites: ['mlp.gate'] }), ['attn.k'], GPT2)).toThrow(/matches no site of a gpt2 model/);
  });
});

describe('(IA)³ module', () => {
  let baseline: number;
  beforeAll(() => {
    baseline = tf.memory().numTensors;
  });
  afterAll(() => expect(tf.memory().numTensors).toBe(baseline));

  test('a fresh module: l = 1 and the delta is exactly zero, at a site output [N, O] and a site input [N, I]', () => {
    const out = ia3Kind.create(parse({}), placement({ kind: 'site-output', site: 'attn.k' })) as Ia3Module;
    const inp = ia3Kind.create(parse({}), placement({ kind: 'site-input', site: 'mlp.down' })) as Ia3Module;
    expect(out.scale.shape).toEqual([4]); // O = Hk·Dh
    expect(inp.scale.shape).toEqual([12]); // I = F
    expect(values(out.scale).every((v) => v === 1) && values(inp.scale).every((v) => v === 1)).toBe(true);
    const x = tf.randomNormal<tf.Rank.R2>([5, 8], 0, 100, 'float32', 1); // [N, D]
    const y = tf.randomNormal<tf.Rank.R2>([5, 4], 0, 100, 'float32', 2); // [N, O]
    const h = tf.randomNormal<tf.Rank.R2>([5, 12], 0, 100, 'float32', 3); // [N, F]
    const d1 = deltaOf(out, x, y);
    const d2 = deltaOf(inp, h, h);
    expect(d1.shape).toEqual([5, 4]);
    expect(d2.shape).toEqual([5, 12]);
    expect([...values(d1), ...values(d2)].every((v) => v === 0)).toBe(true);
    const sum = tf.add(y, d1); // [N, O]
    expect(values(sum)).toEqual(values(y));
    tf.dispose([x, y, h, d1, d2, sum]);
    out.dispose();
    inp.dispose();
  });

  test('deltas by hand: y·(l − 1) at an output (x ignored), x·(l − 1) at an input', () => {
    const model = ModelConfig.parse({ ...GPT2, dim: 2, nHeads: 1, nKvHeads: 1, hiddenDim: 2 });
    const out = ia3Kind.create(parse({}), placement({ kind: 'site-output', site: 'attn.v' }, model)) as Ia3Module;
    const inp = ia3Kind.create(parse({}), placement({ kind: 'site-input', site: 'mlp.down' }, model)) as Ia3Module;
    tf.tidy(() => {
      out.scale.assign(tf.tensor1d([2, 0.5]));
      inp.scale.assign(tf.tensor1d([0, 3]));
    });
    const x = tf.tensor2d([
      [10, 20],
      [30, 40],
    ]);
    const y = tf.tensor2d([
      [1, 2],
      [3, 4],
    ]);
    const d1 = deltaOf(out, x, y);
    const d2 = deltaOf(inp, y, y);
    expectClose(d1, [1, -1, 3, -2]);
    expectClose(d2, [-1, 4, -3, 8]);
    tf.dispose([x, y, d1, d2]);
    out.dispose();
    inp.dispose();
  });

  test('one trainable tf.Variable per module; dispose frees it; gradients reach it', () => {
    const start = tf.memory().numTensors;
    const module = ia3Kind.create(parse({}), placement({ kind: 'site-output', site: 'attn.k' })) as Ia3Module;
    const vars = module.variables();
    expect(vars).toHaveLength(1);
    expect(vars[0]).toBeInstanceOf(tf.Variable);
    expect(vars[0]?.trainable).toBe(true);
    const x = tf.ones<tf.Rank.R2>([3, 8]); // [N, I]
    const y = tf.tensor2d([
      [1, 2, 3, 4],
      [5, 6, 7, 8],
      [0, 0, 0, 1],
    ]); // [N, O]
    const { value, grads } = tf.variableGrads(() => tf.sum(module.delta(x, y, moduleContext(true))), [...vars]);
    // ∂/∂l Σ y·(l − 1) = Σₙ y
    expectClose(grads[module.scale.name] as tf.Tensor, [6, 8, 10, 13]);
    tf.dispose([x, y, value, ...Object.values(grads)]);
    module.dispose();
    expect(module.scale.isDisposed).toBe(true);
    expect(tf.memory().numTensors).toBe(start);
  });
});

/** Adds each site's (IA)³ delta at its point, as a composition would: x + Δ before the map, y + Δ after. */
function ia3Hooks(modules: readonly Ia3Module[], training = false): ForwardHooks {
  let forward: ForwardContext | undefined;
  const find = (layer: number, site: SiteName, kind: AdapterPoint['kind']): Ia3Module | undefined =>
    modules.find((m) => m.layer === layer && m.site === site && m.point.kind === kind);
  return perSiteHooks({
    begin: (context) => {
      forward = context;
    },
    siteInput: (layer, site, x) => {
      const m = find(layer, site, 'site-input');
      return m === undefined ? x : tf.add(x, m.delta(x, x, { training, forward: forward as ForwardContext })); // [N, I]
    },
    siteOutput: (layer, site, x, y) => {
      const m = find(layer, site, 'site-output');
      return m === undefined ? y : tf.add(y, m.delta(x, y, { training, forward: forward as ForwardContext })); // [N, O]
    },
  });
}

describe.each([
  ['llama (4 query heads, 2 kv heads)', () => tinyLlama()],
  ['gpt2', () => tinyGpt2()],
] as const)('(IA)³ in a tiny %s', (_name, build) => {
  let model: Transformer;
  beforeAll(() => {
    model = build();
  });
  afterAll(() => model.dispose());

  /** One module per targeted layer and point; with `spread`, l is redrawn uniformly in [1 − spread, 1 + spread]. */
  function attach(config: Record<string, unknown>, spread?: number): Ia3Module[] {
    const spec = parse(config);
    const sites = resolveSites(spec.targets.sites, ia3Kind.defaultSites, model.config, 'adapters.i.targets.sites');
    const points = ia3Kind.points(spec, sites, model.config);
    return resolveLayers(spec.targets.layers, model.config, 'adapters.i.targets.layers').flatMap((layer) =>
      points.map((point, p) => {
        const module = ia3Kind.create(spec, placement(point, model.config, layer)) as Ia3Module;
        if (spread !== undefined) tf.tidy(() => module.scale.assign(tf.randomUniform(module.scale.shape, 1 - spread, 1 + spread, 'float32', 10 * layer + p)));
        return module;
      }),
    );
  }

  function logits(options: Parameters<Transformer['forward']>[0]): Float32Array {
    const out = model.forward(options);
    const data = out.dataSync() as Float32Array;
    out.dispose();
    return data;
  }

  test('fresh modules leave logits bit-identical (every default site, every layer)', () => {
    const modules = attach({});
    expect(modules).toHaveLength(3 * model.config.nLayers);
    const ids = [
      [1, 5, 9, 3],
      [2, 2, 7, 4],
    ];
    expect(expectNoLeak(() => logits({ ids, hooks: ia3Hooks(modules) }))).toEqual(logits({ ids }));
    for (const m of modules) m.dispose();
  });

  test('scales ≠ 1 change the logits; KV-cached greedy generation equals recomputation; left padding equals each row alone', () => {
    const modules = attach({ targets: { sites: 'all-linear' }, feedforwardSites: ['mlp.down'] }, 0.5);
    const hooks = ia3Hooks(modules);
    const ids = [[1, 5, 9, 3]];
    const base = logits({ ids });
    expect(logits({ ids, hooks }).some((v, i) => Math.abs(v - (base[i] as number)) > 1e-3)).toBe(true);
    const prompts = [[5, 9, 1, 30], [3], [7, 8, 9, 10, 11]];
    const options = { maxNewTokens: 6, temperature: 0, eosId: null, hooks } as const;
    const cached = expectNoLeak(() => generate(model, prompts, options));
    expect(generate(model, prompts, { ...options, noCache: true })).toEqual(cached);
    const { ids: padded, mask } = padLeft(prompts, 17);
    const vocab = model.config.vocabSize;
    const batch = logits({ ids: padded, mask, hooks, output: 'last-logits' });
    prompts.forEach((prompt, b) => {
      expectClose(batch.subarray(b * vocab, (b + 1) * vocab), logits({ ids: [prompt], hooks, output: 'last-logits' }), { ...TOL, label: `row ${b}` });
    });
    for (const m of modules) m.dispose();
  });

  test('training through the frozen model: gradients reach every scale', () => {
    const modules = attach({});
    const vars = modules.flatMap((m) => m.variables());
    expectNoLeak(() => {
      const { value, grads } = tf.variableGrads(
        () => tf.mean(tf.square(model.forward({ ids: [[1, 2, 3]], hooks: ia3Hooks(modules, true), training: true }))) as tf.Scalar,
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
