/**
 * Mixed-adapter batching in the RoutedRuntime: 16 concurrent generation requests that each name a DIFFERENT
 * LoRA adapter (16 PEFT adapters, rank 8, loaded from PEFT directories) against the same 16 requests all
 * naming ONE adapter; the time for the whole batch, i.e. what a server pays to answer the 16 requests.
 *
 * Each request generates NEW_TOKENS tokens (greedy, no early stop) after its own PROMPT-token prompt: one
 * prefill forward over 16 × PROMPT tokens, then NEW_TOKENS − 1 KV-cached decode steps at batch 16. The same
 * calls with one new token (the prefill forward alone) are timed in the same rounds, so the gap can be split
 * into prefill and decode (reported as extra rows).
 *
 * Target sites: q and v of every layer (PEFT's default `target_modules` for llama, the typical user's
 * adapter) — the targeted row; all seven linear sites as a second, heavier configuration.
 *
 * Both cases are ONE forward pass per step over all 16 rows: every timed call is checked against the
 * runtime's `batches$` events (exactly one pass with 16 requests, 16 rows, and 16 selection groups for the
 * mixed case, 1 for the single case; the benchmark fails otherwise). With 16 groups the batcher runs the pass
 * through MixedHooks (src/runtime/mixed-hooks.ts), which gives LoRA-only groups one choice each of a LoRA bank
 * (src/adapters/lora/bank.ts: per adapted site, every row's own LoRA delta in one product over the concatenated
 * adapters, membership gates, no row copies);
 * with one group covering all rows it runs the adapter's hooks directly (passHooks), exactly a solo forward at
 * batch 16. The runtime's default batching (window 2 ms, at most 16 per pass) is used; the 16 requests arrive
 * in one tick, so the pass starts when the 16th arrives.
 *
 * After the timed rounds, one prefill pass per case runs under tf.profile (kernel counts and time by kernel
 * name, in the JSON's details) to show where the mixed pass's extra time goes.
 */
import * as tf from '@tensorflow/tfjs';
import { RoutedRuntime } from '../src/runtime/runtime.js';
import type { BatchEvent, Selection } from '../src/runtime/types.js';
import {
  assertNoLeak,
  compareAsync,
  isMain,
  kernelTimes,
  logRatio,
  machineInfo,
  medianMs,
  parseArgs,
  ratioResult,
  round,
  useBackend,
  writeResult,
  type BenchArgs,
  type BenchResult,
  type RatioResult,
} from './lib/harness.js';
import { writeLoraDirs } from './lib/peft-dirs.js';
import { BENCH_MODEL, QUICK_MODEL, randomIds, randomLlama } from './lib/random-model.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const REQUESTS = 16;
const RANK = 8;
/** Site sets; `targeted` carries the issue's target. */
const SITE_SETS: readonly { name: string; sites: readonly string[]; targeted: boolean }[] = [
  { name: 'q,v', sites: ['attn.q', 'attn.v'], targeted: true },
  { name: 'all seven sites', sites: ['attn.q', 'attn.k', 'attn.v', 'attn.o', 'mlp.gate', 'mlp.up', 'mlp.down'], targeted: false },
];
const FULL = { prompt: 32, newTokens: 8, warmup: 1, rounds: 8 };
const QUICK = { prompt: 8, newTokens: 3, warmup: 1, rounds: 2 };
/** Kernel names listed per profiled prefill pass. */
const TOP_KERNELS = 6;
/** mixed/single whole-batch time target (issue #7 item 4). */
const TARGET = 1.2;
// ---------------------------------------------------------------------------------------------------------

/** Kernel time by kernel name during one profiled call (tf.profile kernelTimeMs: wall time per kernel on wasm). */
interface KernelProfile {
  readonly wallMs: number;
  readonly kernelMs: number;
  readonly kernels: number;
  readonly top: readonly { name: string; calls: number; ms: number }[];
}

async function profileCall(call: () => Promise<void>): Promise<KernelProfile> {
  const start = performance.now();
  const profile = await tf.profile(async () => {
    await call();
  });
  const wallMs = performance.now() - start;
  const { kernelMs, top } = kernelTimes(profile.kernels, TOP_KERNELS, 1);
  return { wallMs: round(wallMs, 1), kernelMs: round(kernelMs, 1), kernels: profile.kernels.length, top };
}

