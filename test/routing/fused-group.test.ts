// The shared-input fused inference path (src/routing/fused-group.ts) against the per-site path it replaces
// (`fusion: false`): the same logits within float round-off, the same traces (experts exactly, weights within
// round-off), the same greedy generations, for full forwards with padding (many and few rows) and KV-cached
// decoding, over random route configurations; and a flat tensor count once the fused operands are built.
import { fc } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import type { Transformer } from '../../src/base/transformer.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import type { RoutingTraceEntry } from '../../src/routing/trace.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const routers = builtinRouters();
const ALL_SITES = ['attn.q', 'attn.k', 'attn.v', 'attn.o', 'mlp.gate', 'mlp.up', 'mlp.down'];

interface Config {
  readonly experts: number;
  readonly k: number;
  readonly kind: 'top-k' | 'noisy-top-k';
  readonly temperature: number;
  readonly nullExpert: boolean;
  readonly sites: readonly string[];
  /** Rank of expert 0 (the others use r = 2), so ranks can differ between experts. */
  readonly firstRank: number;
  /** Expert 0 adapts only the first of the sites, so a group's sites can differ in rank layout (no fusion there). */
  readonly firstOnly: boolean;
  readonly seed: number;
}

function spec(c: Config): Record<string, unknown> {
  const adapters = Array.from({ length: c.experts }, (_, i) => ({
    kind: 'lora',
    name: `e${i}`,
    r: i === 0 ? c.firstRank : 2,
    alpha: 4,
    init: 'random',
    targets: { sites: i === 0 && c.firstOnly ? c.sites.slice(0, 1) : [...c.sites] },
  }));
  return {
    seed: c.seed,
    adapters,
    composition: {
      kind: 'route',
      experts: adapters.map((a) => a.name),
      nullExpert: c.nullExpert,
      router: { kind: c.kind, k: c.k, temperature: c.temperature },
    },
  };
}

/** Logits on the host and the trace of one forward. */
type Fusion = boolean | 'device';

function forward(model: AdaptedModel, ids: number[][], mask: number[][] | undefined, fusion: Fusion): { logits: Float32Array; trace: RoutingTraceEntry[] } {
  const trace: RoutingTraceEntry[] = [];
  const out = model.forward({ ids, ...(mask === undefined ? {} : { mask }), routing: { fusion, trace } });
  const logits = out.dataSync() as Float32Array;
  out.dispose();
  return { logits, trace };
}

function logitsOnly(model: AdaptedModel, ids: number[][], mask: number[][] | undefined, fusion: Fusion): Float32Array {
  const out = model.forward({ ids, ...(mask === undefined ? {} : { mask }), routing: { fusion } });
  const logits = out.dataSync() as Float32Array;
  out.dispose();
  return logits;
}

function expectSameTraces(actual: readonly RoutingTraceEntry[], expected: readonly RoutingTraceEntry[]): void {
  expect(actual.length).toBe(expected.length);
  actual.forEach((entry, i) => {
    const other = expected[i] as RoutingTraceEntry;
    expect({ ...entry, weights: [] }).toEqual({ ...other, weights: [] });
    expectClose(entry.weights, other.weights, { rtol: 1e-5, atol: 1e-6 });
  });
}

const ids = [
  [3, 7, 1, 9, 4, 2],
  [0, 0, 5, 6, 8, 1],
];
const mask = [
  [1, 1, 1, 1, 1, 1],
  [0, 0, 1, 1, 1, 1],
];
/** More rows than HOST_ROUTING_MAX_ROWS and GATHER_SPREAD_MAX_ROWS (64): routed on the device, through dense gates. */
const longIds = [Array.from({ length: 40 }, (_, t) => (t * 7) % 32), Array.from({ length: 40 }, (_, t) => (t * 5 + 3) % 32)];

const configs: fc.Arbitrary<Config> = fc
  .record({
    experts: fc.integer({ min: 1, max: 5 }),
    kind: fc.constantFrom<'top-k' | 'noisy-top-k'>('top-k', 'noisy-top-k'),
    temperature: fc.constantFrom(1, 0.5),
    nullExpert: fc.boolean(),
    sites: fc.subarray(ALL_SITES, { minLength: 1 }),
    firstRank: fc.constantFrom(2, 3),
    firstOnly: fc.boolean(),
    seed: fc.integer({ min: 0, max: 1000 }),
    kSeed: fc.integer({ min: 1, max: 3 }),
  })
  .map(({ kSeed, ...c }) => ({ ...c, k: Math.min(kSeed, c.experts + (c.nullExpert ? 1 : 0)) }));

