/**
 * Re-evaluating the finalists with more seeds (`search --final-seeds N`). A trial is one training run from
 * one seed, and on small data the seed alone moves a design's accuracy by several points (on the demo's
 * tasks one design scored 81.0, 70.0 and 68.3% from seeds 0, 1, 2), so the single best score of many trials
 * is often a lucky seed (the winner's curse). After the search, the best `finalists` trials of its top rung
 * train again from seeds search seed + 1 … + N − 1, on the same split, and the best is the finalist with the
 * best mean over its N runs (mean accuracy, then mean loss, then fewer parameters).
 *
 * The re-runs are records of finals.jsonl (trial-log.ts), not of trials.jsonl: the rungs, the Pareto fronts
 * and the curves stay one point per design.
 */
import { compareResults, type RankedResult, rankedOf } from './halving.js';
import type { TrialRecord } from './trial-log.js';

/** The id of a finalist's re-run from `seed`, from the id of its trial. */
export const seedRunId = (trialId: string, seed: number): string => `${trialId}@seed${seed}`;

/** The seeds of a finalist's re-runs: the search's seed + 1 … + (finalSeeds − 1). */
export function rerunSeeds(searchSeed: number, finalSeeds: number): number[] {
  return Array.from({ length: Math.max(0, finalSeeds - 1) }, (_, i) => searchSeed + i + 1);
}

/** The best `count` trials of the highest rung reached, best first. */
export function finalistsOf(trials: readonly TrialRecord[], count: number): TrialRecord[] {
  const top = Math.max(-1, ...trials.map((t) => t.rung));
  return trials
    .filter((t) => t.rung === top)
    .sort((a, b) => compareResults(rankedOf(a), rankedOf(b)))
    .slice(0, count);
}

/** A finalist's mean over its run in the search and its re-runs (loss null if any run has none). */
export function meanResult(trial: TrialRecord, reruns: readonly TrialRecord[]): RankedResult & { readonly runs: number } {
  const runs = [trial, ...reruns];
  const losses = runs.map((r) => r.validation.loss);
  const mean = (values: readonly number[]): number => values.reduce((s, v) => s + v, 0) / values.length;
  return {
    key: trial.key,
    accuracy: mean(runs.map((r) => r.validation.accuracy)),
    loss: losses.some((l) => l === null) ? null : mean(losses as number[]),
    trainableParams: trial.trainableParams,
    runs: runs.length,
  };
}

export interface FinalChoice {
  readonly trial: TrialRecord;
  readonly mean: RankedResult & { readonly runs: number };
}

/**
 * The finalist with the best mean, once every finalist has all its re-runs in `finals`; undefined before
 * (the search then reports its best single trial).
 */
export function bestByMean(
  trials: readonly TrialRecord[],
  finals: readonly TrialRecord[],
  finalists: number,
  seeds: readonly number[],
): FinalChoice | undefined {
  if (seeds.length === 0) return undefined;
  const byId = new Map(finals.map((f) => [f.id, f]));
  const choices: FinalChoice[] = [];
  for (const trial of finalistsOf(trials, finalists)) {
    const reruns = seeds.map((s) => byId.get(seedRunId(trial.id, s)));
    if (reruns.some((r) => r === undefined)) return undefined;
    choices.push({ trial, mean: meanResult(trial, reruns as TrialRecord[]) });
  }
  return choices.sort((a, b) => compareResults(a.mean, b.mean))[0];
}
