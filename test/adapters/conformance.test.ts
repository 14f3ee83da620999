// Registry-driven adapter conformance (DESIGN principle 8; peft's TEST_CASES, as fast-check properties): the
// SAME properties run over every kind in ADAPTER_KINDS, on a tiny llama and a tiny gpt2, with small random
// valid configs per kind (KIND_CASES below) and random left-padded batches. A kind added to the registry
// without an entry in KIND_CASES fails here, so no kind ships without conformance coverage. Per-kind files
// (lora-merge, bottleneck, prefix, ia3) hold only examples.
//
// Properties, per family × kind:
//   identity   a freshly initialised module leaves the logits bit-identical to the base (prefix exempt: see
//              its case; for it only finiteness is checked)
//   none       select: 'base' is the base bit for bit, whatever the adapter's (randomised) variables
//   frozen     a training forward + a gradient step on every adapter variable leaves every base tensor
//              byte-identical (and the base's output too); base tensors are never tf.Variables
//   json       spec → JSON → parse round-trips to an equal config; so does an AdaptedModelSpec with a composition
//   gradient   every module variable is trainable and gets a finite, non-zero gradient through the whole model
//   leaks      create, forward, generate 3 tokens, dispose → tf.memory().numTensors back where it started
import { fc } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ADAPTER_KINDS, AdapterSpec, adapterKind } from '../../src/adapters/registry.js';
import { resolveSites, sitePattern } from '../../src/adapters/targets.js';
import type { ModelConfig } from '../../src/base/config.js';
import { padLeft } from '../../src/base/generate.js';
import { FAMILY_SITES, type ModelFamily } from '../../src/base/sites.js';
import type { Transformer } from '../../src/base/transformer.js';
import { listWeightTensors } from '../../src/base/weights.js';
import { parseAdaptedModelSpec } from '../../src/compose/model-spec.js';
import { parseConfig } from '../../src/config/parse.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { tinyGpt2, tinyLlama } from '../helpers/tiny-models.js';

/** Seeded and small: each property builds a model per run. */
const FC = { seed: 42, numRuns: 12 } as const;
const FC_SLOW = { seed: 42, numRuns: 8 } as const;
/** The tiny models' vocabulary and layer count (test/helpers/tiny-models.ts defaults). */
const VOCAB = 32;
const LAYERS = [0, 1];

type Config = Record<string, unknown>;

interface KindCase {
  /** Small valid configs as a user writes them (optional fields may be absent) for the tiny model of `family`. */
  readonly config: (family: ModelFamily) => fc.Arbitrary<Config>;
  /** How to make a config start as the identity (its default zero init), or why the kind never does. */
  readonly identity: { readonly fresh: (config: Config) => Config } | { readonly exempt: string };
  /** True when the config's fresh init gives some variable an exactly zero gradient: such models are randomised first. */
  readonly zeroGradientAtInit: (config: Config) => boolean;
  /** Adjusts a config for the gradient property (say why), e.g. away from an activation with dead regions. */
  readonly forGradient?: (config: Config) => Config;
}

// ---------------------------------------------------------------------------------------------------------
// Per-kind arbitraries

const record = <T extends Config>(model: { [K in keyof T]: fc.Arbitrary<T[K]> }, required: (keyof T)[]): fc.Arbitrary<Config> =>
  fc.record(model, { requiredKeys: required, noNullPrototype: true }) as fc.Arbitrary<Config>;

const adapterName = fc.stringMatching(/^[a-z][a-z0-9_.-]{0,7}$/);
const layers = fc.oneof(fc.constant('all'), fc.shuffledSubarray(LAYERS, { minLength: 1 }));

/** Site entries every form: default (absent), all-linear, names, a glob, a /regex/. */
function siteTargets(family: ModelFamily): fc.Arbitrary<Config> {
  const sites = fc.oneof(
    fc.constant('all-linear'),
    fc.shuffledSubarray([...FAMILY_SITES[family]], { minLength: 1, maxLength: 3 }),
    fc.constantFrom(['attn.*'], ['mlp.*'], ['/^attn\\.(q|v)$/'], ['attn.q', 'mlp.?p']),
  );
  return record({ sites, layers }, []);
}
const layerTargets = record({ layers }, []);

