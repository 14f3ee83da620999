// The batching window: values arriving within windowMs form one batch (at most maxBatchSize), the window
// opens with the first value; concurrent runtime calls share passes accordingly.
import * as tf from '@tensorflow/tfjs';
import { Subject } from 'rxjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { bufferFromFirst } from '../../src/runtime/batcher.js';
import { RoutedRuntime } from '../../src/runtime/runtime.js';
import type { BatchEvent } from '../../src/runtime/types.js';
import { makeFixture, prompt, type RuntimeFixture } from './fixtures.js';

describe('bufferFromFirst', () => {
  test('collects a window from its first value and flushes early at maxSize', async () => {
    const source = new Subject<number>();
    const batches: number[][] = [];
    const subscription = source.pipe(bufferFromFirst(10, 3)).subscribe((b) => batches.push(b));
    source.next(1);
    source.next(2);
    expect(batches).toEqual([]);
    await new Promise((r) => setTimeout(r, 25));
    expect(batches).toEqual([[1, 2]]);
    source.next(3);
    source.next(4);
    source.next(5); // reaches maxSize: flushed at once
    expect(batches).toEqual([
      [1, 2],
      [3, 4, 5],
    ]);
    source.next(6);
    source.complete(); // completion flushes what waits
    expect(batches).toEqual([[1, 2], [3, 4, 5], [6]]);
    subscription.unsubscribe();
  });
});

describe('runtime batching', () => {
  let fx: RuntimeFixture;
  beforeAll(async () => {
    fx = await makeFixture();
  });
  afterAll(async () => {
    await fx.dispose();
  });

  test('concurrent calls share passes of at most maxBatchSize requests; sequential calls do not', async () => {
    const start = tf.memory().numTensors;
    const runtime = RoutedRuntime.create({ base: fx.base, batching: { windowMs: 20, maxBatchSize: 2 } });
    await runtime.load('a', { kind: 'peft', dir: fx.peft.a });
    const events: BatchEvent[] = [];
    const subscription = runtime.batches$.subscribe((e) => events.push(e));
    await Promise.all([0, 1, 2, 3, 4].map((i) => runtime.forward([prompt(2 + i, i)], { select: i % 2 === 0 ? 'base' : { adapter: 'a' } })));
    expect(events.map((e) => e.requests)).toEqual([2, 2, 1]);
    // Base calls resolve their selection without I/O, so they may reach the window first; some pass mixes.
    expect(events.some((e) => e.kind === 'logits' && e.groups === 2 && e.rows === 2 && [...e.selections].sort().join() === 'adapter:a,base')).toBe(true);
    events.length = 0;
    await runtime.forward([[3]], { select: 'base' });
    await runtime.forward([[4]], { select: 'base' });
    expect(events.map((e) => e.requests)).toEqual([1, 1]);
    subscription.unsubscribe();
    runtime.dispose();
    await runtime.idle();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('invalid options are ConfigErrors naming the field', () => {
    expect(() => RoutedRuntime.create({ base: fx.base, batching: { maxBatchSize: 0 } })).toThrow(/batching\.maxBatchSize/);
    expect(() => RoutedRuntime.create({ base: fx.base, memoryBudgetBytes: -1 })).toThrow(/memoryBudgetBytes/);
  });

  test('dispose cancels running generations at their next step and frees everything once they end', async () => {
    const start = tf.memory().numTensors;
    const runtime = RoutedRuntime.create({ base: fx.base });
    await runtime.load('a', { kind: 'peft', dir: fx.peft.a });
    let tokens = 0;
    const running = new Promise<string>((resolve, reject) => {
      runtime.generate$(prompt(3), { select: { adapter: 'a' }, maxNewTokens: 120, temperature: 0, eosId: null }).subscribe({
        next: (e) => {
          if (e.kind === 'token' && ++tokens === 3) runtime.dispose();
          if (e.kind === 'end') resolve(e.reason);
        },
        error: reject,
      });
    });
    expect(await running).toBe('cancelled');
    expect(tokens).toBe(3);
    await runtime.idle();
    expect(runtime.stats().residentBytes).toBe(0);
    expect(tf.memory().numTensors).toBe(start);
  });

  test('calls after dispose are errors', async () => {
    const runtime = RoutedRuntime.create({ base: fx.base });
    runtime.dispose();
    await expect(runtime.forward([[3]], { select: 'base' })).rejects.toThrow(/disposed/);
    await expect(runtime.load('a', { kind: 'peft', dir: fx.peft.a })).rejects.toThrow(/disposed/);
  });
});
