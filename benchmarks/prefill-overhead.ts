/**
 * Prefill overhead: a routed forward (E LoRA experts of rank r, top-k router per site, on all seven sites
 * of every layer) against the bare base forward, on the same inputs, side by side in one run.
 *
 * Variants: E=8 k=2 (the target: ≤ 1.15×), E=8 k=1, and E=32 / E=64 (k=2) under both execution
 * strategies (dense: fused LoRA over all experts; grouped: rows gathered per expert). The forward returns
 * 'last-logits' [B, V], as generation's prefill does.
 */
import { builtinRouters } from '../routers/index.js';
import type { ExecutionStrategy } from '../src/routing/routed-layer.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import {
  compare,
  isMain,
  logRatio,
  machineInfo,
  parseArgs,
  ratioResult,
  round,
  useBackend,
  writeResult,
  assertNoLeak,
  type BenchArgs,
  type BenchResult,
  type Case,
  type RatioResult,
} from './lib/harness.js';
import { BENCH_MODEL, QUICK_MODEL, randomIds, randomLlama } from './lib/random-model.js';
import { routedLoraSpec } from './lib/specs.js';
import * as tf from '@tensorflow/tfjs';

// ---------------------------------------------------------------------------------------------------------
// Constants
const RANK = 8;
/**
 * One base forward of 4×128 takes seconds on wasm today (see ANALYSIS.md), so warm-up runs a short input
 * through the same code paths, and the E=32/64 variants get fewer rounds than the targeted E=8 pair.
 */
const FULL = { batch: 4, tokens: 128, warmTokens: 8, target: { warmup: 1, rounds: 3 }, wide: { warmup: 1, rounds: 2 } };
const QUICK = { batch: 2, tokens: 16, warmTokens: 4, target: { warmup: 1, rounds: 2 }, wide: { warmup: 1, rounds: 2 } };
/** Prefill routed/base target for E=8, k=2 (issue). */
const TARGET_E8_K2 = 1.15;

interface Variant {
  /** 'target': compared with the base in the first group (E=8); 'wide': the E=32/64 group. */
  readonly group: 'target' | 'wide';
  readonly id: string;
  readonly label: string;
  readonly experts: number;
  readonly k: number;
  /** undefined: the spec's `auto` choice. */
  readonly strategy?: ExecutionStrategy;
}

const VARIANTS: readonly Variant[] = [
  { group: 'target', id: 'e8-k2', label: 'prefill routed/base, E=8 k=2 (auto → dense)', experts: 8, k: 2 },
  { group: 'target', id: 'e8-k1', label: 'prefill routed/base, E=8 k=1 (auto → dense)', experts: 8, k: 1 },
  { group: 'wide', id: 'e32-dense', label: 'prefill routed/base, E=32 k=2, dense', experts: 32, k: 2, strategy: 'dense' },
  { group: 'wide', id: 'e32-grouped', label: 'prefill routed/base, E=32 k=2, grouped', experts: 32, k: 2, strategy: 'grouped' },
  { group: 'wide', id: 'e64-dense', label: 'prefill routed/base, E=64 k=2, dense', experts: 64, k: 2, strategy: 'dense' },
  { group: 'wide', id: 'e64-grouped', label: 'prefill routed/base, E=64 k=2, grouped', experts: 64, k: 2, strategy: 'grouped' },
];
// ---------------------------------------------------------------------------------------------------------

export async function run(args: BenchArgs): Promise<BenchResult> {
  const started = performance.now();
  await useBackend('wasm');
  const sizes = args.quick ? QUICK : FULL;
  const modelOptions = args.quick ? QUICK_MODEL : BENCH_MODEL;
  const startTensors = tf.memory().numTensors;
  const base = randomLlama(modelOptions);
  const routers = builtinRouters();
  const ids = randomIds(sizes.batch, sizes.tokens, modelOptions.vocabSize);
  /** One AdaptedModel per (E, k); both strategies of one E share it (the strategy is a per-call option). */
  const models = new Map<string, AdaptedModel>();
  const modelFor = (v: Variant): AdaptedModel => {
    const key = `${v.experts}|${v.k}`;
    let model = models.get(key);
    if (model === undefined) {
      model = AdaptedModel.create(base, routedLoraSpec({ experts: v.experts, k: v.k, r: RANK }), { routers });
      models.set(key, model);
    }
    return model;
  };
  const ratios: RatioResult[] = [];
  const samples: Record<string, unknown> = {};
  try {
    const warmIds = randomIds(1, sizes.warmTokens, modelOptions.vocabSize, 8);
    const baseCase: Case = {
      name: 'base',
      run: () => base.forward({ ids, output: 'last-logits' }),
      warm: () => base.forward({ ids: warmIds, output: 'last-logits' }),
    };
    for (const group of ['target', 'wide'] as const) {
      const cases: Case[] = [baseCase];
      for (const v of VARIANTS.filter((x) => x.group === group)) {
        const model = modelFor(v);
        const strategy = v.strategy === undefined ? {} : { routing: { strategy: v.strategy } };
        cases.push({
          name: v.id,
          run: () => model.forward({ ids, output: 'last-logits', ...strategy }),
          warm: () => model.forward({ ids: warmIds, output: 'last-logits', ...strategy }),
        });
      }
      const options = sizes[group];
      console.log(
        `prefill ${sizes.batch}×${sizes.tokens} tokens, ${cases.map((c) => c.name).join(', ')}: warmup ${options.warmup} (${sizes.warmTokens} tokens), rounds ${options.rounds}`,
      );
      const timings = await compare(cases, options);
      samples[group] = { wall: timings.samples, cpu: timings.cpuSamples };
      for (const v of VARIANTS.filter((x) => x.group === group)) {
        const r = ratioResult(timings, `prefill/${v.id}`, v.label, v.id, 'base', v.id === 'e8-k2' ? { target: TARGET_E8_K2 } : {});
        ratios.push(r);
        logRatio(r);
      }
      if (group === 'wide') {
        // Side by side without the base: what the strategy choice costs at E=32 and E=64.
        for (const e of [32, 64]) {
          const r = ratioResult(timings, `prefill/e${e}-dense-vs-grouped`, `prefill E=${e}: dense / grouped`, `e${e}-dense`, `e${e}-grouped`);
          ratios.push(r);
          logRatio(r);
        }
      }
    }
  } finally {
    for (const m of models.values()) m.dispose();
    base.dispose();
  }
  assertNoLeak(startTensors, 'prefill-overhead');
  return {
    name: 'prefill-overhead',
    description: 'Routed forward (E LoRA experts, top-k per site, r=8, all seven sites, every layer) / base forward at prefill',
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: { model: modelOptions, rank: RANK, ...sizes, output: 'last-logits', variants: VARIANTS },
    ratios,
    details: { samplesMs: samples },
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

if (isMain(import.meta.url)) {
  const result = await run(parseArgs());
  console.log(`wrote ${writeResult(result)}`);
}
