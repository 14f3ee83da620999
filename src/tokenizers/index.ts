/** Tokenizers: one interface, llama2.c tokenizer.bin and Hugging Face tokenizer.json behind it. */
export type { EncodeOptions, Tokenizer } from './tokenizer.js';
export { Llama2cTokenizer, type Llama2cTokenizerOptions } from './llama2c-tokenizer.js';
export { HfTokenizer, type HfTokenizerOptions } from './hf-tokenizer.js';
export { loadTokenizer, type LoadTokenizerOptions } from './load-tokenizer.js';
