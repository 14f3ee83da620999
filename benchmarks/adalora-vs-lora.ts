/**
 * AdaLoRA against uniform LoRA at an equal final budget, on the demo's four tasks (issue #17's Show item):
 *
 *   lora     one LoRA of rank r on every site the demo adapts, in every layer (total rank r × modules)
 *   adalora  one AdaLoRA adapter on the same sites, starting at rank 1.5·r per module (the AdaLoRA paper's
 *            b⁰ = 1.5·bᵀ) with targetR = r, so its budget ends at the same total rank r × modules
 *
 * Both train through the demo's own functions (run-demo.ts: the same batches in the same order, the same
 * Trainer, AdamW, LR schedule, clipping and steps) from the same seeds, and are scored as the demo scores
 * its setups: greedy exact-match accuracy per task on the held-out prompts. After training the budget is
 * checked: the AdaLoRA's live triplets must equal the LoRA's total rank (an error otherwise), and both
 * parameter counts are printed — the LoRA's from parameterReport(), the AdaLoRA's as the plain LoRA it
 * exports to (adaloraToLora), counted the same way. Triplets are the budget AdaLoRA allocates; a site's
 * triplet costs O + I parameters, so moving rank between sites of different widths moves the parameter
 * count too (reported, not hidden).
 *
 *   node --import tsx benchmarks/adalora-vs-lora.ts            3 seeds (0, 1, 2), the demo's full sizes
 *   node --import tsx benchmarks/adalora-vs-lora.ts --quick    a smoke run: 1 seed, 20 steps, few prompts
 *   node --import tsx benchmarks/adalora-vs-lora.ts --variant NAME --seeds 0,1,2   another schedule (VARIANTS)
 *   npm run bench -- --only adalora-vs-lora
 *
 * Writes benchmarks/results/adalora-vs-lora.json (results/quick/ for --quick).
 */
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../routers/index.js';
import { adaloraRanks, adaloraToLora, type AdaloraRankReport } from '../src/adapters/adalora/export.js';
import type { ModelConfig } from '../src/base/config.js';
import { loadBaseModel } from '../src/base/checkpoints/load-model.js';
import { siteShape } from '../src/base/site-shape.js';
import type { SiteName } from '../src/base/sites.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import { loadTokenizer } from '../src/tokenizers/load-tokenizer.js';
import type { Tokenizer } from '../src/tokenizers/tokenizer.js';
import {
  DEMO_ADAPTERS,
  FULL_SIZES,
  QUICK_SIZES,
  accuracyOf,
  demoModelDir,
  prepare,
  serve,
  trainSetup,
  type DemoSizes,
  type TaskAccuracy,
} from '../src/demo/run-demo.js';
import { DEMO_TASKS } from '../src/demo/tasks.js';
import { assertNoLeak, isMain, machineInfo, parseArgs, round, useBackend, writeResult, type BenchArgs, type BenchResult } from './lib/harness.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const SEEDS = { full: [0, 1, 2], quick: [0] };
/** The quick run's sizes: a smoke test of the whole path, not a measurement. */
const QUICK: Partial<DemoSizes> = { steps: 20, trainPerTask: 40, batchSize: 16, evalPerTask: 8, evalBatch: 32 };
/** r: the uniform LoRA's rank, the demo's per-expert rank. */
const RANK = DEMO_ADAPTERS.rank;
/** AdaLoRA's schedule as fractions of the run's steps T (rounded to whole steps), and its other settings. */
export interface AdaloraSchedule {
  readonly tinit: number;
  readonly tfinal: number;
  readonly deltaT: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly orthWeight: number;
  /** The AdaLoRA arm's peak learning rate as a multiple of the demo's. */
  readonly lrScale: number;
  /** The LoRA arm's peak learning rate as a multiple of the demo's. */
  readonly loraLrScale: number;
  /** AdaLoRA's initR as a multiple of r (the paper's b⁰ = 1.5·bᵀ: a third of the triplets are pruned; 1: none). */
  readonly initRankScale: number;
}
/**
 * The schedules the benchmark can run (`--variant NAME`; the first is the default):
 *
 * paper-defaults
 *  - tinit 0.1·T: past the demo's 5-step LR warm-up, and long enough for the β = 0.85 EMAs (a memory of
 *    ~7 steps) to hold a score worth pruning on;
 *  - tfinal 0.3·T: the last 30 steps fine-tune the final allocation (the cosine LR is still ~⅓ of its peak);
 *  - deltaT 0.05·T: 12 allocations over the 60 budgeting steps, each pruning a few triplets, so a triplet
 *    pruned early on a noisy score can come back;
 *  - betas 0.85 and orthWeight 0.1, the paper's (and PEFT's) defaults; the demo's learning rate.
 *
 * late-pruning: the same with pruning starting at 0.3·T and the allocation fixed at 0.8·T, so the scores
 * are taken on an adapter that has already learned something (AdaLoRA's Λ = 0, P, Q ~ N(0, 0.02²) start
 * makes it learn slowly at first).
 *
 * no-pruning: an ablation, AdaLoRA with initR = targetR = r, so nothing is pruned and every module keeps
 * rank r, as the LoRA: the SVD form and its regulariser without the budget allocation.
 *
 * tuned-lr: paper-defaults, with each arm at its own best peak learning rate, chosen on a seed that is not
 * reported (seed 9) from the multiples of the demo's 1e-2: LoRA from {0.5, 1, 2, 3, 5} (2 best; 3 and 5
 * diverge), AdaLoRA from {1, 2, 3, 5, 8} (3 best). AdaLoRA's update s·P·diag(Λ)·Q is a product of three
 * factors that start at 0, 0.02 and 0.02 (LoRA's is two: 0 and a Kaiming-scale A), so at one Adam step size
 * it moves far slower in the first steps, and the two kinds need not share a learning rate.
 */
