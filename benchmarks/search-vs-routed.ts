/**
 * A searched spec against the demo's hand-written routed spec, on the demo's four tasks (issue #17's Show
 * item for `routed-peft search`):
 *
 *   routed    the demo's routed setup (setups.ts): 4 LoRA experts of rank 4 on all seven sites, a top-2
 *             router reading the pooled prompt once per sequence
 *   searched  the best spec of a `routed-peft search` run (its best-spec.json), with the run's seed as the
 *             spec's seed
 *
 * Both train through the demo's own functions (run-demo.ts: the same batches in the same order, the same
 * Trainer, AdamW, LR schedule, clipping and steps) from the same seeds, and are scored as the demo scores its
 * setups: greedy exact-match accuracy per task on the held-out prompts. The searched spec must have at most
 * the routed setup's trainable parameters (an error otherwise). The search's data file
 * (scripts/demo-search-data.ts) holds none of the prompts these seeds score on.
 *
 *   node --import tsx benchmarks/search-vs-routed.ts --spec DIR/best-spec.json           seeds 0, 1, 2
 *   node --import tsx benchmarks/search-vs-routed.ts --spec DIR/best-spec.json --quick   1 seed, 20 steps
 *
 * Writes benchmarks/results/search-vs-routed.json (results/quick/ for --quick).
 */
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../routers/index.js';
import { loadBaseModel } from '../src/base/checkpoints/load-model.js';
import type { Transformer } from '../src/base/transformer.js';
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
import { buildSetups } from '../src/demo/setups.js';
import { DEMO_TASKS } from '../src/demo/tasks.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import type { Tokenizer } from '../src/tokenizers/tokenizer.js';
import { loadTokenizer } from '../src/tokenizers/load-tokenizer.js';
import { assertNoLeak, isMain, machineInfo, parseArgs, round, useBackend, writeResult, type BenchArgs, type BenchResult } from './lib/harness.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const SEEDS = { full: [0, 1, 2], quick: [0] };
const QUICK: Partial<DemoSizes> = { steps: 20, trainPerTask: 40, batchSize: 16, evalPerTask: 8, evalBatch: 32 };
const ARMS = ['routed', 'searched'] as const;
type ArmName = (typeof ARMS)[number];
// ---------------------------------------------------------------------------------------------------------

interface SeedResult {
  readonly seed: number;
  readonly accuracy: Record<ArmName, TaskAccuracy>;
  readonly trainableParams: Record<ArmName, number>;
  readonly trainSeconds: Record<ArmName, number>;
}

function runSeed(base: Transformer, tokenizer: Tokenizer, seed: number, sizes: DemoSizes, searched: Record<string, unknown>): SeedResult {
  const routers = builtinRouters();
  const prepared = prepare(tokenizer, seed, sizes);
  const routed = buildSetups(base, routers, { tasks: DEMO_TASKS.map((t) => t.name), seed, ...DEMO_ADAPTERS }).find((s) => s.name === 'routed');
  if (routed === undefined) throw new Error('the demo has no routed setup');
  const specs: Record<ArmName, Record<string, unknown>> = { routed: routed.spec, searched: { ...searched, seed } };
  const accuracy = {} as Record<ArmName, TaskAccuracy>;
  const trainableParams = {} as Record<ArmName, number>;
  const trainSeconds = {} as Record<ArmName, number>;
  for (const arm of ARMS) {
    const model = AdaptedModel.create(base, specs[arm], { routers });
    try {
      trainableParams[arm] = model.parameterReport().trainable;
      const setup = { name: arm, usesTaskIds: false, retention: false };
      const started = performance.now();
      trainSetup(model, setup, prepared, sizes, (line) => console.log(`seed ${seed}${line}`));
      trainSeconds[arm] = round((performance.now() - started) / 1000, 1);
      accuracy[arm] = accuracyOf(serve(model, setup, prepared, tokenizer, sizes, undefined), prepared.evalSet);
    } finally {
      model.dispose();
    }
    console.log(
      `seed ${seed} ${arm}: mean ${(accuracy[arm].mean * 100).toFixed(1)}% (${DEMO_TASKS.map((t) => `${t.name} ${((accuracy[arm][t.name] ?? 0) * 100).toFixed(0)}%`).join(', ')}), ${trainableParams[arm]} trainable`,
    );
  }
  if (trainableParams.searched > trainableParams.routed) {
    throw new Error(`the searched spec has ${trainableParams.searched} trainable parameters, more than the routed setup's ${trainableParams.routed}`);
  }
  return { seed, accuracy, trainableParams, trainSeconds };
}

function specPath(argv: readonly string[]): string {
  const i = argv.indexOf('--spec');
  const path = i < 0 ? undefined : argv[i + 1];
  if (path === undefined) throw new Error('usage: node --import tsx benchmarks/search-vs-routed.ts --spec SEARCH_DIR/best-spec.json [--quick]');
  return path;
}

export async function run(args: BenchArgs, argv: readonly string[]): Promise<BenchResult> {
  const started = performance.now();
  await useBackend('wasm');
  const sizes: DemoSizes = { ...(args.quick ? { ...QUICK_SIZES, ...QUICK } : FULL_SIZES) };
  const seeds = args.quick ? SEEDS.quick : SEEDS.full;
  const path = specPath(argv);
  const searched = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  const { model: base } = await loadBaseModel(demoModelDir());
  const startTensors = tf.memory().numTensors;
  let results: SeedResult[];
  try {
    const tokenizer = await loadTokenizer(demoModelDir());
    results = seeds.map((seed) => runSeed(base, tokenizer, seed, sizes, searched));
    assertNoLeak(startTensors, 'search-vs-routed');
  } finally {
    base.dispose();
  }
  const names = [...DEMO_TASKS.map((t) => t.name), 'mean'];
  const meanOf = (arm: ArmName): Record<string, number> =>
    Object.fromEntries(names.map((t) => [t, round(results.reduce((s, r) => s + (r.accuracy[arm][t] ?? 0), 0) / results.length, 4)]));
  const means = { routed: meanOf('routed'), searched: meanOf('searched') };
  const margin = (means.searched['mean'] ?? 0) - (means.routed['mean'] ?? 0);
  console.log(
    `mean over seeds ${seeds.join(', ')}: routed ${((means.routed['mean'] ?? 0) * 100).toFixed(1)}%, searched ${((means.searched['mean'] ?? 0) * 100).toFixed(1)}%`,
  );
  console.log(`searched − routed: ${margin >= 0 ? '+' : ''}${(margin * 100).toFixed(1)} points`);
  return {
    name: 'search-vs-routed',
    description: "The best spec of a routed-peft search against the demo's hand-written routed spec, at most its trainable budget, on the demo's tasks",
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: { seeds, sizes, searchedSpec: searched },
    ratios: [],
    details: { means, margin: round(margin, 4), seeds: results },
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

if (isMain(import.meta.url)) {
  const argv = process.argv.slice(2);
  const result = await run(parseArgs(argv), argv);
  console.log(`wrote ${writeResult(result)}`);
}
