/**
 * Picks the tokenizer implementation from the path, so CLI flags and configs can name any tokenizer
 * file: `*.bin` is llama2.c's tokenizer.bin; a tokenizer.json file, or a directory holding one (a
 * Hugging Face model folder), is a Hugging Face tokenizer.
 */
import { stat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { directoryFiles } from '../formats/node-files.js';
import { TokenizerError } from '../errors.js';
import { HfTokenizer } from './hf-tokenizer.js';
import { Llama2cTokenizer } from './llama2c-tokenizer.js';
import type { Tokenizer } from './tokenizer.js';

export interface LoadTokenizerOptions {
  /** llama2.c only: the checkpoint's vocab_size, checked against the number of pieces in the file. */
  readonly vocabSize?: number;
  /** Hugging Face only: BOS/EOS token text, overriding tokenizer_config.json. */
  readonly bosToken?: string;
  readonly eosToken?: string;
}

export async function loadTokenizer(path: string, options: LoadTokenizerOptions = {}): Promise<Tokenizer> {
  const info = await stat(path).catch((cause: unknown) => {
    throw new TokenizerError('tokenizer path does not exist or cannot be read', {
      path,
      hint: 'Pass a llama2.c tokenizer .bin file, a tokenizer.json, or a directory containing tokenizer.json',
      cause,
    });
  });
  if (info.isDirectory()) return HfTokenizer.fromSource(directoryFiles(path), 'tokenizer.json', hfOptions(options));
  if (path.toLowerCase().endsWith('.bin')) {
    return Llama2cTokenizer.fromFile(path, options.vocabSize === undefined ? {} : { vocabSize: options.vocabSize });
  }
  if (path.toLowerCase().endsWith('.json')) {
    if (basename(path) === 'tokenizer_config.json') {
      throw new TokenizerError('tokenizer_config.json holds only settings, not the vocabulary', {
        path,
        hint: 'Pass the tokenizer.json beside it, or the directory',
      });
    }
    return HfTokenizer.fromSource(directoryFiles(dirname(path)), basename(path), hfOptions(options));
  }
  throw new TokenizerError('unrecognised tokenizer file', {
    path,
    hint: 'Pass a llama2.c tokenizer .bin file, a tokenizer.json, or a directory containing tokenizer.json',
  });
}

function hfOptions(options: LoadTokenizerOptions): { bosToken?: string; eosToken?: string } {
  return {
    ...(options.bosToken === undefined ? {} : { bosToken: options.bosToken }),
    ...(options.eosToken === undefined ? {} : { eosToken: options.eosToken }),
  };
}
