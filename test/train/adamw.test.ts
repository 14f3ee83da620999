// AdamW against a hand computation in double precision, decoupled weight decay (a zero gradient shrinks p by
// exactly 1 − lr·wd), untouched parameters without a gradient, state round trips and shape checks, no leaks.
import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { CheckpointError, ConfigError } from '../../src/errors.js';
import { AdamW, FUSED_CHUNK_ELEMENTS } from '../../src/train/adamw.js';
import { expectClose, expectNoLeak } from '../helpers/tensor-asserts.js';

/** Host AdamW over plain arrays (double precision), the formula of Loshchilov & Hutter 2019 as in adamw.ts. */
function hostAdamW(p0: number[], gradients: number[][], lr: number, wd: number, beta1 = 0.9, beta2 = 0.999, eps = 1e-8): number[] {
  const p = [...p0];
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  gradients.forEach((g, s) => {
    const t = s + 1;
    for (let i = 0; i < p.length; i++) {
      const gi = g[i] as number;
      m[i] = beta1 * (m[i] as number) + (1 - beta1) * gi;
      v[i] = beta2 * (v[i] as number) + (1 - beta2) * gi * gi;
      const mHat = (m[i] as number) / (1 - beta1 ** t);
      const vHat = (v[i] as number) / (1 - beta2 ** t);
      p[i] = (p[i] as number) - lr * (mHat / (Math.sqrt(vHat) + eps) + wd * (p[i] as number));
    }
  });
  return p;
}

function makeParam(values: number[], label: string): tf.Variable {
  return tf.variable(tf.tensor1d(values), true, `${label}#${Math.random()}`);
}

