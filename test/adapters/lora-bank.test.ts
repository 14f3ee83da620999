// The LoRA bank (src/adapters/lora/bank.ts), the one place a LoRA product is computed: every way of gating it
// (ones, dense per site or shared, device top-k slots with few and many rows, host slots with and without a
// precomputed x·Aᵀ) equals the plain sum Σ_t gate · weight · scale · B·A·x over its terms; operands are reused
// until a variable changes; the dense memo shares gates · S between equal layouts; a registered backend kernel
// replaces the tfjs one; ΔW is the merged weight; and nothing leaks.
import { fc, test as fcTest } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { afterEach, describe, expect, test } from 'vitest';
import {
  type BankGates,
  type LoraTerm,
  LoraBank,
  type LoraWeights,
  registerLoraMixKernel,
  singleLoraDelta,
  unregisterLoraMixKernel,
} from '../../src/adapters/lora/bank.js';
import { expectClose, expectNoLeak } from '../helpers/tensor-asserts.js';

const I = 6; // input width
const CLOSE = { rtol: 1e-5, atol: 1e-5 };

/** A LoRA of rank r with seeded random A and B (both non-zero, so every term contributes). */
function lora(rank: number, out: number, seed: number, scale = 0.5, dropout = 0): LoraWeights {
  return {
    a: tf.variable(tf.randomNormal<tf.Rank.R2>([rank, I], 0, 1, 'float32', seed)),
    b: tf.variable(tf.randomNormal<tf.Rank.R2>([out, rank], 0, 1, 'float32', seed + 1)),
    rank,
    scale,
    dropout,
  };
}

function disposeLoras(loras: readonly LoraWeights[]): void {
  for (const l of loras) tf.dispose([l.a, l.b]);
}

/** Σ_t gates[:, choice_t] · weight_t · scale_t · (x·A_tᵀ)·B_tᵀ, term by term: [N, O]. */
function naive(terms: readonly LoraTerm[], x: tf.Tensor2D, gates: tf.Tensor2D | undefined): tf.Tensor2D {
  return tf.tidy(() =>
    terms
      .map((t) => {
        const delta = tf.mul<tf.Tensor2D>(tf.matMul(tf.matMul(x, t.lora.a, false, true), t.lora.b, false, true), t.weight * t.lora.scale); // [N, O]
        return gates === undefined ? delta : tf.mul<tf.Tensor2D>(delta, tf.slice(gates, [0, t.choice], [-1, 1])); // [N, O]
      })
      .reduce((a, b) => tf.add(a, b)),
  );
}

/** Host slots [N·G, K] (and the same as dense per-site gates [N, E]) from random scores, with padding rows zeroed. */
function randomSlots(rows: number, sites: number, choices: number, k: number, seed: number, padding: ReadonlySet<number>) {
  const random = fc.sample(fc.array(fc.float({ min: Math.fround(0.05), max: Math.fround(1), noNaN: true }), { minLength: choices, maxLength: choices }), {
    numRuns: rows * sites,
    seed,
  });
  const ids = new Int32Array(rows * sites * k);
  const weights = new Float32Array(rows * sites * k);
  const dense = Array.from({ length: sites }, () => new Float32Array(rows * choices));
  for (let n = 0; n < rows; n++) {
    for (let g = 0; g < sites; g++) {
      const scores = random[n * sites + g] as number[];
      const order = scores.map((s, e) => [s, e] as const).sort((p, q) => q[0] - p[0]);
      for (let slot = 0; slot < k; slot++) {
        const [score, e] = order[slot] as readonly [number, number];
        const w = padding.has(n) ? 0 : Math.fround(score);
        ids[(n * sites + g) * k + slot] = e;
        weights[(n * sites + g) * k + slot] = w;
        (dense[g] as Float32Array)[n * choices + e] = w;
      }
    }
  }
  return { ids, weights, dense: dense.map((d) => tf.tensor2d(d, [rows, choices])) };
}

afterEach(() => {
  unregisterLoraMixKernel(tf.getBackend());
});

