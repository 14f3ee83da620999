/**
 * The files of a search directory:
 *
 *   search.json    the settings the search runs with (a resumed search must have the same), its status and
 *                  the best trial so far
 *   trials.jsonl   every finished trial, one JSON object a line, in the order they finished
 *
 * Both are rewritten whole and atomically after every trial (formats/atomic-write.ts): a search killed at
 * any moment leaves the previous or the new content, never a torn line. Resuming reads trials.jsonl and
 * skips every (candidate, rung) it lists.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { formatPath } from '../config/parse.js';
import { writeFileAtomic } from '../formats/atomic-write.js';
import { SearchError } from './errors.js';

export const SEARCH_FILE = 'search.json';
export const TRIALS_FILE = 'trials.jsonl';
/** The finalists' re-runs from other seeds (reevaluation.ts), in the same record format. */
export const FINALS_FILE = 'finals.jsonl';

const RoutingRecord = z.union([
  z.object({ kind: z.literal('none') }).strict(),
  z
    .object({
      kind: z.literal('route'),
      experts: z.number().int().positive(),
      router: z.looseObject({ kind: z.string() }),
      granularity: z.enum(['token', 'sequence']),
      placement: z.enum(['site', 'layer', 'model']),
      /** A shared expert beside the route (space.ts SHARED_EXPERTS); records without it have none. */
      shared: z.enum(['none', 'half', 'same']).default('none'),
    })
    .strict(),
]);

export const CandidateRecord = z
  .object({
    kind: z.string(),
    injection: z.string(),
    layers: z.enum(['all', 'lower', 'upper']),
    budgetShare: z.number().positive().max(1),
    routing: RoutingRecord,
  })
  .strict();

const TaskScore = z.object({ accuracy: z.number().nullable(), count: z.number().int().min(0) }).strict();

export const TrialRecord = z
  .object({
    type: z.literal('trial'),
    /** `<candidate key>@rung<i>`: what a resumed search looks up. */
    id: z.string(),
    key: z.string(),
    method: z.string(),
    rung: z.number().int().min(0),
    /** Proxy optimizer steps this trial trained. */
    steps: z.number().int().positive(),
    candidate: CandidateRecord,
    size: z.number().int().positive(),
    /** The AdaptedModel spec (what `routed-peft train --spec` reads). */
    spec: z.looseObject({ adapters: z.array(z.unknown()) }),
    /** Exact: Σ sizes of the model's trainable variables. */
    trainableParams: z.number().int().min(0),
    validation: z
      .object({
        /** Exact-match accuracy of greedy completions over the validation prompts. */
        accuracy: z.number().min(0).max(1),
        loss: z.number().nullable(),
        examples: z.number().int().positive(),
        tasks: z.record(z.string(), TaskScore),
      })
      .strict(),
    /** Wall time of the trial: build, training and validation. */
    seconds: z.number().min(0),
    /** The seed it trained from, in finals.jsonl only (a trial of trials.jsonl trains from the search's seed). */
    seed: z.number().int().optional(),
  })
  .strict();
export type TrialRecord = z.infer<typeof TrialRecord>;

export const trialId = (key: string, rung: number): string => `${key}@rung${rung}`;

/** Reads trials.jsonl or finals.jsonl (an empty list when it does not exist); a malformed line is refused by number. */
export async function readTrials(dir: string, file: typeof TRIALS_FILE | typeof FINALS_FILE = TRIALS_FILE): Promise<TrialRecord[]> {
  const path = join(dir, file);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  const records: TrialRecord[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      throw new SearchError(`${file} line ${i + 1} is not JSON`, {
        path,
        cause: error,
        hint: 'Remove the line (its trial will run again) or use another --out',
      });
    }
    const parsed = TrialRecord.safeParse(value);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new SearchError(`${file} line ${i + 1} is not a trial record: ${issue === undefined ? '' : `${formatPath(issue.path)}: ${issue.message}`}`, {
        path,
        hint: 'Remove the line (its trial will run again) or use another --out',
      });
    }
    records.push(parsed.data);
  });
  return records;
}

export async function writeTrials(dir: string, trials: readonly TrialRecord[], file: typeof TRIALS_FILE | typeof FINALS_FILE = TRIALS_FILE): Promise<void> {
  await writeFileAtomic(join(dir, file), trials.map((t) => `${JSON.stringify(t)}\n`).join(''));
}

/** The search methods: successive halving (halving.ts), regularized evolution (evolution.ts), local search (local-search.ts). */
export const SEARCH_METHODS = ['halving', 'evolution', 'local'] as const;
export type SearchMethod = (typeof SEARCH_METHODS)[number];