export const VARIANTS: Readonly<Record<string, AdaloraSchedule>> = {
  'paper-defaults': { tinit: 0.1, tfinal: 0.3, deltaT: 0.05, beta1: 0.85, beta2: 0.85, orthWeight: 0.1, lrScale: 1, loraLrScale: 1, initRankScale: 1.5 },
  'late-pruning': { tinit: 0.3, tfinal: 0.2, deltaT: 0.05, beta1: 0.85, beta2: 0.85, orthWeight: 0.1, lrScale: 1, loraLrScale: 1, initRankScale: 1.5 },
  'no-pruning': { tinit: 0.1, tfinal: 0.3, deltaT: 0.05, beta1: 0.85, beta2: 0.85, orthWeight: 0.1, lrScale: 1, loraLrScale: 1, initRankScale: 1 },
  'tuned-lr': { tinit: 0.1, tfinal: 0.3, deltaT: 0.05, beta1: 0.85, beta2: 0.85, orthWeight: 0.1, lrScale: 3, loraLrScale: 2, initRankScale: 1.5 },
};
// ---------------------------------------------------------------------------------------------------------

export type ArmName = 'lora' | 'adalora';
export const ARMS: readonly ArmName[] = ['lora', 'adalora'];

/** The two specs of one seed (plain JSON): uniform LoRA of rank `rank`, AdaLoRA from `initRank` down to `rank`. */
export function armSpecs(options: {
  readonly seed: number;
  readonly steps: number;
  readonly sites: readonly SiteName[];
  readonly rank: number;
  readonly initRank: number;
  /** LoRA's alpha; AdaLoRA gets alpha · initRank / rank so both start with the same scale alpha / r. */
  readonly alpha: number;
  readonly schedule: AdaloraSchedule;
}): Record<ArmName, Record<string, unknown>> {
  const { seed, steps, sites, rank, initRank, alpha, schedule } = options;
  const targets = { sites: [...sites], layers: 'all' };
  const whole = (fraction: number, min: number): number => Math.max(min, Math.round(fraction * steps));
  return {
    lora: { seed, adapters: [{ kind: 'lora', name: 'lora', r: rank, alpha, targets }] },
    adalora: {
      seed,
      adapters: [
        {
          kind: 'adalora',
          name: 'adalora',
          initR: initRank,
          targetR: rank,
          alpha: (alpha * initRank) / rank,
          targets,
          tinit: whole(schedule.tinit, 0),
          tfinal: whole(schedule.tfinal, 0),
          deltaT: whole(schedule.deltaT, 1),
          beta1: schedule.beta1,
          beta2: schedule.beta2,
          orthWeight: schedule.orthWeight,
          totalSteps: steps,
        },
      ],
    },
  };
}

