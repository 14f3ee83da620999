/**
 * The architecture search engine (`routed-peft search`): successive halving (halving.ts), regularized
 * evolution (evolution.ts) or local search (local-search.ts) over the space of space.ts, every candidate fitted to the trainable budget
 * (budget.ts), each trial a short proxy training with the library's training loop and a validation by exact
 * match of greedy completions.
 *
 *   1. Split the data: up to `validationExamples` prompt/completion lines (seeded) are held out; the rest
 *      trains.
 *   2. Take the `start` candidates, then draw (seeded, stratified by kind and routing) until `trials`
 *      distinct ones fit the budget at their budget share.
 *   3. Rung by rung: train each candidate from scratch for the rung's steps (AdamW, warmup then cosine over
 *      those steps, clipping at 1), measure validation accuracy, keep the best 1/η for the next rung.
 *      Evolution instead trains the first P draws, then `trials` − P children, each one mutation away from
 *      the best of S members of the P most recent trials, all for `steps` steps. Local search trains the
 *      first P, then every neighbour of the best trial, moving while the best changes.
 *   4. With `finalSeeds` N ≥ 2: train the best `finalists` of the last rung again from N − 1 more seeds;
 *      the best mean wins (reevaluation.ts).
 *   5. After every trial, rewrite trials.jsonl, finals.jsonl, search.json, best-spec.json, pareto.json and pareto.svg
 *      atomically, so a killed search leaves the best so far and resumes without repeating a finished trial
 *      (the draws, the fits and the promotions are functions of the seed and the finished results).
 *
 * The search stops early, with everything written, at its time limit, when its AbortSignal fires (a trial
 * being trained is abandoned, not recorded), or after `maxNewTrials` trials in this call.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Transformer } from '../base/transformer.js';
import { seededRandom } from '../base/sampling.js';
import { writeFileAtomic } from '../formats/atomic-write.js';
import { AdaptedModel } from '../model/adapted-model.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import { seededShuffle, tokenizeExamples } from '../train/batches.js';
import type { Dataset, Example } from '../train/dataset.js';
import { evaluateDataset } from '../train/evaluate.js';
import { datasetFingerprint, trainFromDataset } from '../train/train-loop.js';
import { type FittedCandidate, fitCandidate, trainableCount } from './budget.js';
import { SearchError } from './errors.js';
import { EVOLUTION_DEFAULTS, type EvolvedTrial, mutateCandidate, tournamentParent, trialRandom } from './evolution.js';
import { neighbours } from './local-search.js';
import { halvingRungs, promote, rankedOf, type Rung } from './halving.js';
import { paretoFront } from './pareto.js';
import { bestByMean, type FinalChoice, finalistsOf, rerunSeeds, seedRunId } from './reevaluation.js';
import { type Candidate, candidateKey, methodOf, outsideSpace, SEARCH_SPACE_VERSION, stratifiedDraws } from './space.js';
import { renderPlot } from './svg-plot.js';
import {
  CandidateRecord,
  checkSameSettings,
  FINALS_FILE,
  readSearchManifest,
  readTrials,
  SEARCH_METHODS,
  type SearchMethod,
  type SearchSettings,
  type SearchStatus,
  type TrialRecord,
  TRIALS_FILE,
  trialId,
  writeSearchManifest,
  writeTrials,
} from './trial-log.js';

export const BEST_SPEC_FILE = 'best-spec.json';
export const PARETO_FILE = 'pareto.json';
export const PARETO_SVG_FILE = 'pareto.svg';

export interface SearchOptions {
  readonly base: Transformer;
  readonly tokenizer: Tokenizer;
  readonly routers: RouterRegistry;
  readonly dataset: Dataset;
  /** Recorded in the settings (a resumed search must name the same model and data). */
  readonly modelPath: string;
  readonly dataPath: string;
  readonly outDir: string;
  /** Most trainable parameters any candidate may have (exact count). */
  readonly budget: number;
  /** `halving` (default), `evolution` or `local`. */
  readonly method?: SearchMethod;
  /** Halving: candidates in the first rung; evolution and local search: trials in all (default 27). */
  readonly trials?: number;
  /** Evolution: population size P, the most recent trials parents are drawn from; local search: the trials before it moves (default 10). */
  readonly population?: number;
  /** Evolution: members drawn per tournament, S ≤ P (default 3). */
  readonly sample?: number;
  /**
   * Candidates to train first (a known design to improve on): they open the first rung (halving) or the first
   * population (evolution), and the search's draws fill the rest. Each must be a point of the space that fits
   * its budget share.
   */
  readonly start?: readonly Candidate[];
  /**
   * Runs per finalist (reevaluation.ts): with N ≥ 2, the best `finalists` trials train again from N − 1 more
   * seeds after the search and the best mean wins (default 1: no re-runs).
   */
  readonly finalSeeds?: number;
  /** Finalists re-run with `finalSeeds` (default 3). */
  readonly finalists?: number;
  /** η (default 3). */
  readonly eta?: number;
  /** Steps of the last rung (default 100). */
  readonly steps?: number;
  /** Fewest steps of the first rung (default 10). */
  readonly minSteps?: number;
  readonly batchSize?: number;
  readonly maxLength?: number;
  readonly lr?: number;
  readonly routerLr?: number;
  readonly seed?: number;
  /** Most held-out prompt/completion lines (default 200; at most a fifth of them). */
  readonly validationExamples?: number;
  /** Stop at this many seconds (checked before and during every trial). */
  readonly timeLimitSeconds?: number;
  readonly signal?: AbortSignal;
  /** Stop after this many trials have run in this call (resumed ones do not count). */
  readonly maxNewTrials?: number;
  readonly onEvent?: (event: SearchEvent) => void;
  /** Milliseconds for the time limit and the trials' seconds (default performance.now; tests pass a fake one). */
  readonly clock?: () => number;
}

