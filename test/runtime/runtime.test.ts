// RoutedRuntime examples: results equal the AdaptedModel computing the same selection; missing targets are
// errors naming them; score equals a manual log-softmax sum; classify; merge/unmerge; the Observable and
// its AsyncIterable twin agree; cancellation stops generation and frees its tensors; nothing leaks.
import * as tf from '@tensorflow/tfjs';
import { firstValueFrom, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ConfigError, RoutedPeftError } from '../../src/errors.js';
import { RoutedRuntime } from '../../src/runtime/runtime.js';
import type { BatchEvent, GenerationEvent } from '../../src/runtime/types.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { makeFixture, prompt, routers, type RuntimeFixture } from './fixtures.js';

let fx: RuntimeFixture;
let runtime: RoutedRuntime;
let start: number;

beforeAll(async () => {
  fx = await makeFixture();
  start = tf.memory().numTensors;
  runtime = RoutedRuntime.create({ base: fx.base, routers });
  await runtime.load('a', { kind: 'peft', dir: fx.peft.a });
  await runtime.load('b', { kind: 'peft', dir: fx.peft.b });
  await runtime.load('c', { kind: 'peft', dir: fx.peft.c });
  await runtime.load('moe', { kind: 'routed', dir: fx.routed });
});

afterAll(async () => {
  runtime.dispose();
  await runtime.idle();
  expect(tf.memory().numTensors).toBe(start);
  await fx.dispose();
});

function reference(select: Parameters<RuntimeFixture['source']['forward']>[0]['select'], ids: number[][]): Float32Array {
  const out = fx.source.forward({ ids, select });
  const values = out.dataSync() as Float32Array;
  out.dispose();
  return values;
}

