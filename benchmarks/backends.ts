/**
 * The same routed forward (8 LoRA experts, top-2 per site, r=8, all seven sites) on the wasm backend
 * against the pure-JS cpu backend, side by side in one run; plus the bare base on each, so the routed
 * overhead can be read per backend. The native `tensorflow` backend is tried through selectBackend; when it
 * does not load (tfjs-node cannot be installed here) it is recorded as skipped with selectBackend's reason.
 *
 * Each backend gets its own copy of the model, built while that backend is active, so no tensor migrates
 * between backends during timing; the backend switch happens before each timed call (untimed).
 */
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../routers/index.js';
import type { KVCache } from '../src/base/kv-cache.js';
import type { Transformer } from '../src/base/transformer.js';
import { selectBackend, type BackendName } from '../src/backend.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import {
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
  type Case,
  type RatioResult,
} from './lib/harness.js';
import { BENCH_MODEL, QUICK_MODEL, randomIds, randomLlama } from './lib/random-model.js';
import { routedLoraSpec } from './lib/specs.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const EXPERTS = 8;
const K = 2;
const RANK = 8;
/** The cpu backend is ~30× slower than wasm's fast matmul path: a short prefill keeps this under a minute. */
const FULL = { batch: 1, tokens: 32, prefill: { warmup: 1, rounds: 3 }, decode: { warmup: 2, rounds: 8 } };
const QUICK = { batch: 1, tokens: 8, prefill: { warmup: 1, rounds: 2 }, decode: { warmup: 1, rounds: 3 } };
const BACKENDS: readonly BackendName[] = ['wasm', 'cpu'];
// ---------------------------------------------------------------------------------------------------------

interface Side {
  readonly backend: BackendName;
  readonly base: Transformer;
  readonly routed: AdaptedModel;
  readonly caches: { base: KVCache; routed: KVCache };
}

export async function run(args: BenchArgs): Promise<BenchResult> {
  const started = performance.now();
  const sizes = args.quick ? QUICK : FULL;
  const modelOptions = args.quick ? QUICK_MODEL : BENCH_MODEL;
  const skipped: { backend: string; reason: string }[] = [];
  let tensorflowReport: unknown;
  try {
    tensorflowReport = await selectBackend({ preference: 'tensorflow' });
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    skipped.push({ backend: 'tensorflow', reason });
    console.log(`  tensorflow: skipped — ${reason}`);
  }
  const backends: BackendName[] = [...BACKENDS, ...(tensorflowReport === undefined ? [] : (['tensorflow'] as const))];
  const routers = builtinRouters();
  const ids = randomIds(sizes.batch, sizes.tokens, modelOptions.vocabSize);
  const sides: Side[] = [];
  const ratios: RatioResult[] = [];
  const samples: Record<string, unknown> = {};
  try {
    for (const backend of backends) {
      await useBackend(backend === 'tensorflow' ? 'tensorflow' : backend);
      const base = randomLlama(modelOptions);
      const routed = AdaptedModel.create(base, routedLoraSpec({ experts: EXPERTS, k: K, r: RANK }), { routers });
      const caches = { base: base.newCache(sizes.batch), routed: base.newCache(sizes.batch) };
      base.forward({ ids, cache: caches.base, output: 'last-logits' }).dispose();
      routed.forward({ ids, cache: caches.routed, output: 'last-logits' }).dispose();
      sides.push({ backend, base, routed, caches });
    }
    const activate = (backend: BackendName) => async (): Promise<void> => {
      if (tf.getBackend() !== backend) await tf.setBackend(backend);
    };
    const prefillCases: Case[] = sides.flatMap((s) => [
      { name: `${s.backend}-base`, before: activate(s.backend), run: () => s.base.forward({ ids, output: 'last-logits' }) },
      { name: `${s.backend}-routed`, before: activate(s.backend), run: () => s.routed.forward({ ids, output: 'last-logits' }) },
    ]);
    const next = (cache: KVCache): number[][] => randomIds(sizes.batch, 1, modelOptions.vocabSize, 1000 + cache.length);
    const decodeCases: Case[] = sides.flatMap((s) => [
      {
        name: `${s.backend}-base`,
        before: activate(s.backend),
        run: () => s.base.forward({ ids: next(s.caches.base), cache: s.caches.base, output: 'last-logits' }),
      },
      {
        name: `${s.backend}-routed`,
        before: activate(s.backend),
        run: () => s.routed.forward({ ids: next(s.caches.routed), cache: s.caches.routed, output: 'last-logits' }),
      },
    ]);
    for (const [phase, cases, options] of [
      ['prefill', prefillCases, sizes.prefill],
      ['decode', decodeCases, { ...sizes.decode, maxWarmup: decodeWarmupCap(modelOptions.maxSeqLen, sizes.tokens, sizes.decode.rounds) }],
    ] as const) {
      const timings = await compare(cases, options);
      samples[phase] = { wall: timings.samples, cpu: timings.cpuSamples };
      const what = phase === 'prefill' ? `${sizes.batch}×${sizes.tokens} prefill` : `decode step, batch ${sizes.batch}`;
      for (const s of sides.filter((x) => x.backend !== 'wasm')) {
        ratios.push(
          ratioResult(timings, `backends/${phase}-routed-wasm-vs-${s.backend}`, `routed ${what}: wasm / ${s.backend}`, 'wasm-routed', `${s.backend}-routed`),
        );
        ratios.push(ratioResult(timings, `backends/${phase}-base-wasm-vs-${s.backend}`, `base ${what}: wasm / ${s.backend}`, 'wasm-base', `${s.backend}-base`));
      }
      for (const s of sides) {
        ratios.push(
          ratioResult(timings, `backends/${phase}-overhead-${s.backend}`, `${what} routed/base on ${s.backend}`, `${s.backend}-routed`, `${s.backend}-base`),
        );
      }
    }
    for (const r of ratios) logRatio(r);
  } finally {
    for (const s of sides) {
      await useBackend(s.backend === 'tensorflow' ? 'tensorflow' : s.backend);
      s.caches.base.dispose();
      s.caches.routed.dispose();
      s.routed.dispose();
      s.base.dispose();
    }
    await useBackend('wasm');
  }
  return {
    name: 'backends',
    description: 'The same routed forward (E=8, k=2, r=8, all sites) on wasm vs cpu (tensorflow when it loads), with the base on each',
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: { model: modelOptions, experts: EXPERTS, k: K, rank: RANK, ...sizes, backends },
    ratios,
    details: { samplesMs: samples, skipped },
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

if (isMain(import.meta.url)) {
  const result = await run(parseArgs());
  console.log(`wrote ${writeResult(result)}`);
}
