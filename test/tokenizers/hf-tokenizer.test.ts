// Hugging Face tokenizer.json through @huggingface/tokenizers: two small but real tokenizer.json files
// built here (a GPT-2-style byte-level BPE and a Llama-style SentencePiece BPE with byte fallback).
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fc, test } from '@fast-check/vitest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenizerError } from '../../src/errors.js';
import { HfTokenizer, loadTokenizer, type Tokenizer } from '../../src/tokenizers/index.js';

/** GPT-2's byte → printable-character table: bytes that print stay themselves, the rest map to U+0100 on. */
function bytesToUnicode(): string[] {
  const printable = new Set<number>();
  for (const [lo, hi] of [
    [0x21, 0x7e],
    [0xa1, 0xac],
    [0xae, 0xff],
  ] as const)
    for (let b = lo; b <= hi; b++) printable.add(b);
  let next = 0;
  return Array.from({ length: 256 }, (_, b) => String.fromCodePoint(printable.has(b) ? b : 256 + next++));
}

/** Byte-level BPE: ids 0..255 are the bytes (id = byte value), 256.. the merges, 262 <|endoftext|>. */
function gpt2StyleJson(): object {
  const vocab: Record<string, number> = {};
  bytesToUnicode().forEach((char, byte) => {
    vocab[char] = byte;
  });
  const merges = ['t h', 'th e', 'Ġ the', 'a t', 'Ġ c', 'Ġc at']; // "Ġ" is the byte-level space
  merges.forEach((merge, i) => {
    vocab[merge.replace(' ', '')] = 256 + i;
  });
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [{ id: 262, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: true, special: true }],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: byteLevel,
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges,
    },
  };
}

/** Llama-2-style: <unk> <s> </s>, byte pieces 3..258, "▁" word pieces from 259; BOS comes from the template. */
function llamaStyleJson(): object {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  ['▁', 'h', 'i', 'e', 'l', 'o', '▁h', '▁hi', 'el', 'lo', 'hel', 'hello', '▁hello'].forEach((piece, i) => {
    vocab[piece] = 259 + i;
  });
  const special = (id: number, content: string): object => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  return {
    version: '1.0',
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<s>', type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: ['▁ h', '▁h i', 'e l', 'l o', 'h el', 'hel lo', '▁ hello'],
    },
  };
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hf-tok-'));
  await mkdir(join(dir, 'gpt2'));
  await writeFile(join(dir, 'gpt2', 'tokenizer.json'), JSON.stringify(gpt2StyleJson()));
  // Special tokens in tokenizer_config.json come both as strings and as serialized AddedToken objects.
  await writeFile(
    join(dir, 'gpt2', 'tokenizer_config.json'),
    JSON.stringify({ bos_token: '<|endoftext|>', eos_token: { __type: 'AddedToken', content: '<|endoftext|>', special: true } }),
  );
  await mkdir(join(dir, 'llama'));
  await writeFile(join(dir, 'llama', 'tokenizer.json'), JSON.stringify(llamaStyleJson()));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('byte-level BPE tokenizer.json (GPT-2 style)', () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await loadTokenizer(join(dir, 'gpt2'));
  });

  it('loads from the directory or the file, with BOS/EOS from tokenizer_config.json', async () => {
    expect(tok.kind).toBe('huggingface');
    expect(tok.vocabSize).toBe(263);
    expect(tok.bosId).toBe(262);
    expect(tok.eosId).toBe(262);
    const fromFile = await loadTokenizer(join(dir, 'gpt2', 'tokenizer.json'));
    expect(fromFile.eosId).toBe(262);
  });

  it('applies the merges and gives the expected ids', () => {
    expect(tok.encode('the cat')).toEqual([257, 261]);
    expect(tok.encode('the cat sat')).toEqual([257, 261, 32, 115, 259]); // Ġ s at
    expect(tok.encode('the cat', { addBos: true, addEos: true })).toEqual([262, 257, 261, 262]);
    expect(tok.tokenText(261)).toBe('Ġcat');
    expect(tok.encode('')).toEqual([]);
  });

  it.each(['the cat sat on the mat.', ' the  cat. ', "don't , . !", 'a\nb  \n\tc', 'café 日本 😀'])('round-trips %j', (text) => {
    expect(tok.decode(tok.encode(text))).toBe(text);
    expect(tok.decode(tok.encode(text, { addBos: true, addEos: true }))).toBe(text);
  });

  it('decodes BOS/EOS to nothing and rejects unknown ids', () => {
    expect(tok.decode([262])).toBe('');
    expect(tok.decode([])).toBe('');
    expect(() => tok.decode([263])).toThrow(TokenizerError);
    expect(() => tok.tokenText(-1)).toThrow(TokenizerError);
  });

  // Byte-level BPE covers every byte, so every string without lone surrogates round-trips.
  test.prop([fc.string({ unit: 'binary', maxLength: 40 })], { numRuns: 200 })('decode(encode(s)) === s', (s) => {
    expect(tok.decode(tok.encode(s))).toBe(s);
  });
});

