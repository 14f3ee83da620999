// A RuntimePool splits one multi-row forward or classify over its workers (one request's prefill on every
// core) and joins the parts into what one runtime gives: rowParts and joinForward checked as properties
// (padding, row order, trace order and batch indices), then a 2-worker pool against one in-process runtime
// on the same weights — rows of unequal lengths for every row-independent selection, traces, task ids,
// classification heads, malformed rows named by their index in the whole call — and a batch-coupled
// (switch) target, which is never split.
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { saveRoutedModel } from '../../src/io/routed-model-dir.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import type { RoutingTraceEntry } from '../../src/routing/trace.js';
import { joinForward, rowParts } from '../../src/runtime/call-rows.js';
import { RuntimePool } from '../../src/runtime/pool.js';
import { RoutedRuntime } from '../../src/runtime/runtime.js';
import type { ForwardResult, Selection } from '../../src/runtime/types.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { writeTinyLlamaDir } from '../helpers/tiny-models.js';
import { lora, makeFixture, prompt, routers, type RuntimeFixture } from './fixtures.js';

describe('rowParts', () => {
  test('cuts rows into min(rows, parts) contiguous, non-empty parts whose sizes differ by at most 1', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 200 }), fc.integer({ min: 1, max: 32 }), (rows, parts) => {
        const cut = rowParts(rows, parts);
        expect(cut).toHaveLength(Math.min(rows, parts));
        expect(cut[0]?.[0]).toBe(0);
        expect(cut.at(-1)?.[1]).toBe(rows);
        for (const [i, [first, last]] of cut.entries()) {
          expect(last).toBeGreaterThan(first);
          if (i > 0) expect(first).toBe(cut[i - 1]?.[1]);
        }
        const sizes = cut.map(([first, last]) => last - first);
        expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
      }),
    );
  });
});

/** A forward answer of left-padded rows as one runtime gives it: row b's own positions hold b·1000 + t·10 + v. */
function answer(lengths: readonly number[], vocab: number, offset: number, traced: boolean): ForwardResult {
  const width = Math.max(...lengths); // T
  const logits = new Float32Array(lengths.length * width * vocab); // [B, T, V]
  const trace: RoutingTraceEntry[] = [];
  for (const layer of [0, 1]) {
    for (const site of ['attn.q', 'mlp.down']) {
      lengths.forEach((n, b) => {
        for (let t = 0; t < n; t++)
          trace.push({ layer, site, route: 0, batch: b + offset, token: t, experts: ['e0'], weights: [1], dropped: false, modality: 'text' });
      });
    }
  }
  lengths.forEach((n, b) => {
    for (let t = 0; t < n; t++) {
      for (let v = 0; v < vocab; v++) logits[(b * width + width - n + t) * vocab + v] = (b + offset) * 1000 + t * 10 + v;
    }
  });
  return { logits, shape: [lengths.length, width, vocab], ...(traced ? { trace } : {}) };
}

describe('joinForward', () => {
  test('the parts of a split call join into the whole call’s answer: padding, row order and trace order', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 6 }), { minLength: 1, maxLength: 9 }),
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 1, max: 3 }),
        fc.boolean(),
        (lengths, workers, vocab, traced) => {
          const parts = rowParts(lengths.length, workers);
          const partAnswers = parts.map(([first, last]) => {
            const own = answer(lengths.slice(first, last), vocab, first, traced);
            // a worker numbers its part's rows from 0
            return own.trace === undefined ? own : { ...own, trace: own.trace.map((e) => ({ ...e, batch: e.batch - first })) };
          });
          const joined = joinForward(partAnswers, parts);
          const whole = answer(lengths, vocab, 0, traced);
          expect(joined.shape).toEqual(whole.shape);
          expect(Array.from(joined.logits)).toEqual(Array.from(whole.logits));
          expect(joined.trace).toEqual(whole.trace);
        },
      ),
    );
  });
});

const TASK_SPEC = {
  seed: 11,
  adapters: [lora('k0'), lora('k1')],
  composition: { kind: 'route', experts: ['k0', 'k1'], router: { kind: 'task' } },
};