export { SEARCH_METHODS, type SearchMethod };

export type SearchEvent =
  | { readonly type: 'plan'; readonly rungs: readonly Rung[]; readonly total: number; readonly finished: number; readonly candidates: number }
  | { readonly type: 'trial-start'; readonly id: string; readonly rung: number; readonly steps: number; readonly trainableParams: number }
  | { readonly type: 'trial'; readonly record: TrialRecord; readonly done: number; readonly total: number }
  | { readonly type: 'step'; readonly id: string; readonly step: number; readonly steps: number; readonly loss: number | null };

export interface SearchResult {
  readonly status: Exclude<SearchStatus, 'running'>;
  readonly rungs: readonly Rung[];
  /** Every finished trial (resumed ones included), in the order they finished. */
  readonly trials: readonly TrialRecord[];
  /** Trials run in this call / found finished in trials.jsonl. */
  readonly ran: number;
  readonly reused: number;
  readonly best: TrialRecord | undefined;
  /** With re-evaluation: the best finalist's mean over its runs (accuracy, loss, runs). */
  readonly bestMean: { readonly accuracy: number; readonly loss: number | null; readonly runs: number } | undefined;
  /** The finalists' re-runs (finals.jsonl), in the order they finished. */
  readonly finals: readonly TrialRecord[];
  readonly files: {
    readonly trials: string;
    readonly finals: string;
    readonly manifest: string;
    readonly bestSpec: string;
    readonly pareto: string;
    readonly paretoSvg: string;
  };
}

/** Thrown from inside a trial's training loop to abandon it. */
class StopSearch extends Error {
  constructor(readonly status: 'time-limit' | 'stopped') {
    super(status);
  }
}

interface Split {
  readonly train: Dataset;
  readonly validation: Dataset;
}

/** Holds out up to `wanted` prompt/completion examples (at most a fifth of them), seeded. */
function splitData(dataset: Dataset, wanted: number, seed: number): Split {
  if (dataset.kind !== 'language-modelling') {
    throw new SearchError(`${dataset.source}: the search scores exact-match completions and needs prompt/completion lines, not labelled lines`, {
      path: dataset.source,
      hint: 'Give a JSONL file of {"prompt", "completion"} lines',
    });
  }
  const completions = dataset.examples.flatMap((e, i) => (e.kind === 'prompt-completion' ? [i] : []));
  const held = Math.min(wanted, Math.floor(completions.length / 5));
  if (held < 1) {
    throw new SearchError(
      `${dataset.source}: ${completions.length} prompt/completion lines; the search holds out a fifth of them to validate and needs at least 5`,
      {
        path: dataset.source,
        hint: 'Add {"prompt", "completion"} lines',
      },
    );
  }
  const chosen = new Set(seededShuffle(completions, seed ^ 0x5ea4c4).slice(0, held));
  const train: Example[] = [];
  const validation: Example[] = [];
  dataset.examples.forEach((e, i) => (chosen.has(i) ? validation : train).push(e));
  return {
    train: { ...dataset, examples: train, source: `${dataset.source} (search training)` },
    validation: { ...dataset, examples: validation, source: `${dataset.source} (search validation)` },
  };
}

