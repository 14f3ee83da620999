/**
 * The architecture of a frozen base model, validated once when a checkpoint is loaded.
 */
import { z } from 'zod';

export const ModelConfig = z
  .object({
    family: z.enum(['llama', 'gpt2']),
    vocabSize: z.number().int().positive(),
    /** D: width of the residual stream. */
    dim: z.number().int().positive(),
    /** F: width of the FFN intermediate. */
    hiddenDim: z.number().int().positive(),
    nLayers: z.number().int().positive(),
    /** H: query heads. */
    nHeads: z.number().int().positive(),
    /** Hk: key/value heads (grouped-query attention when < nHeads). */
    nKvHeads: z.number().int().positive(),
    /** Longest sequence the positional scheme supports. */
    maxSeqLen: z.number().int().positive(),
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
  });
export type ModelConfig = z.infer<typeof ModelConfig>;

export function headDim(config: ModelConfig): number {
  return config.dim / config.nHeads;
}
