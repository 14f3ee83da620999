// llama2.c tokenizer.bin: the real tok512.bin (skipped when ../shared/models is absent) and synthetic files.
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fc, test } from '@fast-check/vitest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenizerError } from '../../src/errors.js';
import { Llama2cTokenizer, loadTokenizer } from '../../src/tokenizers/index.js';

const TOK512 = fileURLToPath(new URL('../../../shared/models/tok512.bin', import.meta.url));
const haveTok512 = existsSync(TOK512);

const STORY_SENTENCES = [
  'Once upon a time, there was a little girl named Lily.',
  'She loved to play outside in the park.',
  'One day, she saw a big, red ball.',
  'She wanted to play with it, but it was too high.',
  '"Can I have the ball?" asked Tom. Mom said, "Yes!"',
  'The end.',
];

describe.skipIf(!haveTok512)(
  haveTok512 ? 'llama2.c tok512.bin' : `llama2.c tok512.bin — SKIPPED: ${TOK512} not found (real-model tests need ../shared/models)`,
  () => {
    let tok: Llama2cTokenizer;
    beforeAll(async () => {
      tok = await Llama2cTokenizer.fromFile(TOK512, { vocabSize: 512 });
    });

    it('has the documented vocabulary facts', () => {
      expect(tok.kind).toBe('llama2c');
      expect(tok.vocabSize).toBe(512);
      expect(tok.bosId).toBe(1);
      expect(tok.eosId).toBe(2);
      expect(tok.tokenText(13)).toBe('<0x0A>');
      expect(tok.tokenText(0)).toBe('<unk>');
    });

    it('reads the whole file when no vocab size is given, and checks it when one is', async () => {
      expect((await Llama2cTokenizer.fromFile(TOK512)).vocabSize).toBe(512);
      await expect(Llama2cTokenizer.fromFile(TOK512, { vocabSize: 500 })).rejects.toThrow(/more than the expected 500 tokens/);
      await expect(Llama2cTokenizer.fromFile(TOK512, { vocabSize: 600 })).rejects.toThrow(/after 512 tokens but 600/);
    });

    it('is what loadTokenizer returns for a .bin path', async () => {
      const loaded = await loadTokenizer(TOK512, { vocabSize: 512 });
      expect(loaded.kind).toBe('llama2c');
      expect(loaded.encode('Once upon a time')).toEqual(tok.encode('Once upon a time'));
    });

    it('encodes to the ids llama2.c run.c produces', () => {
      // Reference ids from a C build of run.c's encode (dummy prefix, no BOS/EOS).
      expect(tok.encode('Once upon a time')).toEqual([403, 407, 261, 378]);
      expect(tok.encode('Once upon a time, there was a little girl named Lily.')).toEqual([
        403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426,
      ]);
      expect(tok.encode('Lily saw a big, red ball.\nShe was happy!')).toEqual([317, 394, 261, 370, 432, 352, 266, 268, 388, 426, 13, 437, 260, 286, 393, 443]);
    });

    it('uses merges: far fewer ids than characters', () => {
      const text = 'Once upon a time, there was a little girl named Lily.';
      expect(tok.encode(text).length).toBeLessThan(text.length / 3);
    });

    it.each(STORY_SENTENCES)('round-trips %j', (sentence) => {
      expect(tok.decode(tok.encode(sentence))).toBe(sentence);
      expect(tok.decode(tok.encode(sentence, { addBos: true, addEos: true }))).toBe(sentence);
    });

    it('round-trips newlines and non-ASCII text through byte fallback', () => {
      const text = 'Lily said:\n"Café? 日本!" 😀\n\nThe end.\n';
      expect(tok.decode(tok.encode(text))).toBe(text);
      // 日 is not a piece: its three UTF-8 bytes E6 97 A5 become byte pieces (id = byte + 3).
      const ids = tok.encode('日');
      expect(tok.tokenText(ids[0] ?? -1)).toBe(' '); // the dummy prefix
      expect(ids.slice(1)).toEqual([0xe6 + 3, 0x97 + 3, 0xa5 + 3]);
      expect(tok.encode('a\nb')).toContain(13);
    });

    it('adds BOS/EOS on request and drops the leading space of the piece after BOS', () => {
      const ids = tok.encode('Once upon a time', { addBos: true, addEos: true });
      expect(ids[0]).toBe(1);
      expect(ids.at(-1)).toBe(2);
      expect(tok.decode([1, ...tok.encode('Once upon a time')])).toBe('Once upon a time');
      // Only the first piece loses its space: " upon" in the middle keeps it.
      expect(tok.tokenText(407)).toBe(' upon');
      expect(tok.decode([1, 407])).toBe('upon');
      expect(tok.decode([1, 403, 407])).toBe('Once upon');
      // A new BOS starts a new sequence.
      expect(tok.decode([1, 403, 2, 1, 407])).toBe('Onceupon');
      expect(tok.decode([])).toBe('');
      expect(tok.decode([1, 2])).toBe('');
    });

    it('rejects ids outside the vocabulary', () => {
      expect(() => tok.decode([1, 512])).toThrow(TokenizerError);
      expect(() => tok.tokenText(-1)).toThrow(TokenizerError);
      expect(() => tok.decode([1.5])).toThrow(TokenizerError);
    });

    it('is fast enough for thousands of calls', () => {
      const started = performance.now();
      for (let i = 0; i < 2000; i++) {
        const sentence = STORY_SENTENCES[i % STORY_SENTENCES.length] ?? '';
        tok.decode(tok.encode(sentence, { addBos: true }));
      }
      expect(performance.now() - started).toBeLessThan(5000);
    });

    // The invariant: decode(encode(s)) === s for every s, with or without BOS/EOS around the ids, leading
    // and trailing spaces included. Why it holds: encode prepends exactly one dummy-prefix " " to
    // non-empty text, and merges only join neighbours, so the first piece always starts with that space;
    // decode removes exactly one leading space from the first piece of the sequence or after BOS.
    // (llama2.c itself strips only after BOS, so its own round trip needs BOS: without it a leading space
    // would appear.)
    const printableAsciiOrNewline = fc.string({
      unit: fc.oneof(
        fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
        fc.constant('\n'),
      ),
      maxLength: 80,
    });
    test.prop([printableAsciiOrNewline], { numRuns: 300 })('decode(encode(s)) === s for printable ASCII and newlines', (s) => {
      expect(tok.decode(tok.encode(s))).toBe(s);
      expect(tok.decode(tok.encode(s, { addBos: true, addEos: true }))).toBe(s);
    });

    // 'binary' strings are any code points but lone surrogates (which UTF-8 cannot carry).
    test.prop([fc.string({ unit: 'binary', maxLength: 40 })], { numRuns: 300 })('decode(encode(s)) === s for any Unicode text', (s) => {
      expect(tok.decode(tok.encode(s, { addBos: true }))).toBe(s);
    });
  },
);

