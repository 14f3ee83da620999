// Routed compositions end to end on tiny models: the routed layer's identities (null expert, single
// expert, dense = grouped, permutation of tokens and of experts, dropped tokens keep the base output),
// gradients to routers and experts, traces, sequence routing with the KV cache, and no leaks.
import { fc, test as fcTest } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import type { Transformer } from '../../src/base/transformer.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import type { RoutingTraceEntry } from '../../src/routing/trace.js';
import type { Router } from '../../src/routing/router.js';
import { adaptSite } from '../helpers/site-hooks.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const routers = builtinRouters();
const lora = (name: string, sites: string[] = ['attn.q', 'attn.v', 'mlp.down']) => ({ kind: 'lora', name, r: 2, alpha: 4, init: 'random', targets: { sites } });
const experts = (n: number, sites?: string[]) => Array.from({ length: n }, (_, i) => lora(`e${i}`, sites));
const names = (n: number) => Array.from({ length: n }, (_, i) => `e${i}`);

const ids = [
  [3, 7, 1, 9, 4, 2],
  [0, 0, 5, 6, 8, 1],
];
const mask = [
  [1, 1, 1, 1, 1, 1],
  [0, 0, 1, 1, 1, 1],
];

function run(model: AdaptedModel, options: Partial<Parameters<AdaptedModel['forward']>[0]> = {}): Float32Array {
  const out = model.forward({ ids, mask, ...options });
  const values = out.dataSync() as Float32Array;
  out.dispose();
  return values;
}

/** Values at real positions only (padded positions are unconstrained). */
function realRows(values: Float32Array, vocab: number): number[] {
  const out: number[] = [];
  mask.forEach((row, b) =>
    row.forEach((m, t) => {
      if (m === 1) out.push(...values.subarray((b * row.length + t) * vocab, (b * row.length + t + 1) * vocab));
    }),
  );
  return out;
}

