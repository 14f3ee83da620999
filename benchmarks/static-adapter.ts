/**
 * A static (unrouted) LoRA adapter at batch 1: merged into the weights (mergeLora → a view of the base with
 * W' = W + s·B·A) against the bare base, and unmerged (applied at run time through hooks) against the bare
 * base; for one KV-cached decode step and for a 128-token prefill. Merged should cost nothing (target
 * ≤ 1.02×): the view runs exactly the base's kernels on other weight tensors.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import type { KVCache } from '../src/base/kv-cache.js';
import type { Transformer } from '../src/base/transformer.js';
import type { AdapterInstance } from '../src/adapters/instance.js';
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
import { singleLoraSpec } from './lib/specs.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const RANK = 8;
const PREFILL_TOKENS = { full: 128, quick: 16 };
/** Tokens in the cache before the timed decode steps. */
const DECODE_PREFILL = 32;
const FULL = { decode: { warmup: 3, rounds: 40 }, prefill: { warmup: 1, rounds: 6 } };
const QUICK = { decode: { warmup: 2, rounds: 5 }, prefill: { warmup: 1, rounds: 2 } };
/** Prefill warm-up runs this many tokens through the same code paths (a full prefill takes seconds). */
const WARM_TOKENS = 8;
/** merged/base target (issue). */
const TARGET_MERGED = 1.02;
const MERGE_MODULE = new URL('../src/adapters/lora/merge.ts', import.meta.url);
// ---------------------------------------------------------------------------------------------------------

type MergeLora = (base: Transformer, adapters: readonly { instance: AdapterInstance; weight?: number }[]) => Transformer;

/** mergeLora, when src/adapters/lora/merge.ts exists (it may not yet). */
async function loadMergeLora(): Promise<MergeLora | string> {
  if (!existsSync(fileURLToPath(MERGE_MODULE))) return 'src/adapters/lora/merge.ts does not exist yet';
  const module = (await import(MERGE_MODULE.href)) as { mergeLora?: MergeLora };
  return module.mergeLora ?? 'src/adapters/lora/merge.ts does not export mergeLora';
}