describe('LoraBank', () => {
  test("'ones' with several weighted terms of one choice is the plain weighted sum (a static composition)", () => {
    const loras = [lora(2, 5, 1), lora(3, 5, 3, 2)];
    const terms: LoraTerm[] = [
      { lora: loras[0] as LoraWeights, choice: 0, weight: 0.25 },
      { lora: loras[1] as LoraWeights, choice: 0, weight: -2 },
    ];
    const x = tf.randomNormal<tf.Rank.R2>([7, I], 0, 1, 'float32', 9);
    expectNoLeak(() => {
      const bank = new LoraBank([terms], 1); // its cached operands live until dispose()
      tf.tidy(() => {
        const [delta] = bank.mix(x, { kind: 'ones' }, { training: false });
        expectClose(delta as tf.Tensor2D, naive(terms, x, undefined), CLOSE);
        expectClose(
          singleLoraDelta(loras[0] as LoraWeights, x, { training: false }),
          naive(
            [terms[0] as LoraTerm].map((t) => ({ ...t, weight: 1 })),
            x,
            undefined,
          ),
          CLOSE,
        );
      });
      bank.dispose();
    });
    tf.dispose(x);
    disposeLoras(loras);
  });

  fcTest.prop(
    { rows: fc.integer({ min: 1, max: 80 }), k: fc.integer({ min: 1, max: 3 }), seed: fc.integer({ min: 0, max: 1000 }), pad: fc.boolean() },
    { numRuns: 12 },
  )('dense, device slots and host slots all equal the routed sum over a uniform group of three sites', ({ rows, k, seed, pad }) => {
    const choices = 4; // the last is a null expert: no term
    const outs = [5, 3, 3];
    const loras = outs.flatMap((out, g) => [
      lora(2, out, seed * 10 + g * 3),
      lora(1, out, seed * 10 + g * 3 + 1, 1.5),
      lora(2, out, seed * 10 + g * 3 + 2, 0.75),
    ]);
    // The same ranks and scales per choice at every site: a uniform layout.
    const sites: LoraTerm[][] = outs.map((_, g) => [0, 1, 2].map((e) => ({ lora: loras[g * 3 + e] as LoraWeights, choice: e, weight: 1 })));
    const bank = new LoraBank(sites, choices);
    expect(bank.uniformLayout).toBe(true);
    const padding = new Set(pad ? [0] : []);
    const x = tf.randomNormal<tf.Rank.R2>([rows, I], 0, 1, 'float32', seed);
    const slots = randomSlots(rows, sites.length, choices, k, seed, padding);
    const start = tf.memory().numTensors;
    tf.tidy(() => {
      const expected = sites.map((terms, g) => naive(terms, x, slots.dense[g])); // per site [N, O_g]
      const variants: [string, BankGates][] = [
        ['dense per site', { kind: 'dense', gates: slots.dense }],
        [
          'device slots',
          { kind: 'slots', ids: tf.tensor2d(slots.ids, [rows * sites.length, k], 'int32'), weights: tf.tensor2d(slots.weights, [rows * sites.length, k]) },
        ],
        ['host slots', { kind: 'host-slots', slots: { ids: slots.ids, weights: slots.weights, k } }],
      ];
      for (const [label, gates] of variants) {
        const deltas = bank.mix(x, gates, { training: false });
        deltas.forEach((d, g) => expectClose(d, expected[g] as tf.Tensor2D, { ...CLOSE, label: `${label}, site ${g}` }));
        if (pad) deltas.forEach((d) => expect(Array.from(d.slice([0, 0], [1, -1]).dataSync()).every((v) => v === 0)).toBe(true));
      }
    });
    bank.dispose(); // frees the cached operands: back to the count before the first mix
    expect(tf.memory().numTensors).toBe(start);
    tf.dispose([x, ...slots.dense]);
    disposeLoras(loras);
  });

  test('cached operands are reused, and rebuilt when a variable is assigned (an optimizer step or a hot swap)', () => {
    const loras = [lora(2, 4, 11), lora(2, 4, 13)];
    const bank = new LoraBank([loras.map((l, e) => ({ lora: l, choice: e, weight: 1 }))], 2);
    const x = tf.randomNormal<tf.Rank.R2>([3, I], 0, 1, 'float32', 2);
    const gates = tf.tensor2d([1, 0, 0.5, 0.5, 0, 1], [3, 2]);
    const first = bank.operands({ training: false });
    expect(bank.operands({ training: false })).toBe(first);
    const version = bank.version;
    const before = tf.tidy(() => (bank.mix(x, { kind: 'dense', gates }, { training: false })[0] as tf.Tensor2D).dataSync().slice());
    (loras[1] as LoraWeights).b.assign(tf.mul((loras[1] as LoraWeights).b, 3));
    expect(bank.operands({ training: false })).not.toBe(first);
    expect(bank.version).toBe(version + 1);
    const after = tf.tidy(() => bank.mix(x, { kind: 'dense', gates }, { training: false })[0] as tf.Tensor2D);
    expect(() => expectClose(after, before, CLOSE)).toThrow(/max abs diff/);
    tf.tidy(() =>
      expectClose(
        after,
        naive(
          loras.map((l, e) => ({ lora: l, choice: e, weight: 1 })),
          x,
          gates,
        ),
        CLOSE,
      ),
    );
    tf.dispose([after, x, gates]);
    bank.dispose();
    disposeLoras(loras);
  });

  test('training builds operands in the forward, so gradients reach every term', () => {
    const loras = [lora(2, 4, 21), lora(3, 4, 23)];
    const bank = new LoraBank([loras.map((l, e) => ({ lora: l, choice: e, weight: 1 }))], 2);
    const x = tf.randomNormal<tf.Rank.R2>([5, I], 0, 1, 'float32', 3);
    const gates = tf.tensor2d(
      Array.from({ length: 10 }, (_, i) => (i % 3) / 2),
      [5, 2],
    );
    const { grads } = tf.variableGrads(() => tf.sum(bank.mixSite(0, x, { kind: 'dense', gates }, { training: true })) as tf.Scalar);
    for (const l of loras) {
      for (const v of [l.a, l.b]) {
        const g = grads[v.name];
        expect(g, v.name).toBeDefined();
        expect(tf.tidy(() => tf.max(tf.abs(g as tf.Tensor)).dataSync()[0]) as number).toBeGreaterThan(0);
      }
    }
    tf.dispose([...Object.values(grads), x, gates]);
    bank.dispose();
    disposeLoras(loras);
  });

  test('the dense memo computes gates · S once per layout for shared gates (mixed-adapter membership)', () => {
    const loras = [lora(2, 4, 31), lora(2, 4, 33), lora(2, 4, 35), lora(2, 4, 37)];
    const a = new LoraBank(
      [
        [
          { lora: loras[0] as LoraWeights, choice: 0, weight: 1 },
          { lora: loras[1] as LoraWeights, choice: 1, weight: 1 },
        ],
      ],
      2,
    );
    const b = new LoraBank(
      [
        [
          { lora: loras[2] as LoraWeights, choice: 0, weight: 1 },
          { lora: loras[3] as LoraWeights, choice: 1, weight: 1 },
        ],
      ],
      2,
    );
    const x = tf.randomNormal<tf.Rank.R2>([4, I], 0, 1, 'float32', 4);
    const membership = tf.tensor2d([1, 0, 0, 1, 1, 0, 0, 1], [4, 2]);
    tf.tidy(() => {
      const memo = new Map<string, tf.Tensor2D>();
      a.mix(x, { kind: 'dense', gates: membership, memo }, { training: false });
      b.mix(x, { kind: 'dense', gates: membership, memo }, { training: false });
      expect(memo.size).toBe(1); // the same ranks and scales: one layout
    });
    tf.dispose([x, membership]);
    a.dispose();
    b.dispose();
    disposeLoras(loras);
  });

  test('a registered mix kernel replaces the tfjs implementation on its backend; unregistering restores it', () => {
    const loras = [lora(2, 4, 41)];
    const bank = new LoraBank([[{ lora: loras[0] as LoraWeights, choice: 0, weight: 1 }]], 1);
    const x = tf.randomNormal<tf.Rank.R2>([3, I], 0, 1, 'float32', 5);
    let calls = 0;
    registerLoraMixKernel(tf.getBackend(), (_bank, operands, input) => {
      calls++;
      return [tf.zeros([input.shape[0], operands.sites[0]?.bT.shape[1] ?? 0])];
    });
    tf.tidy(() => {
      const [custom] = bank.mix(x, { kind: 'ones' }, { training: false });
      expect(calls).toBe(1);
      expect(Array.from((custom as tf.Tensor2D).dataSync()).every((v) => v === 0)).toBe(true);
      unregisterLoraMixKernel(tf.getBackend());
      const [plain] = bank.mix(x, { kind: 'ones' }, { training: false });
      expect(calls).toBe(1);
      expectClose(plain as tf.Tensor2D, naive([{ lora: loras[0] as LoraWeights, choice: 0, weight: 1 }], x, undefined), CLOSE);
    });
    tf.dispose(x);
    bank.dispose();
    disposeLoras(loras);
  });

  test('deltaWeight is Σ weight · scale · (B·A)ᵀ in the base layout [I, O]', () => {
    const loras = [lora(2, 5, 51), lora(3, 5, 53, 0.2)];
    const terms: LoraTerm[] = [
      { lora: loras[0] as LoraWeights, choice: 0, weight: 0.8 },
      { lora: loras[1] as LoraWeights, choice: 0, weight: -0.5 },
    ];
    const bank = new LoraBank([terms], 1);
    tf.tidy(() => {
      const expected = terms.map((t) => tf.mul(tf.transpose(tf.matMul(t.lora.b, t.lora.a)), t.weight * t.lora.scale)).reduce((p, q) => tf.add(p, q)); // [I, O]
      const delta = bank.deltaWeight(0);
      expect(delta.shape).toEqual([I, 5]);
      expectClose(delta, expected, CLOSE);
    });
    bank.dispose();
    disposeLoras(loras);
  });

  test('slot gates need one rank layout at every site, and say so', () => {
    const loras = [lora(2, 4, 61), lora(3, 4, 63)];
    const bank = new LoraBank([[{ lora: loras[0] as LoraWeights, choice: 0, weight: 1 }], [{ lora: loras[1] as LoraWeights, choice: 0, weight: 1 }]], 1);
    expect(bank.uniformLayout).toBe(false);
    const x = tf.randomNormal<tf.Rank.R2>([2, I], 0, 1, 'float32', 6);
    expect(() =>
      tf.tidy(() => [...bank.mix(x, { kind: 'host-slots', slots: { ids: new Int32Array(4), weights: new Float32Array(4), k: 1 } }, { training: false })]),
    ).toThrow(/same rank layout/);
    tf.dispose(x);
    bank.dispose();
    disposeLoras(loras);
  });
});