describe('shared-input fused inference path', () => {
  let base: Transformer;
  beforeAll(() => {
    base = tinyLlama();
  });
  afterAll(() => base.dispose());

  test("gives the per-site path's logits, traces and generations for random route configurations", () => {
    fc.assert(
      fc.property(configs, (c) => {
        const model = AdaptedModel.create(base, spec(c), { routers });
        try {
          // Few rows with padding: routed on the host (wasm, cpu), with and without a trace.
          expectClose(logitsOnly(model, ids, mask, true), logitsOnly(model, ids, mask, false), { rtol: 1e-4, atol: 1e-5 });
          const perSite = forward(model, ids, mask, false);
          for (const fusion of [true, 'device'] as const) {
            const fused = forward(model, ids, mask, fusion);
            expectClose(fused.logits, perSite.logits, { rtol: 1e-4, atol: 1e-5 });
            expectSameTraces(fused.trace, perSite.trace);
          }
          // Few rows routed on the device: the spread gathered per slot.
          expectClose(logitsOnly(model, ids, mask, 'device'), perSite.logits, { rtol: 1e-4, atol: 1e-5 });
          // Many rows, no padding: routed on the device (gathered identity, then the block-diagonal spread).
          expectClose(logitsOnly(model, longIds, undefined, true), logitsOnly(model, longIds, undefined, false), { rtol: 1e-4, atol: 1e-5 });
          const longFused = forward(model, longIds, undefined, true);
          const longPerSite = forward(model, longIds, undefined, false);
          expectClose(longFused.logits, longPerSite.logits, { rtol: 1e-4, atol: 1e-5 });
          expectSameTraces(longFused.trace, longPerSite.trace);
          // KV-cached decoding (one and two rows per step), with traces.
          for (const prompts of [
            [[1, 2, 3]],
            [
              [1, 2, 3],
              [4, 5],
            ],
          ]) {
            const traceFused: RoutingTraceEntry[] = [];
            const tracePerSite: RoutingTraceEntry[] = [];
            const a = model.generate(prompts, { maxNewTokens: 4, temperature: 0, eosId: null, routing: { fusion: true, trace: traceFused } });
            const b = model.generate(prompts, { maxNewTokens: 4, temperature: 0, eosId: null, routing: { fusion: false, trace: tracePerSite } });
            expect(a).toEqual(b);
            expectSameTraces(traceFused, tracePerSite);
            expect(model.generate(prompts, { maxNewTokens: 4, temperature: 0, eosId: null, routing: { fusion: 'device' } })).toEqual(b);
            expect(model.generate(prompts, { maxNewTokens: 4, temperature: 0, eosId: null })).toEqual(b);
          }
        } finally {
          model.dispose();
        }
      }),
      { seed: 20241128, numRuns: 16 },
    );
  });

  test('is the default at inference and leaves the tensor count flat once its operands are built', async () => {
    const config: Config = { experts: 4, k: 2, kind: 'top-k', temperature: 1, nullExpert: false, sites: ALL_SITES, firstRank: 2, firstOnly: false, seed: 3 };
    const start = tf.memory().numTensors;
    const model = AdaptedModel.create(base, spec(config), { routers });
    expectClose(logitsOnly(model, ids, mask, true), logitsOnly(model, ids, mask, false), { rtol: 1e-4, atol: 1e-5 });
    model.generate([[1, 2, 3]], { maxNewTokens: 2, temperature: 0, eosId: null }); // builds the fused operands
    const built = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) {
      logitsOnly(model, ids, mask, true);
      logitsOnly(model, longIds, undefined, true);
      forward(model, ids, mask, true);
      forward(model, ids, mask, 'device');
      model.generate([[1, 2, 3], [4]], { maxNewTokens: 3, temperature: 0, eosId: null, routing: { trace: [] } });
      expect(tf.memory().numTensors).toBe(built);
    }
    // The fused path is really taken: far fewer kernels per forward than the per-site path.
    const kernels = async (fusion: boolean): Promise<number> => {
      const info = await tf.profile(() => model.forward({ ids: [[1]], routing: { fusion } }));
      tf.dispose(info.result);
      return info.kernels.length;
    };
    const [fusedKernels, perSiteKernels] = [await kernels(true), await kernels(false)];
    expect(fusedKernels, `${fusedKernels} vs ${perSiteKernels}`).toBeLessThan(perSiteKernels * 0.75);
    expect(tf.memory().numTensors).toBe(built);
    model.dispose();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('training forwards keep the per-site path and still reach every router', () => {
    const config: Config = {
      experts: 3,
      k: 2,
      kind: 'top-k',
      temperature: 1,
      nullExpert: false,
      sites: ['attn.q', 'attn.k', 'attn.v'],
      firstRank: 2,
      firstOnly: false,
      seed: 5,
    };
    const model = AdaptedModel.create(base, spec(config), { routers });
    const trained = logitsOnly(model, ids, mask, true);
    const { grads, value } = tf.variableGrads(() => tf.sum(tf.square(model.forward({ ids, mask, training: true }))) as tf.Scalar, model.variables());
    const routerNames = [...model.namedVariables()].filter(([name]) => name.startsWith('route0/'));
    expect(routerNames.length).toBe(base.config.nLayers * 3);
    for (const [name, variable] of routerNames) {
      const grad = grads[variable.name];
      expect(grad, name).toBeDefined();
      expect(grad ? (tf.norm(grad).dataSync()[0] ?? 0) : 0, name).toBeGreaterThan(0);
    }
    tf.dispose([value, ...Object.values(grads)]);
    expect(trained.length).toBeGreaterThan(0);
    model.dispose();
  });
});
