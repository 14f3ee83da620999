/**
 * llama2.c's tokenizer.bin: a SentencePiece-style BPE vocabulary with scores and byte fallback.
 *
 * File layout (little-endian): int32 max_token_length, then per piece: float32 score, int32 byte
 * length, the bytes. The file does not record how many pieces it holds; the model's vocab_size does,
 * so callers may pass it to have the count checked.
 *
 * Encoding and decoding follow llama2.c's run.c (`encode` / `decode`) so ids match the checkpoints
 * trained with it. Pieces are kept as "binary" strings (one char per byte, latin1) because run.c
 * works on raw bytes: merges concatenate stored bytes, and a piece need not be valid UTF-8 alone.
 */
import { readFile } from 'node:fs/promises';
import { TokenizerError } from '../errors.js';
import type { EncodeOptions, Tokenizer } from './tokenizer.js';

export interface Llama2cTokenizerOptions {
  /** Pieces the file must hold (the checkpoint's vocab_size). Default: read pieces until the file ends. */
  readonly vocabSize?: number;
  /** Names the file in error messages. */
  readonly source?: string;
}

/** Fixed by llama2.c / SentencePiece: 0 <unk>, 1 <s>, 2 </s>, then the 256 byte pieces <0x00>..<0xFF>. */
const BOS_ID = 1;
const EOS_ID = 2;
const BYTE_PIECE_OFFSET = 3;
/** run.c starts its best-merge search at -1e10, so pairs scoring at or below it never merge. */
const NO_MERGE_SCORE = -1e10;
const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;
const FORMAT_HINT = 'Check that the file is a llama2.c tokenizer.bin (written by its tokenizer.py export) and was copied whole';

const utf8Encoder = new TextEncoder();
/** Not fatal: decoding ids a model generated may cut a multi-byte character; show U+FFFD, as a terminal would. */
const utf8Decoder = new TextDecoder('utf-8');

interface ParsedVocab {
  readonly maxTokenLength: number;
  readonly pieces: string[];
  readonly scores: number[];
}

export class Llama2cTokenizer implements Tokenizer {
  readonly kind = 'llama2c' as const;
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  /** The longest piece in bytes, as recorded in the file header. */
  readonly maxTokenLength: number;

  private readonly pieces: readonly string[];
  private readonly scores: Float32Array;
  private readonly idByPiece = new Map<string, number>();
  /** The bytes each piece contributes to decoded text: `<0xHH>` pieces stand for the single byte HH. */
  private readonly textBytes: readonly Uint8Array[];
  /** Whether ids 3..258 are the byte pieces <0x00>..<0xFF> that run.c falls back to (id = byte + 3). */
  private readonly hasBytePieces: boolean;

  private constructor(vocab: ParsedVocab) {
    this.maxTokenLength = vocab.maxTokenLength;
    this.pieces = vocab.pieces;
    this.scores = Float32Array.from(vocab.scores);
    this.vocabSize = vocab.pieces.length;
    this.bosId = this.vocabSize > BOS_ID ? BOS_ID : undefined;
    this.eosId = this.vocabSize > EOS_ID ? EOS_ID : undefined;
    // On duplicate pieces the lowest id wins, so lookups are deterministic.
    vocab.pieces.forEach((piece, id) => {
      if (!this.idByPiece.has(piece)) this.idByPiece.set(piece, id);
    });
    this.textBytes = vocab.pieces.map((piece) => {
      const byte = BYTE_PIECE.exec(piece)?.[1];
      return byte === undefined ? Buffer.from(piece, 'latin1') : Uint8Array.of(Number.parseInt(byte, 16));
    });
    this.hasBytePieces = Array.from({ length: 256 }, (_, b) => b).every(
      (b) => vocab.pieces[b + BYTE_PIECE_OFFSET] === `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`,
    );
  }

  /** Parses a tokenizer.bin already in memory. Throws TokenizerError on malformed data. */
  static fromBuffer(bytes: Uint8Array, options: Llama2cTokenizerOptions = {}): Llama2cTokenizer {
    return new Llama2cTokenizer(parseVocab(bytes, options.source ?? '<buffer>', options.vocabSize));
  }

