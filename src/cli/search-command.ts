/**
 * `routed-peft search`: architecture search over injection sites × adapter kind × size × routing by
 * successive halving or regularized evolution with short proxy trainings, inside an exact trainable budget (src/search/). Writes
 * every trial (trials.jsonl), the Pareto front (pareto.json, pareto.svg), the best spec (best-spec.json,
 * what `train --spec` reads) and the search's settings and status (search.json) to --out after every trial;
 * run again with the same flags to resume. Stops at --time-limit (or Ctrl-C) with the best so far.
 */
import { resolve } from 'node:path';
import { SingleBar } from 'cli-progress';
import { RoutedPeftError, UsageError } from '../errors.js';
import { checkOutputDirectory } from '../formats/output.js';
import { EVOLUTION_DEFAULTS } from '../search/evolution.js';
import { SEARCH_METHODS, runSearch, type SearchEvent } from '../search/run-search.js';
import { readStartCandidates } from '../search/start-file.js';
import { readJsonlDataset } from '../train/dataset-file.js';
import { MAX_LEARNING_RATE } from '../train/param-groups.js';
import { optional, parseStrict, toChoice, toInt, toNumber } from './args.js';
import type { CliCommand, CliContext } from './command.js';
import type { CliIo } from './io.js';
import { MODEL_FLAGS, MODEL_USAGE, loadCliModel } from './model-options.js';
import { terminalStream } from './train-command.js';

const usage = `Usage: routed-peft search --model PATH [--tokenizer PATH] --data FILE.jsonl --budget N --out DIR
                        [--method halving|evolution|local] [--trials N] [--eta N] [--steps N] [--min-steps N]
                        [--population N] [--sample N] [--start FILE] [--final-seeds N] [--finalists N]
                        [--time-limit S]
                        [--batch-size N] [--lr X] [--router-lr X] [--max-length N] [--validation N]
                        [--seed S] [--format text|json]

Search where to inject which adapter (lora, bottleneck, prefix, ia3), of which size, with which routing
(none, or E experts with a top-k / noisy top-k / soft router per token or sequence, per site, layer or
model), inside a budget of trainable parameters. Successive halving (Jamieson & Talwalkar 2016): --trials
candidates train for a short proxy; the best 1/eta of each rung train again for eta times as many steps, up
to --steps. Regularized evolution (Real et al. 2019): --population draws, then children one change away
from the best of --sample of the --population most recent trials, --trials in all, each for --steps. Local
search (White et al. 2021): --population trials, then every one-change neighbour of the best so far, moving
while the best changes, up to --trials. Each trial is scored by exact match of greedy completions on
held-out prompt/completion lines.

Options:
${MODEL_USAGE}
  --data FILE          Training data (JSONL) with {"prompt", "completion"} lines; up to --validation of
                       them (at most a fifth) are held out to score the trials
  --budget N           Most trainable parameters (adapters + routers, counted exactly) of any candidate
  --out DIR            Search directory: trials.jsonl, pareto.json, pareto.svg, best-spec.json, search.json.
                       Running again with the same flags resumes it, skipping finished trials
  --method M           halving (default), evolution or local
  --trials N           Halving: candidates in the first rung; evolution, local: trials in all (default 27)
  --eta N              Halving: keep the best 1/eta of each rung (default 3)
  --steps N            Optimizer steps of the last rung; evolution, local: of every trial (default 100)
  --min-steps N        Halving: fewest steps of the first rung (default 10; fewer rungs if needed)
  --population N       Evolution: the most recent trials parents are drawn from; local: the trials it
                       starts from, --start's and draws (default 10)
  --sample N           Evolution: trials drawn per tournament, at most --population (default 3)
  --start FILE         Candidates to train first, e.g. a design to improve on: one candidate object or an
                       array of them, as the "candidate" fields of trials.jsonl; they open the first rung
                       (halving) or the first population (evolution, local)
  --final-seeds N      Train the finalists N times in all (from seeds S+1 … S+N-1 besides the search's);
                       the best mean wins. Default 1: each trial once, the best single score wins
  --finalists N        Trials re-run by --final-seeds: the best N of the last rung (default 3)
  --time-limit S       Stop after S seconds with the best so far (a trial in training is abandoned)
  --batch-size N       Examples per step (default 16)
  --lr X               Peak learning rate of every trial's adapters (default 1e-2)
  --router-lr X        Peak learning rate of the routers (default: --lr)
  --max-length N       Longest example in tokens (default 128, at most the model's)
  --validation N       Most held-out lines (default 200)
  --seed S             Seeds the draws, the split, every init and the batch order (default 0)
  --format text|json   Progress bar and a text summary on a terminal (text), or JSON lines: one
                       {"type":"trial",...} per trial and a {"type":"summary",...} line
`;