interface PassCheck {
  readonly calls: number;
  readonly events: readonly BatchEvent[];
}

export async function run(args: BenchArgs): Promise<BenchResult> {
  const started = performance.now();
  await useBackend('wasm');
  const sizes = args.quick ? QUICK : FULL;
  const modelOptions = args.quick ? QUICK_MODEL : BENCH_MODEL;
  const startTensors = tf.memory().numTensors;
  const base = randomLlama(modelOptions);
  const runtime = RoutedRuntime.create({ base });
  const events: BatchEvent[] = [];
  const subscription = runtime.batches$.subscribe((e) => events.push(e));
  const prompts = randomIds(REQUESTS, sizes.prompt, modelOptions.vocabSize); // [16][P]
  const ratios: RatioResult[] = [];
  const samples: Record<string, unknown> = {};
  const passChecks: Record<string, PassCheck> = {};
  const perStep: Record<string, unknown> = {};
  const profiles: Record<string, { mixed: KernelProfile; single: KernelProfile }> = {};
  const removers: (() => Promise<void>)[] = [];
  try {
    for (const [setIndex, set] of SITE_SETS.entries()) {
      const peft = await writeLoraDirs(base, { count: REQUESTS, r: RANK, sites: set.sites, seed: 100 * (setIndex + 1) });
      removers.push(() => peft.remove());
      const names = peft.dirs.map((_, i) => `s${setIndex}-lora${i}`);
      for (const [i, dir] of peft.dirs.entries()) await runtime.load(names[i] as string, { kind: 'peft', dir });
      const mixed: Selection[] = names.map((adapter) => ({ adapter }));
      const single: Selection[] = names.map(() => ({ adapter: names[0] as string }));

      /** The 16 requests at once; resolves when all have ended. Checks they ran as one pass. */
      const burst = (selections: readonly Selection[], newTokens: number, label: string) => async (): Promise<void> => {
        const first = events.length;
        const done = await Promise.all(
          prompts.map((prompt, i) => runtime.generate(prompt, { select: selections[i] as Selection, maxNewTokens: newTokens, temperature: 0, eosId: null })),
        );
        const seen = events.slice(first);
        const groups = new Set(selections.map((s) => JSON.stringify(s))).size;
        const one = seen[0];
        if (seen.length !== 1 || one === undefined || one.kind !== 'generate' || one.requests !== REQUESTS || one.rows !== REQUESTS || one.groups !== groups) {
          throw new Error(`${label}: expected one generate pass of ${REQUESTS} requests in ${groups} groups, saw ${JSON.stringify(seen)}`);
        }
        if (done.some((d) => d.tokens.length !== newTokens)) throw new Error(`${label}: a request ended early`);
        const check = passChecks[label] ?? { calls: 0, events: [] };
        passChecks[label] = { calls: check.calls + 1, events: check.events.length === 0 ? [one] : check.events };
      };
      // Sanity: request 0 selects adapter 0 in both cases, so its greedy tokens must agree.
      const probe = async (selections: readonly Selection[]): Promise<number[]> =>
        (
          await Promise.all(
            prompts.map((prompt, i) => runtime.generate(prompt, { select: selections[i] as Selection, maxNewTokens: 2, temperature: 0, eosId: null })),
          )
        )[0]?.tokens ?? [];
      const [mixedTokens, singleTokens] = [await probe(mixed), await probe(single)];
      if (JSON.stringify(mixedTokens) !== JSON.stringify(singleTokens)) throw new Error(`${set.name}: request 0 differs between the mixed and single passes`);

      const gen = `generate ${sizes.prompt}+${sizes.newTokens}`;
      const timings = await compareAsync(
        [
          { name: 'mixed', run: burst(mixed, sizes.newTokens, `${set.name}/mixed/${gen}`), warm: burst(mixed, 2, `${set.name}/mixed/warm`) },
          { name: 'single', run: burst(single, sizes.newTokens, `${set.name}/single/${gen}`), warm: burst(single, 2, `${set.name}/single/warm`) },
          { name: 'mixed-prefill', run: burst(mixed, 1, `${set.name}/mixed/prefill`) },
          { name: 'single-prefill', run: burst(single, 1, `${set.name}/single/prefill`) },
        ],
        sizes,
      );
      samples[set.name] = { wall: timings.samples, cpu: timings.cpuSamples, warmupRounds: timings.warmup };
      const tag = set.targeted ? 'qv' : 'all';
      const what = `16 requests, r=${RANK} LoRA on ${set.name}`;
      const rows = [
        ratioResult(
          timings,
          `mixed/${tag}-generate`,
          `${what}: 16 adapters / 1 adapter, batch time (${sizes.prompt}-token prompts + ${sizes.newTokens} new tokens)`,
          'mixed',
          'single',
          set.targeted ? { target: TARGET } : {},
        ),
        ratioResult(
          timings,
          `mixed/${tag}-prefill`,
          `${what}: 16 adapters / 1 adapter, prefill only (${REQUESTS}×${sizes.prompt} tokens)`,
          'mixed-prefill',
          'single-prefill',
        ),
      ];
      // The decode steps' share: (generate − prefill) / (NEW_TOKENS − 1) per side, from the medians.
      const steps = sizes.newTokens - 1;
      const stepMs = (whole: string, prefill: string): number => (medianMs(timings, whole) - medianMs(timings, prefill)) / steps;
      perStep[set.name] = {
        decodeSteps: steps,
        mixedStepMs: round(stepMs('mixed', 'mixed-prefill'), 2),
        singleStepMs: round(stepMs('single', 'single-prefill'), 2),
      };
      console.log(
        `  ${set.name}: decode step at batch 16 ≈ ${stepMs('mixed', 'mixed-prefill').toFixed(1)} ms mixed, ${stepMs('single', 'single-prefill').toFixed(1)} ms single (medians, generate − prefill)`,
      );
      for (const r of rows) {
        ratios.push(r);
        logRatio(r);
      }
      // Where the mixed pass's extra time goes: one profiled prefill pass per case (outside the timed rounds).
      const mixedProfile = await profileCall(burst(mixed, 1, `${set.name}/mixed/profile`));
      const singleProfile = await profileCall(burst(single, 1, `${set.name}/single/profile`));
      profiles[set.name] = { mixed: mixedProfile, single: singleProfile };
      for (const [side, p] of [
        ['mixed', mixedProfile],
        ['single', singleProfile],
      ] as const) {
        console.log(
          `  ${set.name} prefill under tf.profile, ${side}: ${p.kernels} kernels, ${p.kernelMs} ms in kernels; ${p.top.map((t) => `${t.name} ${t.calls}× ${t.ms} ms`).join(', ')}`,
        );
      }
    }
    const stats = runtime.stats();
    if (stats.evictions !== 0 || stats.reloads !== 0) throw new Error(`targets were evicted (${stats.evictions}) or reloaded (${stats.reloads})`);
  } finally {
    subscription.unsubscribe();
    runtime.dispose();
    await runtime.idle();
    base.dispose();
    for (const remove of removers) await remove();
  }
  assertNoLeak(startTensors, 'mixed-adapter-batch');
  return {
    name: 'mixed-adapter-batch',
    description:
      '16 concurrent RoutedRuntime generations naming 16 different PEFT LoRA adapters (r=8) / the same 16 naming one adapter: time for the whole batch (one pass), q,v and all seven sites',
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: {
      model: modelOptions,
      requests: REQUESTS,
      rank: RANK,
      siteSets: SITE_SETS,
      targetedSites: SITE_SETS.find((s) => s.targeted)?.sites,
      batching: 'runtime defaults (windowMs 2, maxBatchSize 16)',
      sampling: 'greedy, eosId null',
      ...sizes,
    },
    ratios,
    details: { samplesMs: samples, decodeStepEstimate: perStep, prefillProfiles: profiles, passChecks },
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

if (isMain(import.meta.url)) {
  const result = await run(parseArgs());
  console.log(`wrote ${writeResult(result)}`);
}
