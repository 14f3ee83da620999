/**
 * Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP"; Pfeiffer et
 * al. 2020, "AdapterFusion"): Δ(h) = dropout(up(act(down(h)))) on a sub-block's output h [N, D], added to h
 * before the residual add. The bottleneck width is `bottleneckDim` when given, else
 * max(1, round(D / reductionFactor)).
 *
 * Placement, not `targets.sites`, decides where they sit: `houlsby` after the attention block and after the
 * FFN, `pfeiffer` after the FFN only. `targets.layers` is respected; naming `targets.sites` is an error.
 * With `init: 'zero-up'` (default) the up-projection starts at zero, so a fresh adapter is the identity.
 */
import { z } from 'zod';
import { MAX_ADAPTER_DIM } from '../limits.js';
import { adapterSpecFields } from '../targets.js';

export const BottleneckConfig = z
  .object({
    kind: z.literal('bottleneck'),
    ...adapterSpecFields,
    /** D / reductionFactor is the bottleneck width (rounded, at least 1) unless bottleneckDim is given. */
    reductionFactor: z.number().int().positive().max(MAX_ADAPTER_DIM).default(16),
    /** Explicit bottleneck width; overrides reductionFactor. */
    bottleneckDim: z.number().int().positive().max(MAX_ADAPTER_DIM).optional(),
    /** `houlsby`: after attention and after the FFN; `pfeiffer`: after the FFN only. */
    placement: z.enum(['houlsby', 'pfeiffer']).default('pfeiffer'),
    activation: z.enum(['relu', 'gelu', 'silu', 'tanh']).default('relu'),
    /** Dropout on the adapter's output during training (as AdapterHub applies it). */
    dropout: z.number().min(0).lt(1).default(0),
    /** `zero-up`: up-projection zero (fresh adapter = identity); `random`: both projections random. */
    init: z.enum(['zero-up', 'random']).default('zero-up'),
  })
  .strict()
  .superRefine((config, ctx) => {
    if (config.targets.sites !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['targets', 'sites'],
        message: 'bottleneck adapters are placed by `placement` (houlsby | pfeiffer), not by targets.sites; remove targets.sites',
      });
    }
  })
  .readonly();
export type BottleneckConfig = z.infer<typeof BottleneckConfig>;

/** The bottleneck width r for a model width D. */
export function bottleneckWidth(config: Pick<BottleneckConfig, 'reductionFactor' | 'bottleneckDim'>, dim: number): number {
  return config.bottleneckDim ?? Math.max(1, Math.round(dim / config.reductionFactor));
}