/**
 * Fits candidates to their share of the budget, each one once: undefined for a candidate seen before, one that
 * does not fit, or one whose fitted spec an earlier one has (two shares can fit the same spec: a size at its
 * cap, (IA)³ without a size), so no spec trains twice.
 */
function newCandidateFitter(options: SearchOptions, seed: number): (candidate: Candidate) => FittedCandidate | undefined {
  const seen = new Set<string>();
  const specs = new Set<string>();
  return (candidate) => {
    const key = candidateKey(candidate);
    if (seen.has(key)) return undefined;
    seen.add(key);
    const fit = fitCandidate(options.base, options.routers, candidate, Math.floor(options.budget * candidate.budgetShare), seed);
    if (fit === undefined) return undefined;
    const spec = JSON.stringify(fit.spec);
    if (specs.has(spec)) return undefined;
    specs.add(spec);
    return fit;
  };
}

/**
 * The `start` candidates fitted, then new ones drawn from the seed, `count` in all (fewer if the space has
 * fewer). A start candidate outside the space, over its budget share or repeating another is refused by name.
 */
function initialCandidates(
  options: SearchOptions,
  count: number,
  seed: number,
  fitNew: (candidate: Candidate) => FittedCandidate | undefined,
): FittedCandidate[] {
  const start = options.start ?? [];
  const fitted: FittedCandidate[] = [];
  start.forEach((candidate, i) => {
    const problem = outsideSpace(candidate);
    if (problem !== undefined)
      throw new SearchError(`start candidate ${i}: ${problem.message}`, { path: `start[${i}].${problem.path}`, hint: 'Start from points of the search space' });
    const earlier = start.findIndex((c) => candidateKey(c) === candidateKey(candidate));
    if (earlier < i)
      throw new SearchError(`start candidate ${i} repeats start candidate ${earlier}`, { path: `start[${i}]`, hint: 'List each candidate once' });
    const fit = fitNew(candidate);
    if (fit === undefined) {
      const share = Math.floor(options.budget * candidate.budgetShare);
      throw new SearchError(
        `start candidate ${i} (${candidateKey(candidate)}) does not fit its budget share (${share} trainable parameters) even at size 1, or trains the spec of an earlier start candidate`,
        {
          path: `start[${i}]`,
          hint: 'Raise --budget, give it a larger budgetShare, or remove it',
        },
      );
    }
    fitted.push(fit);
  });
  const next = stratifiedDraws(seededRandom(seed ^ 0x3c6ef372));
  for (let draw = 0; draw < count * 50 && fitted.length < count; draw++) {
    const fit = fitNew(next());
    if (fit !== undefined) fitted.push(fit);
  }
  if (fitted.length === 0) {
    throw new SearchError(`no candidate of the search space fits --budget ${options.budget} trainable parameters`, {
      hint: 'Raise --budget: the smallest candidate (one (IA)³ or rank-1 LoRA module set) needs more',
    });
  }
  return fitted;
}

/** The best trial: highest rung reached, then accuracy, then loss, then fewer parameters. */
export function bestTrial(trials: readonly TrialRecord[]): TrialRecord | undefined {
  return finalistsOf(trials, 1)[0];
}

