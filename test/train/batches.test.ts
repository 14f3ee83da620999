// Tokenisation with loss masks, truncation, seeded batching (right and left padding), packing and the
// train/validation split. A tiny greedy longest-match tokenizer stands in for a real one; one block uses the
// real tok512.bin when ../shared/models is present.
import { fc } from '@fast-check/vitest';
import { beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { Llama2cTokenizer } from '../../src/tokenizers/index.js';
import type { Tokenizer } from '../../src/tokenizers/tokenizer.js';
import { makeBatches, packExamples, seededShuffle, splitTrainValidation, tokenizeExamples, type TokenizedExample } from '../../src/train/batches.js';
import { DatasetError } from '../../src/train/dataset-errors.js';
import type { Example } from '../../src/train/dataset.js';
import { SHARED_MODELS_SKIP_NOTE, hasSharedModels, tok512Path } from '../helpers/tiny-models.js';

const FC_PARAMS = { seed: 20240611, numRuns: 60 } as const;

/**
 * Ids: 0 <pad>, 1 <s>, 2 </s>, then the pieces. Greedy longest match, so "ab" is one token and a prompt
 * ending in "a" followed by a completion starting with "b" merges across the boundary.
 */
const PIECES = ['ab', ...'abcdefghijklmnopqrstuvwxyz .:?!0123456789'];
function fakeTokenizer(options: { readonly bos?: boolean; readonly eos?: boolean } = {}): Tokenizer {
  const idOf = new Map(PIECES.map((p, i) => [p, i + 3]));
  const maxPiece = Math.max(...PIECES.map((p) => p.length));
  return {
    kind: 'llama2c',
    vocabSize: PIECES.length + 3,
    bosId: options.bos === false ? undefined : 1,
    eosId: options.eos === false ? undefined : 2,
    encode(text, encodeOptions = {}) {
      const ids: number[] = [];
      if (encodeOptions.addBos === true) ids.push(1);
      for (let i = 0; i < text.length; ) {
        let len = Math.min(maxPiece, text.length - i);
        while (len > 0 && !idOf.has(text.slice(i, i + len))) len--;
        if (len === 0) throw new Error(`fake tokenizer cannot encode ${JSON.stringify(text[i])}`);
        ids.push(idOf.get(text.slice(i, i + len)) as number);
        i += len;
      }
      if (encodeOptions.addEos === true) ids.push(2);
      return ids;
    },
    decode(ids) {
      return ids.map((id) => (id < 3 ? '' : (PIECES[id - 3] ?? '?'))).join('');
    },
    tokenText(id) {
      return id === 1 ? '<s>' : id === 2 ? '</s>' : (PIECES[id - 3] ?? '<pad>');
    },
  };
}
const tok = fakeTokenizer();

const pc = (prompt: string, completion: string, extra: { task?: number } = {}): Example => ({
  kind: 'prompt-completion',
  prompt,
  completion,
  line: 1,
  ...extra,
});
const text = (t: string, extra: { task?: number } = {}): Example => ({ kind: 'text', text: t, line: 1, ...extra });

/** The ids where lossMask is 1. */
const targets = (e: TokenizedExample): number[] => e.ids.filter((_, t) => e.lossMask[t] === 1);

describe('tokenizeExamples', () => {
  it('masks exactly the completion tokens and EOS, never BOS or the prompt', () => {
    const [e] = tokenizeExamples([pc('q: 2 and 2?', ' 4')], tok, { maxLength: 64 });
    expect(e).toBeDefined();
    const ex = e as TokenizedExample;
    expect(ex.ids[0]).toBe(1);
    expect(ex.ids.at(-1)).toBe(2);
    expect(ex.lossMask).toHaveLength(ex.ids.length);
    expect(tok.decode(targets(ex))).toBe(' 4');
    expect(targets(ex).at(-1)).toBe(2);
    const promptLength = tok.encode('q: 2 and 2?').length;
    expect(ex.lossMask.slice(0, 1 + promptLength).every((m) => m === 0)).toBe(true);
    expect(ex.lossMask.slice(1 + promptLength).every((m) => m === 1)).toBe(true);
    expect(ex.truncated).toBeUndefined();
  });

  it('counts a token straddling the prompt/completion boundary as completion', () => {
    const [e] = tokenizeExamples([pc('xa', 'b')], tok, { maxLength: 16 }) as [TokenizedExample];
    // "xab" encodes as x, ab: the merged piece is the first target.
    expect(e.ids).toEqual([1, tok.encode('x')[0], tok.encode('ab')[0], 2]);
    expect(e.lossMask).toEqual([0, 0, 1, 1]);
  });

  it('masks every token after the first for text, and none for labelled examples', () => {
    const [t, l] = tokenizeExamples([text('hello'), { kind: 'labelled', text: 'hello', label: 3, task: 1, line: 9 }], tok, { maxLength: 32 }) as [
      TokenizedExample,
      TokenizedExample,
    ];
    expect(t.ids).toEqual([1, ...tok.encode('hello')]); // no EOS by default for text
    expect(t.lossMask).toEqual([0, 1, 1, 1, 1, 1]);
    expect(l.ids).toEqual(t.ids);
    expect(l.lossMask.every((m) => m === 0)).toBe(true);
    expect(l.label).toBe(3);
    expect(l.task).toBe(1);
    expect(l.line).toBe(9);
  });

  it('follows the tokenizer for BOS/EOS defaults and honours explicit choices', () => {
    const noBos = fakeTokenizer({ bos: false });
    const [a] = tokenizeExamples([pc('', 'hi')], noBos, { maxLength: 8 }) as [TokenizedExample];
    expect(a.ids).toEqual([...tok.encode('hi'), 2]);
    expect(a.lossMask).toEqual([0, 1, 1]); // nothing predicts the first token
    const [b] = tokenizeExamples([pc('a', 'hi')], tok, { maxLength: 8, addBos: false, addEos: false }) as [TokenizedExample];
    expect(b.ids).toEqual(tok.encode('ahi'));
    const [c] = tokenizeExamples([text('hi')], tok, { maxLength: 8, addEos: true }) as [TokenizedExample];
    expect(c.ids.at(-1)).toBe(2);
    expect(() => tokenizeExamples([text('hi')], fakeTokenizer({ eos: false }), { maxLength: 8, addEos: true })).toThrow(ConfigError);
    expect(() => tokenizeExamples([text('hi')], tok, { maxLength: 1 })).toThrow(ConfigError);
  });

  it('truncates a long prompt from the left, keeping BOS and the whole completion', () => {
    const [e] = tokenizeExamples([pc('abcdefghijklmnop', ' xyz')], tok, { maxLength: 10 }) as [TokenizedExample];
    expect(e.ids).toHaveLength(10);
    expect(e.ids[0]).toBe(1);
    expect(tok.decode(targets(e))).toBe(' xyz');
    expect(targets(e)).toHaveLength(5); // 4 completion tokens + EOS
    expect(tok.decode(e.ids.filter((_, t) => e.lossMask[t] === 0))).toBe('mnop'); // the prompt's end survives
    expect(e.truncated).toEqual({ fromStart: 15 - 4, fromEnd: 0 });
  });

  it('truncates the end of a completion that does not fit even alone, and reports it', () => {
    const [e] = tokenizeExamples([pc('prompt', ' a long answer')], tok, { maxLength: 6 }) as [TokenizedExample];
    expect(e.ids).toEqual([1, ...tok.encode(' a lo')]);
    expect(e.lossMask).toEqual([0, 1, 1, 1, 1, 1]);
    expect(e.truncated).toEqual({ fromStart: tok.encode('prompt').length, fromEnd: tok.encode('ng answer').length + 1 });
    const [t] = tokenizeExamples([text('abcdefgh')], tok, { maxLength: 4 }) as [TokenizedExample];
    expect(t.ids).toEqual([1, ...tok.encode('abcdefgh').slice(0, 3)]);
    expect(t.truncated).toEqual({ fromStart: 0, fromEnd: tok.encode('abcdefgh').length - 3 });
  });

  it('property: rows fit, the mask marks a suffix of completion tokens, and the completion start is kept', () => {
    const word = fc.stringMatching(/^[a-z ]{0,30}$/);
    fc.assert(
      fc.property(
        word,
        word.filter((s) => s.trim() !== ''),
        fc.integer({ min: 2, max: 40 }),
        (prompt, completion, maxLength) => {
          const [e] = tokenizeExamples([pc(prompt, completion)], tok, { maxLength }) as [TokenizedExample];
          const whole = [...tok.encode(prompt + completion), 2];
          expect(e.ids.length).toBeLessThanOrEqual(maxLength);
          expect(e.ids[0]).toBe(1);
          expect(e.lossMask[0]).toBe(0);
          // Loss positions form one contiguous suffix of the row.
          const first = e.lossMask.indexOf(1);
          expect(first).toBeGreaterThan(0);
          expect(e.lossMask.slice(first).every((m) => m === 1)).toBe(true);
          // The targets are the start of the completion's ids (EOS included when it fits).
          const promptIds = tok.encode(prompt);
          let boundary = 0;
          while (boundary < promptIds.length && promptIds[boundary] === whole[boundary]) boundary++;
          const completionIds = whole.slice(boundary);
          expect(targets(e)).toEqual(completionIds.slice(0, targets(e).length));
          expect(targets(e).length).toBe(Math.min(completionIds.length, maxLength - 1));
          const dropped = (e.truncated?.fromStart ?? 0) + (e.truncated?.fromEnd ?? 0);
          expect(e.ids.length + dropped).toBe(1 + whole.length);
        },
      ),
      FC_PARAMS,
    );
  });
});

const tokenized = (lengths: readonly number[], extra: (i: number) => Partial<TokenizedExample> = () => ({})): TokenizedExample[] =>
  lengths.map((n, i) => ({
    ids: Array.from({ length: n }, (_, t) => 100 * i + t + 3),
    lossMask: Array.from({ length: n }, (_, t) => (t === 0 ? 0 : 1)),
    ...extra(i),
  }));

describe('makeBatches', () => {
  it('property: batches are rectangular, deterministic for a seed, and hold every example exactly once', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 0, maxLength: 40 }),
        fc.integer({ min: 1, max: 9 }),
        fc.integer(),
        fc.constantFrom('right' as const, 'left' as const),
        (lengths, batchSize, seed, padSide) => {
          const data = tokenized(lengths);
          const batches = makeBatches(data, { batchSize, seed, padSide, padId: 0 });
          expect(makeBatches(data, { batchSize, seed, padSide })).toEqual(batches);
          expect(batches).toHaveLength(Math.ceil(lengths.length / batchSize));
          const seen = batches.flatMap((b) => b.indices).sort((a, b) => a - b);
          expect(seen).toEqual(lengths.map((_, i) => i));
          for (const b of batches) {
            expect(b.ids.length).toBeLessThanOrEqual(batchSize);
            const width = Math.max(...b.indices.map((i) => lengths[i] as number));
            b.indices.forEach((i, r) => {
              const ids = b.ids[r] as number[];
              const mask = b.mask[r] as number[];
              const loss = b.lossMask[r] as number[];
              expect([ids.length, mask.length, loss.length]).toEqual([width, width, width]);
              const real = ids.filter((_, t) => mask[t] === 1);
              expect(real).toEqual(data[i]?.ids);
              expect(loss.filter((_, t) => mask[t] === 1)).toEqual(data[i]?.lossMask);
              expect(loss.every((m, t) => mask[t] === 1 || m === 0)).toBe(true);
              expect(ids.every((id, t) => mask[t] === 1 || id === 0)).toBe(true);
              // Padding sits on the chosen side.
              const n = lengths[i] as number;
              const expected =
                padSide === 'right'
                  ? [...Array<number>(n).fill(1), ...Array<number>(width - n).fill(0)]
                  : [...Array<number>(width - n).fill(0), ...Array<number>(n).fill(1)];
              expect(mask).toEqual(expected);
            });
          }
        },
      ),
      FC_PARAMS,
    );
  });

  it('pads on the left when asked, with the given pad id', () => {
    const [b] = makeBatches(tokenized([2, 4]), { batchSize: 2, shuffle: false, padSide: 'left', padId: 9 });
    expect(b?.ids).toEqual([
      [9, 9, 3, 4],
      [103, 104, 105, 106],
    ]);
    expect(b?.mask).toEqual([
      [0, 0, 1, 1],
      [1, 1, 1, 1],
    ]);
    expect(b?.lossMask).toEqual([
      [0, 0, 0, 1],
      [0, 1, 1, 1],
    ]);
  });

  it('shuffles with the seed (different seeds, different orders) and keeps input order without shuffle', () => {
    const data = tokenized(Array.from({ length: 30 }, () => 3));
    const order = (seed: number): number[] => makeBatches(data, { batchSize: 4, seed }).flatMap((b) => b.indices);
    expect(order(1)).toEqual(order(1));
    expect(order(1)).not.toEqual(order(2));
    expect(makeBatches(data, { batchSize: 4, shuffle: false }).flatMap((b) => b.indices)).toEqual(data.map((_, i) => i));
    expect(seededShuffle([1, 2, 3, 4, 5], 7).sort()).toEqual([1, 2, 3, 4, 5]);
  });

  it('carries task ids and labels, and drops a short last batch on request', () => {
    const data = tokenized([2, 3, 2, 5, 1], (i) => ({ task: i % 2, label: 4 - i }));
    const batches = makeBatches(data, { batchSize: 2, shuffle: false, dropLast: true });
    expect(batches).toHaveLength(2);
    expect(batches.map((b) => b.taskIds)).toEqual([
      [0, 1],
      [0, 1],
    ]);
    expect(batches.map((b) => b.labels)).toEqual([
      [4, 3],
      [2, 1],
    ]);
    expect(makeBatches(tokenized([2]), { batchSize: 2 })[0]?.taskIds).toBeUndefined();
  });

  it('refuses tasks on some examples but not others, and empty examples', () => {
    const data = tokenized([2, 3], (i) => (i === 0 ? { task: 0, line: 4 } : { line: 7 }));
    expect(() => makeBatches(data, { batchSize: 2 })).toThrow(DatasetError);
    expect(() => makeBatches(data, { batchSize: 2 })).toThrow(/line 4.*line 7/);
    expect(() => makeBatches(tokenized([2, 0]), { batchSize: 2 })).toThrow(/example 1 has no tokens/);
    expect(() => makeBatches(tokenized([2]), { batchSize: 0 })).toThrow(ConfigError);
  });
});

