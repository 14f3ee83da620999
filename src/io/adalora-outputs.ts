/**
 * What a saved AdaLoRA adapter carries beside its native variables, in its adapter directory of a
 * routed-model directory (so in every `routed-peft train --out` checkpoint):
 *
 *   adalora-ranks.json   the ranks per layer and site, the totals and parameter counts (AdaloraRankReport),
 *                        and where the LoRA export went (or why there is none)
 *   lora/                the adapter as a plain PEFT LoRA of its live triplets (adapter_config.json with
 *                        rank_pattern, adapter_model.safetensors), loadable by PEFT and by `--adapter`
 *
 * There is no export while no triplet is live (Λ starts at 0, so before the first step), or when PEFT cannot
 * express the ranks (gpt2's fused c_attn needs one rank for q, k and v); `loraError` says which.
 */
import { join } from 'node:path';
import { adaloraRanks, adaloraToLora, type AdaloraRankReport } from '../adapters/adalora/export.js';
import type { AdapterInstance } from '../adapters/instance.js';
import type { ModelConfig } from '../base/config.js';
import { ConfigError } from '../errors.js';
import { writeFileAtomic } from '../formats/atomic-write.js';
import { writePeftAdapter } from './peft-adapter.js';

export const ADALORA_RANKS_FILE = 'adalora-ranks.json';
export const ADALORA_LORA_DIR = 'lora';

export interface AdaloraOutputs extends AdaloraRankReport {
  /** The PEFT LoRA export, relative to the adapter directory; null when there is none. */
  readonly lora: string | null;
  readonly loraError?: string;
}

/** Writes adalora-ranks.json and lora/ into the adapter directory `dir` (which must exist). */
export async function writeAdaloraOutputs(
  dir: string,
  instance: AdapterInstance,
  model: { readonly config: ModelConfig },
  options: { readonly baseModelName?: string } = {},
): Promise<AdaloraOutputs> {
  const report = adaloraRanks(instance);
  let outputs: AdaloraOutputs;
  try {
    const lora = adaloraToLora(instance, model.config);
    try {
      await writePeftAdapter(join(dir, ADALORA_LORA_DIR), lora, model, options);
    } finally {
      lora.dispose();
    }
    outputs = { ...report, lora: ADALORA_LORA_DIR };
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    outputs = { ...report, lora: null, loraError: error.message };
  }
  await writeFileAtomic(join(dir, ADALORA_RANKS_FILE), `${JSON.stringify(outputs, null, 2)}\n`);
  return outputs;
}
