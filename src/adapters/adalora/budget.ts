/**
 * AdaLoRA's global budget: how many triplets (Pᵢ, λᵢ, Qᵢ) an adapter keeps at each optimizer step, and
 * which ones. Plain host arithmetic; the controller (controller.ts) applies the result.
 *
 * The schedule (Zhang et al. 2023, eq. 11, and PEFT's RankAllocator.budget_schedule), with b⁰ the initial
 * total rank, bᵀ the target, T the run's optimizer steps and t the steps completed:
 *
 *   t ≤ tinit                   b(t) = b⁰                                        warm-up, no pruning
 *   tinit < t < T − tfinal      b(t) = ⌊bᵀ + (b⁰ − bᵀ)·(1 − (t − tinit)/(T − tfinal − tinit))³⌋,
 *                               allocated when t is a multiple of deltaT          budgeting
 *   t = T − tfinal              b(t) = bᵀ, the final allocation                   fixed from here on
 *   t > T − tfinal              b(t) = bᵀ                                        final fine-tuning
 *
 * An allocation keeps exactly b triplets: the b highest scores across every module of the adapter (ties go
 * to the earlier module, then the lower index), so the total rank after it is b, never fewer (PEFT's
 * threshold `score ≤ kth value` prunes every tied triplet, which can undershoot).
 */
import { ConfigError } from '../../errors.js';

export interface BudgetSchedule {
  /** b⁰: the total rank at the start (Σ initR over modules). */
  readonly initial: number;
  /** bᵀ: the total rank at the end. */
  readonly target: number;
  readonly tinit: number;
  readonly tfinal: number;
  readonly deltaT: number;
  /** T. */
  readonly totalSteps: number;
}

export type BudgetPhase = 'warmup' | 'budgeting' | 'final';

export interface BudgetPoint {
  readonly phase: BudgetPhase;
  /** b(t). */
  readonly budget: number;
  /** Whether an allocation runs after step t. */
  readonly allocate: boolean;
  /** Whether this allocation is the final one (t = T − tfinal): its masks hold for the rest of the run. */
  readonly final: boolean;
}

/** Checks that the schedule has a budgeting phase (tinit < T − tfinal) and a reachable target; `path` names the adapter. */
export function checkSchedule(schedule: BudgetSchedule, path: string): void {
  const { tinit, tfinal, totalSteps, initial, target } = schedule;
  if (tinit >= totalSteps - tfinal) {
    throw new ConfigError(`AdaLoRA's schedule has no budgeting phase: tinit (${tinit}) must be below totalSteps − tfinal (${totalSteps} − ${tfinal})`, {
      path,
      hint: 'Lower tinit or tfinal, or train for more steps',
    });
  }
  if (target > initial) throw new ConfigError(`the target total rank ${target} exceeds the initial ${initial}`, { path, hint: 'Use targetR ≤ initR' });
}

/** b(t) and whether to allocate after optimizer step t (t ≥ 1: steps completed). */
export function budgetAt(schedule: BudgetSchedule, step: number): BudgetPoint {
  const { initial, target, tinit, tfinal, deltaT, totalSteps } = schedule;
  const end = totalSteps - tfinal;
  if (step <= tinit) return { phase: 'warmup', budget: initial, allocate: false, final: false };
  if (step < end) {
    const remaining = 1 - (step - tinit) / (end - tinit);
    const budget = Math.floor((initial - target) * remaining ** 3 + target);
    return { phase: 'budgeting', budget, allocate: step % deltaT === 0, final: false };
  }
  return { phase: 'final', budget: target, allocate: step === end, final: step === end };
}

/**
 * Keeps the `budget` highest-scoring triplets across modules: scores[m][i] is triplet i of module m. Returns
 * keep[m][i]. A non-finite score ranks lowest.
 */
export function allocate(scores: readonly ArrayLike<number>[], budget: number): boolean[][] {
  const all: { module: number; index: number; score: number }[] = [];
  scores.forEach((row, module) => {
    for (let index = 0; index < row.length; index++) {
      const score = row[index] as number;
      all.push({ module, index, score: Number.isFinite(score) ? score : Number.NEGATIVE_INFINITY });
    }
  });
  all.sort((a, b) => b.score - a.score || a.module - b.module || a.index - b.index);
  const keep = scores.map((row) => new Array<boolean>(row.length).fill(false));
  for (const { module, index } of all.slice(0, Math.max(0, budget))) (keep[module] as boolean[])[index] = true;
  return keep;
}
