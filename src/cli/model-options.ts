/**
 * Flags every model-running command shares (--model, --tokenizer), and loading what they name: the
 * backend, the frozen base, and a tokenizer (given, or tokenizer.json inside an HF model directory).
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { selectBackend } from '../backend.js';
import { loadBaseModel, type LoadedModel } from '../base/load-model.js';
import { UsageError } from '../errors.js';
import { loadTokenizer } from '../tokenizers/load-tokenizer.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';

export const MODEL_FLAGS = {
  model: { type: 'string' },
  tokenizer: { type: 'string' },
} as const;

export const MODEL_USAGE = `  --model PATH         Hugging Face model directory (llama, gpt2; safetensors) or llama2.c .bin
  --tokenizer PATH     llama2.c tokenizer .bin, tokenizer.json, or a directory holding it
                       (default: tokenizer.json inside an HF model directory, when present)`;

export interface LoadedCliModel extends LoadedModel {
  readonly tokenizer: Tokenizer | undefined;
}

export async function loadCliModel(values: { readonly model?: string | undefined; readonly tokenizer?: string | undefined }): Promise<LoadedCliModel> {
  if (values.model === undefined) throw new UsageError('--model is required');
  await selectBackend();
  const loaded = await loadBaseModel(values.model);
  try {
    let tokenizerPath = values.tokenizer;
    if (tokenizerPath === undefined && statSync(values.model).isDirectory() && existsSync(join(values.model, 'tokenizer.json'))) {
      tokenizerPath = values.model;
    }
    const tokenizer = tokenizerPath === undefined ? undefined : await loadTokenizer(tokenizerPath, { vocabSize: loaded.model.config.vocabSize });
    return { ...loaded, tokenizer };
  } catch (error) {
    loaded.model.dispose();
    throw error;
  }
}

/** Ids for a prompt: the text encoded (with BOS where the model uses one) or the given ids. */
export function promptIds(loaded: LoadedCliModel, prompt: string | undefined, ids: number[] | undefined): number[] {
  if (prompt !== undefined && ids !== undefined) throw new UsageError('give --prompt or --prompt-ids, not both');
  if (ids !== undefined) return ids;
  const bos = loaded.model.config.bosId;
  if (prompt === undefined) {
    if (bos === undefined) throw new UsageError('this model has no BOS token to start from: give --prompt or --prompt-ids');
    return [bos];
  }
  if (loaded.tokenizer === undefined) throw new UsageError('--prompt needs a tokenizer: pass --tokenizer PATH (or use --prompt-ids)');
  const addBos = loaded.model.config.family === 'llama' && loaded.tokenizer.bosId !== undefined;
  const encoded = loaded.tokenizer.encode(prompt, { addBos });
  if (encoded.length === 0) throw new UsageError('--prompt encodes to no tokens; give a non-empty prompt');
  return encoded;
}
