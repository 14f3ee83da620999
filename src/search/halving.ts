/**
 * Successive halving (Jamieson & Talwalkar 2016, "Non-stochastic Best Arm Identification and Hyperparameter
 * Optimization"; the rung layout of Li et al.'s Hyperband bracket): n candidates are trained for a short
 * proxy budget; the best 1/η of each rung are trained again, from scratch, for η times as many steps; the
 * last rung trains for the full step count. "Best" is the highest validation accuracy, then the lowest
 * validation loss: after a few steps most candidates complete nothing exactly, and the loss still ranks them.
 *
 * Rungs: R is the largest count with ⌊n / η^(R−1)⌋ ≥ 1 and maxSteps / η^(R−1) ≥ minSteps; rung i trains
 * max(1, ⌊n / ηⁱ⌋) candidates for round(maxSteps / η^(R−1−i)) steps. Promotion is a pure function of the
 * finished results (accuracy, then loss, then fewer trainable parameters, then the candidate key), so a
 * resumed search promotes exactly as the interrupted one would have.
 */

export interface HalvingOptions {
  /** n: candidates in the first rung. */
  readonly trials: number;
  /** η: the reduction factor (keep the best 1/η of a rung). */
  readonly eta: number;
  /** Steps of the last rung (the full proxy training). */
  readonly maxSteps: number;
  /** Fewest steps any rung may train (rungs are dropped from the bottom until this holds). */
  readonly minSteps: number;
}

export interface Rung {
  readonly rung: number;
  readonly steps: number;
  /** Candidates trained in this rung. */
  readonly trials: number;
}

export function halvingRungs(options: HalvingOptions): Rung[] {
  const { trials, eta, maxSteps, minSteps } = options;
  let count = 1;
  while (Math.floor(trials / eta ** count) >= 1 && maxSteps / eta ** count >= minSteps) count++;
  return Array.from({ length: count }, (_, rung) => ({
    rung,
    steps: Math.max(1, Math.round(maxSteps / eta ** (count - 1 - rung))),
    trials: Math.max(1, Math.floor(trials / eta ** rung)),
  }));
}

export interface RankedResult {
  readonly key: string;
  readonly accuracy: number;
  /** Validation loss (null: none measured; ranks after every measured one). */
  readonly loss: number | null;
  readonly trainableParams: number;
}

/** Best first: higher accuracy, lower loss, fewer trainable parameters, then the key (a total, stable order). */
export function compareResults(a: RankedResult, b: RankedResult): number {
  const loss = (r: RankedResult): number => (r.loss === null || !Number.isFinite(r.loss) ? Number.POSITIVE_INFINITY : r.loss);
  const byLoss = loss(a) === loss(b) ? 0 : loss(a) < loss(b) ? -1 : 1;
  return b.accuracy - a.accuracy || byLoss || a.trainableParams - b.trainableParams || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}

/** A trial's ranking fields. */
export function rankedOf(trial: {
  readonly key: string;
  readonly trainableParams: number;
  readonly validation: { readonly accuracy: number; readonly loss: number | null };
}): RankedResult {
  return { key: trial.key, accuracy: trial.validation.accuracy, loss: trial.validation.loss, trainableParams: trial.trainableParams };
}

/** The keys of the best `count` results. */
export function promote(results: readonly RankedResult[], count: number): string[] {
  return [...results]
    .sort(compareResults)
    .slice(0, count)
    .map((r) => r.key);
}
