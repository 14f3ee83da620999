/**
 * Serving throughput on every core: a burst of concurrent generation requests served by a RuntimePool of one
 * worker against one of N workers (default: the available parallelism), the same pool code on both sides,
 * each worker one wasm thread with its own replica of the base. The ratio is wall(1 worker) / wall(N
 * workers) for the whole burst — a throughput speed-up, higher is better (the target: ≥ 1.8 for 32
 * concurrent requests on 2 cores). Rounds alternate which side goes first (ABBA), so load from other processes
 * hits both; the 1-minute load average is recorded before and after (above the core count, other processes
 * took cores the N-worker side needed and the speed-up is understated). The burst mixes the base and a routed
 * target (E = 8 LoRA experts of rank 8, top-2, every site); both sides must give the same greedy tokens.
 *
 *   node --import tsx benchmarks/serve-pool.ts [--quick]     (part of `npm run bench`)
 *
 * The same pools then time one prefill request of 4 × 128 rows (`forward`, base and routed): the N-worker pool
 * splits its rows over the workers (src/runtime/pool.ts), so the ratio is the latency speed-up of a single
 * request on every core (the target: ≥ 1.7). Both sides must give the same logits.
 *
 * N is max(2, available parallelism).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { builtinRouters } from '../routers/index.js';
import { loadBaseModel } from '../src/base/checkpoints/load-model.js';
import { saveRoutedModel } from '../src/io/routed-model-dir.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import { RuntimePool } from '../src/runtime/pool.js';
import type { Selection } from '../src/runtime/types.js';
import {
  type BenchArgs,
  type BenchResult,
  compareAsync,
  isMain,
  logRatio,
  machineInfo,
  parseArgs,
  QUICK_WARMUP_MS,
  ratioResult,
  round,
  useBackend,
  writeResult,
} from './lib/harness.js';
import { BENCH_MODEL, QUICK_MODEL, randomIds, writeRandomLlamaDir } from './lib/random-model.js';
import { routedLoraSpec } from './lib/specs.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const FULL = { requests: 32, promptTokens: 16, newTokens: 16, rounds: 4, warmup: 1 };
const QUICK = { requests: 8, promptTokens: 8, newTokens: 4, rounds: 2, warmup: 1 };
/** One prefill request of several rows (the 4 × 128), which the pool splits over its workers. */
const PREFILL_FULL = { batch: 4, tokens: 128, rounds: 7, warmup: 1 };
const PREFILL_QUICK = { batch: 2, tokens: 16, rounds: 2, warmup: 1 };
const SPEC = routedLoraSpec({ experts: 8, k: 2, r: 8 });
// ---------------------------------------------------------------------------------------------------------

