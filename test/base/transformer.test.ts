// The frozen Transformer on tiny random llama (GQA) and gpt2 models: left-padded batches equal each prompt
// alone, KV-cached decoding equals recomputation, identity hooks change nothing (and a real hook does),
// invalid input is a ShapeError naming its path, sampling semantics, and no tensor leaks.
import { fc, test as fcTest } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { generate, generateSteps, padLeft } from '../../src/base/generate.js';
import { type ForwardHooks, perSiteHooks } from '../../src/base/hooks.js';
import { argmax, sampleToken, seededRandom, type SamplingOptions } from '../../src/base/sampling.js';
import type { Transformer } from '../../src/base/transformer.js';
import { ShapeError } from '../../src/errors.js';
import type { SiteName } from '../../src/base/sites.js';
import { expectClose, expectNoLeak } from '../helpers/tensor-asserts.js';
import { tinyGpt2, tinyLlama } from '../helpers/tiny-models.js';

const TOL = { rtol: 1e-4, atol: 1e-5 } as const;

/** Runs a forward and returns its values and shape, disposing the tensor. */
function run(model: Transformer, options: Parameters<Transformer['forward']>[0]): { values: Float32Array; shape: number[] } {
  const out = model.forward(options);
  const result = { values: out.dataSync() as Float32Array, shape: out.shape };
  out.dispose();
  return result;
}

/** Rows [from, to) of the [T, V] block of batch row b in flat [B, T, V] logits. */
function positions(values: Float32Array, shape: number[], b: number, from: number, to: number): Float32Array {
  const [, t, v] = shape as [number, number, number];
  return values.subarray((b * t + from) * v, (b * t + to) * v);
}

const FAMILIES: readonly [string, () => Transformer][] = [
  ['llama (4 query heads, 2 kv heads)', () => tinyLlama()],
  ['gpt2', () => tinyGpt2()],
];