describe('SentencePiece-style tokenizer.json (Llama style, byte fallback)', () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await loadTokenizer(join(dir, 'llama', 'tokenizer.json'));
  });

  it('takes BOS from the TemplateProcessing post-processor when there is no tokenizer_config.json', () => {
    expect(tok.vocabSize).toBe(272);
    expect(tok.bosId).toBe(1);
    expect(tok.eosId).toBeUndefined();
    expect(() => tok.encode('hi', { addEos: true })).toThrow(TokenizerError);
  });

  it('encodes with merges and byte fallback, adding BOS only on request', () => {
    expect(tok.encode('hi hello')).toEqual([266, 265, 267, 268]); // ▁hi ▁h el lo
    expect(tok.encode('hi hello', { addBos: true })).toEqual([1, 266, 265, 267, 268]);
    expect(tok.encode('日')).toEqual([259, 0xe6 + 3, 0x97 + 3, 0xa5 + 3]); // ▁ then the UTF-8 bytes
    expect(tok.tokenText(13)).toBe('<0x0A>');
  });

  it.each(['hi hello', ' hi', 'hello\nhi', 'hi 日 x 😀'])('round-trips %j', (text) => {
    expect(tok.decode(tok.encode(text, { addBos: true }))).toBe(text);
  });

  it('takes explicit BOS/EOS tokens over the file', async () => {
    const custom = await loadTokenizer(join(dir, 'llama', 'tokenizer.json'), { eosToken: '</s>' });
    expect(custom.eosId).toBe(2);
    await expect(loadTokenizer(join(dir, 'llama', 'tokenizer.json'), { eosToken: '<eos>' })).rejects.toThrow(/EOS token "<eos>" is not in the vocabulary/);
  });
});

describe('tokenizer.json errors', () => {
  it('reports a missing file or directory as TokenizerError', async () => {
    await expect(loadTokenizer(join(dir, 'nope', 'tokenizer.json'))).rejects.toBeInstanceOf(TokenizerError);
    await expect(loadTokenizer(join(dir, 'missing.json'))).rejects.toBeInstanceOf(TokenizerError);
    await mkdir(join(dir, 'empty'), { recursive: true });
    await expect(loadTokenizer(join(dir, 'empty'))).rejects.toThrow(join(dir, 'empty', 'tokenizer.json'));
  });

  it('reports invalid JSON as TokenizerError naming the path', async () => {
    const path = join(dir, 'broken', 'tokenizer.json');
    await mkdir(join(dir, 'broken'), { recursive: true });
    await writeFile(path, '{"model": {');
    const load = loadTokenizer(path);
    await expect(load).rejects.toBeInstanceOf(TokenizerError);
    await expect(loadTokenizer(path)).rejects.toThrow(new RegExp(`invalid JSON.*${path.replaceAll(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`));
    await writeFile(join(dir, 'broken', 'tokenizer_config.json'), '[1, 2');
    await writeFile(path, JSON.stringify(gpt2StyleJson()));
    await expect(loadTokenizer(path)).rejects.toThrow(/tokenizer_config\.json/);
  });

  it('reports files the library cannot use as TokenizerError', async () => {
    expect(() => HfTokenizer.fromJson({ vocab: {} }, { source: 'x.json' })).toThrow(/must be an object with a "model" object.*x\.json/);
    expect(() => HfTokenizer.fromJson({ model: { type: 'Mystery' } }, { source: 'y.json' })).toThrow(TokenizerError);
    const path = join(dir, 'tokenizer.txt');
    await writeFile(path, 'hello');
    await expect(loadTokenizer(path)).rejects.toThrow(/unrecognised tokenizer file/);
  });
});