export async function run(args: BenchArgs): Promise<BenchResult> {
  const started = performance.now();
  await useBackend('wasm');
  const sizes = args.quick ? QUICK : FULL;
  const modelOptions = args.quick ? QUICK_MODEL : BENCH_MODEL;
  const prefillTokens = args.quick ? PREFILL_TOKENS.quick : PREFILL_TOKENS.full;
  const startTensors = tf.memory().numTensors;
  const mergeLora = await loadMergeLora();
  const base = randomLlama(modelOptions);
  const adapted = AdaptedModel.create(base, singleLoraSpec({ r: RANK }), {});
  const instance = adapted.adapters.get('single');
  if (instance === undefined) throw new Error('adapter "single" missing');
  const merged = typeof mergeLora === 'string' ? undefined : mergeLora(base, [{ instance }]);
  const skipped: string[] = typeof mergeLora === 'string' ? [`merged/base skipped: ${mergeLora}`] : [];
  const ratios: RatioResult[] = [];
  const samples: Record<string, unknown> = {};
  const kernels: Record<string, number | string> = {};
  try {
    // The merged view must launch exactly the base's kernels (only its weight tensors differ).
    const probeIds = randomIds(1, 4, modelOptions.vocabSize, 9);
    const kernelNames = async (run: () => tf.Tensor): Promise<string[]> => (await tf.profile(() => void run().dispose())).kernels.map((k) => k.name);
    const baseKernels = await kernelNames(() => base.forward({ ids: probeIds, output: 'last-logits' }));
    kernels['base'] = baseKernels.length;
    kernels['unmerged'] = (await kernelNames(() => adapted.forward({ ids: probeIds, output: 'last-logits' }))).length;
    if (merged !== undefined) {
      const mergedKernels = await kernelNames(() => merged.forward({ ids: probeIds, output: 'last-logits' }));
      kernels['merged'] = mergedKernels.length;
      kernels['mergedSameAsBase'] = String(mergedKernels.length === baseKernels.length && mergedKernels.every((n, i) => n === baseKernels[i]));
    }
    console.log('  kernels per forward:', kernels);
    // --- one decode step at batch 1 ---
    const prompt = randomIds(1, DECODE_PREFILL, modelOptions.vocabSize);
    const sides: { name: string; forward: (ids: number[][], cache: KVCache) => tf.Tensor }[] = [
      { name: 'base', forward: (ids, cache) => base.forward({ ids, cache, output: 'last-logits' }) },
      { name: 'unmerged', forward: (ids, cache) => adapted.forward({ ids, cache, output: 'last-logits' }) },
      ...(merged === undefined
        ? []
        : [{ name: 'merged', forward: (ids: number[][], cache: KVCache) => merged.forward({ ids, cache, output: 'last-logits' }) }]),
    ];
    const caches = sides.map(() => base.newCache(1));
    try {
      sides.forEach((s, i) => s.forward(prompt, caches[i] as KVCache).dispose());
      const decode = await compare(
        sides.map((s, i) => {
          const cache = caches[i] as KVCache;
          return { name: s.name, run: () => s.forward(randomIds(1, 1, modelOptions.vocabSize, 1000 + cache.length), cache) };
        }),
        { ...sizes.decode, maxWarmup: decodeWarmupCap(modelOptions.maxSeqLen, DECODE_PREFILL, sizes.decode.rounds) },
      );
      samples['decode'] = { wall: decode.samples, cpu: decode.cpuSamples };
      if (merged !== undefined)
        ratios.push(ratioResult(decode, 'static/merged-decode', 'merged LoRA/base, decode step, batch 1', 'merged', 'base', { target: TARGET_MERGED }));
      ratios.push(ratioResult(decode, 'static/unmerged-decode', 'unmerged LoRA/base, decode step, batch 1', 'unmerged', 'base'));
    } finally {
      for (const c of caches) c.dispose();
    }

    // --- a prefill at batch 1 ---
    const ids = randomIds(1, prefillTokens, modelOptions.vocabSize);
    const warmIds = randomIds(1, WARM_TOKENS, modelOptions.vocabSize, 8);
    const prefill = await compare(
      [
        { name: 'base', run: () => base.forward({ ids, output: 'last-logits' }), warm: () => base.forward({ ids: warmIds, output: 'last-logits' }) },
        { name: 'unmerged', run: () => adapted.forward({ ids, output: 'last-logits' }), warm: () => adapted.forward({ ids: warmIds, output: 'last-logits' }) },
        ...(merged === undefined
          ? []
          : [
              {
                name: 'merged',
                run: () => merged.forward({ ids, output: 'last-logits' }),
                warm: () => merged.forward({ ids: warmIds, output: 'last-logits' }),
              },
            ]),
      ],
      sizes.prefill,
    );
    samples['prefill'] = { wall: prefill.samples, cpu: prefill.cpuSamples };
    if (merged !== undefined)
      ratios.push(
        ratioResult(prefill, 'static/merged-prefill', `merged LoRA/base, ${prefillTokens}-token prefill, batch 1`, 'merged', 'base', { target: TARGET_MERGED }),
      );
    ratios.push(ratioResult(prefill, 'static/unmerged-prefill', `unmerged LoRA/base, ${prefillTokens}-token prefill, batch 1`, 'unmerged', 'base'));
    for (const r of ratios) logRatio(r);
    for (const s of skipped) console.log(`  ${s}`);
  } finally {
    merged?.dispose();
    adapted.dispose();
    base.dispose();
  }
  assertNoLeak(startTensors, 'static-adapter');
  return {
    name: 'static-adapter',
    description: 'One LoRA adapter (r=8, all seven sites, every layer) at batch 1: merged/base and unmerged/base, decode step and prefill',
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: { model: modelOptions, rank: RANK, prefillTokens, decodePrefill: DECODE_PREFILL, ...sizes },
    ratios,
    details: { samplesMs: samples, skipped, kernelsPerForward: kernels },
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

if (isMain(import.meta.url)) {
  const result = await run(parseArgs());
  console.log(`wrote ${writeResult(result)}`);
}
