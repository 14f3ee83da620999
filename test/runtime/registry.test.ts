// The target registry under a memory budget: resident bytes stay ≤ the budget, least recently used idle
// targets are evicted and reloaded on demand with unchanged results, targets in use are never evicted, and
// a target larger than the budget is a clear error. Merged targets survive eviction (re-merged on reload).
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { RoutedRuntime } from '../../src/runtime/runtime.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { makeFixture, prompt, routers, type RuntimeFixture } from './fixtures.js';

let fx: RuntimeFixture;
let adapterBytes: number;
let routedBytes: number;

beforeAll(async () => {
  fx = await makeFixture();
  const probe = RoutedRuntime.create({ base: fx.base, routers });
  adapterBytes = (await probe.load('a', { kind: 'peft', dir: fx.peft.a })).bytes;
  routedBytes = (await probe.load('r', { kind: 'routed', dir: fx.routed })).bytes;
  probe.dispose();
});

afterAll(async () => {
  await fx.dispose();
});

async function logits(runtime: RoutedRuntime, name: string, routed = false): Promise<Float32Array> {
  return (await runtime.forward([prompt(5, 1), prompt(3, 2)], { select: routed ? { routed: name } : { adapter: name } })).logits;
}

describe('registry with a memory budget', () => {
  test("bytes are the variables' bytes", () => {
    // 2 layers × (q [16→16], v [16→8], down [40→16]) LoRA r=2: A r·I + B O·r floats each.
    const perLayer = 2 * 16 + 16 * 2 + (2 * 16 + 8 * 2) + (2 * 40 + 16 * 2);
    expect(adapterBytes).toBe(2 * perLayer * 4);
    expect(routedBytes).toBeGreaterThan(adapterBytes);
  });

  test('LRU eviction keeps resident bytes within the budget; evicted targets reload transparently', async () => {
    const start = tf.memory().numTensors;
    const budget = 2 * adapterBytes + 8;
    const runtime = RoutedRuntime.create({ base: fx.base, memoryBudgetBytes: budget });
    const within = (): void => expect(runtime.stats().residentBytes).toBeLessThanOrEqual(budget);
    await runtime.load('a', { kind: 'peft', dir: fx.peft.a });
    await runtime.load('b', { kind: 'peft', dir: fx.peft.b });
    const aBefore = await logits(runtime, 'a');
    const bBefore = await logits(runtime, 'b');
    within();
    await runtime.load('c', { kind: 'peft', dir: fx.peft.c }); // evicts a (least recently used)
    within();
    let stats = runtime.stats();
    expect(stats.evictions).toBe(1);
    expect(stats.targets.map((t) => [t.name, t.resident])).toEqual([
      ['a', false],
      ['b', true],
      ['c', true],
    ]);
    expect(runtime.targets()).toEqual(['a', 'b', 'c']);

    expect(await logits(runtime, 'a')).toEqual(aBefore); // reloaded (evicting b)
    within();
    stats = runtime.stats();
    expect(stats.reloads).toBe(1);
    expect(stats.evictions).toBe(2);
    expect(stats.targets.find((t) => t.name === 'b')?.resident).toBe(false);
    expect(await logits(runtime, 'b')).toEqual(bBefore);
    within();
    expect(runtime.stats().reloads).toBe(2);
    runtime.dispose();
    await runtime.idle();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('targets used by running requests are never evicted: a request needing room waits until they finish (or times out)', async () => {
    const start = tf.memory().numTensors;
    const runtime = RoutedRuntime.create({ base: fx.base, memoryBudgetBytes: adapterBytes });
    await runtime.load('a', { kind: 'peft', dir: fx.peft.a });
    await runtime.load('b', { kind: 'peft', dir: fx.peft.b }); // evicts a
    const controller = new AbortController();
    const running = runtime.generate(prompt(3), { select: { adapter: 'b' }, maxNewTokens: 100, temperature: 0, eosId: null, signal: controller.signal });
    await new Promise((r) => setTimeout(r, 5));
    const waiting = logits(runtime, 'a'); // queued: b is in use
    await new Promise((r) => setTimeout(r, 20));
    expect(runtime.stats().queued).toBe(1);
    expect(runtime.stats().targets.find((t) => t.name === 'b')?.resident).toBe(true);
    controller.abort();
    expect((await running).reason).toBe('cancelled');
    expect((await waiting).length).toBeGreaterThan(0); // b went idle: it was evicted and a reloaded
    expect(runtime.stats()).toMatchObject({ queued: 0, queuedTotal: 1, queueTimeouts: 0 });
    await runtime.idle();
    expect((await logits(runtime, 'a')).length).toBeGreaterThan(0);
    expect(runtime.stats().residentBytes).toBeLessThanOrEqual(adapterBytes);
    runtime.dispose();
    await runtime.idle();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('a target bigger than the whole budget is an error, and leaves nothing behind', async () => {
    const start = tf.memory().numTensors;
    const runtime = RoutedRuntime.create({ base: fx.base, routers, memoryBudgetBytes: adapterBytes });
    await expect(runtime.load('r', { kind: 'routed', dir: fx.routed })).rejects.toThrow(/needs \d+ bytes, more than the whole memory budget/);
    expect(runtime.targets()).toEqual([]);
    const instance = AdaptedModel.create(fx.base, { adapters: [{ kind: 'lora', name: 'big', r: 8, targets: { sites: 'all-linear' } }] });
    await expect(runtime.load('i', { kind: 'instance', model: instance })).rejects.toThrow(/more than the whole memory budget/);
    instance.dispose();
    runtime.dispose();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('a merged target counts its merged weights, is re-merged when it reloads after eviction; results unchanged', async () => {
    const start = tf.memory().numTensors;
    // Merged a holds its adapter plus copies of q [16, 16], v [8, 16], down [16, 40] in 2 layers.
    const mergedExtra = 2 * (16 * 16 + 8 * 16 + 16 * 40) * 4;
    const budget = adapterBytes + mergedExtra + 2 * adapterBytes + 100; // merged a, b and c fit; a fourth does not
    const runtime = RoutedRuntime.create({ base: fx.base, memoryBudgetBytes: budget });
    await runtime.load('a', { kind: 'peft', dir: fx.peft.a });
    const unmerged = await logits(runtime, 'a');
    runtime.merge('a');
    expect(runtime.stats().residentBytes).toBe(adapterBytes + mergedExtra);
    const merged = await logits(runtime, 'a');
    expectClose(merged, unmerged, { rtol: 1e-5, atol: 1e-5 });
    await runtime.load('b', { kind: 'peft', dir: fx.peft.b });
    await runtime.load('c', { kind: 'peft', dir: fx.peft.c });
    await runtime.load('d', { kind: 'peft', dir: fx.peft.a2 }); // evicts a, the least recently used
    expect(runtime.stats().targets.find((t) => t.name === 'a')).toMatchObject({ resident: false, bytes: 0 });
    expect(runtime.stats().residentBytes).toBeLessThanOrEqual(budget);
    expect(await logits(runtime, 'a')).toEqual(merged); // reloaded and merged again (evicting b)
    expect(runtime.stats().targets.find((t) => t.name === 'a')).toMatchObject({ resident: true, merged: true, bytes: adapterBytes + mergedExtra });
    expect(runtime.stats()).toMatchObject({ reloads: 1, evictions: 2 });
    expect(runtime.stats().residentBytes).toBeLessThanOrEqual(budget);
    runtime.unmerge('a');
    expect(runtime.stats().residentBytes).toBe(3 * adapterBytes);
    runtime.dispose();
    await runtime.idle();
    expect(tf.memory().numTensors).toBe(start);
  });
});
