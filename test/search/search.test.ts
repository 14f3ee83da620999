// `routed-peft search` on the demo base model (3 layers, D=64) with a small file of the demo's tasks:
// every trial's reported trainable count is the exact sum of its model's variables and within the budget;
// a search stopped part-way (AbortSignal mid-trial, a trial limit, the time limit) resumes from trials.jsonl
// without repeating a finished trial and ends where an uninterrupted search ends; the best spec is one
// `routed-peft train --spec` accepts. Tiny proxies (2 and 4 steps), so accuracies are not the point here.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { loadBaseModel } from '../../src/base/checkpoints/load-model.js';
import type { Transformer } from '../../src/base/transformer.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { demoModelDir } from '../../src/demo/run-demo.js';
import { demoHeldOutPrompts, demoSearchJsonl } from '../../src/demo/search-data.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { fitCandidate } from '../../src/search/budget.js';
import fc from 'fast-check';
import { type EvolvedTrial, mutableDimensions, mutateCandidate, tournamentParent } from '../../src/search/evolution.js';
import { compareResults, halvingRungs, promote, rankedOf } from '../../src/search/halving.js';
import { SearchError } from '../../src/search/errors.js';
import { runSearch, type SearchOptions } from '../../src/search/run-search.js';
import {
  type Candidate,
  candidateKey,
  candidateSpec,
  drawCandidate,
  outsideSpace,
  SEARCH_KINDS,
  SHARED_EXPERTS,
  STRATA,
  stratifiedDraws,
} from '../../src/search/space.js';
import { seededRandom } from '../../src/base/sampling.js';
import { neighbours } from '../../src/search/local-search.js';
import { bestByMean, finalistsOf, rerunSeeds } from '../../src/search/reevaluation.js';
import { parseStartCandidates, readStartCandidates } from '../../src/search/start-file.js';
import { readTrials, type TrialRecord } from '../../src/search/trial-log.js';
import { loadTokenizer } from '../../src/tokenizers/load-tokenizer.js';
import type { Tokenizer } from '../../src/tokenizers/tokenizer.js';
import { parseJsonlDataset, type Dataset } from '../../src/train/dataset.js';

const routers = builtinRouters();
const BUDGET = 12_000;

/** A candidate's dimensions (space.ts), flat; a route's fields only when routed. */
function dimensionsOf(c: Candidate): Record<string, unknown> {
  const r = c.routing;
  return {
    kind: c.kind,
    injection: c.injection,
    layers: c.layers,
    budgetShare: c.budgetShare,
    routed: r.kind,
    ...(r.kind === 'route'
      ? { experts: r.experts, router: JSON.stringify(r.router), granularity: r.granularity, placement: r.placement, shared: r.shared }
      : {}),
  };
}

/**
 * Whether `child` is one mutation from `parent`: one dimension changed, plus only the repairs it forces (a new
 * kind's injection, share or granularity; a new route's fields; a router whose k reaches the new expert count).
 */
function isOneMutation(parent: Candidate, child: Candidate): boolean {
  const before = dimensionsOf(parent);
  const after = dimensionsOf(child);
  const changed = Object.keys({ ...before, ...after }).filter((d) => before[d] !== after[d]);
  const onlyAmong = (allowed: readonly string[]): boolean => changed.every((d) => allowed.includes(d));
  if (changed.includes('kind')) return onlyAmong(['kind', 'injection', 'budgetShare', 'granularity', 'shared']);
  if (changed.includes('routed')) return onlyAmong(['routed', 'experts', 'router', 'granularity', 'placement', 'shared']);
  if (changed.includes('experts')) return onlyAmong(['experts', 'router']);
  return changed.length === 1;
}

/** LoRA experts on all seven sites in all layers, routed per sequence by one router for the model (no shared expert). */
function modelRoutedLora(experts: number, router: Record<string, unknown>): Candidate {
  return {
    kind: 'lora',
    injection: 'all-linear',
    layers: 'all',
    budgetShare: 1,
    routing: { kind: 'route', experts, router, granularity: 'sequence', placement: 'model', shared: 'none' },
  };
}

