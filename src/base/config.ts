/**
 * The architecture of a frozen base model, validated once when a checkpoint is loaded.
 */
import { z } from 'zod';

/**
 * Largest architectures accepted from a config file (a hostile config.json or llama2.c header must not make
 * the loader allocate RoPE tables or embeddings for 10⁹ positions or ids). Real models are far below them.
 */
export const MODEL_LIMITS = {
  vocabSize: 2 ** 22,
  dim: 2 ** 16,
  hiddenDim: 2 ** 18,
  nLayers: 1024,
  nHeads: 1024,
  maxSeqLen: 2 ** 20,
  /** maxSeqLen × head width: the RoPE tables' size (2^27: 512 MiB of cos and sin). */
  ropeElements: 2 ** 27,
} as const;

export const ModelConfig = z
  .object({
    family: z.enum(['llama', 'gpt2']),
    vocabSize: z.number().int().positive().max(MODEL_LIMITS.vocabSize),
    /** D: width of the residual stream. */
    dim: z.number().int().positive().max(MODEL_LIMITS.dim),
    /** F: width of the FFN intermediate. */
    hiddenDim: z.number().int().positive().max(MODEL_LIMITS.hiddenDim),
    nLayers: z.number().int().positive().max(MODEL_LIMITS.nLayers),
    /** H: query heads. */
    nHeads: z.number().int().positive().max(MODEL_LIMITS.nHeads),
    /** Hk: key/value heads (grouped-query attention when < nHeads). */
    nKvHeads: z.number().int().positive().max(MODEL_LIMITS.nHeads),
    /** Longest sequence the positional scheme supports. */
    maxSeqLen: z.number().int().positive().max(MODEL_LIMITS.maxSeqLen),
    normEps: z.number().positive(),
    /** RoPE base (llama only). */
    ropeTheta: z.number().positive().default(10000),
    tiedEmbeddings: z.boolean(),
    bosId: z.number().int().nonnegative().optional(),
    eosId: z.number().int().nonnegative().optional(),
  })
  .readonly()
  .superRefine((c, ctx) => {
    if (c.dim % c.nHeads !== 0) {
      ctx.addIssue({ code: 'custom', path: ['dim'], message: `dim ${c.dim} is not divisible by nHeads ${c.nHeads}` });
    }
    if (c.nHeads % c.nKvHeads !== 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['nKvHeads'],
        message: `nHeads ${c.nHeads} is not a multiple of nKvHeads ${c.nKvHeads}`,
      });
    }
    if (c.family === 'llama' && (c.dim / c.nHeads) % 2 !== 0) {
      ctx.addIssue({ code: 'custom', path: ['nHeads'], message: 'RoPE needs an even head width (dim / nHeads)' });
    }
    if (c.family === 'llama' && c.maxSeqLen * (c.dim / c.nHeads) > MODEL_LIMITS.ropeElements) {
      ctx.addIssue({
        code: 'custom',
        path: ['maxSeqLen'],
        message: `maxSeqLen ${c.maxSeqLen} × head width ${c.dim / c.nHeads} needs RoPE tables of more than ${MODEL_LIMITS.ropeElements} elements; lower max_position_embeddings`,
      });
    }
  });
export type ModelConfig = z.infer<typeof ModelConfig>;

export function headDim(config: ModelConfig): number {
  return config.dim / config.nHeads;
}
