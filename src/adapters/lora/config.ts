/**
 * LoRA (Hu et al. 2021): Δy = s · B·A·dropout(x), A [r, I], B [O, r], s = alpha / r, or alpha / √r with
 * rsLoRA (Kalajdzievski 2023). B starts at zero so a fresh adapter leaves the base output unchanged.
 * `rankPattern` / `alphaPattern` override r and alpha where a key matches a site (`attn.q`, a glob, a
 * /regex/) or one layer's site (`layers.3.attn.q`), like PEFT's rank_pattern. A rank of 0 in `rankPattern`
 * leaves that placement without a module (an AdaLoRA export whose every triplet at a site was pruned).
 */
import { z } from 'zod';
import { MAX_ADAPTER_DIM } from '../limits.js';
import { MAX_PATTERN_KEYS, adapterSpecFields } from '../targets.js';

export const LoraConfig = z
  .object({
    kind: z.literal('lora'),
    ...adapterSpecFields,
    r: z.number().int().positive().max(MAX_ADAPTER_DIM).default(8),
    alpha: z.number().positive().default(8),
    dropout: z.number().min(0).lt(1).default(0),
    rslora: z.boolean().default(false),
    rankPattern: z
      .record(z.string(), z.number().int().min(0).max(MAX_ADAPTER_DIM))
      .refine((p) => Object.keys(p).length <= MAX_PATTERN_KEYS, `at most ${MAX_PATTERN_KEYS} keys`)
      .default({}),
    alphaPattern: z
      .record(z.string(), z.number().positive())
      .refine((p) => Object.keys(p).length <= MAX_PATTERN_KEYS, `at most ${MAX_PATTERN_KEYS} keys`)
      .default({}),
    /** `zero-b` (PEFT's default: B = 0) or `random` (both random; tests and experts that must differ from the start). */
    init: z.enum(['zero-b', 'random']).default('zero-b'),
  })
  .strict()
  .readonly();
export type LoraConfig = z.infer<typeof LoraConfig>;
