// AdamW over flat host vectors (src/train/adamw-flat.ts, AdamW's host moments): the same update as the
// tf-op AdamW up to float32 round-off, step after step; ranges of one plan applied on their own give the same
// bits as the whole plan (what the data-parallel replicas rely on); state round trips; refusals.
import { fc } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { applyFlatUpdate, type FlatUpdatePlan, splitVariables } from '../../src/train/adamw-flat.js';
import { AdamW } from '../../src/train/adamw.js';
import { expectClose, expectNoLeak } from '../helpers/tensor-asserts.js';

const shapes: number[][] = [[3, 4], [50], [7], [2, 3, 2], [5, 1]];
const names = shapes.map((_, i) => `p${i}`);
const total = shapes.reduce((s, shape) => s + shape.reduce((a, b) => a * b, 1), 0);

function params(seed: number): Map<string, tf.Variable> {
  return new Map(
    names.map((name, i) => [name, tf.variable(tf.randomNormal(shapes[i] as number[], 0, 1, 'float32', seed + i), true, `${name}#${Math.random()}`)]),
  );
}

function hostMoments(): { m: Float32Array; v: Float32Array } {
  return { m: new Float32Array(total), v: new Float32Array(total) };
}

describe('AdamW with host moments', () => {
  test('gives the tf-op update up to float32 round-off: weight decay, two learning rates, a parameter sitting a step out', () => {
    const device = params(1);
    const host = params(1);
    const decay = new Map(names.map((name, i) => [name, i % 2 === 0 ? 0.1 : 0]));
    const lrs = new Map(names.map((name, i) => [name, i < 2 ? 1e-2 : 3e-3]));
    const reference = new AdamW(device, decay);
    const optimizer = new AdamW(host, decay, {}, hostMoments());
    expect(optimizer.hostMoments).toBe(true);
    expectNoLeak(() => {
      for (let step = 0; step < 4; step++) {
        const grads = new Map(
          names
            .filter((name) => !(step === 2 && name === 'p3'))
            .map((name) => [name, tf.randomNormal(shapes[names.indexOf(name)] as number[], 0, 1, 'float32', 10 * step + names.indexOf(name))]),
        );
        reference.applyGradients(grads, lrs);
        optimizer.applyGradients(grads, lrs);
        tf.dispose([...grads.values()]);
      }
    });
    for (const name of names)
      expectClose(host.get(name)?.dataSync() as Float32Array, device.get(name)?.dataSync() as Float32Array, { rtol: 1e-6, atol: 1e-7, label: name });
    const [a, b] = [optimizer.getState(), reference.getState()];
    expect(a.step).toBe(4);
    expect(a.paramSteps).toEqual(b.paramSteps);
    expect(a.paramSteps?.get('p3')).toBe(3);
    // Moments are sums of gradients of order 1, so a moment near zero is a cancellation whose float32 round-off
    // is of the gradients' order (≈ 6e-8), not of the moment's: the absolute tolerance is set on that scale.
    for (const [key, t] of b.tensors) expectClose(a.tensors.get(key)?.values as Float32Array, t.values, { rtol: 1e-5, atol: 1e-7, label: key });
    reference.dispose();
    optimizer.dispose();
    tf.dispose([...device.values(), ...host.values()]);
  });

  test('state: getState → setState restores the host moments; readMoments copies them; stateTensors refuses', async () => {
    const first = params(3);
    const optimizer = new AdamW(first, 0.01, {}, hostMoments());
    const grads = new Map(names.map((name, i) => [name, tf.randomNormal(shapes[i] as number[], 0, 1, 'float32', 40 + i)]));
    const lrs = new Map(names.map((name) => [name, 1e-3]));
    optimizer.applyGradients(grads, lrs);
    const state = optimizer.getState();
    expect(await optimizer.readMoments()).toEqual(state.tensors);
    expect(() => optimizer.stateTensors()).toThrow(/host moments/);
    const second = params(3);
    const restored = new AdamW(second, 0.01, {}, hostMoments());
    restored.setState(state);
    expect(restored.getState()).toEqual(state);
    // The same next step from the same state and values.
    tf.tidy(() => {
      for (const [name, v] of second) v.assign(tf.clone(first.get(name) as tf.Variable));
    });
    optimizer.applyGradients(grads, lrs);
    restored.applyGradients(grads, lrs);
    for (const name of names) expect(second.get(name)?.dataSync()).toEqual(first.get(name)?.dataSync());
    tf.dispose([...grads.values(), ...first.values(), ...second.values()]);
    optimizer.dispose();
    restored.dispose();
  });

  test('host moments of the wrong size, or one buffer twice, are refused', () => {
    const p = params(5);
    expect(() => new AdamW(p, 0, {}, { m: new Float32Array(total - 1), v: new Float32Array(total) })).toThrow(ConfigError);
    const same = new Float32Array(total);
    expect(() => new AdamW(p, 0, {}, { m: same, v: same })).toThrow(/two separate vectors/);
    const device = new AdamW(p);
    expect(() => device.applyFlat(new Float32Array(total), new Uint8Array(names.length), new Map(), 1, new Float32Array(total))).toThrow(/host moments/);
    device.dispose();
    tf.dispose([...p.values()]);
  });
});