describe('RoutedRuntime', () => {
  test('forward with a PEFT adapter, a combination and the base equals AdaptedModel on the same adapters', async () => {
    const ids = [prompt(5), prompt(5, 1)];
    const a = await runtime.forward(ids, { select: { adapter: 'a' } });
    expect(a.shape).toEqual([2, 5, 32]);
    expectClose(a.logits, reference({ adapter: 'a' }, ids), { rtol: 1e-5, atol: 1e-5 });
    const avg = await runtime.forward(ids, { select: { combine: 'average', adapters: ['b', 'c'], weights: [0.25, 0.75] } });
    expectClose(avg.logits, reference({ combine: 'average', adapters: ['b', 'c'], weights: [0.25, 0.75] }, ids), { rtol: 1e-5, atol: 1e-5 });
    const stack = await runtime.forward(ids, { select: { combine: 'stack', adapters: ['a', 'c'] } });
    expectClose(stack.logits, reference({ combine: 'stack', adapters: ['a', 'c'] }, ids), { rtol: 1e-5, atol: 1e-5 });
    const base = await runtime.forward(ids, { select: 'base' });
    expectClose(base.logits, reference('base', ids), { rtol: 0, atol: 0 });
    expect(a.logits).not.toEqual(base.logits);
  });

  test('rows of different lengths are left-padded; padded positions are zero and real ones equal the row alone', async () => {
    const long = prompt(6, 2);
    const short = prompt(3, 4);
    const both = await runtime.forward([long, short], { select: { adapter: 'b' } });
    const alone = await runtime.forward([short], { select: { adapter: 'b' } });
    const vocab = 32;
    const row1 = both.logits.subarray(6 * vocab, 12 * vocab);
    expect([...row1.subarray(0, 3 * vocab)].every((v) => v === 0)).toBe(true);
    expectClose(row1.subarray(3 * vocab), alone.logits, { rtol: 1e-4, atol: 1e-5 });
  });

  test('a missing, unloaded or wrongly selected target is an error naming it, never the base', async () => {
    const missing = runtime.forward([[3, 4]], { select: { adapter: 'nope' } });
    await expect(missing).rejects.toThrow(RoutedPeftError);
    await expect(missing).rejects.toThrow(/"nope".*Loaded targets: a, b, c, moe/s);
    await runtime.load('tmp', { kind: 'peft', dir: fx.peft.a2 });
    runtime.unload('tmp');
    await expect(runtime.forward([[3, 4]], { select: { combine: 'parallel', adapters: ['a', 'tmp'] } })).rejects.toThrow(/"tmp"/);
    await expect(runtime.generate([3, 4], { select: { routed: 'gone' }, maxNewTokens: 2 })).rejects.toThrow(/"gone"/);
    await expect(runtime.forward([[3, 4]], { select: { routed: 'a' } })).rejects.toThrow(ConfigError);
    await expect(runtime.forward([[3, 4]], { select: { adapter: 'moe' } })).rejects.toThrow(/routed model/);
    await expect(runtime.forward([[3, 4]], { select: { combine: 'stack', adapters: ['a', 'b'], weights: [1, 2] } })).rejects.toThrow(ConfigError);
    // A runtime serves named targets: an AdaptedModel's own 'spec' and free { composition } are refused.
    await expect(runtime.forward([[3, 4]], { select: 'spec' })).rejects.toThrow(ConfigError);
    await expect(runtime.forward([[3, 4]], { select: { composition: { kind: 'adapter', adapter: 'a' } } })).rejects.toThrow(/serves named targets/);
    await expect(runtime.forward([[3, 99]], { select: 'base' })).rejects.toThrow(/outside the vocabulary/);
    await expect(runtime.load('a', { kind: 'peft', dir: fx.peft.b })).rejects.toThrow(/already loaded/);
    expect(runtime.stats().targets.map((t) => t.inUse)).toEqual([0, 0, 0, 0]);
  });

  test('score equals a manual log-softmax sum over the continuation', async () => {
    const context = prompt(4, 3);
    const continuation = [7, 11, 5];
    const result = await runtime.score(context, continuation, { select: { adapter: 'c' } });
    const ids = [[...context, ...continuation]];
    const expected = tf.tidy(() => {
      const logProbs = tf.logSoftmax(fx.source.forward({ ids, select: { adapter: 'c' } })); // [1, T, V]
      return continuation.map((token, j) => (logProbs.arraySync() as number[][][])[0]?.[context.length - 1 + j]?.[token] as number);
    });
    expectClose(result.tokenLogProbs, expected, { rtol: 1e-4, atol: 1e-5 });
    expect(result.logLikelihood).toBeCloseTo(
      expected.reduce((s, v) => s + v, 0),
      4,
    );
  });

  test("routed selection equals the routed model; trace entries name this call's rows", async () => {
    const ids = [prompt(4, 5), prompt(2, 6)];
    const result = await runtime.forward(ids, { select: { routed: 'moe' }, trace: true });
    const trace = result.trace ?? [];
    expect(trace.length).toBeGreaterThan(0);
    expect(new Set(trace.map((e) => e.batch))).toEqual(new Set([0, 1]));
    expect(Math.max(...trace.filter((e) => e.batch === 1).map((e) => e.token))).toBe(1);
    const alone = await runtime.forward([ids[0] as number[]], { select: { routed: 'moe' } });
    expectClose(result.logits.subarray(0, 4 * 32), alone.logits, { rtol: 1e-4, atol: 1e-5 });
  });

  test('classify uses a registered head; without one it is a clear error', async () => {
    const dim = fx.base.config.dim;
    const weight = Array.from({ length: dim }, (_, d) => [Math.sin(d), Math.cos(d), 0.1 * d]);
    await runtime.load('cls', { kind: 'peft', dir: fx.peft.a }, { head: { weight, bias: [0.5, 0, -0.5] } });
    const ids = [prompt(3, 7), prompt(5, 8)];
    const out = await runtime.classify(ids, { select: { adapter: 'cls' } });
    const hidden = tf.tidy(() => fx.source.forward({ ids: [ids[1] as number[]], select: { adapter: 'a' }, output: 'hidden' }).arraySync() as number[][][]);
    const last = hidden[0]?.[4] as number[];
    const manual = [0, 1, 2].map((c) => last.reduce((s, h, d) => s + h * (weight[d]?.[c] as number), [0.5, 0, -0.5][c] as number));
    expectClose(out[1]?.logits ?? [], manual, { rtol: 1e-4, atol: 1e-5 });
    expect(out[0]?.probabilities.reduce((s, p) => s + p, 0)).toBeCloseTo(1, 6);
    await expect(runtime.classify(ids, { select: 'base' })).rejects.toThrow(/no classification head/);
    await expect(runtime.classify(ids, { select: { adapter: 'a' } })).rejects.toThrow(/no classification head/);
    const viaName = await runtime.classify(ids, { select: { adapter: 'a' }, head: 'cls' });
    expectClose(viaName[1]?.logits ?? [], manual, { rtol: 1e-4, atol: 1e-5 });
    await expect(runtime.load('bad', { kind: 'peft', dir: fx.peft.a }, { head: { weight: [[1, 2]] } })).rejects.toThrow(/head weight/);
    runtime.unload('cls');
  });

  test('merge: requests for exactly that adapter run merged, within 1e-5 of unmerged; unmerge restores', async () => {
    const ids = [prompt(6, 9)];
    const before = await runtime.forward(ids, { select: { adapter: 'a' } });
    const greedy = { select: { adapter: 'a' }, maxNewTokens: 8, temperature: 0, eosId: null } as const;
    const tokensBefore = (await runtime.generate(prompt(3, 2), greedy)).tokens;
    const labels: string[] = [];
    const sub = runtime.batches$.subscribe((e: BatchEvent) => labels.push(...e.selections));
    runtime.merge('a');
    expect(runtime.stats().targets.find((t) => t.name === 'a')?.merged).toBe(true);
    const merged = await runtime.forward(ids, { select: { adapter: 'a' } });
    expectClose(merged.logits, before.logits, { rtol: 1e-5, atol: 1e-5 });
    expect((await runtime.generate(prompt(3, 2), greedy)).tokens).toEqual(tokensBefore);
    // Combinations including a merged adapter still apply it through hooks.
    const combined = await runtime.forward(ids, { select: { combine: 'parallel', adapters: ['a', 'b'] } });
    expectClose(combined.logits, reference({ combine: 'parallel', adapters: ['a', 'b'] }, ids), { rtol: 1e-5, atol: 1e-5 });
    expect(labels).toContain('merged:a');
    runtime.unmerge('a');
    sub.unsubscribe();
    expect(runtime.stats().targets.find((t) => t.name === 'a')?.merged).toBe(false);
    const after = await runtime.forward(ids, { select: { adapter: 'a' } });
    expect(after.logits).toEqual(before.logits);
    expect(() => runtime.merge('moe')).toThrow(/only a single PEFT LoRA adapter/);
  });

  test('the AsyncIterable twin yields the same events as the Observable', async () => {
    const options = { select: { routed: 'moe' }, maxNewTokens: 10, temperature: 0.9, topK: 8, seed: 17, eosId: null } as const;
    const viaObservable = await firstValueFrom(runtime.generate$(prompt(3, 1), options).pipe(toArray()));
    const viaIterable: GenerationEvent[] = [];
    for await (const event of runtime.generateIterable(prompt(3, 1), options)) viaIterable.push(event);
    expect(viaIterable).toEqual(viaObservable);
    expect(viaObservable.filter((e) => e.kind === 'token').map((e) => (e.kind === 'token' ? e.token : -1))).toEqual(
      (viaObservable.at(-1) as { tokens: number[] }).tokens,
    );
    expect(viaObservable.at(-1)).toMatchObject({ kind: 'end', reason: 'length', promptTokens: 3 });
  });

  test('generation equals AdaptedModel.generate for the same adapter (greedy)', async () => {
    const p = prompt(4, 11);
    const expected = fx.source.generate([p], { select: { adapter: 'b' }, maxNewTokens: 12, temperature: 0, eosId: null })[0]?.slice(p.length);
    const result = await runtime.generate(p, { select: { adapter: 'b' }, maxNewTokens: 12, temperature: 0, eosId: null });
    expect(result.tokens).toEqual(expected);
  });

  test('cancellation by unsubscribe, AbortSignal or breaking a for-await loop stops generation and frees its tensors', async () => {
    await runtime.idle();
    const before = tf.memory().numTensors;
    const long = { select: { adapter: 'a' }, maxNewTokens: 120, temperature: 0, eosId: null } as const;

    const seen: number[] = [];
    await new Promise<void>((resolve) => {
      const subscription = runtime.generate$(prompt(3), long).subscribe((e) => {
        if (e.kind !== 'token') return;
        seen.push(e.token);
        if (e.index === 2) {
          subscription.unsubscribe();
          resolve();
        }
      });
    });
    await runtime.idle();
    expect(seen).toHaveLength(3);
    expect(tf.memory().numTensors).toBe(before);

    const controller = new AbortController();
    const events: GenerationEvent[] = [];
    const summary = await new Promise<GenerationEvent>((resolve, reject) => {
      runtime.generate$(prompt(3), { ...long, signal: controller.signal }).subscribe({
        next: (e) => {
          events.push(e);
          if (e.kind === 'token' && e.index === 1) controller.abort();
          if (e.kind === 'end') resolve(e);
        },
        error: reject,
      });
    });
    expect(summary).toMatchObject({ kind: 'end', reason: 'cancelled' });
    expect(summary.kind === 'end' ? summary.tokens : []).toHaveLength(2);
    await runtime.idle();
    expect(tf.memory().numTensors).toBe(before);

    let count = 0;
    for await (const event of runtime.generateIterable(prompt(3), long)) {
      if (event.kind === 'token' && ++count === 4) break;
    }
    await runtime.idle();
    expect(count).toBe(4);
    expect(tf.memory().numTensors).toBe(before);

    const aborted = new AbortController();
    aborted.abort();
    expect(await runtime.generate(prompt(3), { ...long, signal: aborted.signal })).toMatchObject({ reason: 'cancelled', tokens: [] });
  });

  test('a pass with a cancelled member keeps serving the others exactly', async () => {
    const options = { select: { adapter: 'c' }, maxNewTokens: 10, temperature: 0, eosId: null } as const;
    const solo = await runtime.generate(prompt(5, 3), options);
    const controller = new AbortController();
    const [kept, cancelled] = await Promise.all([
      runtime.generate(prompt(5, 3), options),
      runtime.generate(prompt(2, 4), { ...options, select: { adapter: 'a' }, signal: controller.signal, maxNewTokens: 10 }).finally(() => undefined),
      Promise.resolve().then(() => setTimeout(() => controller.abort(), 1)),
    ]);
    expect(kept.tokens).toEqual(solo.tokens);
    expect(['cancelled', 'length']).toContain(cancelled.reason);
  });

  test('generation longer than the model allows is rejected up front', async () => {
    await expect(runtime.generate(prompt(10), { select: 'base', maxNewTokens: 200 })).rejects.toThrow(/exceeds the model's maximum/);
  });
});