export async function run(args: BenchArgs): Promise<BenchResult> {
  const started = performance.now();
  const sizes = args.quick ? QUICK : FULL;
  const modelOptions = args.quick ? QUICK_MODEL : BENCH_MODEL;
  const workers = Math.max(2, availableParallelism());
  const dir = await mkdtemp(join(tmpdir(), 'routed-serve-pool-'));
  try {
    await useBackend('wasm');
    const modelDir = await writeRandomLlamaDir(join(dir, 'base'), modelOptions);
    const { model: base } = await loadBaseModel(modelDir);
    const adapted = AdaptedModel.create(base, SPEC, { routers: builtinRouters() });
    await saveRoutedModel(join(dir, 'moe'), adapted);
    adapted.dispose();
    base.dispose();

    const start = async (count: number) => {
      const pool = await RuntimePool.create({ base: { model: modelDir }, workers: count, batching: { windowMs: 2, maxBatchSize: 8 } });
      await pool.load('moe', { kind: 'routed', dir: join(dir, 'moe') });
      return pool;
    };
    const [one, many] = [await start(1), await start(workers)];
    const prompts = randomIds(sizes.requests, sizes.promptTokens, modelOptions.vocabSize, 11);
    const selects: Selection[] = prompts.map((_, i) => (i % 2 === 0 ? 'base' : { routed: 'moe' }));
    const burst = (pool: RuntimePool) => () =>
      Promise.all(prompts.map((ids, i) => pool.generate(ids, { select: selects[i] as Selection, maxNewTokens: sizes.newTokens, temperature: 0, eosId: null })));
    const [a, b] = [await burst(one)(), await burst(many)()];
    const mismatches = a.filter((s, i) => JSON.stringify(s.tokens) !== JSON.stringify(b[i]?.tokens)).length;
    const loadBefore = loadavg()[0] ?? 0;
    const timings = await compareAsync(
      [
        { name: '1 worker', run: async () => void (await burst(one)()) },
        { name: `${workers} workers`, run: async () => void (await burst(many)()) },
      ],
      { warmup: sizes.warmup, rounds: sizes.rounds, ...(args.quick ? { warmupMs: QUICK_WARMUP_MS } : {}) },
    );
    const loadAfter = loadavg()[0] ?? 0;
    const prefill = await comparePrefill(one, many, workers, args, modelOptions.vocabSize);
    await Promise.all([one.close(), many.close()]);
    const ratio = ratioResult(
      timings,
      'serve/pool-burst',
      `serving throughput, ${sizes.requests} concurrent generations: ${workers} workers vs 1`,
      '1 worker',
      `${workers} workers`,
      {
        target: 1.8,
        higherIsBetter: true,
        note: `speed-up (wall of 1 worker / wall of ${workers}); load average ${round(loadBefore, 2)} → ${round(loadAfter, 2)} on ${availableParallelism()} cores`,
      },
    );
    logRatio(ratio);
    const tokens = sizes.requests * sizes.newTokens;
    console.log(
      `tokens/s: 1 worker ${round((tokens / ratio.numeratorMs) * 1000, 1)}, ${workers} workers ${round((tokens / ratio.denominatorMs) * 1000, 1)}; greedy mismatches between the sides: ${mismatches}`,
    );
    if (mismatches > 0) throw new Error(`${mismatches} of ${sizes.requests} generations differ between 1 and ${workers} workers`);
    return {
      name: 'serve-pool',
      description: 'RuntimePool throughput: a burst of concurrent generations on 1 worker vs N workers (one wasm thread each)',
      quick: args.quick,
      date: new Date().toISOString(),
      machine: machineInfo(),
      constants: { ...sizes, workers, model: modelOptions, spec: 'E=8 k=2 r=8 all sites' },
      ratios: [ratio, ...prefill.ratios],
      details: { loadBefore, loadAfter, mismatches, samples: timings.samples, prefill: prefill.details },
      seconds: round((performance.now() - started) / 1000, 1),
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** One multi-row forward per call, base and routed, on the 1-worker pool against the N-worker pool. */
async function comparePrefill(one: RuntimePool, many: RuntimePool, workers: number, args: BenchArgs, vocabSize: number) {
  const sizes = args.quick ? PREFILL_QUICK : PREFILL_FULL;
  const ids = randomIds(sizes.batch, sizes.tokens, vocabSize, 13);
  const targets: { readonly name: string; readonly select: Selection }[] = [
    { name: 'base', select: 'base' },
    { name: 'routed', select: { routed: 'moe' } },
  ];
  let maxDifference = 0;
  for (const { select } of targets) {
    const [a, b] = [await one.forward(ids, { select }), await many.forward(ids, { select })]; // [B, T, V] each
    for (let i = 0; i < a.logits.length; i++) maxDifference = Math.max(maxDifference, Math.abs((a.logits[i] ?? 0) - (b.logits[i] ?? 0)));
  }
  if (!(maxDifference <= 1e-4)) throw new Error(`prefill logits differ between 1 and ${workers} workers by ${maxDifference}`);
  const loadBefore = loadavg()[0] ?? 0;
  const timings = await compareAsync(
    targets.flatMap(({ name, select }) => [
      { name: `${name} 1 worker`, run: async () => void (await one.forward(ids, { select })) },
      { name: `${name} ${workers} workers`, run: async () => void (await many.forward(ids, { select })) },
    ]),
    { warmup: sizes.warmup, rounds: sizes.rounds, ...(args.quick ? { warmupMs: QUICK_WARMUP_MS } : {}) },
  );
  const loadAfter = loadavg()[0] ?? 0;
  const ratios = targets.map(({ name }) => {
    const ratio = ratioResult(
      timings,
      `serve/pool-prefill-${name}`,
      `one ${name} prefill request of ${sizes.batch} × ${sizes.tokens}: rows split over ${workers} workers vs 1`,
      `${name} 1 worker`,
      `${name} ${workers} workers`,
      {
        target: 1.7,
        higherIsBetter: true,
        note: `latency speed-up; load average ${round(loadBefore, 2)} → ${round(loadAfter, 2)} on ${availableParallelism()} cores`,
      },
    );
    logRatio(ratio);
    return ratio;
  });
  console.log(`prefill logits: max |1 worker − ${workers} workers| = ${maxDifference}`);
  return { ratios, details: { ...sizes, maxDifference, loadBefore, loadAfter, samples: timings.samples } };
}

if (isMain(import.meta.url)) {
  const result = await run(parseArgs());
  writeResult(result);
}