/** Writes a tokenizer.bin: int32 max_token_length, then per piece float32 score, int32 length, bytes. */
function tokenizerBin(maxTokenLength: number, pieces: readonly (readonly [number, string | Uint8Array, number?])[]): Uint8Array {
  const chunks: Buffer[] = [int32(maxTokenLength)];
  for (const [score, piece, lengthOverride] of pieces) {
    const bytes = typeof piece === 'string' ? Buffer.from(piece, 'utf8') : Buffer.from(piece);
    const header = Buffer.alloc(8);
    header.writeFloatLE(score, 0);
    header.writeInt32LE(lengthOverride ?? bytes.length, 4);
    chunks.push(header, bytes);
  }
  return new Uint8Array(Buffer.concat(chunks));
}

function int32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(value, 0);
  return b;
}

/** <unk>, <s>, </s>, the 256 byte pieces, then the given pieces (ids from 259). */
function sentencePieceStyle(extra: readonly (readonly [number, string])[]): [number, string][] {
  const bytes = Array.from({ length: 256 }, (_, b): [number, string] => [0, `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`]);
  return [[0, '<unk>'], [0, '\n<s>\n'], [0, '\n</s>\n'], ...bytes, ...extra.map(([s, p]): [number, string] => [s, p])];
}

describe('llama2.c tokenizer on synthetic files', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'llama2c-tok-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('merges the highest-scoring pair first, and the leftmost pair on ties', () => {
    // ids: 259 " ", 260 "a", 261 "b", 262 "c", 263 "ab", 264 "bc"
    const tied = Llama2cTokenizer.fromBuffer(
      tokenizerBin(
        8,
        sentencePieceStyle([
          [0, ' '],
          [0, 'a'],
          [0, 'b'],
          [0, 'c'],
          [-1, 'ab'],
          [-1, 'bc'],
        ]),
      ),
    );
    expect(tied.encode('abc')).toEqual([259, 263, 262]);
    const bcWins = Llama2cTokenizer.fromBuffer(
      tokenizerBin(
        8,
        sentencePieceStyle([
          [0, ' '],
          [0, 'a'],
          [0, 'b'],
          [0, 'c'],
          [-2, 'ab'],
          [-1, 'bc'],
        ]),
      ),
    );
    expect(bcWins.encode('abc')).toEqual([259, 260, 264]);
    expect(bcWins.decode(bcWins.encode('abc'))).toBe('abc');
  });

  it('keeps merging merged pieces until none applies', () => {
    // 259 " ", 260 "a", 261 "b", 262 " a", 263 " ab"
    const tok = Llama2cTokenizer.fromBuffer(
      tokenizerBin(
        8,
        sentencePieceStyle([
          [0, ' '],
          [0, 'a'],
          [0, 'b'],
          [-1, ' a'],
          [-2, ' ab'],
        ]),
      ),
    );
    expect(tok.encode('ab')).toEqual([263]);
    expect(tok.encode('abab')).toEqual([263, 260, 261]);
    expect(tok.decode([263, 260, 261])).toBe('abab');
  });

  it('falls back to the byte piece for the dummy prefix when " " is not a piece', () => {
    const tok = Llama2cTokenizer.fromBuffer(tokenizerBin(8, sentencePieceStyle([[0, 'a']])));
    expect(tok.encode('a')).toEqual([0x20 + 3, 259]);
    expect(tok.decode(tok.encode(' a a'))).toBe(' a a');
  });

  it('refuses to encode a character a vocabulary without byte pieces lacks', () => {
    const tok = Llama2cTokenizer.fromBuffer(
      tokenizerBin(5, [
        [0, '<unk>'],
        [0, '<s>'],
        [0, '</s>'],
        [0, ' '],
        [0, 'a'],
      ]),
    );
    expect(tok.encode('a')).toEqual([3, 4]);
    expect(() => tok.encode('b')).toThrow(TokenizerError);
    const tiny = Llama2cTokenizer.fromBuffer(tokenizerBin(1, [[0, 'x']]));
    expect(tiny.bosId).toBeUndefined();
    expect(() => tiny.encode('', { addBos: true })).toThrow(/no BOS/);
  });

  const malformed: [string, Uint8Array, RegExp][] = [
    ['a truncated header', new Uint8Array([7, 0]), /truncated header/],
    ['a non-positive max_token_length', tokenizerBin(-1, [[0, 'a']]), /max_token_length is -1/],
    [
      'a truncated record header',
      tokenizerBin(4, [
        [0, 'a'],
        [0, 'b'],
        [0, 'c'],
      ]).slice(0, -6),
      /token 2 is truncated/,
    ],
    [
      'a negative length',
      tokenizerBin(4, [
        [0, 'a'],
        [0, 'b'],
        [0, 'c'],
        [0, '', -3],
      ]),
      /token 3 has negative byte length -3/,
    ],
    [
      'a length above max_token_length',
      tokenizerBin(2, [
        [0, 'a'],
        [0, 'abc'],
      ]),
      /token 1 has byte length 3, above max_token_length 2/,
    ],
    [
      'truncated piece bytes',
      tokenizerBin(4, [
        [0, 'a'],
        [0, 'abcd'],
      ]).slice(0, -2),
      /token 1 is truncated: it needs 4 bytes, 2 remain/,
    ],
    ['no tokens', tokenizerBin(4, []), /holds no tokens/],
  ];
  it.each(malformed)('rejects %s, naming the file and token', (_, bytes, message) => {
    const parse = (): Llama2cTokenizer => Llama2cTokenizer.fromBuffer(bytes, { source: 'synthetic.bin' });
    expect(parse).toThrow(TokenizerError);
    expect(parse).toThrow(message);
    expect(parse).toThrow(/synthetic\.bin/);
  });

  it('rejects a piece count that differs from the expected vocab size', () => {
    const bytes = tokenizerBin(4, [
      [0, 'a'],
      [0, 'b'],
      [0, 'c'],
    ]);
    expect(() => Llama2cTokenizer.fromBuffer(bytes, { vocabSize: 4, source: 'x.bin' })).toThrow(
      /ends after 3 tokens but 4 were expected \(token 3 is missing\)/,
    );
    expect(() => Llama2cTokenizer.fromBuffer(bytes, { vocabSize: 2, source: 'x.bin' })).toThrow(
      /after token 1: the file holds more than the expected 2 tokens/,
    );
    expect(Llama2cTokenizer.fromBuffer(bytes, { vocabSize: 3 }).vocabSize).toBe(3);
  });

  it('names the file path when reading from disk', async () => {
    const path = join(dir, 'broken.bin');
    await writeFile(
      path,
      tokenizerBin(2, [
        [0, 'a'],
        [0, 'abc'],
      ]),
    );
    await expect(Llama2cTokenizer.fromFile(path)).rejects.toThrow(path);
    await expect(loadTokenizer(path)).rejects.toBeInstanceOf(TokenizerError);
    await expect(Llama2cTokenizer.fromFile(join(dir, 'missing.bin'))).rejects.toBeInstanceOf(TokenizerError);
  });
});