/** Per rung: every trial's (params, accuracy) and the rung's Pareto front; the best (by mean, with re-runs). */
export function paretoSummary(
  trials: readonly TrialRecord[],
  rungs: readonly Rung[],
  budget: number,
  chosen: FinalChoice | undefined = undefined,
): Record<string, unknown> {
  const point = (t: TrialRecord): Record<string, unknown> => ({
    id: t.id,
    method: t.method,
    trainableParams: t.trainableParams,
    accuracy: t.validation.accuracy,
    steps: t.steps,
  });
  return {
    budget,
    axes: { x: 'trainableParams (exact count of trainable variables)', y: 'validation exact-match accuracy' },
    rungs: rungs.map((r) => {
      const inRung = trials.filter((t) => t.rung === r.rung);
      return {
        rung: r.rung,
        steps: r.steps,
        trials: inRung.length,
        front: paretoFront(inRung.map((t) => ({ ...t, accuracy: t.validation.accuracy }))).map(point),
      };
    }),
    best: (() => {
      if (chosen !== undefined) return { ...point(chosen.trial), meanAccuracy: chosen.mean.accuracy, runs: chosen.mean.runs };
      const best = bestTrial(trials);
      return best === undefined ? null : point(best);
    })(),
  };
}

export function renderParetoSvg(trials: readonly TrialRecord[], rungs: readonly Rung[], budget: number): string {
  return renderPlot({
    title: 'Search: validation accuracy vs trainable parameters',
    subtitle: "each point a trial, each line a rung's Pareto front (best accuracy at ≤ that many parameters)",
    xMarker: { x: budget, label: `budget ${budget.toLocaleString('en-US')}` },
    xLabel: 'trainable parameters',
    yLabel: 'validation exact-match accuracy',
    series: rungs.map((r) => ({
      name: `rung ${r.rung} (${r.steps} steps)`,
      points: trials.filter((t) => t.rung === r.rung).map((t) => ({ x: t.trainableParams, y: t.validation.accuracy })),
      staircase: true,
    })),
  });
}

