/**
 * Serving throughput with many resident adapters: a RoutedRuntime with 1,000 PEFT LoRA adapters registered
 * and resident (rank 8 on q and v of every layer, ~0.5 MiB each, each loaded from its own PEFT directory
 * with its own weights) against a RoutedRuntime with 1 registered adapter, both on the same base, both
 * serving the same requests for ONE adapter — the same weights (the same directory) in both runtimes; in
 * the 1,000-adapter runtime it is the last one registered (so a scan over registered targets in insertion
 * order would walk all of them).
 *
 * One timed call is a burst of REQUESTS concurrent forward requests (PROMPT-token prompts, full logits back,
 * like `score`), i.e. REQUESTS / maxBatchSize passes; throughput = REQUESTS / time. The reported ratio is
 * throughput(1,000) / throughput(1) = time(1) / time(1,000): higher is better, target ≥ 0.95. Sequential
 * single requests (each awaited before the next: per-request overhead and the batching window weigh most)
 * are a second row.
 *
 * The two runtimes are timed interleaved in one process, so what the ratio isolates is per-request work in
 * the runtime that grows with the number of registered targets. Process-wide effects of holding 1,000
 * adapters (a larger JS and wasm heap) touch both sides alike; to expose them, the 1-adapter runtime is
 * also timed BEFORE the 1,000 are loaded (sequential, so drift-sensitive; in details.processWide).
 *
 * The 1,000-adapter runtime gets a memory budget that admits every adapter (ADAPTERS × bytes + 25%): the
 * benchmark checks after loading and again after timing that all are resident, none was evicted or
 * reloaded, and the resident bytes are exactly ADAPTERS × the adapter's bytes.
 */
import * as tf from '@tensorflow/tfjs';
import { RoutedRuntime } from '../src/runtime/runtime.js';
import type { BatchEvent } from '../src/runtime/types.js';
import {
  assertNoLeak,
  compareAsync,
  isMain,
  logRatio,
  machineInfo,
  median,
  parseArgs,
  ratioResult,
  round,
  useBackend,
  writeResult,
  type BenchArgs,
  type BenchResult,
  type RatioResult,
} from './lib/harness.js';
import { loraBytes, writeLoraDirs } from './lib/peft-dirs.js';
import { BENCH_MODEL, QUICK_MODEL, randomIds, randomLlama } from './lib/random-model.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const RANK = 8;
const SITES = ['attn.q', 'attn.v'] as const;
/** Runtime batching (the defaults). */
const BATCHING = { windowMs: 2, maxBatchSize: 16 };
/** `sequential` requests per timed call: calls of ~8 short requests came out bimodal (±30%, both sides alike), so a call spans ~24. */
const FULL = { adapters: 1000, requests: 32, prompt: 16, sequential: 24, sequentialPrompt: 8, warmup: 2, rounds: 12, before: 5 };
const QUICK = { adapters: 50, requests: 16, prompt: 8, sequential: 4, sequentialPrompt: 4, warmup: 1, rounds: 3, before: 2 };
/** Budget headroom above ADAPTERS × the adapter's bytes. */
const BUDGET_HEADROOM = 1.25;
/** throughput(1,000) / throughput(1) must reach this (issue #7 item 5). */
const TARGET = 0.95;
// ---------------------------------------------------------------------------------------------------------

