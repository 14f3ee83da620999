// RuntimePool: worker threads each running a RoutedRuntime on a replica of the same base. Checked against
// one in-process RoutedRuntime on the same weights: the same logits, scores and greedy tokens for every kind
// of target; concurrent calls spread over the workers; a hot swap under running generations; typed errors
// that read as the single runtime's; cancellation; and a closed pool refusing calls.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ConfigError, RoutedPeftError } from '../../src/errors.js';
import { RuntimePool } from '../../src/runtime/pool.js';
import { RoutedRuntime } from '../../src/runtime/runtime.js';
import type { Selection } from '../../src/runtime/types.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { writeTinyLlamaDir } from '../helpers/tiny-models.js';
import { makeFixture, prompt, routers, type RuntimeFixture } from './fixtures.js';

const SELECTS: readonly Selection[] = ['base', { adapter: 'a' }, { combine: 'average', adapters: ['a', 'b'] }, { routed: 'moe' }, { routed: 'seq' }];

describe('RuntimePool', () => {
  let fx: RuntimeFixture;
  let pool: RuntimePool;
  let single: RoutedRuntime;
  beforeAll(async () => {
    fx = await makeFixture();
    const model = join(fx.dir, 'base');
    await writeTinyLlamaDir(model, { maxSeqLen: 160 }); // the fixture's base weights, on disk for the workers
    pool = await RuntimePool.create({ base: { model }, workers: 2, batching: { windowMs: 5, maxBatchSize: 8 } });
    single = RoutedRuntime.create({ base: fx.base, routers, batching: { windowMs: 5, maxBatchSize: 8 } });
    for (const runtime of [pool, single]) {
      await runtime.load('a', { kind: 'peft', dir: fx.peft.a });
      await runtime.load('b', { kind: 'peft', dir: fx.peft.b });
      await runtime.load('moe', { kind: 'routed', dir: fx.routed });
      await runtime.load('seq', { kind: 'routed', dir: fx.sequence });
    }
  }, 120_000);
  afterAll(async () => {
    await pool?.close();
    single?.dispose();
    await single?.idle();
    await fx?.dispose();
  });

  test('every target gives the single runtime’s logits, scores and greedy tokens', async () => {
    expect(pool.size).toBe(2);
    expect(await pool.targets()).toEqual(single.targets());
    for (const select of SELECTS) {
      const ids = [prompt(6, 1), prompt(4, 2)];
      const [a, b] = await Promise.all([pool.forward(ids, { select }), single.forward(ids, { select })]);
      expect(a.shape).toEqual(b.shape);
      expectClose(a.logits, b.logits, { rtol: 1e-5, atol: 1e-6, label: JSON.stringify(select) });
      const [sa, sb] = await Promise.all([pool.score(prompt(5, 3), prompt(3, 4), { select }), single.score(prompt(5, 3), prompt(3, 4), { select })]);
      expect(Math.abs(sa.logLikelihood - sb.logLikelihood)).toBeLessThanOrEqual(1e-5 * Math.abs(sb.logLikelihood));
      const options = { select, maxNewTokens: 6, temperature: 0, eosId: null };
      const [ga, gb] = await Promise.all([pool.generate(prompt(5, 5), options), single.generate(prompt(5, 5), options)]);
      expect(ga.tokens).toEqual(gb.tokens);
    }
  }, 120_000);

  test('concurrent generations spread over both workers and each equals its solo run', async () => {
    const before = pool.dispatched;
    const requests = Array.from({ length: 12 }, (_, i) => ({ prompt: prompt(3 + (i % 4), i), select: SELECTS[i % SELECTS.length] as Selection }));
    const pooled = await Promise.all(requests.map((r) => pool.generate(r.prompt, { select: r.select, maxNewTokens: 5, temperature: 0, eosId: null })));
    const after = pool.dispatched;
    const served = after.map((n, i) => n - (before[i] ?? 0));
    expect(served.reduce((s, n) => s + n, 0)).toBe(12);
    for (const n of served) expect(n).toBeGreaterThanOrEqual(4); // least-in-flight spreads them (6 + 6 when even)
    for (const [i, r] of requests.entries()) {
      const solo = await single.generate(r.prompt, { select: r.select, maxNewTokens: 5, temperature: 0, eosId: null });
      expect(pooled[i]?.tokens).toEqual(solo.tokens);
    }
  }, 120_000);

  test('a hot swap while generations run: they finish, and later calls use the new target on every worker', async () => {
    const running = Array.from({ length: 4 }, (_, i) =>
      pool.generate(prompt(4, 20 + i), { select: { adapter: 'a' }, maxNewTokens: 12, temperature: 0, eosId: null }),
    );
    await pool.swap('a', { kind: 'peft', dir: fx.peft.c });
    const finished = await Promise.all(running);
    for (const f of finished) expect(f.tokens).toHaveLength(12);
    await single.swap('a', { kind: 'peft', dir: fx.peft.c });
    const ids = [prompt(6, 9)];
    const expected = await single.forward(ids, { select: { adapter: 'a' } });
    for (let i = 0; i < 4; i++) {
      const got = await pool.forward(ids, { select: { adapter: 'a' } }); // calls alternate over the workers
      expectClose(got.logits, expected.logits, { rtol: 1e-5, atol: 1e-6 });
    }
    await pool.swap('a', { kind: 'peft', dir: fx.peft.a });
    await single.swap('a', { kind: 'peft', dir: fx.peft.a });
  }, 120_000);

  test('errors keep their type, message, path and hint; an in-process instance is refused by name', async () => {
    const pooled = await pool.forward([[3, 4]], { select: { adapter: 'missing' } }).catch((e: unknown) => e);
    const solo = await single.forward([[3, 4]], { select: { adapter: 'missing' } }).catch((e: unknown) => e);
    expect(pooled).toBeInstanceOf(RoutedPeftError);
    expect((pooled as Error).constructor).toBe((solo as Error).constructor);
    expect((pooled as Error).message).toBe((solo as Error).message);
    expect((pooled as RoutedPeftError).path).toBe((solo as RoutedPeftError).path);
    await expect(pool.load('x', { kind: 'instance', model: fx.source })).rejects.toThrow(ConfigError);
    await expect(pool.load('x', { kind: 'instance', model: fx.source })).rejects.toThrow(/in-process model instance/);
    await expect(pool.load('bad', { kind: 'peft', dir: join(fx.dir, 'nowhere') })).rejects.toBeInstanceOf(RoutedPeftError);
    expect(await pool.targets()).not.toContain('bad'); // a failed load leaves the targets as they were
  });

  test('breaking out of generateIterable or aborting its signal cancels the generation', async () => {
    let seen = 0;
    for await (const event of pool.generateIterable(prompt(4, 30), { select: 'base', maxNewTokens: 100, temperature: 0, eosId: null })) {
      if (event.kind === 'token' && ++seen === 3) break;
    }
    expect(seen).toBe(3);
    const controller = new AbortController();
    const events: string[] = [];
    for await (const event of pool.generateIterable(prompt(4, 31), {
      select: 'base',
      maxNewTokens: 100,
      temperature: 0,
      eosId: null,
      signal: controller.signal,
    })) {
      events.push(event.kind === 'end' ? `end:${event.reason}` : 'token');
      if (events.length === 2) controller.abort();
    }
    expect(events.at(-1)).toBe('end:cancelled');
    expect(events.length).toBeLessThan(20);
    await pool.idle();
  });

  test('create refuses bad options by name; a closed pool refuses calls', async () => {
    await expect(RuntimePool.create({ base: { model: '' } })).rejects.toThrow(/base.model/);
    await expect(RuntimePool.create({ base: { model: join(fx.dir, 'base') }, workers: 0 })).rejects.toThrow(ConfigError);
    await expect(RuntimePool.create({ base: { model: join(fx.dir, 'no-such-model') }, workers: 1 })).rejects.toBeInstanceOf(RoutedPeftError);
    const small = await RuntimePool.create({ base: { model: join(fx.dir, 'base') }, workers: 1 });
    await small.close();
    expect(() => small.forward([[3]], { select: 'base' })).toThrow(/closed/);
  }, 60_000);
});