/** The final budgets of both arms: equal total rank (checked), both parameter counts as parameterReport() counts. */
export interface BudgetCheck {
  /** Σ r over the LoRA's modules. */
  readonly loraTotalRank: number;
  /** Live triplets of the trained AdaLoRA. */
  readonly adaloraTotalRank: number;
  /** The LoRA model's parameterReport().trainable. */
  readonly loraParameters: number;
  /** parameterReport().trainable of a model holding only the AdaLoRA's export (its live triplets as a plain LoRA). */
  readonly adaloraParameters: number;
  /** What the AdaLoRA held while training (P, Λ, Q at the initial rank). */
  readonly adaloraTrainingParameters: number;
  readonly ranks: AdaloraRankReport;
}

/** Σ r · (O + I) of a LoRA of rank `rank` on `sites` of every layer (what parameterReport() counts for it). */
export function uniformLoraParameters(config: ModelConfig, sites: readonly SiteName[], rank: number): number {
  return config.nLayers * sites.reduce((s, site) => s + rank * siteShape(config, site).reduce((a, b) => a + b, 0), 0);
}

/**
 * Compares the trained AdaLoRA's final budget with the LoRA's; throws when the live triplets differ from the
 * LoRA's total rank (then the comparison would not be at an equal budget).
 */
export function checkBudgets(lora: AdaptedModel, adalora: AdaptedModel): BudgetCheck {
  const loraInstance = lora.adapters.get('lora');
  const adaloraInstance = adalora.adapters.get('adalora');
  if (loraInstance === undefined || adaloraInstance === undefined) throw new Error('checkBudgets: the models must hold adapters "lora" and "adalora"');
  const loraTotalRank = [...loraInstance.modules.values()].reduce((s, m) => s + ((m as { rank?: number }).rank ?? 0), 0);
  const ranks = adaloraRanks(adaloraInstance);
  if (ranks.totalRank !== loraTotalRank) {
    throw new Error(`AdaLoRA ended with ${ranks.totalRank} live triplets, the LoRA has total rank ${loraTotalRank}: the budgets differ`);
  }
  // The export's spec (rank_pattern included) built into a model of its own, counted by its parameter report.
  const exported = adaloraToLora(adaloraInstance, lora.base.config);
  let adaloraParameters: number;
  try {
    const model = AdaptedModel.create(lora.base, { adapters: [exported.spec] }, {});
    try {
      adaloraParameters = model.parameterReport().trainable;
    } finally {
      model.dispose();
    }
  } finally {
    exported.dispose();
  }
  return {
    loraTotalRank,
    adaloraTotalRank: ranks.totalRank,
    loraParameters: lora.parameterReport().trainable,
    adaloraParameters,
    adaloraTrainingParameters: adalora.parameterReport().trainable,
    ranks,
  };
}

interface SeedResult {
  readonly seed: number;
  readonly accuracy: Record<ArmName, TaskAccuracy>;
  readonly finalLoss: Record<ArmName, number | null>;
  readonly trainSeconds: Record<ArmName, number>;
  readonly budget: Omit<BudgetCheck, 'ranks'>;
  /** `layers.<l>.<site>` → final rank. */
  readonly adaloraRanks: Record<string, number>;
}

const percent = (value: number): string => `${(value * 100).toFixed(1)}`;
const TASK_NAMES = DEMO_TASKS.map((t) => t.name);

function tableLines(title: string, rows: readonly { name: string; accuracy: Readonly<Record<string, number>> }[]): string[] {
  const header = ['arm', ...TASK_NAMES, 'mean'];
  const body = rows.map((r) => [r.name, ...TASK_NAMES.map((t) => percent(r.accuracy[t] ?? 0)), percent(r.accuracy['mean'] ?? 0)]);
  const widths = header.map((h, c) => Math.max(h.length, ...body.map((b) => (b[c] ?? '').length)));
  const line = (cells: readonly string[]): string => cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c] ?? 0) : cell.padStart(widths[c] ?? 0))).join('  ');
  return [title, line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)];
}

