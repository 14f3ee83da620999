/**
 * AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning"): an SVD-form
 * LoRA whose singular values are pruned during training, so the total rank (the budget) moves from where
 * it starts to a target and lands where the task needs it.
 *
 *   Δy = s · P·diag(Λ)·Q·dropout(x),   P [O, r], Λ [r], Q [r, I],   s = alpha / initR
 *
 * As in PEFT's AdaLoRA, s divides by the initial rank (PEFT's `ranknum`), not by the rank left after
 * pruning, so pruning a triplet does not rescale the others. Λ starts at zero (a fresh adapter is the
 * identity) and P, Q at N(0, 0.02²), PEFT's initialisation.
 *
 * The budget is this adapter's own, shared by all its layers and sites: it starts at Σ initR (every module's
 * rank) and moves along the cubic schedule of budget.ts to `targetR` × modules between `tinit` and
 * `totalSteps − tfinal`, pruning every `deltaT` steps the triplets (Pᵢ, λᵢ, Qᵢ) of lowest importance across
 * the whole adapter (importance.ts). The orthogonality regulariser ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F, averaged
 * over the adapter's modules and weighted by `orthWeight`, keeps P and Q near orthonormal so Λ behaves like
 * singular values. The Trainer runs all this through its budget controller (train/controllers.ts).
 */
import { z } from 'zod';
import { MAX_ADAPTER_DIM } from '../limits.js';
import { adapterSpecFields } from '../targets.js';

export const AdaloraConfig = z
  .object({
    kind: z.literal('adalora'),
    ...adapterSpecFields,
    /** Rank of every module at the start (PEFT's init_r). */
    initR: z.number().int().positive().max(MAX_ADAPTER_DIM).default(12),
    /** Target average rank per module after budgeting (PEFT's target_r): the final total rank is targetR × modules. */
    targetR: z.number().int().min(0).max(MAX_ADAPTER_DIM).default(8),
    alpha: z.number().positive().default(8),
    dropout: z.number().min(0).lt(1).default(0),
    /** Optimizer steps at the full initial budget before pruning starts. */
    tinit: z.number().int().min(0).default(0),
    /** Optimizer steps at the final budget, with the final allocation fixed, at the end of training. */
    tfinal: z.number().int().min(0).default(0),
    /** Steps between two allocations while the budget shrinks. */
    deltaT: z.number().int().positive().default(1),
    /** EMA factor of the smoothed sensitivity Ī. */
    beta1: z.number().gt(0).lt(1).default(0.85),
    /** EMA factor of the uncertainty Ū. */
    beta2: z.number().gt(0).lt(1).default(0.85),
    /** Weight of the orthogonality regulariser in the training loss. */
    orthWeight: z.number().min(0).finite().default(0.1),
    /** Optimizer steps of the whole run (the schedule's end); default: the trainer's schedule.totalSteps. */
    totalSteps: z.number().int().positive().optional(),
    /** `zero-lambda` (Λ = 0: starts as the identity, PEFT's default) or `random` (Λ random too; tests and experts that must differ from the start). */
    init: z.enum(['zero-lambda', 'random']).default('zero-lambda'),
  })
  .strict()
  .readonly()
  .refine((c) => c.targetR <= c.initR, { message: 'targetR must not exceed initR (the budget only shrinks)', path: ['targetR'] });
export type AdaloraConfig = z.infer<typeof AdaloraConfig>;