export async function runSearch(options: SearchOptions): Promise<SearchResult> {
  const now = options.clock ?? ((): number => performance.now());
  const started = now();
  const seed = options.seed ?? 0;
  const method = options.method ?? 'halving';
  const requested = options.trials ?? 27;
  const population = options.population ?? EVOLUTION_DEFAULTS.population;
  const sample = options.sample ?? EVOLUTION_DEFAULTS.sample;
  const eta = options.eta ?? 3;
  const maxSteps = options.steps ?? 100;
  const minSteps = Math.min(options.minSteps ?? 10, maxSteps);
  const batchSize = options.batchSize ?? 16;
  const maxLength = options.maxLength ?? Math.min(128, options.base.config.maxSeqLen);
  const lr = options.lr ?? 1e-2;
  const routerLr = options.routerLr ?? lr;
  const finalSeeds = options.finalSeeds ?? 1;
  const finalistCount = options.finalists ?? 3;
  const outDir = options.outDir;
  if (!Number.isInteger(options.budget) || options.budget < 1)
    throw new SearchError(`budget must be a whole number ≥ 1, got ${options.budget}`, { path: 'budget' });
  if (!(SEARCH_METHODS as readonly string[]).includes(method))
    throw new SearchError(`unknown search method ${JSON.stringify(method)}`, { path: 'method', hint: `Use one of ${SEARCH_METHODS.join(', ')}` });
  const oneRung = method === 'evolution' || method === 'local';
  if (oneRung) {
    if (!Number.isInteger(population) || population < 1)
      throw new SearchError(`population must be a whole number ≥ 1, got ${population}`, { path: 'population' });
    if (method === 'evolution' && (!Number.isInteger(sample) || sample < 1 || sample > population))
      throw new SearchError(`sample must be a whole number from 1 to the population (${population}), got ${sample}`, {
        path: 'sample',
        hint: 'A tournament draws --sample members of the --population most recent trials',
      });
  }

  if (!Number.isInteger(finalSeeds) || finalSeeds < 1)
    throw new SearchError(`finalSeeds must be a whole number ≥ 1, got ${finalSeeds}`, {
      path: 'finalSeeds',
      hint: '1 trains each trial once; 3 re-runs the finalists from two more seeds',
    });
  if (!Number.isInteger(finalistCount) || finalistCount < 1)
    throw new SearchError(`finalists must be a whole number ≥ 1, got ${finalistCount}`, { path: 'finalists' });
  const start = options.start ?? [];
  const opening = oneRung ? Math.min(population, requested) : requested;
  if (start.length > opening) {
    const what = oneRung ? `the first population (--population ${population}, --trials ${requested})` : `the first rung (--trials ${requested})`;
    throw new SearchError(`${start.length} start candidates do not fit in ${what}`, {
      path: 'start',
      hint: 'Give fewer start candidates or raise those flags',
    });
  }

  const split = splitData(options.dataset, options.validationExamples ?? 200, seed);
  const settings: SearchSettings = {
    space: SEARCH_SPACE_VERSION,
    model: options.modelPath,
    data: options.dataPath,
    dataFingerprint: datasetFingerprint(tokenizeExamples(options.dataset.examples, options.tokenizer, { maxLength })),
    budget: options.budget,
    method,
    trials: requested,
    ...(method === 'evolution' ? { population, sample } : method === 'local' ? { population } : {}),
    ...(start.length > 0 ? { start: start.map((c) => CandidateRecord.parse(c)) } : {}),
    ...(finalSeeds > 1 ? { finalSeeds, finalists: finalistCount } : {}),
    eta,
    steps: maxSteps,
    minSteps,
    batchSize,
    maxLength,
    lr,
    routerLr,
    seed,
    validationExamples: split.validation.examples.length,
  };
  await mkdir(outDir, { recursive: true });
  const saved = await readSearchManifest(outDir);
  if (saved !== undefined) checkSameSettings(saved.settings, settings, outDir);
  const finished = saved === undefined ? [] : await readTrials(outDir);
  if (saved === undefined && (await readTrials(outDir)).length > 0) {
    throw new SearchError(`--out ${outDir} holds a trial log without its search.json`, { path: outDir, hint: 'Choose another --out' });
  }
  const finishedFinals = saved === undefined ? [] : await readTrials(outDir, FINALS_FILE);
  const done = new Map([...finished, ...finishedFinals].map((t) => [t.id, t]));
  const trials: TrialRecord[] = [...finished];
  const finals: TrialRecord[] = [...finishedFinals];
  const seeds = rerunSeeds(seed, finalSeeds);

  // Evolution starts from the first P of the candidates halving starts from, and trains every trial fully.
  const fitNew = newCandidateFitter(options, seed);
  const candidates = initialCandidates(options, opening, seed, fitNew);
  const byKey = new Map(candidates.map((c) => [candidateKey(c.candidate), c]));
  const rungs = oneRung ? [{ rung: 0, steps: maxSteps, trials: requested }] : halvingRungs({ trials: candidates.length, eta, maxSteps, minSteps });
  const finalRuns = Math.min(finalistCount, (rungs.at(-1) as Rung).trials) * seeds.length;
  const total = rungs.reduce((s, r) => s + r.trials, 0) + finalRuns;
  options.onEvent?.({ type: 'plan', rungs, total, finished: done.size, candidates: candidates.length });

  const files = {
    trials: join(outDir, TRIALS_FILE),
    finals: join(outDir, FINALS_FILE),
    manifest: join(outDir, 'search.json'),
    bestSpec: join(outDir, BEST_SPEC_FILE),
    pareto: join(outDir, PARETO_FILE),
    paretoSvg: join(outDir, PARETO_SVG_FILE),
  };
  const chosen = (): FinalChoice | undefined => bestByMean(trials, finals, finalistCount, seeds);
  const writeAll = async (status: SearchStatus): Promise<void> => {
    const choice = chosen();
    const best = choice?.trial ?? bestTrial(trials);
    await writeTrials(outDir, trials);
    if (seeds.length > 0) await writeTrials(outDir, finals, FINALS_FILE);
    if (best !== undefined) await writeFileAtomic(files.bestSpec, `${JSON.stringify(best.spec, null, 2)}\n`);
    await writeFileAtomic(files.pareto, `${JSON.stringify(paretoSummary(trials, rungs, options.budget, choice), null, 2)}\n`);
    await writeFileAtomic(files.paretoSvg, renderParetoSvg(trials, rungs, options.budget));
    const bestMean = choice === undefined ? {} : { bestMean: { accuracy: choice.mean.accuracy, loss: choice.mean.loss, runs: choice.mean.runs } };
    await writeSearchManifest(outDir, { format: 'routed-peft-search', version: 1, settings, status, best: best?.id ?? null, ...bestMean });
  };
  await writeAll('running');

  const deadline = options.timeLimitSeconds === undefined ? Number.POSITIVE_INFINITY : started + options.timeLimitSeconds * 1000;
  const stopReason = (): 'time-limit' | 'stopped' | undefined => (options.signal?.aborted === true ? 'stopped' : now() >= deadline ? 'time-limit' : undefined);
  let ran = 0;
  let status: Exclude<SearchStatus, 'running'> = 'complete';

  /** The id of a candidate's trial in `rung`, or of its re-run from `rerunSeed`. */
  const recordId = (key: string, rung: Rung, rerunSeed: number | undefined): string =>
    rerunSeed === undefined ? trialId(key, rung.rung) : seedRunId(trialId(key, rung.rung), rerunSeed);

  // A trial trains from the search's seed; a finalist's re-run (`rerunSeed`) from another: its spec's init
  // and its batch order change, the split does not.
  const runTrial = async (fit: FittedCandidate, rung: Rung, rerunSeed: number | undefined): Promise<TrialRecord> => {
    const trialStart = now();
    const key = candidateKey(fit.candidate);
    const trialSeed = rerunSeed ?? seed;
    const id = recordId(key, rung, rerunSeed);
    const spec = rerunSeed === undefined ? fit.spec : { ...fit.spec, seed: rerunSeed };
    const model = AdaptedModel.create(options.base, spec, { routers: options.routers });
    try {
      const trainableParams = trainableCount(model);
      options.onEvent?.({ type: 'trial-start', id, rung: rung.rung, steps: rung.steps, trainableParams });
      await trainFromDataset({
        model,
        tokenizer: options.tokenizer,
        dataset: split.train,
        trainer: {
          optimizer: { lr, routerLr },
          schedule: { warmupSteps: Math.round(rung.steps * 0.05), totalSteps: rung.steps },
          maxGradNorm: 1,
          seed: trialSeed,
        },
        steps: rung.steps,
        batchSize,
        seed: trialSeed,
        maxLength,
        onStep: (report) => {
          const reason = stopReason();
          if (reason !== undefined) throw new StopSearch(reason);
          options.onEvent?.({ type: 'step', id, step: report.step, steps: rung.steps, loss: report.loss });
        },
      });
      const evaluation = await evaluateDataset({
        model,
        tokenizer: options.tokenizer,
        dataset: split.validation,
        batchSize: Math.max(batchSize, 32),
        maxLength,
      });
      let right = 0;
      let judged = 0;
      const tasks: TrialRecord['validation']['tasks'] = {};
      for (const [name, t] of Object.entries(evaluation.tasks)) {
        tasks[name] = { accuracy: t.accuracy, count: t.count };
        if (t.accuracy !== null) {
          right += t.accuracy * t.count;
          judged += t.count;
        }
      }
      return {
        type: 'trial',
        id,
        key,
        method: methodOf(fit.candidate),
        rung: rung.rung,
        steps: rung.steps,
        candidate: fit.candidate as TrialRecord['candidate'],
        size: fit.size,
        spec: spec as TrialRecord['spec'],
        trainableParams,
        validation: { accuracy: judged === 0 ? 0 : right / judged, loss: evaluation.loss, examples: split.validation.examples.length, tasks },
        seconds: Number(((now() - trialStart) / 1000).toFixed(3)),
        ...(rerunSeed === undefined ? {} : { seed: rerunSeed }),
      };
    } finally {
      model.dispose();
    }
  };

  /**
   * Trains `fit` in `rung` (from `rerunSeed`: a finalist's re-run) unless trials.jsonl (finals.jsonl) has it;
   * undefined when the search must stop first (status set).
   */
  const trialOf = async (fit: FittedCandidate, rung: Rung, rerunSeed: number | undefined = undefined): Promise<TrialRecord | undefined> => {
    const finishedTrial = done.get(recordId(candidateKey(fit.candidate), rung, rerunSeed));
    if (finishedTrial !== undefined) return finishedTrial;
    const reason = stopReason() ?? (options.maxNewTrials !== undefined && ran >= options.maxNewTrials ? 'stopped' : undefined);
    if (reason !== undefined) {
      status = reason;
      return undefined;
    }
    let record: TrialRecord;
    try {
      record = await runTrial(fit, rung, rerunSeed);
    } catch (error) {
      if (error instanceof StopSearch) {
        status = error.status;
        return undefined;
      }
      throw error;
    }
    ran++;
    (rerunSeed === undefined ? trials : finals).push(record);
    done.set(record.id, record);
    await writeAll('running');
    options.onEvent?.({ type: 'trial', record, done: done.size, total });
    return record;
  };

  const evolve = async (): Promise<void> => {
    const rung = rungs[0] as Rung;
    const history: EvolvedTrial[] = [];
    // A child one mutation from a tournament's winner, new to this search and within the budget; undefined when
    // 200 tries find none (the population's neighbourhood is exhausted).
    const childOf = (index: number): FittedCandidate | undefined => {
      const random = trialRandom(seed, index);
      for (let attempt = 0; attempt < 200; attempt++) {
        const parent = tournamentParent(random, history, population, sample);
        const fit = fitNew(mutateCandidate(random, parent.candidate));
        if (fit !== undefined) return fit;
      }
      return undefined;
    };
    for (let index = 0; index < requested; index++) {
      const fit = index < candidates.length ? candidates[index] : childOf(index);
      if (fit === undefined) return;
      const record = await trialOf(fit, rung);
      if (record === undefined) return;
      history.push({ candidate: fit.candidate, ranked: rankedOf(record) });
    }
  };

  // Local search: the first P candidates, then every new neighbour of the best trial so far; move to the new
  // best when its neighbourhood is done, stop when the best has been expanded already (a local optimum).
  const searchLocally = async (): Promise<void> => {
    const rung = rungs[0] as Rung;
    const history: TrialRecord[] = [];
    const train = async (fit: FittedCandidate): Promise<boolean> => {
      if (history.length >= requested) return false;
      const record = await trialOf(fit, rung);
      if (record === undefined) return false;
      history.push(record);
      return true;
    };
    for (const fit of candidates) if (!(await train(fit))) return;
    const expanded = new Set<string>();
    for (let centre = bestTrial(history); centre !== undefined && !expanded.has(centre.key); centre = bestTrial(history)) {
      expanded.add(centre.key);
      const random = trialRandom(seed, history.length);
      for (const neighbour of neighbours(centre.candidate as Candidate, random)) {
        const fit = fitNew(neighbour);
        if (fit !== undefined && !(await train(fit))) return;
      }
    }
  };

  const halve = async (): Promise<void> => {
    let keys = candidates.map((c) => candidateKey(c.candidate));
    for (const rung of rungs) {
      if (rung.rung > 0) {
        const previous = trials.filter((t) => t.rung === rung.rung - 1).map(rankedOf);
        keys = promote(previous, rung.trials);
      }
      for (const key of keys) {
        const fit = byKey.get(key);
        if (fit === undefined)
          throw new SearchError(`trials.jsonl promotes candidate ${key}, which this search did not draw`, { path: files.trials, hint: 'Use another --out' });
        if ((await trialOf(fit, rung)) === undefined) return;
      }
    }
  };

  // After the search: the finalists again from the other seeds (only once every rung is done).
  const reevaluate = async (): Promise<void> => {
    const top = rungs.at(-1) as Rung;
    for (const finalist of finalistsOf(trials, finalistCount)) {
      if (finalist.rung !== top.rung) return;
      const fit: FittedCandidate = {
        candidate: finalist.candidate as Candidate,
        size: finalist.size,
        spec: finalist.spec,
        trainableParams: finalist.trainableParams,
      };
      for (const rerunSeed of seeds) if ((await trialOf(fit, top, rerunSeed)) === undefined) return;
    }
  };

  await (method === 'evolution' ? evolve() : method === 'local' ? searchLocally() : halve());
  if (status === 'complete') await reevaluate();
  await writeAll(status);
  const choice = chosen();
  return {
    status,
    rungs,
    trials,
    ran,
    reused: finished.length + finishedFinals.length,
    best: choice?.trial ?? bestTrial(trials),
    bestMean: choice === undefined ? undefined : { accuracy: choice.mean.accuracy, loss: choice.mean.loss, runs: choice.mean.runs },
    finals,
    files,
  };
}
