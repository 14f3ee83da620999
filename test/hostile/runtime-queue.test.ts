// Serving under a tight memory budget (issue 20: "memory budget rejects instead of queueing"): requests that
// need an evicted target wait until a target can be evicted (as S-LoRA queues them) instead of failing. 240
// concurrent requests over five targets with a budget of 93.5% of their bytes are all served, each with the
// result it gets alone; a hot swap waits too; the queue is bounded and a wait has a typed timeout.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { MemoryBudgetError } from '../../src/runtime/registry.js';
import { RoutedRuntime } from '../../src/runtime/runtime.js';
import type { Selection, TargetSource } from '../../src/runtime/types.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { makeFixture, prompt, routers, type RuntimeFixture } from '../runtime/fixtures.js';

let fx: RuntimeFixture;
let sources: [string, TargetSource][];
let bytes: Map<string, number>;

beforeAll(async () => {
  fx = await makeFixture();
  sources = [
    ['a', { kind: 'peft', dir: fx.peft.a }],
    ['b', { kind: 'peft', dir: fx.peft.b }],
    ['c', { kind: 'peft', dir: fx.peft.c }],
    ['a2', { kind: 'peft', dir: fx.peft.a2 }],
    ['r', { kind: 'routed', dir: fx.routed }],
  ];
  const probe = RoutedRuntime.create({ base: fx.base, routers });
  bytes = new Map();
  for (const [name, source] of sources) bytes.set(name, (await probe.load(name, source)).bytes);
  probe.dispose();
});
afterAll(async () => fx.dispose());

const selectionOf = (name: string): Selection => (name === 'r' ? { routed: name } : { adapter: name });

describe('a tight memory budget queues requests instead of rejecting them', () => {
  test('240 concurrent requests over 5 targets, budget 93.5% of their bytes: all served, none rejected, results equal solo', async () => {
    const start = tf.memory().numTensors;
    const names = sources.map(([name]) => name);
    const requests = Array.from({ length: 240 }, (_, i) => ({
      name: names[(i * 7) % names.length] as string,
      ids: prompt(3 + (i % 5), i % 11),
      generate: i % 3 === 0,
    }));

    // A third are 16-token generations, so targets stay in use while requests for the evicted one arrive:
    // before queueing, 48 of these 240 were rejected ("the memory budget … cannot hold target …").
    // Alone: one runtime without a budget, one request at a time.
    const solo = RoutedRuntime.create({ base: fx.base, routers });
    for (const [name, source] of sources) await solo.load(name, source);
    const expected: (Float32Array | number[])[] = [];
    for (const r of requests) {
      expected.push(
        r.generate
          ? (await solo.generate(r.ids, { select: selectionOf(r.name), maxNewTokens: 16, temperature: 0, eosId: null })).tokens
          : (await solo.forward([r.ids], { select: selectionOf(r.name) })).logits,
      );
    }
    solo.dispose();
    await solo.idle();

    const total = [...bytes.values()].reduce((a, b) => a + b, 0);
    const budget = Math.floor(0.935 * total);
    const runtime = RoutedRuntime.create({ base: fx.base, routers, memoryBudgetBytes: budget });
    for (const [name, source] of sources) await runtime.load(name, source); // the last load evicts
    let peak = 0;
    const watch = setInterval(() => (peak = Math.max(peak, runtime.stats().residentBytes)), 1);
    const results = await Promise.allSettled(
      requests.map((r) =>
        r.generate
          ? runtime.generate(r.ids, { select: selectionOf(r.name), maxNewTokens: 16, temperature: 0, eosId: null }).then((g) => g.tokens)
          : runtime.forward([r.ids], { select: selectionOf(r.name) }).then((f) => f.logits),
      ),
    );
    clearInterval(watch);
    const rejected = results.filter((r) => r.status === 'rejected');
    expect(rejected.map((r) => String((r as PromiseRejectedResult).reason))).toEqual([]);
    results.forEach((result, i) => {
      const value = (result as PromiseFulfilledResult<Float32Array | number[]>).value;
      const want = expected[i] as Float32Array | number[];
      if (Array.isArray(want)) expect(value).toEqual(want);
      else expectClose(value as Float32Array, want, { rtol: 1e-4, atol: 1e-5 });
    });
    const stats = runtime.stats();
    expect(stats.queuedTotal).toBeGreaterThan(0); // some requests did wait for room
    expect(stats.queueTimeouts).toBe(0);
    expect(stats.queued).toBe(0);
    expect(stats.evictions).toBeGreaterThan(0);
    expect(peak).toBeLessThanOrEqual(budget);
    runtime.dispose();
    await runtime.idle();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('a hot swap that needs room waits for running requests instead of failing', async () => {
    const a = bytes.get('a') as number;
    const runtime = RoutedRuntime.create({ base: fx.base, memoryBudgetBytes: a });
    await runtime.load('a', { kind: 'peft', dir: fx.peft.a });
    const controller = new AbortController();
    let started: () => void = () => {};
    const firstToken = new Promise<void>((resolve) => {
      started = resolve;
    });
    const running = new Promise<void>((resolve, reject) => {
      runtime
        .generate$(prompt(3), { select: { adapter: 'a' }, maxNewTokens: 100, temperature: 0, eosId: null, signal: controller.signal })
        .subscribe({ next: () => started(), error: reject, complete: resolve });
    });
    await firstToken; // the generation holds the old version from here on
    let swapped = false;
    const swap = runtime.swap('a', { kind: 'peft', dir: fx.peft.b }).then(() => (swapped = true));
    // The swap reads its files first, then waits for room: wait for it to be queued (no fixed sleep).
    for (let waited = 0; runtime.stats().queued === 0 && waited < 10_000; waited += 5) await new Promise((r) => setTimeout(r, 5));
    expect(swapped).toBe(false); // waiting: the old version is in use and both do not fit
    expect(runtime.stats().queued).toBe(1);
    controller.abort();
    await running;
    await swap;
    expect(runtime.stats()).toMatchObject({ swaps: 1, queued: 0 });
    expect(runtime.stats().residentBytes).toBeLessThanOrEqual(a);
    runtime.dispose();
    await runtime.idle();
  });

  test('the queue is bounded and a wait times out, both with a MemoryBudgetError naming the target', async () => {
    const a = bytes.get('a') as number;
    for (const memoryQueue of [{ maxWaiting: 0 }, { timeoutMs: 30 }]) {
      const runtime = RoutedRuntime.create({ base: fx.base, memoryBudgetBytes: a, memoryQueue });
      await runtime.load('a', { kind: 'peft', dir: fx.peft.a });
      await runtime.load('b', { kind: 'peft', dir: fx.peft.b }); // evicts a
      const controller = new AbortController();
      const running = runtime.generate(prompt(3), { select: { adapter: 'b' }, maxNewTokens: 100, temperature: 0, eosId: null, signal: controller.signal });
      await new Promise((r) => setTimeout(r, 5));
      const waited = runtime.forward([prompt(3)], { select: { adapter: 'a' } });
      await expect(waited).rejects.toBeInstanceOf(MemoryBudgetError);
      await expect(waited).rejects.toThrow(memoryQueue.maxWaiting === 0 ? /cannot hold target "a" now/ : /could not hold target "a" .* within 30 ms/);
      controller.abort();
      await running;
      if (memoryQueue.timeoutMs !== undefined) expect(runtime.stats().queueTimeouts).toBe(1);
      runtime.dispose();
      await runtime.idle();
    }
  });
});
