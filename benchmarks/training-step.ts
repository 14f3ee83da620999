/**
 * Training cost: one joint router + experts optimizer step (8 LoRA experts of rank 8, top-2 per site, all
 * seven sites, every layer, with their 56 routers) against one step of a single LoRA adapter with the same
 * trainable budget (its rank chosen so its parameter count matches the routed model's experts + routers),
 * both through src/train/trainer.ts on the same causal-LM batch; and the tensor memory a training step
 * needs above what is resident (weights, variables, optimizer state), against an inference forward.
 *
 * Memory is tf.profile's peakBytes (the largest engine byte count seen after any kernel) minus the bytes
 * allocated before the call.
 */
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../routers/index.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import { Trainer, type TrainBatch } from '../src/train/trainer.js';
import {
  assertNoLeak,
  compare,
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
import { routedLoraSpec, singleLoraSpec } from './lib/specs.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const EXPERTS = 8;
const K = 2;
const RANK = 8;
const FULL = { batch: 2, tokens: 32, warmup: 1, rounds: 3 };
const QUICK = { batch: 1, tokens: 8, warmup: 1, rounds: 2 };
const TRAINER_CONFIG = { optimizer: { lr: 1e-4 }, maxGradNorm: 1 };
// ---------------------------------------------------------------------------------------------------------

/** Peak engine bytes during `fn` above the bytes allocated before it. */
async function peakBytesAbove(fn: () => void): Promise<{ peakAboveStart: number; startBytes: number }> {
  const startBytes = tf.memory().numBytes;
  const profile = await tf.profile(fn);
  return { peakAboveStart: profile.peakBytes - startBytes, startBytes };
}

export async function run(args: BenchArgs): Promise<BenchResult> {
  const started = performance.now();
  await useBackend('wasm');
  const sizes = args.quick ? QUICK : FULL;
  const modelOptions = args.quick ? QUICK_MODEL : BENCH_MODEL;
  const startTensors = tf.memory().numTensors;
  const base = randomLlama(modelOptions);
  const routers = builtinRouters();
  const routed = AdaptedModel.create(base, routedLoraSpec({ experts: EXPERTS, k: K, r: RANK }), { routers });
  // LoRA parameters grow linearly with r: measure one rank's worth, then match the routed budget.
  const probe = AdaptedModel.create(base, singleLoraSpec({ r: 1 }), {});
  const perRank = probe.parameterReport().trainable;
  probe.dispose();
  const routedBudget = routed.parameterReport().trainable;
  const singleRank = Math.max(1, Math.round(routedBudget / perRank));
  const single = AdaptedModel.create(base, singleLoraSpec({ r: singleRank }), {});
  const singleBudget = single.parameterReport().trainable;
  const routedTrainer = new Trainer(routed, TRAINER_CONFIG);
  const singleTrainer = new Trainer(single, TRAINER_CONFIG);
  const ids = randomIds(sizes.batch, sizes.tokens, modelOptions.vocabSize);
  const mask = ids.map((row) => row.map(() => 1));
  const batch: TrainBatch = { ids, mask, lossMask: mask };
  const ratios: RatioResult[] = [];
  let memory: Record<string, unknown> = {};
  let samples: unknown = {};
  try {
    const timings = await compare(
      [
        { name: 'routed-step', run: () => void routedTrainer.step(batch) },
        { name: 'single-step', run: () => void singleTrainer.step(batch) },
      ],
      sizes,
    );
    samples = { wall: timings.samples, cpu: timings.cpuSamples };
    ratios.push(
      ratioResult(
        timings,
        'training/routed-vs-single',
        `training step, routed (E=${EXPERTS} k=${K} r=${RANK} + routers) / single LoRA r=${singleRank}, ${sizes.batch}×${sizes.tokens}`,
        'routed-step',
        'single-step',
      ),
    );

    // Memory after the warm-up steps (AdamW's moments exist by now and count as resident).
    const routedTrain = await peakBytesAbove(() => void routedTrainer.step(batch));
    const routedInfer = await peakBytesAbove(() => routed.forward({ ids, mask }).dispose());
    const singleTrain = await peakBytesAbove(() => void singleTrainer.step(batch));
    const singleInfer = await peakBytesAbove(() => single.forward({ ids, mask }).dispose());
    const mb = (bytes: number): number => round(bytes / 2 ** 20, 2);
    memory = {
      routedTrainingPeakMiB: mb(routedTrain.peakAboveStart),
      routedInferencePeakMiB: mb(routedInfer.peakAboveStart),
      singleTrainingPeakMiB: mb(singleTrain.peakAboveStart),
      singleInferencePeakMiB: mb(singleInfer.peakAboveStart),
      residentMiBBeforeRoutedStep: mb(routedTrain.startBytes),
    };
    const memoryRatio = (id: string, label: string, a: number, b: number): RatioResult => ({
      id,
      label,
      numerator: 'training',
      denominator: 'inference',
      ratio: round(a / b),
      numeratorMs: Number.NaN,
      denominatorMs: Number.NaN,
      note: `${mb(a)} MiB / ${mb(b)} MiB above resident (tf.profile peakBytes)`,
    });
    ratios.push(
      memoryRatio('training/memory-routed', 'tensor memory, routed: training step / inference forward', routedTrain.peakAboveStart, routedInfer.peakAboveStart),
    );
    ratios.push(
      memoryRatio(
        'training/memory-single',
        `tensor memory, single LoRA r=${singleRank}: training step / inference forward`,
        singleTrain.peakAboveStart,
        singleInfer.peakAboveStart,
      ),
    );
    for (const r of ratios) {
      if (Number.isNaN(r.numeratorMs)) console.log(`  ${r.label}: ${r.ratio}× (${r.note ?? ''})`);
      else logRatio(r);
    }
  } finally {
    routedTrainer.dispose();
    singleTrainer.dispose();
    routed.dispose();
    single.dispose();
    base.dispose();
  }
  assertNoLeak(startTensors, 'training-step');
  return {
    name: 'training-step',
    description: 'Joint router+experts training step / single-LoRA step with the same trainable budget; training / inference tensor memory',
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: { model: modelOptions, experts: EXPERTS, k: K, rank: RANK, ...sizes, trainer: TRAINER_CONFIG },
    ratios,
    details: { samplesMs: samples, budgets: { routed: routedBudget, single: singleBudget, singleRank, perRank }, memory },
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

if (isMain(import.meta.url)) {
  const result = await run(parseArgs());
  console.log(`wrote ${writeResult(result)}`);
}