describe('packExamples', () => {
  it('packs whole examples into rows of at most `length`, keeping loss masks and never mixing tasks', () => {
    const data = tokenized([3, 4, 2, 5, 1, 3], (i) => ({ task: i < 4 ? 0 : 1 }));
    const packed = packExamples(data, { length: 8 });
    for (const row of packed) {
      expect(row.ids.length).toBeLessThanOrEqual(8);
      expect(row.lossMask).toEqual(row.segments.flatMap((s) => data[s.index]?.lossMask ?? []));
      expect(row.ids).toEqual(row.segments.flatMap((s) => data[s.index]?.ids ?? []));
      expect(new Set(row.segments.map((s) => data[s.index]?.task))).toEqual(new Set([row.task]));
      // A packed example's first token is never a target of the one before it.
      for (const s of row.segments) expect(row.lossMask[s.start]).toBe(0);
    }
    expect(packed.flatMap((r) => r.segments.map((s) => s.index)).sort()).toEqual([0, 1, 2, 3, 4, 5]);
    expect(packed.map((r) => r.segments.map((s) => s.index))).toEqual([
      [0, 1],
      [2, 3],
      [4, 5],
    ]);
    // Packed rows batch like any tokenized examples.
    const [b] = makeBatches(packed, { batchSize: 3, shuffle: false });
    expect(b?.taskIds).toEqual([0, 0, 1]);
  });

  it('refuses examples longer than a row and labelled examples', () => {
    expect(() => packExamples(tokenized([3, 9]), { length: 8 })).toThrow(/example 1 has 9 tokens/);
    expect(() =>
      packExamples(
        tokenized([3], () => ({ label: 1 })),
        { length: 8 },
      ),
    ).toThrow(DatasetError);
  });
});

