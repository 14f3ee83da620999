/**
 * PEFT LoRA adapter directories on disk (Node). The format — reading, encoding, and how PEFT's modules map
 * to our sites — is `peft-lora.ts`, which takes any FileSource; this file gives it directory paths and
 * writes directories atomically.
 */
import { stat, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import type { AdapterInstance } from '../adapters/instance.js';
import type { ModelConfig } from '../base/config.js';
import { CheckpointError } from '../errors.js';
import { replaceDirectoryAtomic } from '../formats/atomic-write.js';
import { directoryFiles } from '../formats/node-files.js';
import { PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE } from './peft-config.js';
import { encodePeftAdapter, readPeftAdapterFrom, type PeftWriteResult, type ReadPeftOptions, type ReadPeftResult, type WritePeftOptions } from './peft-lora.js';

export * from './peft-lora.js';

/**
 * Writes a LoRA adapter as a PEFT adapter directory (adapter_config.json + adapter_model.safetensors),
 * replacing `dir` atomically (anything else in `dir` is removed). Throws ConfigError when the adapter is not
 * a LoRA, was built for another model, or (gpt2) cannot be expressed on the fused c_attn.
 */
export async function writePeftAdapter(
  dir: string,
  adapter: AdapterInstance,
  model: { readonly config: ModelConfig },
  options: WritePeftOptions = {},
): Promise<PeftWriteResult> {
  const encoded = await encodePeftAdapter(adapter, model, options);
  await replaceDirectoryAtomic(dir, async (tmp) => {
    await writeFile(join(tmp, PEFT_CONFIG_FILE), encoded.configJson);
    await writeFile(join(tmp, PEFT_WEIGHTS_FILE), encoded.weights);
  });
  return { config: encoded.config, tensorNames: encoded.tensorNames };
}

/**
 * Reads a PEFT LoRA adapter directory into an AdapterInstance of LoRA modules for `model` (named after the
 * directory unless `options.name`). Errors are CheckpointErrors naming the file.
 */
export async function readPeftAdapter(dir: string, model: { readonly config: ModelConfig }, options: ReadPeftOptions = {}): Promise<ReadPeftResult> {
  const root = resolve(dir);
  const info = await stat(root).catch(() => undefined);
  if (info === undefined || !info.isDirectory()) {
    throw new CheckpointError(info === undefined ? 'PEFT adapter directory does not exist' : 'PEFT adapter path is not a directory', {
      path: root,
      hint: `Pass the directory that holds ${PEFT_CONFIG_FILE} and ${PEFT_WEIGHTS_FILE} (what PeftModel.save_pretrained writes)`,
    });
  }
  return readPeftAdapterFrom(directoryFiles(root), model, { ...options, defaultName: basename(root) });
}