export async function run(args: BenchArgs): Promise<BenchResult> {
  const started = performance.now();
  await useBackend('wasm');
  const sizes = args.quick ? QUICK : FULL;
  const modelOptions = args.quick ? QUICK_MODEL : BENCH_MODEL;
  const startTensors = tf.memory().numTensors;
  const base = randomLlama(modelOptions);
  const bytesPerAdapter = loraBytes(base, RANK, SITES);
  const budget = Math.ceil(sizes.adapters * bytesPerAdapter * BUDGET_HEADROOM);
  const one = RoutedRuntime.create({ base, batching: BATCHING, memoryBudgetBytes: budget });
  const many = RoutedRuntime.create({ base, batching: BATCHING, memoryBudgetBytes: budget });
  const passes: BatchEvent[] = [];
  const subscriptions = [one.batches$.subscribe((e) => passes.push(e)), many.batches$.subscribe((e) => passes.push(e))];
  const ratios: RatioResult[] = [];
  let removeDirs: (() => Promise<void>) | undefined;
  const details: Record<string, unknown> = {};
  try {
    const t0 = performance.now();
    const peft = await writeLoraDirs(base, { count: sizes.adapters, r: RANK, sites: SITES, seed: 1 });
    removeDirs = () => peft.remove();
    const writeSeconds = (performance.now() - t0) / 1000;
    const served = sizes.adapters - 1;
    const servedDir = peft.dirs[served] as string;
    const servedName = `lora${served}`;
    const info = await one.load(servedName, { kind: 'peft', dir: servedDir });
    if (info.bytes !== bytesPerAdapter) throw new Error(`adapter bytes ${info.bytes}, expected ${bytesPerAdapter}`);

    const prompts = randomIds(sizes.requests, sizes.prompt, modelOptions.vocabSize); // [R][P]
    const shortPrompts = randomIds(sizes.sequential, sizes.sequentialPrompt, modelOptions.vocabSize, 11); // [S][p]
    const burst = (runtime: RoutedRuntime) => async (): Promise<void> => {
      await Promise.all(prompts.map((prompt) => runtime.forward([prompt], { select: { adapter: servedName } })));
    };
    const sequential = (runtime: RoutedRuntime) => async (): Promise<void> => {
      for (const prompt of shortPrompts) await runtime.forward([prompt], { select: { adapter: servedName } });
    };

    // The 1-adapter runtime before anything else is resident (process-wide effects, see the header).
    const before = await compareAsync([{ name: 'burst', run: burst(one) }], { warmup: sizes.warmup, rounds: sizes.before });

    const t1 = performance.now();
    for (const [i, dir] of peft.dirs.entries()) await many.load(`lora${i}`, { kind: 'peft', dir });
    const loadSeconds = (performance.now() - t1) / 1000;
    const checkResident = (when: string): Record<string, number> => {
      const stats = many.stats();
      const resident = stats.targets.filter((t) => t.resident).length;
      if (
        stats.targets.length !== sizes.adapters ||
        resident !== sizes.adapters ||
        stats.evictions !== 0 ||
        stats.reloads !== 0 ||
        stats.residentBytes !== sizes.adapters * bytesPerAdapter
      ) {
        throw new Error(
          `${when}: ${stats.targets.length} targets, ${resident} resident, ${stats.evictions} evictions, ${stats.reloads} reloads, ${stats.residentBytes} bytes`,
        );
      }
      return {
        targets: stats.targets.length,
        resident,
        evictions: stats.evictions,
        reloads: stats.reloads,
        residentBytes: stats.residentBytes,
        budgetBytes: budget,
      };
    };
    details['afterLoad'] = checkResident('after loading');
    console.log(
      `  ${sizes.adapters} adapters written in ${writeSeconds.toFixed(1)} s, loaded in ${loadSeconds.toFixed(1)} s: ${((sizes.adapters * bytesPerAdapter) / 2 ** 20).toFixed(0)} MiB resident, budget ${(budget / 2 ** 20).toFixed(0)} MiB, 0 evictions`,
    );

    const first = passes.length;
    const timings = await compareAsync(
      [
        { name: `1 registered`, run: burst(one) },
        { name: `${sizes.adapters} registered`, run: burst(many) },
        { name: `1 registered, sequential`, run: sequential(one) },
        { name: `${sizes.adapters} registered, sequential`, run: sequential(many) },
      ],
      sizes,
    );
    // Every burst ran as full passes of maxBatchSize requests; every sequential request alone.
    const burstPasses = passes.slice(first).filter((p) => p.requests > 1);
    if (burstPasses.some((p) => p.requests !== Math.min(BATCHING.maxBatchSize, sizes.requests) || p.groups !== 1)) {
      throw new Error(`unexpected burst passes: ${JSON.stringify(burstPasses.slice(0, 4))}`);
    }
    details['afterTiming'] = checkResident('after timing');
    details['passes'] = { total: passes.length - first, burstPassRequests: burstPasses[0]?.requests ?? 0 };
    const label = `serving one adapter, ${sizes.adapters} registered / 1 registered, throughput`;
    ratios.push(
      ratioResult(
        timings,
        'resident/burst',
        `${label} (${sizes.requests} concurrent ${sizes.prompt}-token requests)`,
        '1 registered',
        `${sizes.adapters} registered`,
        { target: TARGET, higherIsBetter: true },
      ),
      ratioResult(
        timings,
        'resident/sequential',
        `${label} (${sizes.sequential} sequential ${sizes.sequentialPrompt}-token requests)`,
        '1 registered, sequential',
        `${sizes.adapters} registered, sequential`,
        { higherIsBetter: true },
      ),
    );
    for (const r of ratios) logRatio(r);
    const perSecond = (name: string, n: number, t: typeof timings): number => round((1000 * n) / median(t.samples[name] ?? []), 2);
    details['requestsPerSecond'] = {
      burst1: perSecond('1 registered', sizes.requests, timings),
      burstMany: perSecond(`${sizes.adapters} registered`, sizes.requests, timings),
      sequential1: perSecond('1 registered, sequential', sizes.sequential, timings),
      sequentialMany: perSecond(`${sizes.adapters} registered, sequential`, sizes.sequential, timings),
    };
    const beforeMs = median(before.samples['burst'] ?? []);
    const afterMs = median(timings.samples['1 registered'] ?? []);
    details['processWide'] = {
      note: '1-registered runtime, burst: median ms before the other runtime loaded its adapters vs during the interleaved rounds (sequential phases)',
      beforeMs: round(beforeMs, 2),
      afterMs: round(afterMs, 2),
      throughputAfterOverBefore: round(beforeMs / afterMs, 3),
      samplesBeforeMs: before.samples['burst'],
    };
    console.log(
      `  process-wide: the 1-adapter runtime's burst took ${beforeMs.toFixed(1)} ms before the others were loaded, ${afterMs.toFixed(1)} ms after (throughput ×${(beforeMs / afterMs).toFixed(3)})`,
    );
    console.log(`  requests/s:`, details['requestsPerSecond']);
    details['samplesMs'] = { wall: timings.samples, cpu: timings.cpuSamples, warmupRounds: timings.warmup };
    details['setupSeconds'] = { writeDirs: round(writeSeconds, 1), load: round(loadSeconds, 1) };
  } finally {
    for (const s of subscriptions) s.unsubscribe();
    one.dispose();
    many.dispose();
    await Promise.all([one.idle(), many.idle()]);
    base.dispose();
    await removeDirs?.();
  }
  assertNoLeak(startTensors, 'resident-adapters');
  return {
    name: 'resident-adapters',
    description: `RoutedRuntime requests for one adapter with ${sizes.adapters} PEFT LoRA adapters (r=8, q,v) resident / with 1: throughput ratio (higher is better)`,
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: {
      model: modelOptions,
      rank: RANK,
      sites: SITES,
      batching: BATCHING,
      bytesPerAdapter,
      budgetBytes: budget,
      budgetHeadroom: BUDGET_HEADROOM,
      ...sizes,
    },
    ratios,
    details,
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

if (isMain(import.meta.url)) {
  const result = await run(parseArgs());
  console.log(`wrote ${writeResult(result)}`);
}