describe('flat update ranges', () => {
  test('splitVariables cuts the variables into `parts` contiguous ranges covering them all', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 1000 }), { minLength: 1, maxLength: 40 }), fc.integer({ min: 1, max: 8 }), (sizes, parts) => {
        const offsets = new Float64Array(sizes.length + 1);
        sizes.forEach((n, i) => {
          offsets[i + 1] = (offsets[i] as number) + n;
        });
        const ranges = splitVariables(offsets, parts);
        expect(ranges).toHaveLength(parts);
        expect(ranges[0]?.[0]).toBe(0);
        expect(ranges.at(-1)?.[1]).toBe(sizes.length);
        ranges.forEach(([first, last], i) => {
          expect(last).toBeGreaterThanOrEqual(first);
          if (i > 0) expect(first).toBe(ranges[i - 1]?.[1]);
        });
      }),
    );
  });

  test('a plan applied range by range gives the same bits as the whole plan at once', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 12 }),
        fc.integer({ min: 1, max: 4 }),
        fc.integer(),
        (sizes, parts, seed) => {
          const n = sizes.length;
          const offsets = new Float64Array(n + 1);
          sizes.forEach((s, i) => {
            offsets[i + 1] = (offsets[i] as number) + s;
          });
          const p = offsets[n] as number;
          let state = seed >>> 0;
          const random = (): number => {
            state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
            return state / 2 ** 32 - 0.5;
          };
          const vector = (): Float32Array => Float32Array.from({ length: p }, random);
          const plan: FlatUpdatePlan = {
            offsets,
            active: Uint8Array.from({ length: n }, (_, i) => (i % 3 === 2 ? 0 : 1)),
            lr: Float64Array.from({ length: n }, (_, i) => 1e-3 * (i + 1)),
            decay: Float64Array.from({ length: n }, (_, i) => 1 - 1e-4 * i),
            correction1: Float64Array.from({ length: n }, () => 1 - 0.9 ** 3),
            correction2: Float64Array.from({ length: n }, () => 1 - 0.999 ** 3),
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            gradScale: 0.5,
          };
          const grads = vector();
          const whole = { grads, params: vector(), m: vector(), v: vector().map(Math.abs) };
          const pieces = { grads, params: whole.params.slice(), m: whole.m.slice(), v: whole.v.slice() };
          const untouched = whole.params.slice();
          applyFlatUpdate(plan, 0, n, whole);
          for (const [first, last] of splitVariables(offsets, parts)) applyFlatUpdate(plan, first, last, pieces);
          expect(pieces).toEqual(whole);
          // An inactive variable keeps its values.
          for (let i = 2; i < n; i += 3) expect(whole.params.subarray(offsets[i], offsets[i + 1])).toEqual(untouched.subarray(offsets[i], offsets[i + 1]));
        },
      ),
      { numRuns: 50 },
    );
  });
});