describe.each(FAMILIES)('%s', (_name, build) => {
  let model: Transformer;
  let vocab: number;
  beforeAll(() => {
    model = build();
    vocab = model.config.vocabSize;
  });
  afterAll(() => model.dispose());

  const prompts = [[5, 9, 1, 30], [3], [7, 8, 9, 10, 11, 12, 13], [2, 2, 2, 2, 2]];

  test('forward outputs: logits [B, T, V], last-logits [B, V] = last column, hidden [B, T, D]', () => {
    const ids = [
      [1, 2, 3],
      [4, 5, 6],
    ];
    const logits = run(model, { ids });
    expect(logits.shape).toEqual([2, 3, vocab]);
    expect(logits.values.every(Number.isFinite)).toBe(true);
    const last = run(model, { ids, output: 'last-logits' });
    expect(last.shape).toEqual([2, vocab]);
    for (let b = 0; b < 2; b++) expectClose(last.values.subarray(b * vocab, (b + 1) * vocab), positions(logits.values, logits.shape, b, 2, 3), TOL);
    expect(run(model, { ids, output: 'hidden' }).shape).toEqual([2, 3, model.config.dim]);
  });

  test('a left-padded batch gives every prompt its solo logits at all real positions (any pad id)', () => {
    for (const padId of [0, 17]) {
      const { ids, mask } = padLeft(prompts, padId);
      const width = ids[0]?.length ?? 0;
      const batch = run(model, { ids, mask });
      const lastOnly = run(model, { ids, mask, output: 'last-logits' });
      prompts.forEach((prompt, b) => {
        const alone = run(model, { ids: [prompt] });
        const label = `prompt ${b} (pad ${padId})`;
        expectClose(positions(batch.values, batch.shape, b, width - prompt.length, width), alone.values, { ...TOL, label });
        expectClose(lastOnly.values.subarray(b * vocab, (b + 1) * vocab), alone.values.subarray((prompt.length - 1) * vocab), {
          ...TOL,
          label: `${label} last`,
        });
      });
    }
  });

  test('KV cache: prefill, then one-token and multi-token steps equal full recomputation', () => {
    expectNoLeak(() => {
      const rows = [
        [4, 8, 15, 16, 23, 1],
        [30, 29],
      ];
      const { ids, mask } = padLeft(rows);
      const cache = model.newCache(2);
      try {
        const seq = ids.map((r) => [...r]);
        const seqMask = mask.map((r) => [...r]);
        const prefill = run(model, { ids, mask, cache, output: 'last-logits' });
        expectClose(prefill.values, run(model, { ids, mask, output: 'last-logits' }).values, { ...TOL, label: 'prefill' });
        expect(cache.length).toBe(6);
        expect([cache.positionsOf(0), cache.positionsOf(1)]).toEqual([6, 2]);

        for (let step = 0; step < 4; step++) {
          const next = [(step * 7 + 3) % vocab, (step * 11 + 5) % vocab];
          next.forEach((t, b) => {
            seq[b]?.push(t);
            seqMask[b]?.push(1);
          });
          const cached = run(model, { ids: next.map((t) => [t]), mask: [[1], [1]], cache, output: 'last-logits' });
          const full = run(model, { ids: seq, mask: seqMask, output: 'last-logits' });
          expectClose(cached.values, full.values, { ...TOL, label: `decode step ${step}` });
          // And each row equals its unpadded sequence alone.
          rows.forEach((row, b) => {
            const alone = run(model, { ids: [[...row, ...seq[b]!.slice(6)]], output: 'last-logits' });
            expectClose(cached.values.subarray(b * vocab, (b + 1) * vocab), alone.values, { ...TOL, label: `row ${b} step ${step}` });
          });
        }
        // Three new tokens in one cached call: causal within the chunk, all attending to the past.
        const chunk = [
          [9, 10, 11],
          [12, 13, 14],
        ];
        const cached = run(model, { ids: chunk, cache });
        chunk.forEach((c, b) => {
          seq[b]?.push(...c);
          seqMask[b]?.push(1, 1, 1);
        });
        const full = run(model, { ids: seq, mask: seqMask });
        const width = seq[0]?.length ?? 0;
        for (let b = 0; b < 2; b++) {
          expectClose(positions(cached.values, cached.shape, b, 0, 3), positions(full.values, full.shape, b, width - 3, width), {
            ...TOL,
            label: `chunk row ${b}`,
          });
        }
        expect(cache.length).toBe(width);
      } finally {
        cache.dispose();
      }
    });
  });

  test('hooks that return their input leave logits bit-identical, and every hook point is called', () => {
    const ids = [
      [0, 3, 5, 7],
      [9, 11, 13, 15],
    ];
    const mask = [
      [0, 1, 1, 1],
      [1, 1, 1, 1],
    ];
    const calls: Record<string, number> = {};
    const count = (what: string): void => {
      calls[what] = (calls[what] ?? 0) + 1;
    };
    const hooks: ForwardHooks = {
      begin: (context) => {
        count('begin');
        expect(context).toMatchObject({ batch: 2, tokens: 4, pastLength: 0, training: false });
        expect(context.mask.shape).toEqual([2, 4]);
      },
      beginLayer: () => count('beginLayer'),
      groupInputs: (_l, group, x) => {
        count('groupInputs');
        return group.sites.map(() => x);
      },
      groupOutputs: (_l, group, xs, ys) => {
        count('groupOutputs');
        // One call per group: every site of the group, its input shared, its base output of the site's width.
        expect(xs.length).toBe(group.sites.length);
        expect(xs.every((x) => x === xs[0])).toBe(true);
        expect(ys.map((y) => y.shape[1])).toEqual(group.sites.map((site) => model.weights.layers[0]?.sites[site]?.weight.shape[1]));
        return ys;
      },
      blockOutput: (_l, _b, h) => {
        count('blockOutput');
        return h;
      },
      attentionPrefix: () => {
        count('attentionPrefix');
        return undefined;
      },
    };
    const plain = run(model, { ids, mask });
    const hooked = expectNoLeak(() => run(model, { ids, mask, hooks }));
    expect(Array.from(hooked.values)).toEqual(Array.from(plain.values));
    const layers = model.config.nLayers;
    expect(calls).toEqual({
      begin: 1,
      beginLayer: layers,
      groupInputs: layers * model.groups.length,
      groupOutputs: layers * model.groups.length,
      blockOutput: layers * 2,
      attentionPrefix: layers,
    });
  });

  test('hooks that change a value change the logits (siteOutput, siteInput, blockOutput)', () => {
    const ids = [[1, 2, 3, 4]];
    const plain = run(model, { ids });
    // A constant added to the residual stream is invisible to gpt2 (every read of it goes through a
    // shift-invariant LayerNorm), so the constant goes into mlp.up, before the nonlinearity.
    const variants: ForwardHooks[] = [
      perSiteHooks({ siteOutput: (l, s, _x, y) => (l === 1 && s === 'mlp.up' ? tf.add(y, 0.5) : y) }),
      perSiteHooks({ siteInput: (l, s, x) => (l === 0 && s === 'mlp.down' ? tf.mul(x, 1.5) : x) }),
      { blockOutput: (l, b, h) => (l === 0 && b === 'attn' ? tf.mul(h, 1.5) : h) },
    ];
    for (const hooks of variants) {
      const changed = expectNoLeak(() => run(model, { ids, hooks }));
      expect(() => expectClose(changed.values, plain.values, { rtol: 1e-3, atol: 1e-3 })).toThrow(/max abs diff/);
    }
  });

  test('invalid input is a ShapeError naming the path, and leaks nothing', () => {
    const max = model.config.maxSeqLen;
    const cases: [string, () => unknown, string | undefined][] = [
      ['id = vocab size', () => model.forward({ ids: [[1, vocab]] }), 'ids[0][1]'],
      [
        'negative id',
        () =>
          model.forward({
            ids: [
              [1, 2],
              [-1, 2],
            ],
          }),
        'ids[1][0]',
      ],
      ['fractional id', () => model.forward({ ids: [[1.5]] }), 'ids[0][0]'],
      ['ragged rows', () => model.forward({ ids: [[1, 2], [3]] }), 'ids[1]'],
      ['no rows', () => model.forward({ ids: [] }), undefined],
      ['empty row', () => model.forward({ ids: [[]] }), undefined],
      [
        'mask of the wrong shape',
        () =>
          model.forward({
            ids: [
              [1, 2],
              [3, 4],
            ],
            mask: [[1, 1]],
          }),
        'mask',
      ],
      [
        'ragged mask',
        () =>
          model.forward({
            ids: [
              [1, 2],
              [3, 4],
            ],
            mask: [[1, 1], [1]],
          }),
        'mask',
      ],
      ['mask not 0/1', () => model.forward({ ids: [[1, 2]], mask: [[1, 2]] }), 'mask'],
      ['too long', () => model.forward({ ids: [Array.from({ length: max + 1 }, () => 3)] }), 'ids'],
      ['empty prompt to generate', () => generate(model, [[1], []], { maxNewTokens: 2 }), 'prompts'],
      ['negative maxNewTokens', () => generate(model, [[1]], { maxNewTokens: -1 }), 'maxNewTokens'],
    ];
    for (const [what, call, path] of cases) {
      expectNoLeak(() => {
        let error: unknown;
        try {
          call();
        } catch (e) {
          error = e;
        }
        expect(error, what).toBeInstanceOf(ShapeError);
        expect((error as ShapeError).path, what).toBe(path);
        if (path !== undefined) expect((error as Error).message, what).toContain(`(at ${path})`);
      });
    }
    // Padding does not count towards the length limit.
    const padded = [[0, 0, ...Array.from({ length: max }, () => 3)]];
    expect(run(model, { ids: padded, mask: [[0, 0, ...Array.from({ length: max }, () => 1)]], output: 'last-logits' }).shape).toEqual([1, vocab]);
  });

  test('with a cache: too long in total and a batch mismatch are ShapeErrors', () => {
    expectNoLeak(() => {
      const max = model.config.maxSeqLen;
      const cache = model.newCache(1);
      try {
        model.forward({ ids: [Array.from({ length: max - 2 }, () => 5)], cache }).dispose();
        expect(() => model.forward({ ids: [[1, 2, 3]], cache })).toThrow(ShapeError);
        expect(() => model.forward({ ids: [[1, 2, 3]], cache })).toThrow(/\(at ids\)/);
        expect(() => model.forward({ ids: [[1], [2]], cache })).toThrow(/\(at cache\)/);
        model.forward({ ids: [[1, 2]], cache }).dispose(); // exactly max is fine
      } finally {
        cache.dispose();
      }
    });
  });

  test('no tensor leaks across forward, generate (cached, noCache, with hooks) and errors thrown mid-forward', () => {
    expectNoLeak(() => {
      for (const output of ['logits', 'last-logits', 'hidden'] as const) model.forward({ ids: [[1, 2, 3]], output }).dispose();
      generate(model, prompts, { maxNewTokens: 5, temperature: 0.8, seed: 1, eosId: null });
      generate(model, prompts, { maxNewTokens: 3, temperature: 0, eosId: null, noCache: true });
      generate(model, [[1, 2]], { maxNewTokens: 3, hooks: perSiteHooks({ siteOutput: (_l, _s, _x, y) => tf.mul(y, 1.01) }), eosId: null });
      const boom: ForwardHooks = perSiteHooks({
        siteOutput: (layer, _s, _x, y) => {
          const scaled = tf.mul<tf.Tensor2D>(y, 2); // created, then abandoned by the throw
          if (layer === 1) throw new Error('boom in layer 1');
          return scaled;
        },
      });
      expect(() => model.forward({ ids: [[1, 2, 3]], hooks: boom })).toThrow('boom in layer 1');
      const cache = model.newCache(1);
      model.forward({ ids: [[1, 2]], cache }).dispose();
      expect(() => model.forward({ ids: [[3]], cache, hooks: boom })).toThrow('boom in layer 1');
      cache.dispose();
      expect(() => generate(model, [[1]], { maxNewTokens: 3, hooks: boom })).toThrow('boom in layer 1');
    });
  });

  describe('sampling through generate', () => {
    const prompt = [[3, 1, 4, 1, 5]];

    test('greedy picks the argmax of the last logits at every step', () => {
      const [row] = generate(model, prompt, { maxNewTokens: 6, temperature: 0, eosId: null });
      expect(row).toHaveLength(11);
      for (let t = 5; t < 11; t++) {
        const logits = run(model, { ids: [row!.slice(0, t)], output: 'last-logits' });
        expect(row![t], `token ${t}`).toBe(argmax(logits.values));
      }
    });

    test('the same seed gives the same tokens; another seed other tokens', () => {
      const options = { maxNewTokens: 20, temperature: 1.5, seed: 11, eosId: null } as const;
      const a = generate(model, prompt, options);
      expect(generate(model, prompt, options)).toEqual(a);
      expect(generate(model, prompt, { ...options, seed: 12 })).not.toEqual(a);
    });

    test('topK 1 and a tiny topP both reduce to greedy', () => {
      const greedy = generate(model, prompt, { maxNewTokens: 12, temperature: 0, eosId: null });
      expect(greedy).not.toEqual(generate(model, prompt, { maxNewTokens: 12, temperature: 1.5, seed: 2, eosId: null }));
      expect(generate(model, prompt, { maxNewTokens: 12, temperature: 1.5, topK: 1, seed: 2, eosId: null })).toEqual(greedy);
      expect(generate(model, prompt, { maxNewTokens: 12, temperature: 1.5, topP: 1e-6, seed: 2, eosId: null })).toEqual(greedy);
    });

    test('generation stops a row at EOS and generateSteps reports -1 for it afterwards', () => {
      const greedy = generate(model, [[6], [7, 8]], { maxNewTokens: 1, temperature: 0, eosId: null });
      const eos = greedy[0]![1]!; // row 0's first greedy token, used as EOS
      const steps = [...generateSteps(model, [[6], [7, 8]], { maxNewTokens: 3, temperature: 0, eosId: eos })];
      expect(steps[0]?.[0]).toBe(eos);
      for (const step of steps.slice(1)) expect(step[0]).toBe(-1);
      const rows = generate(model, [[6], [7, 8]], { maxNewTokens: 3, temperature: 0, eosId: eos });
      expect(rows[0]).toEqual([6, eos]);
    });
  });
});