const sitePatternKey = fc.constantFrom('attn.q', 'attn.*', 'mlp.*', '/^attn\\.[kv]$/', 'layers.1.attn.v', 'layers.0.mlp.down');

/**
 * Keeps the pattern keys that match a site (and layer) the config targets: a key matching nothing is a
 * ConfigError (a typo must not silently keep the default rank), which test/hostile covers.
 */
function keepMatchingPatterns(family: ModelFamily): (config: Config) => Config {
  return (config) => {
    const targets = (config['targets'] ?? {}) as { sites?: 'all-linear' | string[]; layers?: 'all' | number[] };
    const sites = resolveSites(targets.sites, ['attn.q', 'attn.v'], { family } as ModelConfig, 'targets.sites');
    const layers = targets.layers === undefined || targets.layers === 'all' ? LAYERS : targets.layers;
    const keep = (patterns: unknown): Record<string, number> => {
      const out: Record<string, number> = {};
      for (const [key, value] of Object.entries((patterns ?? {}) as Record<string, number>)) {
        const matches = sitePattern(key, key);
        const hit = /^layers\.\d+\./.test(key) ? layers.some((l) => sites.some((s) => matches(`layers.${l}.${s}`))) : sites.some(matches);
        if (hit) out[key] = value;
      }
      return out;
    };
    const out: Config = { ...config };
    if (config['rankPattern'] !== undefined) out['rankPattern'] = keep(config['rankPattern']);
    if (config['alphaPattern'] !== undefined) out['alphaPattern'] = keep(config['alphaPattern']);
    return out;
  };
}