describe('AdamW', () => {
  test('two steps match a hand computation (with weight decay)', () => {
    const p0 = [0.5, -1, 2, 0.25];
    const grads = [
      [0.1, -0.2, 0.3, 1e-3],
      [-0.05, 0.4, 0, 2],
    ];
    const lr = 0.01;
    const wd = 0.1;
    const param = makeParam(p0, 'p');
    const optimizer = new AdamW(new Map([['p', param]]), wd);
    expectNoLeak(() => {
      for (const g of grads) {
        const grad = tf.tensor1d(g);
        optimizer.applyGradients(new Map([['p', grad]]), new Map([['p', lr]]));
        grad.dispose();
      }
    });
    expectClose(param.dataSync(), hostAdamW(p0, grads, lr, wd), { rtol: 1e-5, atol: 1e-7, label: 'p after 2 steps' });
    expect(optimizer.step).toBe(2);
    optimizer.dispose();
    param.dispose();
  });

  test('decoupled decay: with a zero gradient p shrinks by exactly (1 − lr·wd)', () => {
    const p0 = [0.5, -1, 2, 3.25];
    const lr = 0.05;
    const wd = 0.2;
    const param = makeParam(p0, 'p');
    const optimizer = new AdamW(new Map([['p', param]]), wd);
    const zero = tf.zeros([4]);
    optimizer.applyGradients(new Map([['p', zero]]), new Map([['p', lr]]));
    const factor = Math.fround(1 - lr * wd);
    expect(Array.from(param.dataSync())).toEqual(p0.map((x) => Math.fround(x * factor)));
    // Decoupled: the decay does not pass through the moments, so they stay exactly zero.
    const state = optimizer.getState();
    expect(Array.from(state.tensors.get('p/m')?.values ?? [])).toEqual([0, 0, 0, 0]);
    expect(Array.from(state.tensors.get('p/v')?.values ?? [])).toEqual([0, 0, 0, 0]);
    zero.dispose();
    optimizer.dispose();
    param.dispose();
  });

  test('per-parameter weight decay and learning rate; a parameter without a gradient is untouched', () => {
    const a = makeParam([1, 1], 'a');
    const b = makeParam([1, 1], 'b');
    const c = makeParam([1, 1], 'c');
    const optimizer = new AdamW(
      new Map([
        ['a', a],
        ['b', b],
        ['c', c],
      ]),
      new Map([
        ['a', 0.5],
        ['b', 0],
      ]),
    );
    const zero = tf.zeros([2]);
    optimizer.applyGradients(
      new Map([
        ['a', zero],
        ['b', zero],
      ]),
      new Map([
        ['a', 0.1],
        ['b', 0.1],
      ]),
    );
    expect(Array.from(a.dataSync())).toEqual([Math.fround(0.95), Math.fround(0.95)]);
    expect(Array.from(b.dataSync())).toEqual([1, 1]);
    expect(Array.from(c.dataSync())).toEqual([1, 1]);
    expect(optimizer.getState().paramSteps?.get('c')).toBe(0);
    expect(optimizer.getState().paramSteps?.get('a')).toBe(1);
    zero.dispose();
    optimizer.dispose();
    for (const v of [a, b, c]) v.dispose();
  });

  test('state round-trips into a fresh optimizer (same next update) and is shape-checked', () => {
    const p0 = [0.3, -0.7, 1.1];
    const g1 = tf.tensor1d([0.2, -0.1, 0.5]);
    const g2 = tf.tensor1d([-0.3, 0.2, 0.1]);
    const lrs = new Map([['p', 0.02]]);
    const p = makeParam(p0, 'p');
    const q = makeParam(p0, 'q');
    const first = new AdamW(new Map([['p', p]]), 0.01);
    const second = new AdamW(new Map([['p', q]]), 0.01);
    first.applyGradients(new Map([['p', g1]]), lrs);
    q.assign(p);
    second.setState(first.getState());
    expect(second.step).toBe(1);
    first.applyGradients(new Map([['p', g2]]), lrs);
    second.applyGradients(new Map([['p', g2]]), lrs);
    expect(Array.from(q.dataSync())).toEqual(Array.from(p.dataSync()));

    const state = first.getState();
    const bad = new Map(state.tensors);
    bad.set('p/m', { shape: [4], values: new Float32Array(4) });
    expect(() => second.setState({ step: 1, tensors: bad })).toThrow(CheckpointError);
    const missing = new Map(state.tensors);
    missing.delete('p/v');
    expect(() => second.setState({ step: 1, tensors: missing })).toThrow(/no p\/v/);
    const extra = new Map(state.tensors);
    extra.set('other/m', { shape: [3], values: new Float32Array(3) });
    expect(() => second.setState({ step: 1, tensors: extra })).toThrow(/other\/m/);

    for (const t of [g1, g2]) t.dispose();
    first.dispose();
    second.dispose();
    p.dispose();
    q.dispose();
  });

  test('updating many parameters in one call gives the same bits as one call per parameter', () => {
    // Shapes that fill more than one fused chunk; two weight decays and two learning rates make four groups.
    const shapes: number[][] = [[3, 4], [FUSED_CHUNK_ELEMENTS - 5], [7], [2, 3, 2], [5, 1], [16]];
    const names = shapes.map((_, i) => `p${i}`);
    const initial = shapes.map((shape, i) => tf.randomNormal(shape, 0, 1, 'float32', 100 + i));
    const make = () => new Map(names.map((name, i) => [name, tf.variable(initial[i] as tf.Tensor, true, `${name}#${Math.random()}`)]));
    const fusedParams = make();
    const singleParams = make();
    const decay = new Map(names.map((name, i) => [name, i % 2 === 0 ? 0.01 : 0]));
    const fused = new AdamW(fusedParams, decay);
    const single = new AdamW(singleParams, decay);
    const lrs = new Map(names.map((name, i) => [name, i < 3 ? 1e-3 : 3e-4]));
    for (let step = 0; step < 3; step++) {
      // Parameter p2 sits out step 1, so its step count falls behind the others'.
      const grads = new Map(
        names
          .filter((name) => !(step === 1 && name === 'p2'))
          .map((name, i) => [name, tf.randomNormal(shapes[names.indexOf(name)] as number[], 0, 1, 'float32', 7 * step + i)]),
      );
      fused.applyGradients(grads, lrs);
      for (const [name, g] of grads) single.applyGradients(new Map([[name, g]]), lrs);
      tf.dispose([...grads.values()]);
    }
    for (const name of names) {
      expect(fusedParams.get(name)?.dataSync()).toEqual(singleParams.get(name)?.dataSync());
      expect(fused.stateTensors().tensors.get(`${name}/v`)?.dataSync()).toEqual(single.stateTensors().tensors.get(`${name}/v`)?.dataSync());
    }
    expect(fused.stateTensors().paramSteps.get('p2')).toBe(2);
    expect(fused.step).toBe(3);
    fused.dispose();
    single.dispose();
    tf.dispose([...initial, ...fusedParams.values(), ...singleParams.values()]);
  });

  test('a call with one bad gradient is refused before any parameter changes', () => {
    const a = tf.variable(tf.tensor1d([1, 2]), true, `a#${Math.random()}`);
    const b = tf.variable(tf.tensor1d([3, 4]), true, `b#${Math.random()}`);
    const optimizer = new AdamW(
      new Map([
        ['a', a],
        ['b', b],
      ]),
    );
    const ga = tf.tensor1d([1, 1]);
    const gb = tf.tensor1d([1, 1, 1]); // wrong shape
    expect(() =>
      optimizer.applyGradients(
        new Map([
          ['a', ga],
          ['b', gb],
        ]),
        new Map([
          ['a', 0.1],
          ['b', 0.1],
        ]),
      ),
    ).toThrow(ConfigError);
    expect([...a.dataSync()]).toEqual([1, 2]);
    expect(optimizer.stateTensors().paramSteps.get('a')).toBe(0);
    expect(optimizer.step).toBe(0);
    optimizer.dispose();
    tf.dispose([a, b, ga, gb]);
  });

  test('dispose frees both moments of every parameter', () => {
    const p = makeParam([1, 2, 3], 'p');
    const before = tf.memory().numTensors;
    const optimizer = new AdamW(new Map([['p', p]]));
    expect(tf.memory().numTensors).toBe(before + 2);
    optimizer.dispose();
    expect(tf.memory().numTensors).toBe(before);
    p.dispose();
  });
});
