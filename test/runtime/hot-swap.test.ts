// Hot swap: a generation running while its adapter is swapped keeps the old weights to its last token (it
// equals the old adapter's solo result), requests started after the swap get the new weights, and the old
// version is freed once its last request ends.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { RoutedRuntime } from '../../src/runtime/runtime.js';
import type { GenerationSummary, RuntimeGenerateOptions } from '../../src/runtime/types.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { makeFixture, prompt, ROUTED_SPEC, routers, type RuntimeFixture } from './fixtures.js';

let fx: RuntimeFixture;

beforeAll(async () => {
  fx = await makeFixture();
});

afterAll(async () => {
  await fx.dispose();
});

/** Starts a generation; calls `onToken(index)` for each token; resolves with the summary. */
function generateWith(runtime: RoutedRuntime, p: number[], options: RuntimeGenerateOptions, onToken: (index: number) => void): Promise<GenerationSummary> {
  return new Promise((resolve, reject) => {
    runtime.generate$(p, options).subscribe({
      next: (e) => (e.kind === 'token' ? onToken(e.index) : resolve(e)),
      error: reject,
    });
  });
}

describe('hot swap', () => {
  test('a PEFT adapter swapped mid-generation: old request keeps old weights, new request gets new ones', async () => {
    const start = tf.memory().numTensors;
    const runtime = RoutedRuntime.create({ base: fx.base, routers });
    await runtime.load('old', { kind: 'peft', dir: fx.peft.a });
    await runtime.load('new', { kind: 'peft', dir: fx.peft.a2 });
    await runtime.load('x', { kind: 'peft', dir: fx.peft.a });
    const p = prompt(3, 1);
    const options = { maxNewTokens: 100, temperature: 0, eosId: null } as const;
    const soloOld = await runtime.generate(p, { ...options, select: { adapter: 'old' } });
    const soloNew = await runtime.generate(p, { ...options, select: { adapter: 'new' } });
    expect(soloOld.tokens).not.toEqual(soloNew.tokens);

    let swapped: Promise<unknown> | undefined;
    let oldEnded = false;
    const running = generateWith(runtime, p, { ...options, select: { adapter: 'x' } }, (index) => {
      if (index === 2) swapped = runtime.swap('x', { kind: 'peft', dir: fx.peft.a2 });
    }).then((summary) => {
      oldEnded = true;
      return summary;
    });
    while (swapped === undefined) await new Promise((r) => setImmediate(r));
    await swapped;
    expect(oldEnded).toBe(false); // the swap landed while the old request was still running
    expect(runtime.stats().retiredInUse).toBe(1);
    const after = runtime.generate(p, { ...options, select: { adapter: 'x' } });
    const [oldResult, newResult] = await Promise.all([running, after]);
    expect(oldResult.tokens).toEqual(soloOld.tokens);
    expect(newResult.tokens).toEqual(soloNew.tokens);

    await runtime.idle();
    const stats = runtime.stats();
    expect(stats.retiredInUse).toBe(0);
    expect(stats.swaps).toBe(1);
    // The old version's weights are gone: only three adapters' worth of tensors remain resident.
    const perAdapter = stats.targets.find((t) => t.name === 'old')?.bytes;
    expect(stats.residentBytes).toBe(3 * (perAdapter as number));
    runtime.dispose();
    await runtime.idle();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('a routed model instance swapped between steps: the running forward/generation never mixes versions', async () => {
    const start = tf.memory().numTensors;
    const runtime = RoutedRuntime.create({ base: fx.base, routers });
    const v1 = (): AdaptedModel => AdaptedModel.create(fx.base, ROUTED_SPEC, { routers });
    const v2 = (): AdaptedModel => AdaptedModel.create(fx.base, { ...ROUTED_SPEC, seed: 99 }, { routers });
    await runtime.load('ref1', { kind: 'instance', model: v1() });
    await runtime.load('ref2', { kind: 'instance', model: v2() });
    await runtime.load('m', { kind: 'instance', model: v1() });
    const p = prompt(4, 2);
    const options = { maxNewTokens: 30, temperature: 0.7, seed: 5, eosId: null } as const;
    const solo1 = await runtime.generate(p, { ...options, select: { routed: 'ref1' } });
    const solo2 = await runtime.generate(p, { ...options, select: { routed: 'ref2' } });
    expect(solo1.tokens).not.toEqual(solo2.tokens);

    let afterSwap: Promise<GenerationSummary> | undefined;
    let forwardAfter: Promise<{ logits: Float32Array }> | undefined;
    const running = generateWith(runtime, p, { ...options, select: { routed: 'm' } }, (index) => {
      if (index !== 5) return;
      // An instance swap needs no I/O: it completes before the next decoding step.
      void runtime.swap('m', { kind: 'instance', model: v2() }).then(() => {
        afterSwap = runtime.generate(p, { ...options, select: { routed: 'm' } });
        forwardAfter = runtime.forward([p], { select: { routed: 'm' } });
      });
    });
    expect((await running).tokens).toEqual(solo1.tokens);
    while (afterSwap === undefined || forwardAfter === undefined) await new Promise((r) => setImmediate(r));
    expect((await afterSwap).tokens).toEqual(solo2.tokens);
    const reference = await runtime.forward([p], { select: { routed: 'ref2' } });
    expectClose((await forwardAfter).logits, reference.logits, { rtol: 1e-5, atol: 1e-6 });
    runtime.dispose();
    await runtime.idle();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('unload while a request runs: it finishes with its weights, later requests fail naming the target', async () => {
    const start = tf.memory().numTensors;
    const runtime = RoutedRuntime.create({ base: fx.base });
    await runtime.load('y', { kind: 'peft', dir: fx.peft.b });
    const p = prompt(3, 3);
    const options = { select: { adapter: 'y' }, maxNewTokens: 20, temperature: 0, eosId: null } as const;
    const solo = await runtime.generate(p, options);
    let unloaded = false;
    const running = generateWith(runtime, p, options, (index) => {
      if (index === 1) {
        runtime.unload('y');
        unloaded = true;
      }
    });
    expect((await running).tokens).toEqual(solo.tokens);
    expect(unloaded).toBe(true);
    await expect(runtime.generate(p, options)).rejects.toThrow(/no target named "y".*Loaded targets: \(none\)/s);
    await runtime.idle();
    runtime.dispose();
    expect(tf.memory().numTensors).toBe(start);
  });
});