function trialLine(event: Extract<SearchEvent, { type: 'trial' }>): string {
  const r = event.record;
  return JSON.stringify({
    type: 'trial',
    done: event.done,
    total: event.total,
    id: r.id,
    rung: r.rung,
    steps: r.steps,
    trainableParams: r.trainableParams,
    accuracy: r.validation.accuracy,
    seconds: r.seconds,
  });
}

export const searchCommand: CliCommand = {
  name: 'search',
  summary: 'Search adapter kind, sites, size and routing within a trainable budget (successive halving, evolution or local search)',
  usage,
  async run(args: string[], io: CliIo, context: CliContext): Promise<number> {
    const { values } = parseStrict(args, {
      ...MODEL_FLAGS,
      data: { type: 'string' },
      budget: { type: 'string' },
      out: { type: 'string' },
      method: { type: 'string', default: 'halving' },
      trials: { type: 'string', default: '27' },
      population: { type: 'string', default: String(EVOLUTION_DEFAULTS.population) },
      sample: { type: 'string', default: String(EVOLUTION_DEFAULTS.sample) },
      eta: { type: 'string', default: '3' },
      steps: { type: 'string', default: '100' },
      'min-steps': { type: 'string', default: '10' },
      start: { type: 'string' },
      'final-seeds': { type: 'string', default: '1' },
      finalists: { type: 'string', default: '3' },
      'time-limit': { type: 'string' },
      'batch-size': { type: 'string', default: '16' },
      lr: { type: 'string', default: '0.01' },
      'router-lr': { type: 'string' },
      'max-length': { type: 'string' },
      validation: { type: 'string', default: '200' },
      seed: { type: 'string', default: '0' },
      format: { type: 'string', default: 'text' },
    });
    const format = toChoice('format', values.format, ['text', 'json'] as const);
    if (values.model === undefined) throw new UsageError('--model is required');
    if (values.data === undefined) throw new UsageError('--data is required');
    if (values.budget === undefined) throw new UsageError('--budget is required');
    if (values.out === undefined) throw new UsageError('--out is required');
    const budget = toInt('budget', values.budget, { min: 1 });
    const method = toChoice('method', values.method, SEARCH_METHODS);
    const trials = toInt('trials', values.trials, { min: 1 });
    const population = toInt('population', values.population, { min: 1 });
    const sample = toInt('sample', values.sample, { min: 1 });
    if (method === 'evolution' && sample > population)
      throw new UsageError(`--sample ${sample} exceeds --population ${population}; a tournament draws from the population`);
    const finalSeeds = toInt('final-seeds', values['final-seeds'], { min: 1 });
    const finalists = toInt('finalists', values.finalists, { min: 1 });
    const eta = toInt('eta', values.eta, { min: 2 });
    const steps = toInt('steps', values.steps, { min: 1 });
    const minSteps = toInt('min-steps', values['min-steps'], { min: 1 });
    const timeLimit = optional(values['time-limit'], (raw) => toNumber('time-limit', raw, { min: 0, minExclusive: true }), undefined);
    const batchSize = toInt('batch-size', values['batch-size'], { min: 1 });
    const lr = toNumber('lr', values.lr, { min: 0, minExclusive: true, max: MAX_LEARNING_RATE });
    const routerLr = optional(values['router-lr'], (raw) => toNumber('router-lr', raw, { min: 0, minExclusive: true, max: MAX_LEARNING_RATE }), lr);
    const maxLengthFlag = optional(values['max-length'], (raw) => toInt('max-length', raw, { min: 2 }), undefined);
    const validation = toInt('validation', values.validation, { min: 1 });
    const seed = toInt('seed', values.seed);
    if (context.routers === undefined) {
      throw new RoutedPeftError('the search needs the built-in routers', {
        hint: "Run it through bin/routed-peft.js, or pass { routers: builtinRouters() } (from 'routed-peft/routers') to main()",
      });
    }
    await checkOutputDirectory(values.out, { what: '--out' });
    const start = values.start === undefined ? [] : await readStartCandidates(values.start);
    const dataset = await readJsonlDataset(values.data);
    for (const problem of dataset.problems) io.stderr(`warning: ${values.data}: line ${problem.line} skipped: ${problem.message}\n`);

    const loaded = await loadCliModel(values);
    const controller = new AbortController();
    const onSignal = (): void => controller.abort();
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    let bar: SingleBar | undefined;
    try {
      const tokenizer = loaded.tokenizer;
      if (tokenizer === undefined) throw new UsageError('the search trains: pass --tokenizer PATH');
      const maxSeqLen = loaded.model.config.maxSeqLen;
      const maxLength = maxLengthFlag ?? Math.min(128, maxSeqLen);
      if (maxLength > maxSeqLen) throw new UsageError(`--max-length ${maxLength} exceeds the model's context of ${maxSeqLen} tokens`);
      const useBar = io.isTTY && format === 'text';
      let current = '';
      let bestAccuracy: number | undefined;
      const result = await runSearch({
        base: loaded.model,
        tokenizer,
        routers: context.routers,
        dataset,
        modelPath: resolve(values.model),
        dataPath: resolve(values.data),
        outDir: values.out,
        budget,
        method,
        trials,
        population,
        sample,
        start,
        finalSeeds,
        finalists,
        eta,
        steps,
        minSteps,
        batchSize,
        maxLength,
        lr,
        routerLr,
        seed,
        validationExamples: validation,
        ...(timeLimit === undefined ? {} : { timeLimitSeconds: timeLimit }),
        signal: controller.signal,
        onEvent: (event) => {
          if (event.type === 'plan') {
            const plan = event.rungs.map((r) => `${r.trials}×${r.steps} steps`).join(' → ');
            io.stderr(
              `search: ${event.candidates} candidates within ${budget} trainable parameters; rungs ${plan}; ${event.finished} trial(s) already finished\n`,
            );
            if (useBar) {
              bar = new SingleBar({
                stream: terminalStream(io),
                format: 'search |{bar}| {value}/{total} trials | best {best} | {current}',
                hideCursor: true,
                clearOnComplete: false,
              });
              bar.start(event.total, event.finished, { best: '-', current: '' });
            }
          } else if (event.type === 'trial-start') {
            current = `rung ${event.rung}: ${event.trainableParams} params, ${event.steps} steps`;
            bar?.update({ current });
          } else if (event.type === 'trial') {
            const accuracy = event.record.validation.accuracy;
            if (bestAccuracy === undefined || accuracy > bestAccuracy) bestAccuracy = accuracy;
            if (bar !== undefined) bar.update(event.done, { best: `${(bestAccuracy * 100).toFixed(1)}%`, current });
            else io.stdout(`${trialLine(event)}\n`);
          }
        },
      });
      bar?.stop();
      bar = undefined;
      const best = result.best;
      const summary = {
        type: 'summary',
        status: result.status,
        out: values.out,
        ran: result.ran,
        reused: result.reused,
        trials: result.trials.length,
        best:
          best === undefined
            ? null
            : {
                id: best.id,
                method: best.method,
                trainableParams: best.trainableParams,
                accuracy: best.validation.accuracy,
                steps: best.steps,
                ...(result.bestMean === undefined ? {} : { meanAccuracy: result.bestMean.accuracy, runs: result.bestMean.runs }),
              },
        files: result.files,
      };
      if (useBar) {
        const line =
          best === undefined
            ? 'no trial finished'
            : `best ${best.id}: accuracy ${(best.validation.accuracy * 100).toFixed(1)}%${
                result.bestMean === undefined ? '' : ` (mean of ${result.bestMean.runs} seeds ${(result.bestMean.accuracy * 100).toFixed(1)}%)`
              } at ${best.steps} steps, ${best.trainableParams} trainable parameters`;
        io.stdout(`search ${result.status} (${result.ran} trials run, ${result.reused} resumed): ${line}\nbest spec: ${result.files.bestSpec}\n`);
      } else {
        io.stdout(`${JSON.stringify(summary)}\n`);
      }
      return 0;
    } finally {
      bar?.stop();
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      loaded.model.dispose();
    }
  },
};