/** Final ranks as a layer × site grid (one line per layer). */
function rankGrid(ranks: AdaloraRankReport, sites: readonly SiteName[]): string[] {
  const layers = [...new Set(ranks.modules.map((m) => m.layer))].sort((a, b) => a - b);
  const width = Math.max(...sites.map((s) => s.length));
  const cell = (text: string): string => text.padStart(width);
  return [
    `  layer  ${sites.map(cell).join(' ')}`,
    ...layers.map(
      (layer) =>
        `  ${String(layer).padStart(5)}  ${sites.map((site) => cell(String(ranks.modules.find((m) => m.layer === layer && m.site === site)?.rank ?? '—'))).join(' ')}`,
    ),
  ];
}

function runSeed(
  base: Awaited<ReturnType<typeof loadBaseModel>>['model'],
  tokenizer: Tokenizer,
  seed: number,
  sizes: DemoSizes,
  sites: readonly SiteName[],
  schedule: AdaloraSchedule,
): SeedResult {
  const prepared = prepare(tokenizer, seed, sizes);
  const initRank = Math.round(schedule.initRankScale * RANK);
  const specs = armSpecs({ seed, steps: sizes.steps, sites, rank: RANK, initRank, alpha: DEMO_ADAPTERS.alpha, schedule });
  const routers = builtinRouters();
  const models: Partial<Record<ArmName, AdaptedModel>> = {};
  try {
    const accuracy = {} as Record<ArmName, TaskAccuracy>;
    const finalLoss = {} as Record<ArmName, number | null>;
    const trainSeconds = {} as Record<ArmName, number>;
    for (const arm of ARMS) {
      const model = AdaptedModel.create(base, specs[arm], { routers });
      models[arm] = model;
      const setup = { name: arm, usesTaskIds: false, retention: false };
      const started = performance.now();
      const armSizes = { ...sizes, lr: sizes.lr * (arm === 'adalora' ? schedule.lrScale : schedule.loraLrScale) };
      const losses = trainSetup(model, setup, prepared, armSizes, (line) => console.log(`seed ${seed}${line}`));
      trainSeconds[arm] = round((performance.now() - started) / 1000, 1);
      finalLoss[arm] = losses.finalLoss;
      accuracy[arm] = accuracyOf(serve(model, setup, prepared, tokenizer, sizes, undefined), prepared.evalSet);
    }
    const { ranks, ...budget } = checkBudgets(models.lora as AdaptedModel, models.adalora as AdaptedModel);
    console.log('');
    for (const line of tableLines(
      `seed ${seed}: exact-match accuracy % per task (${sizes.steps} steps of ${sizes.batchSize}, ${sizes.evalPerTask} held-out prompts per task)`,
      ARMS.map((arm) => ({ name: arm, accuracy: accuracy[arm] })),
    ))
      console.log(line);
    console.log(
      `budget: total rank lora ${budget.loraTotalRank} = adalora live triplets ${budget.adaloraTotalRank}; ` +
        `parameters lora ${budget.loraParameters}, adalora exported ${budget.adaloraParameters} (${budget.adaloraParameters - budget.loraParameters >= 0 ? '+' : ''}${budget.adaloraParameters - budget.loraParameters}); ` +
        `adalora while training ${budget.adaloraTrainingParameters}`,
    );
    console.log(`adalora final ranks (initial ${initRank}, target mean ${RANK}):`);
    for (const line of rankGrid(ranks, sites)) console.log(line);
    console.log('');
    return {
      seed,
      accuracy,
      finalLoss,
      trainSeconds,
      budget,
      adaloraRanks: Object.fromEntries(ranks.modules.map((m) => [`layers.${m.layer}.${m.site}`, m.rank])),
    };
  } finally {
    for (const model of Object.values(models)) model?.dispose();
  }
}

/**
 * `--variant NAME` (default: the first of VARIANTS), `--seeds 0,1,2` (default: 0, 1, 2; --quick: 0), and
 * `--adalora-lr-scale X` / `--lora-lr-scale X` overriding the variant's learning-rate multiples.
 */