describe('routed LoRA experts on a tiny llama', () => {
  let base: Transformer;
  let baseLogits: Float32Array;
  beforeAll(() => {
    base = tinyLlama();
    const out = base.forward({ ids, mask });
    baseLogits = out.dataSync() as Float32Array;
    out.dispose();
  });
  afterAll(() => base.dispose());

  test('all routing weight on the null expert gives exactly the base output', () => {
    // A task router mapping every task to the null expert (choice E) puts weight 1 on it.
    const model = AdaptedModel.create(
      base,
      { adapters: experts(3), composition: { kind: 'route', experts: names(3), nullExpert: true, router: { kind: 'task', mapping: { '0': 3 } } } },
      { routers },
    );
    expect(run(model, { routing: { taskIds: [0, 0] } })).toEqual(baseLogits);
    model.dispose();
  });

  test('a route with one expert and weight 1 equals that adapter alone', () => {
    const model = AdaptedModel.create(
      base,
      { adapters: experts(1), composition: { kind: 'route', experts: ['e0'], router: { kind: 'top-k', k: 1 } } },
      { routers },
    );
    // Padding rows get no routing weight (they do not count as tokens), so compare real positions only.
    const vocab = base.config.vocabSize;
    expectClose(realRows(run(model), vocab), realRows(run(model, { select: { adapter: 'e0' } }), vocab), { rtol: 1e-5, atol: 1e-6 });
    model.dispose();
  });

  test.each(['top-k', 'soft', 'top-p', 'switch', 'expert-choice', 'hash', 'noisy-top-k'])('dense and grouped execution agree for %s', (kind) => {
    const router = kind === 'top-k' ? { kind, k: 2 } : { kind };
    const model = AdaptedModel.create(base, { seed: 11, adapters: experts(4), composition: { kind: 'route', experts: names(4), router } }, { routers });
    const dense = run(model, { routing: { strategy: 'dense' } });
    const grouped = run(model, { routing: { strategy: 'grouped' } });
    expectClose(grouped, dense, { rtol: 1e-5, atol: 1e-6 });
    expect(dense).not.toEqual(baseLogits);
    model.dispose();
  });

  test('dense and grouped agree for mixed expert kinds (LoRA, bottleneck, (IA)3)', () => {
    const spec = {
      seed: 2,
      adapters: [lora('l'), { kind: 'bottleneck', name: 'b', init: 'random', placement: 'houlsby' }, { kind: 'ia3', name: 'i' }],
      composition: { kind: 'route', experts: ['l', 'b', 'i'], router: { kind: 'top-k', k: 2 } },
    };
    const model = AdaptedModel.create(base, spec, { routers });
    for (const v of model.adapters.get('i')?.modules.values() ?? [])
      for (const variable of v.variables()) variable.assign(tf.randomUniform(variable.shape, 0.5, 1.5, 'float32', 3));
    expectClose(run(model, { routing: { strategy: 'grouped' } }), run(model, { routing: { strategy: 'dense' } }), { rtol: 1e-5, atol: 1e-6 });
    model.dispose();
  });

  fcTest.prop([fc.integer({ min: 0, max: 1000 })], { numRuns: 6, seed: 7 })(
    'permuting the rows of a batch permutes the outputs (top-k, token routing)',
    (seed) => {
      const model = AdaptedModel.create(
        base,
        { seed, adapters: experts(4), composition: { kind: 'route', experts: names(4), router: { kind: 'top-k', k: 2 } } },
        { routers },
      );
      const forward = (rows: number[][], rowMask: number[][]): Float32Array => {
        const out = model.forward({ ids: rows, mask: rowMask });
        const values = out.dataSync() as Float32Array;
        out.dispose();
        return values;
      };
      const straight = forward(ids, mask);
      const swapped = forward([ids[1] as number[], ids[0] as number[]], [mask[1] as number[], mask[0] as number[]]);
      const half = straight.length / 2;
      expectClose(swapped.subarray(0, half), straight.subarray(half), { rtol: 1e-5, atol: 1e-6 });
      expectClose(swapped.subarray(half), straight.subarray(0, half), { rtol: 1e-5, atol: 1e-6 });
      model.dispose();
    },
  );

  test('permuting experts together with the router columns leaves outputs unchanged', () => {
    const spec = (order: number[]) => ({
      seed: 4,
      adapters: experts(3),
      composition: { kind: 'route', experts: order.map((i) => `e${i}`), router: { kind: 'top-k', k: 2 } },
    });
    const a = AdaptedModel.create(base, spec([0, 1, 2]), { routers });
    const order = [2, 0, 1];
    const b = AdaptedModel.create(base, spec(order), { routers });
    // Same adapters (same seed, same names → same weights); permute each router's gate columns to match.
    const routersA = a.routes[0]?.routerList() ?? [];
    const routersB = b.routes[0]?.routerList() ?? [];
    routersA.forEach((router, i) => {
      const gate = router.variables()[0] as tf.Variable;
      const permuted = tf.tidy(() => tf.gather(gate, tf.tensor1d(order, 'int32'), 1));
      ((routersB[i] as Router).variables()[0] as tf.Variable).assign(permuted);
      permuted.dispose();
    });
    expectClose(run(b), run(a), { rtol: 1e-5, atol: 1e-6 });
    a.dispose();
    b.dispose();
  });

  test('switch: tokens over capacity are dropped and keep exactly the base output at the routed site', () => {
    // Capacity factor tiny → capacity 1 per expert: most tokens are dropped.
    const model = AdaptedModel.create(
      base,
      { adapters: experts(2, ['attn.q']), composition: { kind: 'route', experts: names(2), router: { kind: 'switch', capacityFactor: 0.01 } } },
      { routers },
    );
    const trace: RoutingTraceEntry[] = [];
    const hooks = model.hooks({ routing: { trace } });
    const x = tf.randomNormal([6, base.config.dim], 0, 1, 'float32', 5) as tf.Tensor2D;
    const y = tf.randomNormal([6, base.config.dim], 0, 1, 'float32', 6) as tf.Tensor2D;
    const forward = { batch: 1, tokens: 6, ids: [[1, 2, 3, 4, 5, 6]], mask: tf.ones([1, 6]) as tf.Tensor2D, pastLength: 0, cache: undefined, training: false };
    hooks?.begin?.(forward);
    const adapted = adaptSite(hooks, base, 0, 'attn.q', x, y);
    const dropped = trace.filter((e) => e.dropped).map((e) => e.token);
    expect(dropped.length).toBeGreaterThanOrEqual(3);
    const yv = y.arraySync();
    const av = adapted.arraySync();
    for (const t of dropped) expect(av[t]).toEqual(yv[t]);
    // Each expert received at most its capacity (1).
    const load = new Map<string, number>();
    for (const e of trace) for (const name of e.experts) load.set(name, (load.get(name) ?? 0) + 1);
    for (const count of load.values()) expect(count).toBeLessThanOrEqual(1);
    tf.dispose([x, y, adapted, forward.mask]);
    model.dispose();
  });

  test('gradients reach the router and every selected expert', () => {
    const model = AdaptedModel.create(
      base,
      { adapters: experts(3), composition: { kind: 'route', experts: names(3), router: { kind: 'top-k', k: 2 } } },
      { routers },
    );
    const trace: RoutingTraceEntry[] = [];
    const auxLosses: tf.Scalar[] = [];
    const { grads, value } = tf.variableGrads(
      () => tf.sum(tf.square(model.forward({ ids, mask, training: true, routing: { trace, auxLosses } }))) as tf.Scalar,
      model.variables(),
    );
    const selected = new Set(trace.filter((e) => e.layer === 0 && e.site === 'attn.q').flatMap((e) => e.experts));
    const named = model.namedVariables();
    for (const [name, variable] of named) {
      const grad = grads[variable.name];
      expect(grad, name).toBeDefined();
      const norm = grad ? (tf.norm(grad).dataSync()[0] ?? 0) : 0;
      expect(Number.isFinite(norm)).toBe(true);
      if (name.startsWith('route0/0|attn.q')) expect(norm, name).toBeGreaterThan(0);
      const expert = name.split('/')[0] ?? '';
      if (name.includes('/0|attn.q/') && selected.has(expert)) expect(norm, name).toBeGreaterThan(0);
    }
    expect(auxLosses.length).toBeGreaterThan(0);
    tf.dispose([value, ...Object.values(grads), ...auxLosses]);
    model.dispose();
  });

  test('traces satisfy the routing invariants: k distinct experts, weights ≥ 0 summing to 1, real tokens only', () => {
    const model = AdaptedModel.create(
      base,
      { adapters: experts(4), composition: { kind: 'route', experts: names(4), router: { kind: 'top-k', k: 2 } } },
      { routers },
    );
    const trace: RoutingTraceEntry[] = [];
    run(model, { routing: { trace } });
    const sites = new Set(trace.map((e) => `${e.layer}|${e.site}`));
    expect(sites.size).toBe(base.config.nLayers * 3);
    expect(trace.length).toBe(sites.size * (6 + 4));
    for (const entry of trace) {
      expect(new Set(entry.experts).size).toBe(2);
      expect(entry.weights.every((w) => w >= 0)).toBe(true);
      expect(entry.weights.reduce((s, w) => s + w, 0)).toBeCloseTo(1, 5);
      expect(entry.dropped).toBe(false);
    }
    expect(
      trace
        .filter((e) => e.batch === 1)
        .map((e) => e.token)
        .sort((a, b) => a - b)[0],
    ).toBe(0);
    model.dispose();
  });

  test('sequence routing: KV-cached generation equals recomputation, and prefill decisions are reused', () => {
    const spec = {
      seed: 9,
      adapters: [...experts(2), { kind: 'prefix', name: 'p', prefixLength: 3 }],
      composition: { kind: 'route', experts: ['e0', 'e1', 'p'], router: { kind: 'soft' }, granularity: 'sequence', placement: 'layer' },
    };
    const model = AdaptedModel.create(base, spec, { routers });
    run(model); // builds the inference caches of fused LoRA matrices, which live as long as the model
    const start = tf.memory().numTensors;
    const cached = model.generate([[1, 2, 3], [4]], { maxNewTokens: 5, temperature: 0, eosId: null });
    const full = model.generate([[1, 2, 3], [4]], { maxNewTokens: 5, temperature: 0, eosId: null, noCache: true });
    expect(cached).toEqual(full);
    expect(tf.memory().numTensors).toBe(start);
    model.dispose();
  });

  test('a model-level router reading an early layer routes every layer in one pass', () => {
    const spec = { adapters: experts(3), composition: { kind: 'route', experts: names(3), router: { kind: 'top-k', k: 1 }, placement: 'model', readLayer: 0 } };
    const model = AdaptedModel.create(base, spec, { routers });
    const trace: RoutingTraceEntry[] = [];
    const logits = run(model, { routing: { trace } });
    expect(new Set(trace.map((e) => e.site))).toEqual(new Set(['model']));
    expect(trace).toHaveLength(10);
    expect(realRows(logits, base.config.vocabSize)).not.toEqual(realRows(baseLogits, base.config.vocabSize));
    model.dispose();
  });

  test('no tensor leaks across routed forwards, training forwards, traces and generation', () => {
    const start = tf.memory().numTensors;
    const model = AdaptedModel.create(
      base,
      { adapters: experts(4), composition: { kind: 'route', experts: names(4), router: { kind: 'noisy-top-k', k: 2 } } },
      { routers },
    );
    const auxLosses: tf.Scalar[] = [];
    run(model, { training: true, routing: { trace: [], auxLosses } });
    run(model, { routing: { strategy: 'grouped' } });
    model.generate([[1, 2]], { maxNewTokens: 3, temperature: 0, eosId: null, routing: { trace: [] } });
    tf.dispose(auxLosses);
    model.dispose();
    expect(tf.memory().numTensors).toBe(start);
  });

  test("traces$ streams each forward's decisions (generation steps included) as plain data while observed", () => {
    const model = AdaptedModel.create(
      base,
      { adapters: experts(2), composition: { kind: 'route', experts: names(2), router: { kind: 'top-k', k: 1 } } },
      { routers },
    );
    run(model); // not observed: nothing collected
    const events: { pastLength: number; entries: readonly RoutingTraceEntry[] }[] = [];
    const subscription = model.traces$.subscribe((event) => events.push(event));
    const explicit: RoutingTraceEntry[] = [];
    run(model, { routing: { trace: explicit } });
    model.generate([[1, 2, 3]], { maxNewTokens: 3, temperature: 0, eosId: null });
    subscription.unsubscribe();
    run(model);
    expect(events.map((e) => e.pastLength)).toEqual([0, 0, 3, 4]);
    expect(events[0]?.entries).toEqual(explicit);
    // A decode step routes exactly one token per routed point: 3 sites × 2 layers.
    expect(events[2]?.entries).toHaveLength(6);
    expect(events[2]?.entries.every((e) => e.token === 3)).toBe(true);
    model.dispose();
  });

  test('specs that cannot work are ConfigErrors naming the fix', () => {
    expect(() => AdaptedModel.create(base, { adapters: experts(2), composition: { kind: 'route', experts: names(2), router: { kind: 'top-k' } } })).toThrow(
      /builtinRouters/,
    );
    expect(() =>
      AdaptedModel.create(base, { adapters: experts(2), composition: { kind: 'route', experts: names(2), router: { kind: 'nope' } } }, { routers }),
    ).toThrow(/Known kinds: top-k/);
    expect(() =>
      AdaptedModel.create(base, { adapters: experts(2), composition: { kind: 'route', experts: names(2), router: { kind: 'top-k', k: 5 } } }, { routers }),
    ).toThrow(/k/);
    expect(() =>
      AdaptedModel.create(
        base,
        { adapters: [...experts(1), { kind: 'prefix', name: 'p' }], composition: { kind: 'route', experts: ['e0', 'p'], router: { kind: 'soft' } } },
        { routers },
      ),
    ).toThrow(/granularity to 'sequence'/);
  });
});