describe('splitTrainValidation', () => {
  it('property: deterministic, disjoint, complete, order-preserving, and sized by the fraction', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 200 }), fc.double({ min: 0, max: 0.9, noNaN: true }), fc.integer(), (n, validationFraction, seed) => {
        const items = Array.from({ length: n }, (_, i) => i);
        const split = splitTrainValidation(items, { validationFraction, seed });
        expect(splitTrainValidation(items, { validationFraction, seed })).toEqual(split);
        expect([...split.train, ...split.validation].sort((a, b) => a - b)).toEqual(items);
        expect(split.train.filter((i) => split.validation.includes(i))).toEqual([]);
        expect(split.train).toEqual([...split.train].sort((a, b) => a - b));
        const expected = Math.round(n * validationFraction);
        if (validationFraction > 0 && n >= 2) expect(split.validation.length).toBe(Math.min(Math.max(expected, 1), n - 1));
        else expect(split.validation.length).toBe(expected);
      }),
      FC_PARAMS,
    );
  });

  it('defaults to 10% and depends on the seed', () => {
    const items = Array.from({ length: 100 }, (_, i) => `x${i}`);
    expect(splitTrainValidation(items).validation).toHaveLength(10);
    expect(splitTrainValidation(items, { seed: 1 }).validation).not.toEqual(splitTrainValidation(items, { seed: 2 }).validation);
  });
});

describe.skipIf(!hasSharedModels)(`tokenizeExamples with the real tok512.bin${SHARED_MODELS_SKIP_NOTE}`, () => {
  let real: Llama2cTokenizer;
  beforeAll(async () => {
    real = await Llama2cTokenizer.fromFile(tok512Path, { vocabSize: 512 });
  });

  it('marks a completion whose decoded targets read as the completion', () => {
    const [e] = tokenizeExamples([pc('Once upon a time, there was a', ' little girl.')], real, { maxLength: 64 }) as [TokenizedExample];
    expect(e.ids[0]).toBe(real.bosId);
    expect(e.ids.at(-1)).toBe(real.eosId);
    expect(real.decode(targets(e))).toMatch(/little girl\.$/);
    expect(real.decode(e.ids)).toBe('Once upon a time, there was a little girl.');
  });
});