  /** Reads and parses a tokenizer.bin. Throws TokenizerError when the file is missing or malformed. */
  static async fromFile(path: string, options: Omit<Llama2cTokenizerOptions, 'source'> = {}): Promise<Llama2cTokenizer> {
    let bytes: Uint8Array;
    try {
      bytes = await readFile(path);
    } catch (cause) {
      throw new TokenizerError('cannot read llama2.c tokenizer file', {
        path,
        hint: 'Check the path; llama2.c tokenizers are files like tokenizer.bin or tok512.bin',
        cause,
      });
    }
    return Llama2cTokenizer.fromBuffer(bytes, { ...options, source: path });
  }

  /** The piece's score from the file (higher merges first). */
  score(id: number): number {
    this.checkId(id);
    return this.scores[id] ?? NO_MERGE_SCORE;
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids: number[] = [];
    if (text.length > 0) {
      // SentencePiece's add_dummy_prefix: the text is tokenized as if it followed a space.
      ids.push(this.idByPiece.get(' ') ?? this.byteId(0x20, text));
      const bytes = utf8Encoder.encode(text);
      let start = 0;
      while (start < bytes.length) {
        // One UTF-8 code point: a lead byte and its continuation bytes (run.c caps the group at 4).
        let end = start + 1;
        while (end < bytes.length && ((bytes[end] ?? 0) & 0xc0) === 0x80 && end - start < 4) end++;
        const id = this.idByPiece.get(String.fromCharCode(...bytes.subarray(start, end)));
        if (id !== undefined) ids.push(id);
        else for (let k = start; k < end; k++) ids.push(this.byteId(bytes[k] ?? 0, text));
        start = end;
      }
      this.mergePairs(ids);
    }
    if (options.addBos === true) ids.unshift(this.requireSpecial(this.bosId, 'BOS'));
    if (options.addEos === true) ids.push(this.requireSpecial(this.eosId, 'EOS'));
    return ids;
  }

  decode(ids: readonly number[]): string {
    const parts: Uint8Array[] = [];
    let length = 0;
    // run.c drops the leading space of the piece after BOS: it is the dummy prefix encode added. A whole
    // sequence without BOS starts the same way, so the start of the sequence counts as "after BOS" too;
    // that makes decode(encode(s)) === s with or without BOS.
    let atStart = true;
    for (const id of ids) {
      this.checkId(id);
      if (id === this.bosId) {
        atStart = true;
        continue;
      }
      if (id === this.eosId) continue;
      let bytes = this.textBytes[id] ?? new Uint8Array(0);
      if (atStart && bytes[0] === 0x20) bytes = bytes.subarray(1);
      atStart = false;
      parts.push(bytes);
      length += bytes.length;
    }
    // Bytes are joined before UTF-8 decoding so a character split over <0xHH> pieces comes out whole.
    const joined = new Uint8Array(length);
    let offset = 0;
    for (const part of parts) {
      joined.set(part, offset);
      offset += part.length;
    }
    return utf8Decoder.decode(joined);
  }

  tokenText(id: number): string {
    this.checkId(id);
    return Buffer.from(this.pieces[id] ?? '', 'latin1').toString('utf8');
  }

  /**
   * run.c's merge loop: repeatedly merge the adjacent pair whose concatenation is a piece with the highest
   * score (the first such pair on ties) until none applies. Pair results are cached and only the two
   * neighbours of a merge are looked up again, so a merge costs one scan of numbers, not of strings.
   */
  private mergePairs(ids: number[]): void {
    const merged: number[] = [];
    for (let i = 0; i + 1 < ids.length; i++) merged.push(this.pairId(ids[i], ids[i + 1]));
    for (;;) {
      let bestScore = NO_MERGE_SCORE;
      let bestIndex = -1;
      merged.forEach((id, i) => {
        const score = id < 0 ? NO_MERGE_SCORE : (this.scores[id] ?? NO_MERGE_SCORE);
        if (score > bestScore) {
          bestScore = score;
          bestIndex = i;
        }
      });
      if (bestIndex < 0) return;
      ids.splice(bestIndex, 2, merged[bestIndex] ?? -1);
      merged.splice(bestIndex, 1);
      if (bestIndex > 0) merged[bestIndex - 1] = this.pairId(ids[bestIndex - 1], ids[bestIndex]);
      if (bestIndex < merged.length) merged[bestIndex] = this.pairId(ids[bestIndex], ids[bestIndex + 1]);
    }
  }

