/**
 * Accuracy-vs-trainable-parameters curves from a search run's `trials.jsonl`: one JSON object a line, of
 * which this reads `method`, `rung`, `trainableParams`, `validation.accuracy` and, when present, `key` (the
 * candidate's identity in routed-peft search's trial log, src/search/trial-log.ts; the search's other fields
 * are its own and pass through unread). Lines with the same `key` are one candidate at successive rungs; a
 * candidate counts once, at the highest rung it reached (the last line of that rung). A line without `key`
 * is a candidate of its own.
 *
 * Per method the curve is a monotone frontier: for every parameter count N, the best accuracy of the method's
 * candidates with ≤ N trainable parameters; it is written as the steps where that best rises.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { parseConfig } from '../config/parse.js';
import { CheckpointError, ConfigError } from '../errors.js';
import type { FrontierPoint, MethodCurve, SearchAnalysis } from './report.js';

export const TRIALS_FILE = 'trials.jsonl';

/** The fields of one trial line the curves need; everything else on the line belongs to the search. */
export const TrialLine = z.looseObject({
  method: z.string().min(1),
  rung: z.number().int().min(0),
  trainableParams: z.number().int().min(0),
  validation: z.looseObject({ accuracy: z.number().min(0).max(1) }),
  key: z.string().min(1).optional(),
});
export type TrialLine = z.infer<typeof TrialLine>;

interface CandidateBest {
  readonly candidate: string;
  readonly method: string;
  readonly methodLine: number;
  rung: number;
  trainableParams: number;
  accuracy: number;
}

/** Parses the text of a trials.jsonl (`source` names it in errors); a malformed line is refused by its number. */
export function parseTrials(text: string, source: string): { line: number; trial: TrialLine }[] {
  const out: { line: number; trial: TrialLine }[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = i + 1;
    if (raw.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (error) {
      throw new ConfigError(`${source}: line ${line} is not JSON (${(error as Error).message})`, {
        path: `${source}:${line}`,
        hint: 'Each line of trials.jsonl must be one JSON object, as `routed-peft search` writes it',
      });
    }
    out.push({ line, trial: parseConfig(TrialLine, value, `${source} line ${line}`) });
  });
  return out;
}

/** The frontier of `points` (any order): the steps where the best accuracy at ≤ N parameters rises. */
export function monotoneFrontier(points: readonly MethodCurve['points'][number][]): FrontierPoint[] {
  const sorted = [...points].sort((a, b) => a.trainableParams - b.trainableParams || b.accuracy - a.accuracy);
  const frontier: FrontierPoint[] = [];
  let best = Number.NEGATIVE_INFINITY;
  for (const p of sorted) {
    if (p.accuracy > best) {
      frontier.push({ trainableParams: p.trainableParams, accuracy: p.accuracy, candidate: p.candidate, rung: p.rung });
      best = p.accuracy;
    }
  }
  return frontier;
}

/** The curves of parsed trial lines (in file order). */
export function searchCurves(trials: readonly { line: number; trial: TrialLine }[], source: string): MethodCurve[] {
  const candidates = new Map<string, CandidateBest>();
  for (const { line, trial } of trials) {
    const candidate = trial.key ?? `line ${line}`;
    const accuracy = trial.validation.accuracy;
    const seen = candidates.get(candidate);
    if (seen === undefined) {
      candidates.set(candidate, { candidate, method: trial.method, methodLine: line, rung: trial.rung, trainableParams: trial.trainableParams, accuracy });
      continue;
    }
    if (seen.method !== trial.method) {
      throw new ConfigError(
        `${source}: line ${line} gives candidate ${JSON.stringify(candidate)} the method ${JSON.stringify(trial.method)}, but line ${seen.methodLine} gave it ${JSON.stringify(seen.method)}`,
        { path: `${source}:${line}`, hint: 'A candidate keeps its method across rungs; give different candidates different ids' },
      );
    }
    if (trial.rung >= seen.rung) {
      seen.rung = trial.rung;
      seen.trainableParams = trial.trainableParams;
      seen.accuracy = accuracy;
    }
  }
  const byMethod = new Map<string, CandidateBest[]>();
  for (const c of candidates.values()) byMethod.set(c.method, [...(byMethod.get(c.method) ?? []), c]);
  return [...byMethod].map(([method, list]) => {
    const points = list
      .map((c) => ({ trainableParams: c.trainableParams, accuracy: c.accuracy, candidate: c.candidate, rung: c.rung }))
      .sort((a, b) => a.trainableParams - b.trainableParams || b.accuracy - a.accuracy);
    return { method, candidates: list.length, points, frontier: monotoneFrontier(points) };
  });
}

/** Reads `<dir>/trials.jsonl` and builds the curves. */
export async function analyzeSearchRun(dir: string): Promise<SearchAnalysis> {
  const path = join(dir, TRIALS_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new CheckpointError(`cannot read the search run's ${TRIALS_FILE} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, {
      path,
      hint: 'Pass --search the directory a `routed-peft search` run wrote (it holds trials.jsonl)',
      cause: error,
    });
  }
  const trials = parseTrials(text, path);
  if (trials.length === 0) throw new ConfigError(`${path} holds no trials`, { path, hint: 'Run the search until at least one trial finishes' });
  return { directory: dir, trials: trials.length, methods: searchCurves(trials, path) };
}
