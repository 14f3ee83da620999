/**
 * Decode overhead: one KV-cached decoding step of the routed model (8 LoRA experts, top-2 per site, r=8,
 * all seven sites, every layer) against one step of the bare base, at batch 1 and batch 8.
 *
 * Each side prefills PREFILL tokens into its own cache (untimed), then the two sides alternate single-token
 * steps, so in every round both extend caches of the same length (the cache grows by one slot per round;
 * the paired ratio compares like with like).
 */
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../routers/index.js';
import type { KVCache } from '../src/base/kv-cache.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import {
  assertNoLeak,
  compare,
  decodeWarmupCap,
  isMain,
  logRatio,
  machineInfo,
  parseArgs,
  ratioResult,
  round,
  useBackend,
  writeResult,
  type BenchArgs,
  type BenchResult,
  type RatioResult,
} from './lib/harness.js';
import { BENCH_MODEL, QUICK_MODEL, randomIds, randomLlama } from './lib/random-model.js';
import { routedLoraSpec } from './lib/specs.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const EXPERTS = 8;
const K = 2;
const RANK = 8;
const PREFILL = 32;
const BATCHES = [1, 8] as const;
/** Rounds per batch size (a batch-8 step costs ~10× a batch-1 step on wasm today). */
const FULL: Readonly<Record<number, { warmup: number; rounds: number }>> = { 1: { warmup: 3, rounds: 40 }, 8: { warmup: 2, rounds: 12 } };
const QUICK: Readonly<Record<number, { warmup: number; rounds: number }>> = { 1: { warmup: 2, rounds: 5 }, 8: { warmup: 1, rounds: 3 } };
/** Decode routed/base target at batch 1 (issue). */
const TARGET_BATCH1 = 1.3;
// ---------------------------------------------------------------------------------------------------------

export async function run(args: BenchArgs): Promise<BenchResult> {
  const started = performance.now();
  await useBackend('wasm');
  const sizes = args.quick ? QUICK : FULL;
  const modelOptions = args.quick ? QUICK_MODEL : BENCH_MODEL;
  const startTensors = tf.memory().numTensors;
  const base = randomLlama(modelOptions);
  const model = AdaptedModel.create(base, routedLoraSpec({ experts: EXPERTS, k: K, r: RANK }), { routers: builtinRouters() });
  const ratios: RatioResult[] = [];
  const samples: Record<string, unknown> = {};
  try {
    for (const batch of BATCHES) {
      const prompt = randomIds(batch, PREFILL, modelOptions.vocabSize);
      const caches: KVCache[] = [base.newCache(batch), base.newCache(batch)];
      const [baseCache, routedCache] = caches as [KVCache, KVCache];
      try {
        base.forward({ ids: prompt, cache: baseCache, output: 'last-logits' }).dispose();
        model.forward({ ids: prompt, cache: routedCache, output: 'last-logits' }).dispose();
        // Same next tokens on both sides at equal cache lengths (a fixed stream; sampling is not what is measured).
        const nextIds = (cache: KVCache): number[][] => randomIds(batch, 1, modelOptions.vocabSize, 1000 + cache.length);
        const rounds = sizes[batch] ?? { warmup: 1, rounds: 3 };
        const timings = await compare(
          [
            { name: 'base', run: () => base.forward({ ids: nextIds(baseCache), cache: baseCache, output: 'last-logits' }) },
            { name: 'routed', run: () => model.forward({ ids: nextIds(routedCache), cache: routedCache, output: 'last-logits' }) },
          ],
          { ...rounds, maxWarmup: decodeWarmupCap(modelOptions.maxSeqLen, PREFILL, rounds.rounds) },
        );
        samples[`batch${batch}`] = { wall: timings.samples, cpu: timings.cpuSamples };
        const r = ratioResult(
          timings,
          `decode/batch${batch}`,
          `decode step routed/base, batch ${batch} (E=${EXPERTS} k=${K})`,
          'routed',
          'base',
          batch === 1 ? { target: TARGET_BATCH1 } : {},
        );
        ratios.push(r);
        logRatio(r);
      } finally {
        for (const c of caches) c.dispose();
      }
    }
  } finally {
    model.dispose();
    base.dispose();
  }
  assertNoLeak(startTensors, 'decode-overhead');
  return {
    name: 'decode-overhead',
    description: 'One KV-cached decode step, routed (E=8 LoRA experts, top-2 per site, r=8, all sites) / base, after a 32-token prefill',
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: { model: modelOptions, experts: EXPERTS, k: K, rank: RANK, prefill: PREFILL, batches: BATCHES, rounds: sizes },
    ratios,
    details: { samplesMs: samples },
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

if (isMain(import.meta.url)) {
  const result = await run(parseArgs());
  console.log(`wrote ${writeResult(result)}`);
}