  /** The id of the piece spelled by two adjacent pieces, or -1. */
  private pairId(left: number | undefined, right: number | undefined): number {
    const a = left === undefined ? undefined : this.pieces[left];
    const b = right === undefined ? undefined : this.pieces[right];
    if (a === undefined || b === undefined || a.length + b.length > this.maxTokenLength) return -1;
    return this.idByPiece.get(a + b) ?? -1;
  }

  private byteId(byte: number, text: string): number {
    if (!this.hasBytePieces) {
      throw new TokenizerError(`cannot encode ${JSON.stringify(text.slice(0, 40))}: byte 0x${byte.toString(16)} is not a piece`, {
        hint: 'This vocabulary has no <0x00>..<0xFF> byte pieces at ids 3..258, so it can only encode characters it lists',
      });
    }
    return byte + BYTE_PIECE_OFFSET;
  }

  private requireSpecial(id: number | undefined, name: string): number {
    if (id === undefined) {
      throw new TokenizerError(`this llama2.c vocabulary (${this.vocabSize} pieces) has no ${name} token`);
    }
    return id;
  }

  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new TokenizerError(`token id ${id} is outside the vocabulary [0, ${this.vocabSize})`, {
        hint: 'Ids must come from this tokenizer or a model with the same vocab_size',
      });
    }
  }
}

/** Reads the header and the piece records, checking every length against the bytes that remain. */
function parseVocab(bytes: Uint8Array, source: string, expected: number | undefined): ParsedVocab {
  if (expected !== undefined && !(Number.isInteger(expected) && expected > 0)) {
    throw new TokenizerError(`expected vocab size must be a positive integer, got ${expected}`, { path: source });
  }
  const fail = (message: string): never => {
    throw new TokenizerError(message, { path: source, hint: FORMAT_HINT });
  };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 4) fail(`truncated header: ${bytes.byteLength} bytes, max_token_length needs 4`);
  const maxTokenLength = view.getInt32(0, true);
  if (maxTokenLength <= 0) fail(`max_token_length is ${maxTokenLength}; it must be positive`);

  const pieces: string[] = [];
  const scores: number[] = [];
  let offset = 4;
  while (offset < bytes.byteLength && (expected === undefined || pieces.length < expected)) {
    const index = pieces.length;
    if (offset + 8 > bytes.byteLength) {
      fail(`token ${index} is truncated: its score and length need 8 bytes, ${bytes.byteLength - offset} remain`);
    }
    const score = view.getFloat32(offset, true);
    const length = view.getInt32(offset + 4, true);
    if (length < 0) fail(`token ${index} has negative byte length ${length}`);
    if (length > maxTokenLength) fail(`token ${index} has byte length ${length}, above max_token_length ${maxTokenLength}`);
    offset += 8;
    if (offset + length > bytes.byteLength) {
      fail(`token ${index} is truncated: it needs ${length} bytes, ${bytes.byteLength - offset} remain`);
    }
    pieces.push(Buffer.from(bytes.buffer, bytes.byteOffset + offset, length).toString('latin1'));
    scores.push(score);
    offset += length;
  }
  if (pieces.length === 0) fail('the file holds no tokens');
  if (expected !== undefined && pieces.length < expected) {
    fail(`the file ends after ${pieces.length} tokens but ${expected} were expected (token ${pieces.length} is missing)`);
  }
  if (offset < bytes.byteLength) {
    fail(`${bytes.byteLength - offset} bytes remain after token ${pieces.length - 1}: the file holds more than the expected ${expected} tokens`);
  }
  return { maxTokenLength, pieces, scores };
}