/** What must not change between a search and its resumption. */
export const SearchSettings = z
  .object({
    /** The search space's version (space.ts SEARCH_SPACE_VERSION); searches written before it had version 1. */
    space: z.number().int().min(1).default(1),
    model: z.string(),
    data: z.string(),
    /** Tokenized fingerprint of the data (train/train-loop.ts datasetFingerprint). */
    dataFingerprint: z.string(),
    budget: z.number().int().positive(),
    /** Searches written before evolution existed were halving searches. */
    method: z.enum(SEARCH_METHODS).default('halving'),
    trials: z.number().int().positive(),
    /** Evolution: population size and tournament sample; local search: the population only (its first trials). */
    population: z.number().int().min(1).optional(),
    sample: z.number().int().min(1).optional(),
    /** The candidates the search starts from (`--start`), before its own draws; absent when none. */
    start: z.array(CandidateRecord).optional(),
    /** With re-evaluation only (reevaluation.ts): runs per finalist, seeds included, and how many finalists. */
    finalSeeds: z.number().int().min(2).optional(),
    finalists: z.number().int().min(1).optional(),
    eta: z.number().int().min(2),
    steps: z.number().int().positive(),
    minSteps: z.number().int().positive(),
    batchSize: z.number().int().positive(),
    maxLength: z.number().int().min(2),
    lr: z.number().positive(),
    routerLr: z.number().positive(),
    seed: z.number().int(),
    validationExamples: z.number().int().positive(),
  })
  .strict();
export type SearchSettings = z.infer<typeof SearchSettings>;

export const SearchStatus = z.enum(['running', 'complete', 'time-limit', 'stopped']);
export type SearchStatus = z.infer<typeof SearchStatus>;

export const SearchManifest = z
  .object({
    format: z.literal('routed-peft-search'),
    version: z.literal(1),
    settings: SearchSettings,
    status: SearchStatus,
    /** id of the best trial so far (highest rung reached, then accuracy, then fewer parameters; with re-runs, the best mean). */
    best: z.string().nullable(),
    /** With re-runs of the finalists, once all are done: the best one's mean over its runs. */
    bestMean: z
      .object({ accuracy: z.number(), loss: z.number().nullable(), runs: z.number().int().min(2) })
      .strict()
      .optional(),
  })
  .strict();
export type SearchManifest = z.infer<typeof SearchManifest>;

export async function readSearchManifest(dir: string): Promise<SearchManifest | undefined> {
  const path = join(dir, SEARCH_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new SearchError(`${SEARCH_FILE} is not JSON`, { path, cause: error, hint: 'Use another --out' });
  }
  const parsed = SearchManifest.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new SearchError(`${SEARCH_FILE} is not a search manifest: ${issue === undefined ? '' : `${formatPath(issue.path)}: ${issue.message}`}`, {
      path,
      hint: 'Use another --out',
    });
  }
  return parsed.data;
}

export async function writeSearchManifest(dir: string, manifest: SearchManifest): Promise<void> {
  await writeFileAtomic(join(dir, SEARCH_FILE), `${JSON.stringify(manifest, null, 2)}\n`);
}

/** Settings a resumed search may change: how many finalists are re-run, from how many seeds. */
const REEVALUATION_SETTINGS: readonly (keyof SearchSettings)[] = ['finalSeeds', 'finalists'];

/** Throws a SearchError naming every setting (but the re-runs') that differs from the directory's. */
export function checkSameSettings(saved: SearchSettings, now: SearchSettings, dir: string): void {
  if (saved.space !== now.space) {
    throw new SearchError(
      `--out holds a search of search space version ${saved.space}; this version searches space ${now.space}, whose draws and keys differ, so it cannot resume it`,
      {
        path: join(dir, SEARCH_FILE),
        hint: 'Start the search again in another --out',
      },
    );
  }
  const same = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);
  // The finalists' re-runs may change: trials.jsonl does not depend on them, and finals.jsonl's records are
  // looked up by seed, so more seeds or finalists only add re-runs.
  const keys = ([...new Set([...Object.keys(saved), ...Object.keys(now)])] as (keyof SearchSettings)[]).filter((k) => !REEVALUATION_SETTINGS.includes(k));
  const differing = keys.filter((k) => !same(saved[k], now[k]));
  if (differing.length === 0) return;
  const list = differing.map((k) => `${k} ${JSON.stringify(saved[k])} → ${JSON.stringify(now[k])}`).join(', ');
  throw new SearchError(`--out holds a search with other settings (${list}); a resumed search keeps its settings`, {
    path: join(dir, SEARCH_FILE),
    hint: 'Run with the same flags to resume it, or choose another --out',
  });
}