function parseOptions(argv: readonly string[], quick: boolean): { variant: string; schedule: AdaloraSchedule; seeds: number[] } {
  const value = (flag: string): string | undefined => {
    const i = argv.indexOf(flag);
    return i < 0 ? undefined : argv[i + 1];
  };
  const variant = value('--variant') ?? (Object.keys(VARIANTS)[0] as string);
  const named = VARIANTS[variant];
  if (named === undefined) throw new Error(`--variant ${variant}: unknown; choose one of ${Object.keys(VARIANTS).join(', ')}`);
  const scale = (flag: string, fallback: number): number => {
    const text = value(flag);
    const n = text === undefined ? fallback : Number(text);
    if (!(n > 0) || !Number.isFinite(n)) throw new Error(`${flag} ${text}: expected a positive number`);
    return n;
  };
  const schedule = { ...named, lrScale: scale('--adalora-lr-scale', named.lrScale), loraLrScale: scale('--lora-lr-scale', named.loraLrScale) };
  const seedList = value('--seeds');
  const seeds = seedList === undefined ? (quick ? SEEDS.quick : SEEDS.full) : seedList.split(',').map(Number);
  if (seeds.some((n) => !Number.isInteger(n) || n < 0)) throw new Error(`--seeds ${seedList}: expected whole numbers separated by commas`);
  return { variant, schedule, seeds };
}

export async function run(args: BenchArgs, argv: readonly string[] = []): Promise<BenchResult> {
  const started = performance.now();
  await useBackend('wasm');
  const sizes: DemoSizes = { ...(args.quick ? { ...QUICK_SIZES, ...QUICK } : FULL_SIZES) };
  const { variant, schedule, seeds } = parseOptions(argv, args.quick);
  const named = VARIANTS[variant] as AdaloraSchedule;
  const overridden = schedule.lrScale !== named.lrScale || schedule.loraLrScale !== named.loraLrScale;
  const defaultSeeds = (args.quick ? SEEDS.quick : SEEDS.full).join(',') === seeds.join(',');
  const tag = `${variant}${overridden ? `.lr-${schedule.lrScale}-${schedule.loraLrScale}` : ''}${defaultSeeds ? '' : `.seeds-${seeds.join('-')}`}`;
  const initRank = Math.round(schedule.initRankScale * RANK);
  const isDefault = variant === Object.keys(VARIANTS)[0] && !overridden && defaultSeeds;
  const sites = DEMO_ADAPTERS.sites;
  const { model: base } = await loadBaseModel(demoModelDir());
  const startTensors = tf.memory().numTensors;
  let results: SeedResult[];
  try {
    const tokenizer = await loadTokenizer(demoModelDir());
    const expected = uniformLoraParameters(base.config, sites, RANK);
    console.log(
      `demo base: ${base.config.nLayers} layers, D=${base.config.dim}; lora r=${RANK} on ${sites.join(', ')} (${expected} parameters); ` +
        `adalora ${initRank} → ${RANK} per module, variant ${variant} ${JSON.stringify(schedule)}; seeds ${seeds.join(', ')}`,
    );
    results = seeds.map((seed) => runSeed(base, tokenizer, seed, sizes, sites, schedule));
    assertNoLeak(startTensors, 'adalora-vs-lora');
  } finally {
    base.dispose();
  }

  const meanOf = (arm: ArmName): Record<string, number> =>
    Object.fromEntries([...TASK_NAMES, 'mean'].map((t) => [t, results.reduce((s, r) => s + (r.accuracy[arm][t] ?? 0), 0) / results.length]));
  const means = Object.fromEntries(ARMS.map((arm) => [arm, meanOf(arm)])) as Record<ArmName, Record<string, number>>;
  for (const line of tableLines(
    `mean over seeds ${seeds.join(', ')}`,
    ARMS.map((arm) => ({ name: arm, accuracy: means[arm] })),
  ))
    console.log(line);
  const margin = (means.adalora['mean'] ?? 0) - (means.lora['mean'] ?? 0);
  console.log(`adalora − lora, mean accuracy: ${margin >= 0 ? '+' : ''}${(margin * 100).toFixed(1)} points`);

  return {
    // Other variants, learning rates or seeds write adalora-vs-lora.VARIANT[.lr-A-L][.seeds-…].json beside
    // the default's (run-all reports the default).
    name: isDefault ? 'adalora-vs-lora' : `adalora-vs-lora.${tag}`,
    description: `AdaLoRA (${initRank} → ${RANK} per module) against uniform LoRA r=${RANK} at an equal final total rank, on the demo's tasks`,
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: { rank: RANK, initRank: initRank, variant, schedule, sites, seeds, sizes },
    ratios: [],
    details: { means, margin: round(margin, 4), seeds: results },
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

if (isMain(import.meta.url)) {
  const result = await run(parseArgs(), process.argv.slice(2));
  console.log(`wrote ${writeResult(result)}`);
}
