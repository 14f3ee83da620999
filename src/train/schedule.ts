/**
 * Learning-rate and annealing schedules, as multipliers of an optimizer step index (0-based: the step whose
 * update is being computed).
 *
 * LR: linear warmup (Goyal et al. 2017, "Accurate, Large Minibatch SGD") then half-cosine decay
 * (Loshchilov & Hutter 2017, "SGDR") from 1 down to `minLrRatio` at `totalSteps`, held there afterwards:
 *   step < W:  (step + 1) / W                     (reaches 1 on the last warmup step, never 0)
 *   step ≥ W:  r + (1 − r) · ½ (1 + cos(π · min(1, (step − W) / (S − W))))
 * Without `totalSteps` the LR stays at 1 after warmup.
 *
 * Annealing (router temperature / noise): linear from `from` to `to` over `steps`, then held at `to`.
 */
import { z } from 'zod';
import { parseConfig } from '../config/parse.js';
import { ConfigError } from '../errors.js';

export const ScheduleConfig = z
  .object({
    /** W: optimizer steps of linear warmup (0: none). */
    warmupSteps: z.number().int().min(0).default(0),
    /** S: the step at which the cosine reaches minLrRatio; omitted: constant LR after warmup. */
    totalSteps: z.number().int().positive().optional(),
    /** r: the final LR as a fraction of the peak. */
    minLrRatio: z.number().min(0).max(1).default(0.1),
  })
  .strict()
  .readonly();
export type ScheduleConfig = z.infer<typeof ScheduleConfig>;

/** Multiplier of the peak LR at an optimizer step. */
export interface LrSchedule {
  readonly config: ScheduleConfig;
  lrAt(step: number): number;
}

export function lrSchedule(value: unknown = {}): LrSchedule {
  const config = parseConfig(ScheduleConfig, value, 'schedule');
  const { warmupSteps, totalSteps, minLrRatio } = config;
  if (totalSteps !== undefined && warmupSteps > totalSteps) {
    throw new ConfigError(`schedule.warmupSteps (${warmupSteps}) exceeds schedule.totalSteps (${totalSteps})`, {
      path: 'schedule.warmupSteps',
      hint: 'Warm up over fewer steps than the whole run',
    });
  }
  return {
    config,
    lrAt(step: number): number {
      if (step < warmupSteps) return (step + 1) / warmupSteps;
      if (totalSteps === undefined) return 1;
      const span = totalSteps - warmupSteps;
      const progress = span <= 0 ? 1 : Math.min(1, (step - warmupSteps) / span);
      return minLrRatio + (1 - minLrRatio) * 0.5 * (1 + Math.cos(Math.PI * progress));
    },
  };
}

export const AnnealRange = z.object({ from: z.number().finite(), to: z.number().finite() }).strict().readonly();
export type AnnealRange = z.infer<typeof AnnealRange>;

export const AnnealingConfig = z
  .object({
    /** Router softmax temperature (routers without one ignore it). */
    temperature: AnnealRange.optional(),
    /** Router noise scale (noisy top-k). */
    noise: AnnealRange.optional(),
    /** Steps of the linear ramp; default: the LR schedule's totalSteps. */
    steps: z.number().int().positive().optional(),
  })
  .strict()
  .readonly();
export type AnnealingConfig = z.infer<typeof AnnealingConfig>;

/** The annealed router state at a step: only the fields the config sets. */
export interface AnnealingState {
  readonly temperature?: number;
  readonly noise?: number;
}

/** Linear interpolation from `from` (step 0) to `to` (step ≥ steps). */
export function linearAnneal(range: AnnealRange, step: number, steps: number): number {
  const progress = Math.min(1, Math.max(0, step / steps));
  return range.from + (range.to - range.from) * progress;
}

export interface AnnealingSchedule {
  stateAt(step: number): AnnealingState;
}

/** An annealing schedule; `defaultSteps` (the LR schedule's totalSteps) is used when the config has no `steps`. */
export function annealingSchedule(value: unknown, defaultSteps: number | undefined): AnnealingSchedule {
  const config = parseConfig(AnnealingConfig, value, 'routerAnnealing');
  const steps = config.steps ?? defaultSteps;
  if (steps === undefined) {
    throw new ConfigError('routerAnnealing needs a length', {
      path: 'routerAnnealing.steps',
      hint: 'Set routerAnnealing.steps, or schedule.totalSteps (which it defaults to)',
    });
  }
  const { temperature, noise } = config;
  return {
    stateAt(step: number): AnnealingState {
      return {
        ...(temperature === undefined ? {} : { temperature: linearAnneal(temperature, step, steps) }),
        ...(noise === undefined ? {} : { noise: linearAnneal(noise, step, steps) }),
      };
    },
  };
}