const KIND_CASES: Readonly<Partial<Record<string, KindCase>>> = {
  lora: {
    config: (family) =>
      record(
        {
          kind: fc.constant('lora'),
          name: adapterName,
          targets: siteTargets(family),
          r: fc.integer({ min: 1, max: 4 }),
          alpha: fc.oneof(fc.constantFrom(1, 8, 16), fc.double({ min: 0.25, max: 32, noNaN: true })),
          dropout: fc.constantFrom(0, 0.1, 0.5),
          rslora: fc.boolean(),
          rankPattern: fc.dictionary(sitePatternKey, fc.integer({ min: 1, max: 4 }), { maxKeys: 2, noNullPrototype: true }),
          alphaPattern: fc.dictionary(sitePatternKey, fc.integer({ min: 1, max: 16 }), { maxKeys: 2, noNullPrototype: true }),
          init: fc.constantFrom('zero-b', 'random'),
        },
        ['kind', 'name'],
      ).map(keepMatchingPatterns(family)),
    identity: { fresh: (config) => ({ ...config, init: 'zero-b' }) },
    // B = 0 at init, so ∂L/∂A = s·Bᵀ·(∂L/∂y)ᵀ·x is exactly zero.
    zeroGradientAtInit: (config) => config['init'] !== 'random',
  },
  adalora: {
    config: (family) =>
      record(
        {
          kind: fc.constant('adalora'),
          name: adapterName,
          targets: siteTargets(family),
          initR: fc.integer({ min: 1, max: 4 }),
          targetR: fc.integer({ min: 0, max: 4 }),
          alpha: fc.oneof(fc.constantFrom(1, 8, 16), fc.double({ min: 0.25, max: 32, noNaN: true })),
          dropout: fc.constantFrom(0, 0.1, 0.5),
          orthWeight: fc.constantFrom(0, 0.1, 0.5),
          init: fc.constantFrom('zero-lambda', 'random'),
        },
        ['kind', 'name'],
      ).map((config) => ({ ...config, targetR: Math.min(Number(config['targetR'] ?? 0), Number(config['initR'] ?? 12)) })),
    identity: { fresh: (config) => ({ ...config, init: 'zero-lambda' }) },
    // Λ = 0 at init, so ∂L/∂P = s·(∂L/∂y)ᵀ·(x·Qᵀ ⊙ Λ) and ∂L/∂Q are exactly zero.
    zeroGradientAtInit: (config) => config['init'] !== 'random',
  },
  bottleneck: {
    config: () =>
      record(
        {
          kind: fc.constant('bottleneck'),
          name: adapterName,
          targets: layerTargets,
          reductionFactor: fc.integer({ min: 1, max: 16 }),
          bottleneckDim: fc.integer({ min: 1, max: 6 }),
          placement: fc.constantFrom('houlsby', 'pfeiffer'),
          activation: fc.constantFrom('relu', 'gelu', 'silu', 'tanh'),
          dropout: fc.constantFrom(0, 0.1),
          init: fc.constantFrom('zero-up', 'random'),
        },
        ['kind', 'name'],
      ),
    identity: { fresh: (config) => ({ ...config, init: 'zero-up' }) },
    // up = 0 at init, so the down projection's weight and bias get exactly zero gradient.
    zeroGradientAtInit: (config) => config['init'] !== 'random',
    // ReLU (the default) legitimately zeroes every gradient of a bottleneck whose units are all negative on
    // every row of a tiny batch (possible with r = 1 and a few tokens); the gradient property uses tanh instead.
    forGradient: (config) => ({ ...config, activation: 'tanh' }),
  },
  prefix: {
    config: () =>
      record(
        {
          kind: fc.constant('prefix'),
          name: adapterName,
          targets: layerTargets,
          prefixLength: fc.integer({ min: 1, max: 4 }),
          reparameterize: fc.boolean(),
          reparamHiddenDim: fc.integer({ min: 2, max: 8 }),
          init: fc.constant('random'),
        },
        ['kind', 'name'],
      ),
    // Prefix slots are extra attention targets, not an additive delta: even a fresh prefix takes probability
    // mass from the real tokens (src/adapters/prefix/config.ts), so it cannot start as the identity.
    identity: { exempt: 'prefix slots take attention mass from the real tokens from the first step, by design' },
    zeroGradientAtInit: () => false,
  },
  ia3: {
    config: (family) =>
      record(
        {
          kind: fc.constant('ia3'),
          name: adapterName,
          targets: siteTargets(family),
          feedforwardSites: fc.oneof(fc.shuffledSubarray([...FAMILY_SITES[family]], { minLength: 1, maxLength: 2 }), fc.constant(['mlp.*'])),
        },
        ['kind', 'name'],
      ),
    identity: { fresh: (config) => config },
    zeroGradientAtInit: () => false,
  },
};

function caseFor(kind: string): KindCase {
  const found = KIND_CASES[kind];
  if (found === undefined) {
    throw new Error(
      `adapter kind '${kind}' is registered in ADAPTER_KINDS but has no conformance case: add one to KIND_CASES in test/adapters/conformance.test.ts`,
    );
  }
  return found;
}

// ---------------------------------------------------------------------------------------------------------
// Inputs and helpers

interface Batch {
  readonly prompts: number[][];
  readonly ids: number[][];
  readonly mask: number[][];
}

/** 1–3 rows of different lengths, left-padded (id 0, mask 0). */
function batches(minLength = 1): fc.Arbitrary<Batch> {
  const row = fc.array(fc.integer({ min: 0, max: VOCAB - 1 }), { minLength, maxLength: 6 });
  return fc.array(row, { minLength: 1, maxLength: 3 }).map((prompts) => ({ prompts, ...padLeft(prompts) }));
}

const specSeed = fc.integer({ min: 0, max: 10_000 });

function logits(run: () => tf.Tensor): Float32Array {
  const out = run();
  const values = out.dataSync() as Float32Array;
  out.dispose();
  return values;
}