describe('routed-peft search', () => {
  let dir: string;
  let dataPath: string;
  let base: Transformer;
  let tokenizer: Tokenizer;
  let dataset: Dataset;
  let startTensors: number;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-search-'));
    dataPath = join(dir, 'demo.jsonl');
    const text = demoSearchJsonl({ perTask: 10 });
    await writeFile(dataPath, text);
    dataset = parseJsonlDataset(text, dataPath);
    ({ model: base } = await loadBaseModel(demoModelDir()));
    tokenizer = await loadTokenizer(demoModelDir());
    startTensors = tf.memory().numTensors;
  });
  afterAll(async () => {
    expect(tf.memory().numTensors).toBe(startTensors);
    base.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  const options = (outDir: string, extra: Partial<SearchOptions> = {}): SearchOptions => ({
    base,
    tokenizer,
    routers,
    dataset,
    modelPath: demoModelDir(),
    dataPath,
    outDir,
    budget: BUDGET,
    trials: 4,
    eta: 2,
    steps: 4,
    minSteps: 2,
    batchSize: 8,
    maxLength: 32,
    validationExamples: 8,
    ...extra,
  });
  // What a rerun must reproduce exactly (seconds differ by run).
  const identity = (t: TrialRecord): unknown => ({ ...t, seconds: undefined });

  test("the demo search file holds every task and none of the prompts the demo's seeds 0-2 score on", () => {
    const lines = dataset.examples.flatMap((e) => (e.kind === 'prompt-completion' ? [e] : []));
    expect(lines).toHaveLength(40);
    expect(new Set(lines.map((e) => e.task)).size).toBe(4);
    const scored = demoHeldOutPrompts(3);
    expect(lines.filter((e) => scored.has(e.prompt))).toEqual([]);
  });

  test('successive halving: the rung layout, and promotion by accuracy, then loss, then fewer parameters', () => {
    const rungs = (minSteps: number): [number, number][] => halvingRungs({ trials: 27, eta: 3, maxSteps: 100, minSteps }).map((r) => [r.trials, r.steps]);
    expect(rungs(10)).toEqual([
      [27, 11],
      [9, 33],
      [3, 100],
    ]);
    expect(rungs(33)).toEqual([
      [27, 33],
      [9, 100],
    ]);
    expect(rungs(100)).toEqual([[27, 100]]);
    const results = [
      { key: 'a', accuracy: 0, loss: 2.0, trainableParams: 10 },
      { key: 'b', accuracy: 0.1, loss: 3.0, trainableParams: 50 },
      { key: 'c', accuracy: 0, loss: 1.5, trainableParams: 90 },
      { key: 'd', accuracy: 0, loss: 1.5, trainableParams: 20 },
      { key: 'e', accuracy: 0, loss: null, trainableParams: 1 },
    ];
    expect(promote(results, 5)).toEqual(['b', 'd', 'c', 'a', 'e']);
  });

  test('stratified draws give every (kind, routed or not) cell the same number of candidates', () => {
    const draw = stratifiedDraws(seededRandom(7));
    const cells = new Map<string, number>();
    for (let i = 0; i < STRATA.length * 3; i++) {
      const c = draw();
      const cell = `${c.kind}:${c.routing.kind}`;
      cells.set(cell, (cells.get(cell) ?? 0) + 1);
    }
    expect(cells.size).toBe(SEARCH_KINDS.length * 2);
    expect([...cells.values()].every((n) => n === 3)).toBe(true);
  });

  test('each kind, routed or not, fits the largest size within its share, and the count is Σ variable sizes', () => {
    const model = { family: base.config.family, nLayers: base.config.nLayers };
    const routed = { kind: 'route', experts: 2, router: { kind: 'top-k', k: 1 }, granularity: 'sequence', placement: 'layer', shared: 'none' } as const;
    for (const kind of SEARCH_KINDS) {
      const withShared = kind.sharedExpert ? SHARED_EXPERTS.filter((s) => s !== 'none').map((shared) => ({ ...routed, shared })) : [];
      for (const routing of [{ kind: 'none' } as const, routed, ...withShared]) {
        const candidate: Candidate = { kind: kind.kind, injection: (kind.injections[0] as { name: string }).name, layers: 'all', budgetShare: 1, routing };
        const fit = fitCandidate(base, routers, candidate, BUDGET, 0);
        expect(fit, `${kind.kind} ${routing.kind}`).toBeDefined();
        if (fit !== undefined && routing.kind === 'route' && routing.shared !== 'none') {
          // The shared expert sits beside the route, at the experts' size or half of it.
          const adapters = fit.spec['adapters'] as { name: string; [field: string]: unknown }[];
          const sizeField = kind.sizeField as string;
          expect(adapters.map((a) => a.name)).toEqual(['shared', 'e0', 'e1']);
          expect(adapters[0]?.[sizeField]).toBe(routing.shared === 'same' ? fit.size : Math.max(1, Math.round(fit.size / 2)));
          expect(fit.spec['composition']).toMatchObject({ kind: 'parallel', children: ['shared', { kind: 'route', experts: ['e0', 'e1'] }] });
        }
        if (fit === undefined) continue;
        const built = AdaptedModel.create(base, fit.spec, { routers });
        try {
          const sum = built.variables().reduce((s, v) => s + v.shape.reduce((a, b) => a * b, 1), 0);
          expect(fit.trainableParams).toBe(sum);
          expect(fit.trainableParams).toBe(built.parameterReport().trainable);
          expect(fit.trainableParams).toBeLessThanOrEqual(BUDGET);
        } finally {
          built.dispose();
        }
        // Largest: one size more would not fit (unless the kind has no size or is at its cap).
        if (kind.sizeField !== undefined && fit.size < kind.maxSize(base.config.maxSeqLen)) {
          const bigger = AdaptedModel.create(base, candidateSpec(candidate, fit.size + 1, model, 0), { routers });
          try {
            expect(bigger.parameterReport().trainable).toBeGreaterThan(BUDGET);
          } finally {
            bigger.dispose();
          }
        }
      }
    }
  });

  test('the CLI writes every trial, the Pareto front and a best spec that train accepts', async () => {
    const out = join(dir, 'cli');
    const io = createMemoryIo();
    const argv = ['search', '--model', demoModelDir(), '--data', dataPath, '--budget', String(BUDGET), '--out', out];
    const flags = ['--trials', '4', '--eta', '2', '--steps', '4', '--min-steps', '2', '--batch-size', '8', '--max-length', '32', '--validation', '8'];
    expect(await main([...argv, ...flags, '--format', 'json'], io, { routers })).toBe(0);
    const summary = JSON.parse(io.out.trim().split('\n').at(-1) as string) as { status: string; ran: number; best: { id: string } };
    expect(summary).toMatchObject({ status: 'complete', ran: 6 });

    const trials = await readTrials(out);
    // Rungs: 4 candidates × 2 steps, then the best 2 × 4 steps.
    expect(trials.map((t) => [t.rung, t.steps])).toEqual([
      [0, 2],
      [0, 2],
      [0, 2],
      [0, 2],
      [1, 4],
      [1, 4],
    ]);
    for (const t of trials) {
      expect(t.trainableParams).toBeLessThanOrEqual(BUDGET);
      const built = AdaptedModel.create(base, t.spec, { routers });
      try {
        expect(t.trainableParams).toBe(built.variables().reduce((s, v) => s + v.size, 0));
      } finally {
        built.dispose();
      }
      expect(t.validation.examples).toBe(8);
      expect(typeof t.method).toBe('string');
    }
    const pareto = JSON.parse(await readFile(join(out, 'pareto.json'), 'utf8')) as { rungs: { front: { id: string }[] }[]; best: { id: string } };
    expect(pareto.rungs).toHaveLength(2);
    expect(pareto.best.id).toBe(summary.best.id);
    expect(await readFile(join(out, 'pareto.svg'), 'utf8')).toMatch(/^<svg[\s\S]*<circle[\s\S]*<\/svg>\n$/);

    const bestSpec = JSON.parse(await readFile(join(out, 'best-spec.json'), 'utf8')) as unknown;
    expect(bestSpec).toEqual(trials.find((t) => t.id === summary.best.id)?.spec);
    const trainIo = createMemoryIo();
    const train = ['train', '--model', demoModelDir(), '--data', dataPath, '--spec', join(out, 'best-spec.json'), '--out', join(dir, 'trained')];
    expect(await main([...train, '--steps', '2', '--batch-size', '4', '--format', 'json'], trainIo, { routers })).toBe(0);
    expect(trainIo.err).toBe('');

    // Same flags again, on a terminal: everything is finished, nothing runs; the bar shows all trials done.
    const again = createMemoryIo({ isTTY: true });
    expect(await main([...argv, ...flags], again, { routers })).toBe(0);
    expect(again.err).toMatch(/search \|.*\| 6\/6 trials/);
    expect(again.out).toMatch(/^search complete \(0 trials run, 6 resumed\): best /);
    expect((await readTrials(out)).map(identity)).toEqual(trials.map(identity));
  });

  test('stopped mid-trial, then at a trial limit, then at the time limit, it resumes without repeats and ends as an uninterrupted search', async () => {
    const whole = await runSearch(options(join(dir, 'whole')));
    expect(whole.status).toBe('complete');

    const out = join(dir, 'resumed');
    // 1. Abort during the second trial's training: the first is kept, the second is not recorded.
    const controller = new AbortController();
    let trialsStarted = 0;
    const first = await runSearch(
      options(out, {
        signal: controller.signal,
        onEvent: (event) => {
          if (event.type === 'trial-start') trialsStarted++;
          if (event.type === 'step' && trialsStarted === 2) controller.abort();
        },
      }),
    );
    expect(first.status).toBe('stopped');
    expect(first.ran).toBe(1);
    expect(await readTrials(out)).toHaveLength(1);
    const manifest = JSON.parse(await readFile(join(out, 'search.json'), 'utf8')) as { status: string };
    expect(manifest.status).toBe('stopped');

    // 2. Two more trials, then stop.
    const second = await runSearch(options(out, { maxNewTrials: 2 }));
    expect(second).toMatchObject({ status: 'stopped', ran: 2, reused: 1 });

    // 3. A time limit that has passed after the first check (a fake clock: 1 s per reading).
    let ms = 0;
    const third = await runSearch(options(out, { timeLimitSeconds: 2.5, clock: () => (ms += 1000) }));
    expect(third.status).toBe('time-limit');
    expect(third.ran).toBe(0);

    // 4. To the end.
    const last = await runSearch(options(out));
    expect(last).toMatchObject({ status: 'complete', reused: 3, ran: whole.trials.length - 3 });
    const trials = await readTrials(out);
    const ids = trials.map((t) => t.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(trials.map(identity)).toEqual(whole.trials.map(identity));
    expect(last.best?.id).toBe(whole.best?.id);
  });

  test('evolution: a mutation changes exactly one dimension and stays in the space; a tournament returns the best of its sample', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 31 - 1 }), fc.integer({ min: 0, max: 2 ** 31 - 1 }), (drawSeed, mutateSeed) => {
        const parent = drawCandidate(seededRandom(drawSeed));
        expect(mutableDimensions(parent).length).toBeGreaterThan(2);
        expect(outsideSpace(parent)).toBeUndefined();
        const child = mutateCandidate(seededRandom(mutateSeed), parent);
        expect(candidateKey(child)).not.toBe(candidateKey(parent));
        expect(outsideSpace(child)).toBeUndefined();
        // Still a point of the space: its spec builds for the real base.
        expect(() =>
          AdaptedModel.create(base, candidateSpec(child, 2, { family: base.config.family, nLayers: base.config.nLayers }, 0), { routers }).dispose(),
        ).not.toThrow();
        const kind = SEARCH_KINDS.find((k) => k.kind === child.kind);
        if (child.routing.kind === 'route') {
          const k = child.routing.router['k'];
          if (typeof k === 'number') expect(k).toBeLessThan(child.routing.experts);
          if (kind?.sequenceOnly === true) expect(child.routing.granularity).toBe('sequence');
        }
        if (kind?.sizeField === undefined) expect(child.budgetShare).toBe(1);
        expect(isOneMutation(parent, child)).toBe(true);
      }),
      { numRuns: 300 },
    );
    const trial = (key: string, accuracy: number): EvolvedTrial => ({
      candidate: drawCandidate(seededRandom(key.charCodeAt(0))),
      ranked: { key, accuracy, loss: 1, trainableParams: 10 },
    });
    const history = [trial('a', 0.1), trial('b', 0.9), trial('c', 0.5), trial('d', 0.3)];
    // A sample of the whole population always holds the best; the population is the most recent trials only.
    expect(tournamentParent(seededRandom(1), history, 4, 4)).toBe(history[1]);
    expect(tournamentParent(seededRandom(1), history, 2, 2)).toBe(history[2]);
  });

  test('evolution: children of the best of each tournament, all at full steps, resumable without repeats', async () => {
    const evolution = { method: 'evolution' as const, trials: 6, population: 3, sample: 2 };
    const whole = await runSearch(options(join(dir, 'evo-whole'), evolution));
    expect(whole.status).toBe('complete');
    expect(whole.trials).toHaveLength(6);
    expect(whole.rungs).toEqual([{ rung: 0, steps: 4, trials: 6 }]);
    expect(whole.trials.every((t) => t.rung === 0 && t.steps === 4 && t.trainableParams <= BUDGET)).toBe(true);
    expect(new Set(whole.trials.map((t) => t.key)).size).toBe(6);
    // Every trial after the first population is one mutation from a trial before it.
    for (const [i, t] of whole.trials.entries()) {
      if (i < 3) continue;
      const earlier = whole.trials.slice(Math.max(0, i - 3), i);
      const oneAway = earlier.some((p) => isOneMutation(p.candidate as Candidate, t.candidate as Candidate));
      expect(oneAway).toBe(true);
    }
    const manifest = JSON.parse(await readFile(join(dir, 'evo-whole', 'search.json'), 'utf8')) as { settings: Record<string, unknown> };
    expect(manifest.settings).toMatchObject({ method: 'evolution', population: 3, sample: 2 });

    const out = join(dir, 'evo-resumed');
    const first = await runSearch(options(out, { ...evolution, maxNewTrials: 4 }));
    expect(first).toMatchObject({ status: 'stopped', ran: 4 });
    const last = await runSearch(options(out, evolution));
    expect(last).toMatchObject({ status: 'complete', ran: 2, reused: 4 });
    expect((await readTrials(out)).map(identity)).toEqual(whole.trials.map(identity));
    await expect(runSearch(options(out, { ...evolution, sample: 3, population: 4 }))).rejects.toThrow(/other settings \(population 3 → 4, sample 2 → 3\)/);
    await expect(runSearch(options(join(dir, 'evo-bad'), { ...evolution, sample: 4 }))).rejects.toThrow(
      /sample must be a whole number from 1 to the population \(3\), got 4/,
    );
  });

  test('--start: the given candidates train first, are recorded in the settings, and bad ones are refused by name', async () => {
    const handWritten = modelRoutedLora(2, { kind: 'top-k', k: 1 });
    const single: Candidate = { kind: 'lora', injection: 'attn.qv', layers: 'lower', budgetShare: 0.5, routing: { kind: 'none' } };
    const evolution = { method: 'evolution' as const, trials: 4, population: 3, sample: 2, start: [handWritten, single] };
    const out = join(dir, 'evo-start');
    const started = await runSearch(options(out, evolution));
    expect(started.trials.map((t) => t.candidate).slice(0, 2)).toEqual([handWritten, single]);
    // Draws fill the rest of the population; children follow; no candidate twice.
    expect(new Set(started.trials.map((t) => t.key)).size).toBe(4);
    const manifest = JSON.parse(await readFile(join(out, 'search.json'), 'utf8')) as { settings: Record<string, unknown> };
    expect(manifest.settings['start']).toEqual([handWritten, single]);
    expect(await runSearch(options(out, evolution))).toMatchObject({ ran: 0, reused: 4 });
    await expect(runSearch(options(out, { ...evolution, start: [handWritten] }))).rejects.toThrow(/other settings \(start \[/);
    await expect(runSearch(options(out, { method: 'evolution', trials: 4, population: 3, sample: 2 }))).rejects.toThrow(
      /other settings \(start \[.*→ undefined\)/,
    );

    // Halving: the start candidates open the first rung.
    const halving = await runSearch(options(join(dir, 'halving-start'), { start: [single], maxNewTrials: 1 }));
    expect(halving.trials.map((t) => t.candidate)).toEqual([single]);

    const refused = (start: unknown[], extra: Partial<SearchOptions> = {}) =>
      runSearch(options(join(dir, 'start-bad'), { ...evolution, start: start as Candidate[], ...extra }));
    await expect(refused([{ ...single, injection: 'qv' }])).rejects.toThrow(
      /start candidate 0: lora has no injection "qv"; it has "attn.qv", "attn", "mlp", "all-linear" \(at start\[0\]\.injection\)/,
    );
    await expect(refused([single, { ...handWritten, routing: { ...handWritten.routing, experts: 3 } }])).rejects.toThrow(
      /start candidate 1: 3 experts is not one of 2, 4, 8 \(at start\[1\]\.routing\.experts\)/,
    );
    await expect(refused([{ ...handWritten, routing: { ...handWritten.routing, router: { kind: 'top-k', k: 2 } } }])).rejects.toThrow(
      /router \{"kind":"top-k","k":2\} is not one of .* for 2 experts \(at start\[0\]\.routing\.router\)/,
    );
    await expect(refused([{ ...single, budgetShare: 0.3 }])).rejects.toThrow(
      /budgetShare 0.3 is not one of 1, 0.5, 0.25 for lora \(at start\[0\]\.budgetShare\)/,
    );
    await expect(
      refused([{ kind: 'bottleneck', injection: 'houlsby', layers: 'all', budgetShare: 1, routing: { ...handWritten.routing, shared: 'half' } }]),
    ).rejects.toThrow(/shared expert "half" is not one of "none" for bottleneck \(at start\[0\]\.routing\.shared\)/);
    await expect(refused([single, single])).rejects.toThrow(/start candidate 1 repeats start candidate 0 \(at start\[1\]\)/);
    await expect(refused([single, handWritten, { ...single, layers: 'all' }, { ...single, layers: 'upper' }])).rejects.toThrow(
      /4 start candidates do not fit in the first population \(--population 3, --trials 4\)/,
    );
    await expect(refused([handWritten], { budget: 600 })).rejects.toThrow(
      /start candidate 0 \(lora:all-linear:.*\) does not fit its budget share \(600 trainable parameters\)/,
    );
  });

  test('--final-seeds: the finalists train again from other seeds, the best mean wins, and a stopped re-evaluation resumes', async () => {
    const reeval = { method: 'evolution' as const, trials: 4, population: 3, sample: 2, finalSeeds: 3, finalists: 2 };
    const whole = await runSearch(options(join(dir, 'finals-whole'), reeval));
    expect(whole.status).toBe('complete');
    expect(whole.trials).toHaveLength(4);
    // The best 2 of the 4 trials, each from seeds 1 and 2 (the search's seed is 0), on the same validation lines.
    const finalists = [...whole.trials].sort((a, b) => compareResults(rankedOf(a), rankedOf(b))).slice(0, 2);
    expect(whole.finals.map((f) => [f.key, f.seed])).toEqual(
      finalists.flatMap((t) => [
        [t.key, 1],
        [t.key, 2],
      ]),
    );
    for (const f of whole.finals) {
      expect(f.id).toBe(`${finalists.find((t) => t.key === f.key)?.id}@seed${f.seed}`);
      expect(f.spec['seed']).toBe(f.seed);
      expect(f.validation.examples).toBe(8);
    }
    // The best is the finalist with the best mean over its three runs.
    const mean = (t: TrialRecord): number => [t, ...whole.finals.filter((f) => f.key === t.key)].reduce((s, r) => s + r.validation.accuracy, 0) / 3;
    const means = finalists.map(mean);
    expect(whole.bestMean?.accuracy).toBeCloseTo(Math.max(...means), 12);
    expect(whole.bestMean?.runs).toBe(3);
    expect(mean(whole.best as TrialRecord)).toBe(Math.max(...means));
    const bestSpec = JSON.parse(await readFile(join(dir, 'finals-whole', 'best-spec.json'), 'utf8')) as unknown;
    expect(bestSpec).toEqual(whole.best?.spec);
    const manifest = JSON.parse(await readFile(join(dir, 'finals-whole', 'search.json'), 'utf8')) as { best: string; bestMean: { runs: number } };
    expect(manifest).toMatchObject({ best: whole.best?.id, bestMean: { runs: 3 } });
    // Re-runs stay out of trials.jsonl (one point per design in the fronts).
    expect(await readTrials(join(dir, 'finals-whole'))).toHaveLength(4);

    // Stopped in the middle of the re-runs, it resumes without repeating one and ends the same.
    const out = join(dir, 'finals-resumed');
    expect(await runSearch(options(out, { ...reeval, maxNewTrials: 5 }))).toMatchObject({ status: 'stopped', ran: 5, bestMean: undefined });
    const last = await runSearch(options(out, reeval));
    expect(last).toMatchObject({ status: 'complete', ran: 3, reused: 5 });
    expect((await readTrials(out, 'finals.jsonl')).map(identity)).toEqual(whole.finals.map(identity));
    expect(last.best?.id).toBe(whole.best?.id);
    // The re-runs may change on resume: more seeds or finalists add runs, fewer use the ones there.
    const more = await runSearch(options(out, { ...reeval, finalSeeds: 4, finalists: 3 }));
    expect(more).toMatchObject({ status: 'complete', ran: 3 + 2, bestMean: { runs: 4 } });
    expect(more.finals).toHaveLength(3 * 3);
    const fewer = await runSearch(options(out, { ...reeval, finalSeeds: 2 }));
    expect(fewer).toMatchObject({ status: 'complete', ran: 0, bestMean: { runs: 2 } });
    expect(await runSearch(options(out, { ...reeval, finalSeeds: 1 }))).toMatchObject({ ran: 0, bestMean: undefined });
    await expect(runSearch(options(join(dir, 'finals-bad'), { ...reeval, finalSeeds: 0 }))).rejects.toThrow(/finalSeeds must be a whole number ≥ 1, got 0/);
  });

  test('re-evaluation picks the best mean, not the luckiest single run, and waits for every re-run', () => {
    const record = (key: string, accuracy: number, seed?: number): TrialRecord => ({
      type: 'trial',
      id: seed === undefined ? `${key}@rung0` : `${key}@rung0@seed${seed}`,
      key,
      method: 'lora',
      rung: 0,
      steps: 4,
      candidate: { kind: 'lora', injection: 'attn', layers: 'all', budgetShare: 1, routing: { kind: 'none' } },
      size: 4,
      spec: { adapters: [] },
      trainableParams: 100,
      validation: { accuracy, loss: 1 - accuracy, examples: 8, tasks: {} },
      seconds: 1,
      ...(seed === undefined ? {} : { seed }),
    });
    const trials = [record('lucky', 0.9), record('steady', 0.8), record('third', 0.5)];
    const finals = [record('lucky', 0.1, 1), record('lucky', 0.2, 2), record('steady', 0.8, 1), record('steady', 0.7, 2)];
    expect(finalistsOf(trials, 2).map((t) => t.key)).toEqual(['lucky', 'steady']);
    const choice = bestByMean(trials, finals, 2, rerunSeeds(0, 3));
    expect(choice?.trial.key).toBe('steady');
    expect(choice?.mean).toMatchObject({ runs: 3, trainableParams: 100 });
    expect(choice?.mean.accuracy).toBeCloseTo(0.7667, 4);
    expect(bestByMean(trials, finals.slice(0, 3), 2, rerunSeeds(0, 3))).toBeUndefined();
    expect(bestByMean(trials, [], 2, rerunSeeds(0, 1))).toBeUndefined();
    expect(rerunSeeds(7, 3)).toEqual([8, 9]);
  });

  test('--start files: one candidate or an array; not JSON or a malformed candidate is refused with its place', async () => {
    const one = { kind: 'ia3', injection: 'kv-down', layers: 'all', budgetShare: 1, routing: { kind: 'none' } };
    expect(parseStartCandidates(JSON.stringify(one), 'one.json')).toEqual([one]);
    expect(parseStartCandidates(JSON.stringify([one, { ...one, layers: 'upper' }]), 'two.json')).toHaveLength(2);
    expect(() => parseStartCandidates('{"kind":', 'bad.json')).toThrow(/--start bad.json is not JSON/);
    expect(() => parseStartCandidates('[]', 'empty.json')).toThrow(/--start empty.json holds no candidate/);
    expect(() => parseStartCandidates(JSON.stringify([one, { ...one, layers: 'middle' }]), 'f.json')).toThrow(/--start f.json at \[1\]\.layers: /);
    expect(() => parseStartCandidates(JSON.stringify({ ...one, rank: 4 }), 'f.json')).toThrow(/--start f.json: .*rank/);

    const file = join(dir, 'start-bad.json');
    await writeFile(file, JSON.stringify({ ...one, injection: 'everywhere' }));
    const io = createMemoryIo();
    const argv = ['search', '--model', demoModelDir(), '--data', dataPath, '--budget', String(BUDGET), '--out', join(dir, 'cli-start'), '--start', file];
    expect(await main(argv, io, { routers })).not.toBe(0);
    expect(io.err).toMatch(/ia3 has no injection "everywhere"; it has "kv-down", "all-linear" \(at start\[0\]\.injection\)/);
    await expect(readStartCandidates(join(dir, 'missing.json'))).rejects.toThrow(/cannot read --start .*missing.json/);
  });

  test('local search: every neighbour is one change away and in the space; the hand-written point has all its routing neighbours', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 31 - 1 }), (drawSeed) => {
        const parent = drawCandidate(seededRandom(drawSeed));
        const around = neighbours(parent, seededRandom(drawSeed + 1));
        expect(around.length).toBeGreaterThan(3);
        expect(new Set(around.map(candidateKey)).size).toBe(around.length);
        for (const child of around) {
          expect(outsideSpace(child)).toBeUndefined();
          expect(isOneMutation(parent, child)).toBe(true);
        }
      }),
      { numRuns: 200 },
    );
    const handWritten = modelRoutedLora(4, { kind: 'top-k', k: 2 }); // the demo's hand-written point
    const keys = neighbours(handWritten, seededRandom(0)).map(candidateKey);
    const base = 'lora:all-linear:layers-all:share-1:route';
    expect(keys).toEqual(
      expect.arrayContaining([
        `${base}:E4:top-k:k2:sequence:model:shared-half`,
        `${base}:E4:top-k:k2:sequence:model:shared-same`,
        `${base}:E4:top-k:k2:sequence:site`,
        `${base}:E4:top-k:k2:token:model`,
        `${base}:E4:soft:sequence:model`,
        `${base}:E2:top-k:k1:sequence:model`,
        `${base}:E2:soft:sequence:model`,
        `${base}:E8:top-k:k2:sequence:model`,
        'lora:all-linear:layers-all:share-1:single',
        'adalora:all-linear:layers-all:share-1:route:E4:top-k:k2:sequence:model',
        'bottleneck:pfeiffer:layers-all:share-1:route:E4:top-k:k2:sequence:model',
        'bottleneck:houlsby:layers-all:share-1:route:E4:top-k:k2:sequence:model',
      ]),
    );
    expect(keys).not.toContain(`${base}:E2:top-k:k2:sequence:model`); // k must stay below E
  });

  test('local search: the first P trials, then the neighbours of the best so far; resumable without repeats', async () => {
    const local = { method: 'local' as const, trials: 6, population: 2 };
    const whole = await runSearch(options(join(dir, 'local-whole'), local));
    expect(whole.status).toBe('complete');
    expect(whole.trials.length).toBeGreaterThan(2);
    expect(whole.trials.length).toBeLessThanOrEqual(6);
    expect(new Set(whole.trials.map((t) => t.key)).size).toBe(whole.trials.length);
    // After the first two, each trial is a neighbour of the best trial before it, or of an earlier best.
    for (const [i, t] of whole.trials.entries()) {
      if (i < 2) continue;
      expect(whole.trials.slice(0, i).some((p) => isOneMutation(p.candidate as Candidate, t.candidate as Candidate))).toBe(true);
    }
    const manifest = JSON.parse(await readFile(join(dir, 'local-whole', 'search.json'), 'utf8')) as { settings: Record<string, unknown> };
    expect(manifest.settings).toMatchObject({ method: 'local', population: 2 });
    expect(manifest.settings['sample']).toBeUndefined();

    const out = join(dir, 'local-resumed');
    expect(await runSearch(options(out, { ...local, maxNewTrials: 3 }))).toMatchObject({ status: 'stopped', ran: 3 });
    const last = await runSearch(options(out, local));
    expect(last).toMatchObject({ status: 'complete', reused: 3 });
    expect((await readTrials(out)).map(identity)).toEqual(whole.trials.map(identity));
  });

  test('a resumed search with other settings, or a budget nothing fits, is refused by name', async () => {
    const out = join(dir, 'whole');
    await expect(runSearch(options(out, { budget: BUDGET + 1 }))).rejects.toThrow(/other settings \(budget 12000 → 12001\)/);
    // A search of the space before shared experts (its settings have no version) is not resumed.
    const old = join(dir, 'space-1');
    await runSearch(options(old, { maxNewTrials: 1 }));
    const manifestPath = join(old, 'search.json');
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as { settings: Record<string, unknown> };
    expect(manifest.settings['space']).toBe(2);
    delete manifest.settings['space'];
    await writeFile(manifestPath, JSON.stringify(manifest));
    await expect(runSearch(options(old, { maxNewTrials: 1 }))).rejects.toThrow(/holds a search of search space version 1; this version searches space 2/);
    await expect(runSearch(options(join(dir, 'tiny'), { budget: 10 }))).rejects.toThrow(SearchError);
    await expect(runSearch(options(join(dir, 'tiny'), { budget: 10 }))).rejects.toThrow(/no candidate of the search space fits --budget 10/);
  });
});