describe('RuntimePool splitting a call’s rows', () => {
  let fx: RuntimeFixture;
  let pool: RuntimePool;
  let single: RoutedRuntime;
  const head = { weight: [] as number[][], bias: [0.5, 0, -0.5] };
  beforeAll(async () => {
    fx = await makeFixture();
    const model = join(fx.dir, 'base');
    await writeTinyLlamaDir(model, { maxSeqLen: 160 }); // the fixture's base weights, on disk for the workers
    const task = AdaptedModel.create(fx.base, TASK_SPEC, { routers });
    await saveRoutedModel(join(fx.dir, 'task'), task);
    task.dispose();
    head.weight = Array.from({ length: fx.base.config.dim }, (_, d) => [Math.sin(d), Math.cos(d), 0.1 * d]);
    pool = await RuntimePool.create({ base: { model }, workers: 2, batching: { windowMs: 2, maxBatchSize: 8 } });
    single = RoutedRuntime.create({ base: fx.base, routers, batching: { windowMs: 2, maxBatchSize: 8 } });
    for (const runtime of [pool, single]) {
      await runtime.load('a', { kind: 'peft', dir: fx.peft.a }, { head });
      await runtime.load('b', { kind: 'peft', dir: fx.peft.b });
      await runtime.load('moe', { kind: 'routed', dir: fx.routed });
      await runtime.load('seq', { kind: 'routed', dir: fx.sequence });
      await runtime.load('task', { kind: 'routed', dir: join(fx.dir, 'task') });
    }
  }, 120_000);
  afterAll(async () => {
    await pool?.close();
    single?.dispose();
    await single?.idle();
    await fx?.dispose();
  });

  const ids = [prompt(7, 1), prompt(2, 2), prompt(5, 3), prompt(9, 4), prompt(1, 5)]; // unequal lengths
  const spread = async <T>(call: () => Promise<T>): Promise<{ result: T; served: number[] }> => {
    const before = pool.dispatched;
    const result = await call();
    return { result, served: pool.dispatched.map((n, i) => n - (before[i] ?? 0)) };
  };

  test('every row-independent selection: both workers compute, and the joined logits are the single runtime’s', async () => {
    const selects: Selection[] = ['base', { adapter: 'a' }, { combine: 'average', adapters: ['a', 'b'] }, { routed: 'moe' }, { routed: 'seq' }];
    for (const select of selects) {
      const { result, served } = await spread(() => pool.forward(ids, { select }));
      expect(served, JSON.stringify(select)).toEqual([1, 1]);
      const solo = await single.forward(ids, { select });
      expect(result.shape).toEqual(solo.shape);
      expectClose(result.logits, solo.logits, { rtol: 1e-5, atol: 1e-6, label: JSON.stringify(select) });
    }
  }, 120_000);

  test('a traced routed call: the joined trace is the single runtime’s, entry for entry, with the whole call’s batch indices', async () => {
    const { result, served } = await spread(() => pool.forward(ids, { select: { routed: 'moe' }, trace: true }));
    expect(served).toEqual([1, 1]);
    const solo = await single.forward(ids, { select: { routed: 'moe' }, trace: true });
    const trace = result.trace ?? [];
    const soloTrace = solo.trace ?? [];
    expect(trace.length).toBe(soloTrace.length);
    expect(new Set(trace.map((e) => e.batch))).toEqual(new Set([0, 1, 2, 3, 4]));
    expect(trace.map(({ weights: _, ...e }) => e)).toEqual(soloTrace.map(({ weights: _, ...e }) => e));
    expectClose(
      trace.flatMap((e) => e.weights),
      soloTrace.flatMap((e) => e.weights),
      { rtol: 1e-4, atol: 1e-5 },
    );
  }, 120_000);

  test('task ids go with their rows', async () => {
    const taskIds = [1, 0, 0, 1, 1];
    const { result, served } = await spread(() => pool.forward(ids, { select: { routed: 'task' }, taskIds }));
    expect(served).toEqual([1, 1]);
    const solo = await single.forward(ids, { select: { routed: 'task' }, taskIds });
    expectClose(result.logits, solo.logits, { rtol: 1e-5, atol: 1e-6 });
    const other = await single.forward(ids, { select: { routed: 'task' }, taskIds: taskIds.map((t) => 1 - t) });
    expect(Array.from(result.logits)).not.toEqual(Array.from(other.logits)); // the task ids matter here
    const wrong = await pool.forward(ids, { select: { routed: 'task' }, taskIds: [0, 1] }).catch((e: unknown) => e);
    const soloWrong = await single.forward(ids, { select: { routed: 'task' }, taskIds: [0, 1] }).catch((e: unknown) => e);
    expect((wrong as Error).message).toBe((soloWrong as Error).message);
  }, 60_000);

  test('classify splits too: one classification per row, in order, as the single runtime', async () => {
    const { result, served } = await spread(() => pool.classify(ids, { select: { adapter: 'a' } }));
    expect(served).toEqual([1, 1]);
    const solo = await single.classify(ids, { select: { adapter: 'a' } });
    expect(result.map((c) => c.label)).toEqual(solo.map((c) => c.label));
    expectClose(
      result.flatMap((c) => c.logits),
      solo.flatMap((c) => c.logits),
      { rtol: 1e-5, atol: 1e-5 },
    );
    await expect(pool.classify(ids, { select: 'base' })).rejects.toThrow(/no classification head/);
  }, 60_000);

  test('a malformed row is refused by its index in the whole call', async () => {
    const bad = [prompt(3, 1), prompt(3, 2), prompt(3, 3), [3, 4, 9999]];
    const pooled = await pool.forward(bad, { select: 'base' }).catch((e: unknown) => e);
    const solo = await single.forward(bad, { select: 'base' }).catch((e: unknown) => e);
    expect((pooled as Error).constructor).toBe((solo as Error).constructor);
    expect((pooled as Error).message).toBe((solo as Error).message);
    expect((pooled as { path?: string }).path).toBe('ids[3][2]');
  });

  test('a batch-coupled (switch) target is never split: its rows compute together, as one runtime computes them', async () => {
    const info = await pool.load('sw', { kind: 'routed', dir: fx.switched });
    expect(info.rowsCoupled).toBe(true);
    expect((await single.load('sw', { kind: 'routed', dir: fx.switched })).rowsCoupled).toBe(true);
    expect((await single.swap('moe', { kind: 'routed', dir: fx.routed })).rowsCoupled).toBe(false);
    const { result, served } = await spread(() => pool.forward(ids, { select: { routed: 'sw' } }));
    expect(served.sort()).toEqual([0, 1]);
    const solo = await single.forward(ids, { select: { routed: 'sw' } });
    expectClose(result.logits, solo.logits, { rtol: 1e-5, atol: 1e-6 });
    await pool.unload('sw');
    await expect(pool.forward(ids, { select: { routed: 'sw' } })).rejects.toThrow(/sw/);
  }, 60_000);
});