/** Bit-for-bit equality (so −0 ≠ +0 and NaN payloads count). */
function expectSameBits(actual: Float32Array, expected: Float32Array, what: string): void {
  expect(actual.length, what).toBe(expected.length);
  const same = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength).equals(Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength));
  if (!same) {
    const i = actual.findIndex((v, j) => !Object.is(v, expected[j]));
    throw new Error(`${what}: outputs differ in bits, first at index ${i} (${actual[i]} vs ${expected[i]})`);
  }
}

/** Copies of the bytes of every base tensor. */
function baseBytes(base: Transformer): Buffer[] {
  return listWeightTensors(base.weights).map((t) => {
    const data = t.dataSync();
    return Buffer.from(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  });
}

/** Re-draws every adapter variable from N(0, std²) (seeded), so modules are far from their initialisation. */
function randomise(model: AdaptedModel, seed: number, std = 0.5): void {
  model.variables().forEach((v, i) => tf.tidy(() => v.assign(tf.randomNormal(v.shape, 0, std, 'float32', seed + i))));
}

/** Mean next-token-style cross-entropy over real tokens (targets are a fixed function of the ids). */
function lossOf(model: AdaptedModel, batch: Batch, training: boolean): tf.Scalar {
  const out = model.forward({ ids: batch.ids, mask: batch.mask, training }) as tf.Tensor3D; // [B, T, V]
  const targets = tf.oneHot(
    tf.tensor2d(
      batch.ids.map((r) => r.map((id) => (id * 7 + 3) % VOCAB)),
      undefined,
      'int32',
    ),
    VOCAB,
  ); // [B, T, V]
  const mask = tf.tensor2d(batch.mask); // [B, T]
  const picked = tf.sum(tf.mul(tf.logSoftmax(out), targets), -1); // [B, T]
  return tf.neg<tf.Scalar>(tf.div<tf.Scalar>(tf.sum(tf.mul(picked, mask)), tf.sum(mask))); // []
}

// ---------------------------------------------------------------------------------------------------------

const KINDS = Object.keys(ADAPTER_KINDS);

test('every kind in ADAPTER_KINDS has a conformance case (add one to KIND_CASES with a new kind)', () => {
  const missing = KINDS.filter((kind) => KIND_CASES[kind] === undefined);
  expect(missing, `kinds without a conformance arbitrary: ${missing.join(', ')}`).toEqual([]);
});

describe.each([
  ['llama', tinyLlama],
  ['gpt2', tinyGpt2],
] as const)('adapter conformance on tiny %s', (family, make) => {
  let base: Transformer;
  beforeAll(() => {
    base = make();
  });
  afterAll(() => base.dispose());

  describe.each(KINDS)('%s', (kind) => {
    test('a freshly initialised module leaves the output bit-identical to the base (prefix: exempt, finite only)', () => {
      const kindCase = caseFor(kind);
      fc.assert(
        fc.property(kindCase.config(family), batches(), specSeed, (config, batch, seed) => {
          const identity = kindCase.identity;
          const fresh = 'fresh' in identity ? identity.fresh(config) : config;
          const model = AdaptedModel.create(base, { seed, adapters: [fresh] });
          try {
            const adapted = logits(() => model.forward({ ids: batch.ids, mask: batch.mask }));
            if ('exempt' in identity) {
              // The weaker property for exempt kinds: the output stays finite.
              expect(adapted.every(Number.isFinite), 'finite output').toBe(true);
              return;
            }
            expectSameBits(
              adapted,
              logits(() => base.forward({ ids: batch.ids, mask: batch.mask })),
              'fresh adapter vs base',
            );
          } finally {
            model.dispose();
          }
        }),
        FC,
      );
    });

    test("select: 'base' is exactly the base output whatever the adapter's weights", () => {
      fc.assert(
        fc.property(caseFor(kind).config(family), batches(), specSeed, (config, batch, seed) => {
          const model = AdaptedModel.create(base, { seed, adapters: [config] });
          try {
            randomise(model, seed);
            const expected = logits(() => base.forward({ ids: batch.ids, mask: batch.mask }));
            expectSameBits(
              logits(() => model.forward({ ids: batch.ids, mask: batch.mask, select: 'base' })),
              expected,
              "select: 'base' vs base",
            );
            // Not vacuous: the randomised adapter does change the output when applied.
            expect(logits(() => model.forward({ ids: batch.ids, mask: batch.mask }))).not.toEqual(expected);
          } finally {
            model.dispose();
          }
        }),
        FC,
      );
    });

    test('a training forward and a gradient step on the adapter never change a base weight (and leak nothing)', () => {
      const baseTensors = listWeightTensors(base.weights);
      expect(baseTensors.some((t) => t instanceof tf.Variable)).toBe(false);
      fc.assert(
        fc.property(caseFor(kind).config(family), batches(2), specSeed, (config, batch, seed) => {
          const before = baseBytes(base);
          const baseOut = logits(() => base.forward({ ids: batch.ids, mask: batch.mask }));
          const start = tf.memory().numTensors;
          const model = AdaptedModel.create(base, { seed, adapters: [config] });
          const variables = model.variables();
          const baseIds = new Set(baseTensors.map((t) => t.id));
          expect(
            variables.some((v) => baseIds.has(v.id)),
            'an adapter variable is a base tensor',
          ).toBe(false);
          logits(() => model.forward({ ids: batch.ids, mask: batch.mask, training: true }));
          const { value, grads } = tf.variableGrads(() => lossOf(model, batch, true), variables);
          tf.tidy(() => {
            for (const v of variables) {
              const g = grads[v.name];
              if (g !== undefined) v.assign(tf.sub(v, tf.mul(g, 0.5)));
            }
          });
          tf.dispose([value, ...Object.values(grads)]);
          logits(() => model.forward({ ids: batch.ids, mask: batch.mask }));
          model.dispose();
          expect(tf.memory().numTensors, 'tensors after dispose').toBe(start);
          baseBytes(base).forEach((bytes, i) => expect(bytes.equals(before[i] as Buffer), `base tensor ${i} changed`).toBe(true));
          expectSameBits(
            logits(() => base.forward({ ids: batch.ids, mask: batch.mask })),
            baseOut,
            'base output after training the adapter',
          );
        }),
        FC_SLOW,
      );
    });

    test('spec → JSON → parse round-trips, alone and inside an AdaptedModelSpec with a composition', () => {
      const kindCase = caseFor(kind);
      fc.assert(
        fc.property(kindCase.config(family), (config) => {
          const once = parseConfig(AdapterSpec, config, 'adapter');
          const twice = parseConfig(AdapterSpec, JSON.parse(JSON.stringify(once)), 'adapter');
          expect(JSON.stringify(twice)).toBe(JSON.stringify(once));
          expect(twice).toEqual(once);
          // The kind's own schema (what its descriptor validates with) agrees with the spec union.
          expect(JSON.stringify(parseConfig(adapterKind(kind).schema, config, 'adapter'))).toBe(JSON.stringify(once));
        }),
        FC,
      );
      const specs = fc.uniqueArray(kindCase.config(family), { minLength: 1, maxLength: 3, selector: (c) => c['name'] }).chain((adapters) =>
        record(
          {
            seed: specSeed,
            adapters: fc.constant(adapters),
            composition: fc
              .shuffledSubarray(
                adapters.map((a) => a['name'] as string),
                { minLength: adapters.length },
              )
              .chain(compositionOf),
          },
          ['adapters'],
        ),
      );
      fc.assert(
        fc.property(specs, (spec) => {
          const once = parseAdaptedModelSpec(spec);
          const twice = parseAdaptedModelSpec(JSON.parse(JSON.stringify(once)));
          expect(JSON.stringify(twice)).toBe(JSON.stringify(once));
        }),
        FC,
      );
    });

    test('every module variable is trainable and gets a finite, non-zero gradient through the whole model', () => {
      const kindCase = caseFor(kind);
      fc.assert(
        // Rows of ≥ 2 real tokens: with one key per query, softmax is constant and keys get no gradient at all.
        fc.property(kindCase.config(family), batches(2), specSeed, (raw, batch, seed) => {
          const config = kindCase.forGradient?.(raw) ?? raw;
          const model = AdaptedModel.create(base, { seed, adapters: [config] });
          try {
            // Kinds whose fresh init zeroes some gradient (LoRA: B = 0 → ∂A = 0; bottleneck: up = 0 → ∂down = 0)
            // are randomised first; the others are tested from their real initialisation.
            if (kindCase.zeroGradientAtInit(config)) randomise(model, seed);
            const moduleVariables = [...model.adapters.values()].flatMap((a) => [...a.modules.values()]).flatMap((m) => [...m.variables()]);
            const variables = model.variables();
            expect(moduleVariables.length).toBeGreaterThan(0);
            expect(variables.map((v) => v.id)).toEqual(moduleVariables.map((v) => v.id));
            for (const v of variables) expect(v.trainable, `${v.name} trainable`).toBe(true);
            // Inference mode (no dropout) keeps the check deterministic; the graph is the full forward.
            const { value, grads } = tf.variableGrads(() => lossOf(model, batch, false), variables);
            try {
              expect(Number.isFinite(value.dataSync()[0])).toBe(true);
              for (const v of variables) {
                const g = grads[v.name];
                expect(g, `${v.name} has a gradient`).toBeDefined();
                const values = (g as tf.Tensor).dataSync();
                expect(values.every(Number.isFinite), `${v.name} gradient finite`).toBe(true);
                expect(
                  values.some((x) => x !== 0),
                  `${v.name} gradient non-zero`,
                ).toBe(true);
              }
            } finally {
              tf.dispose([value, ...Object.values(grads)]);
            }
          } finally {
            model.dispose();
          }
        }),
        FC_SLOW,
      );
    });

    test('no tensor leaks: create, forward, generate 3 tokens, dispose', () => {
      fc.assert(
        fc.property(caseFor(kind).config(family), batches(), specSeed, (config, batch, seed) => {
          const start = tf.memory().numTensors;
          const model = AdaptedModel.create(base, { seed, adapters: [config] });
          logits(() => model.forward({ ids: batch.ids, mask: batch.mask }));
          const generated = model.generate(batch.prompts, { maxNewTokens: 3, temperature: 0, eosId: null });
          expect(generated.map((r) => r.length)).toEqual(batch.prompts.map((p) => p.length + 3)); // prompt + 3 new tokens
          model.dispose();
          expect(tf.memory().numTensors).toBe(start);
        }),
        FC,
      );
    });
  });
});

/** A composition using each name exactly once: leaves, stack, parallel, average (with or without weights), route. */
function compositionOf(names: readonly string[]): fc.Arbitrary<unknown> {
  const [first] = names;
  if (first === undefined) throw new Error('compositionOf needs a name');
  if (names.length === 1) return fc.constantFrom(first, { kind: 'adapter', adapter: first });
  const route = record(
    {
      kind: fc.constant('route'),
      experts: fc.constant([...names]),
      router: fc.constantFrom({ kind: 'top-k', k: 1 }, { kind: 'soft' }),
      nullExpert: fc.boolean(),
      granularity: fc.constantFrom('token', 'sequence'),
    },
    ['kind', 'experts', 'router'],
  );
  const split = fc.integer({ min: 1, max: names.length - 1 });
  const nested = split.chain((at) => {
    const children = fc.tuple(compositionOf(names.slice(0, at)), compositionOf(names.slice(at)));
    const weight = fc.double({ min: -4, max: 4, noNaN: true });
    return fc.oneof(
      record({ kind: fc.constantFrom('stack', 'parallel'), children }, ['kind', 'children']),
      record({ kind: fc.constant('average'), children, weights: fc.tuple(weight, weight) }, ['kind', 'children']),
    );
  });
  return fc.oneof(nested, route);
}
