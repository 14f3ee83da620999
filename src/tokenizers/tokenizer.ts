/**
 * The one tokenizer interface the rest of the library sees. Two implementations sit behind it:
 * llama2.c's tokenizer.bin (hand-parsed, tiny) and Hugging Face tokenizer.json (through
 * `@huggingface/tokenizers`). Training, evaluation and traces only ever need ids ⇄ text.
 */

export interface EncodeOptions {
  /** Prepend the BOS id. Default false. Throws TokenizerError when the tokenizer has no BOS. */
  readonly addBos?: boolean;
  /** Append the EOS id. Default false. Throws TokenizerError when the tokenizer has no EOS. */
  readonly addEos?: boolean;
}

export interface Tokenizer {
  readonly kind: 'llama2c' | 'huggingface';
  /** Rows the model's embedding must have: the largest id plus one. */
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  encode(text: string, options?: EncodeOptions): number[];
  /** Decodes a whole sequence (ids may include BOS/EOS, which produce no text). */
  decode(ids: readonly number[]): string;
  /** Text of one piece as the model sees it (for traces); `<0x0A>`-style byte pieces may be returned raw. */
  tokenText(id: number): string;
}