describe('sampleToken', () => {
  const logitsArb = fc.array(fc.float({ min: Math.fround(-20), max: Math.fround(20), noNaN: true }), { minLength: 1, maxLength: 40 });

  fcTest.prop([logitsArb, fc.integer({ min: 0, max: 2 ** 31 - 1 })])('temperature 0 is argmax', (logits, seed) => {
    expect(sampleToken(logits, { temperature: 0 }, seededRandom(seed))).toBe(argmax(logits));
  });

  fcTest.prop([
    logitsArb,
    fc.integer({ min: 1, max: 40 }),
    fc.float({ min: Math.fround(0.05), max: Math.fround(3), noNaN: true }),
    fc.option(fc.float({ min: Math.fround(0.01), max: Math.fround(1), noNaN: true }), { nil: undefined }),
    fc.integer({ min: 0, max: 2 ** 31 - 1 }),
  ])('a sampled id always lies in the top-k set', (logits, k, temperature, topP, seed) => {
    const options: SamplingOptions = topP === undefined ? { temperature, topK: k } : { temperature, topK: k, topP };
    const id = sampleToken(logits, options, seededRandom(seed));
    expect(Number.isInteger(id) && id >= 0 && id < logits.length).toBe(true);
    // Ties at the k-th largest value make every tied id a legitimate member of the top-k set.
    const kth = [...logits].sort((a, b) => b - a)[Math.min(k, logits.length) - 1] as number;
    expect(logits[id]).toBeGreaterThanOrEqual(kth);
  });

  test('topK 1 and a tiny topP are argmax even at high temperature', () => {
    const random = seededRandom(5);
    for (let trial = 0; trial < 50; trial++) {
      const logits = Array.from({ length: 16 }, () => random() * 4);
      expect(sampleToken(logits, { temperature: 5, topK: 1 }, random)).toBe(argmax(logits));
      expect(sampleToken(logits, { temperature: 5, topP: 1e-9 }, random)).toBe(argmax(logits));
    }
  });

  test('the same seed gives the same draws', () => {
    const logits = Array.from({ length: 10 }, (_, i) => Math.sin(i));
    const draw = (seed: number): number[] => {
      const random = seededRandom(seed);
      return Array.from({ length: 30 }, () => sampleToken(logits, { temperature: 1 }, random));
    };
    expect(draw(99)).toEqual(draw(99));
    expect(new Set(draw(99)).size).toBeGreaterThan(1);
  });
});

describe('KV cache after a failed forward', () => {
  test('is left exactly as before the failing call, and the next call succeeds', () => {
    const model = tinyLlama();
    const cache = model.newCache(1);
    model.forward({ ids: [[1, 2, 3]], cache }).dispose();
    const before = tf.memory().numTensors;
    const failing = perSiteHooks({
      siteOutput: (layer: number, _site: SiteName, _x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D => {
        if (layer === 1) throw new Error('boom');
        return y;
      },
    });
    expect(() => model.forward({ ids: [[4]], cache, hooks: failing })).toThrow('boom');
    expect(tf.memory().numTensors).toBe(before);
    expect(cache.length).toBe(3);
    expect(cache.get(0)?.keys.shape[1]).toBe(3);
    const cached = model.forward({ ids: [[4]], cache, output: 'last-logits' });
    const full = model.forward({ ids: [[1, 2, 3, 4]], output: 'last-logits' });
    expectClose(cached.dataSync(), full.dataSync(), { rtol: 1e-4, atol: 1e-5 });
    tf.dispose([cached, full]);
    cache.dispose();
    model.dispose();
  });
});
