/**
 * Kernels launched by ONE routed site group (the group of the named site: q/k/v, gate/up, or down alone), per
 * execution strategy, counted with tf.profile around a single groupOutputs hook call on an [N, D] input
 * (model.hooks(), then begin/beginLayer as a forward would call them); and kernels per whole forward, routed
 * vs base. Also which kernels dominate the time of one
 * routed decode step (tf.profile kernelTimeMs: wall time of each kernel call on wasm) and how much of the
 * step is spent outside kernels (op dispatch, tidy bookkeeping, host-side work).
 *
 * The first group call of a forward also runs the routers of the per-site path; a second call on the same group
 * reuses their decisions, so `router` = first − second and `combine` = second there (the fused path decides
 * in every call).
 *
 * Shape letters: N rows, D width, E experts, K experts per row, r rank.
 */
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../routers/index.js';
import type { ForwardContext } from '../src/base/hooks.js';
import type { SiteName } from '../src/base/sites.js';
import type { Transformer } from '../src/base/transformer.js';
import type { ExecutionStrategy } from '../src/routing/routed-layer.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import { isMain, kernelTimes, machineInfo, parseArgs, round, useBackend, writeResult, type BenchArgs, type BenchResult } from './lib/harness.js';
import { BENCH_MODEL, QUICK_MODEL, randomIds, randomLlama } from './lib/random-model.js';
import { routedLoraSpec } from './lib/specs.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const RANK = 8;
/** (experts, k) configurations whose per-site kernels are counted, each under both strategies. */
const CONFIGS: readonly { experts: number; k: number }[] = [
  { experts: 8, k: 2 },
  { experts: 8, k: 1 },
  { experts: 32, k: 2 },
  { experts: 64, k: 2 },
];
const STRATEGIES: readonly ExecutionStrategy[] = ['dense', 'grouped'];
/** Rows N of the site input: a decode step at batch 1, and a prefill of 4 × 128. */
const ROWS = { full: [1, 512], quick: [1, 32] } as const;
/** Sites counted (one of each input/output width). */
const SITES: readonly SiteName[] = ['attn.q', 'mlp.gate', 'mlp.down'];
/** Whole-forward counts: batch × tokens of a prefill, and a decode step after it. */
const FORWARD = { batch: 1, tokens: 8 };
/** Kernel-time profile of one decode step (batch 1) after a prefill of this many tokens. */
const PROFILE_PREFILL = 32;
/** Kernel-time profile of one prefill forward of batch × tokens (128 tokens as in prefill-overhead, one row to keep it short). */
const PROFILE_FORWARD = { full: { batch: 1, tokens: 128 }, quick: { batch: 2, tokens: 16 } } as const;
/** Each profile is repeated this many times and the run with the least wall time kept (single runs are noisy). */
const PROFILE_REPEATS = 3;
/** Kernels listed in the time breakdown. */
const TOP_KERNELS = 12;
// ---------------------------------------------------------------------------------------------------------

interface KernelCount {
  readonly total: number;
  readonly byName: Record<string, number>;
}

function countKernels(kernels: readonly { name: string }[]): KernelCount {
  const byName: Record<string, number> = {};
  for (const k of kernels) byName[k.name] = (byName[k.name] ?? 0) + 1;
  return { total: kernels.length, byName: Object.fromEntries(Object.entries(byName).sort((a, b) => b[1] - a[1])) };
}

function siteWidths(base: Transformer, site: SiteName): { inFeatures: number; outFeatures: number } {
  const w = base.weights.layers[0]?.sites[site]?.weight;
  if (w === undefined) throw new Error(`no site ${site}`);
  return { inFeatures: w.shape[0], outFeatures: w.shape[1] }; // sites store W as [I, O]
}

/** Kernels of the first (router + combine) and second (combine only) groupOutputs call at the site's group. */
async function siteKernels(
  model: AdaptedModel,
  site: SiteName,
  rows: number,
  strategy: ExecutionStrategy,
): Promise<{ first: KernelCount; second: KernelCount; firstMs: number; secondMs: number }> {
  const hooks = model.hooks({ routing: { strategy } });
  if (hooks?.groupOutputs === undefined || hooks.begin === undefined) throw new Error('routed model has no site hooks');
  const group = model.base.groups.find((g) => g.sites.includes(site));
  if (group === undefined) throw new Error(`no site group holds ${site}`);
  const { inFeatures } = siteWidths(model.base, site);
  const engine = tf.engine();
  engine.startScope();
  try {
    const ids = randomIds(1, rows, model.base.config.vocabSize);
    const context: ForwardContext = { batch: 1, tokens: rows, ids, mask: tf.ones([1, rows]), pastLength: 0, cache: undefined, training: false };
    hooks.begin(context);
    hooks.beginLayer?.(0, tf.randomNormal([rows, model.base.config.dim], 0, 1, 'float32', 1));
    const x = tf.randomNormal<tf.Rank.R2>([rows, inFeatures], 0, 1, 'float32', 2); // [N, I]
    const ys = group.sites.map((s, g) => tf.randomNormal<tf.Rank.R2>([rows, siteWidths(model.base, s).outFeatures], 0, 1, 'float32', 3 + g)); // G × [N, O_g]
    const xs = group.sites.map(() => x); // G × [N, I]
    const groupOutputs = hooks.groupOutputs;
    // tf.profile returns the engine's one profile object, refilled by the next call: count before profiling again.
    let start = performance.now();
    const first = countKernels((await tf.profile(() => groupOutputs(0, group, xs, ys) as tf.Tensor[])).kernels);
    const firstMs = performance.now() - start;
    start = performance.now();
    const second = countKernels((await tf.profile(() => groupOutputs(0, group, xs, ys) as tf.Tensor[])).kernels);
    const secondMs = performance.now() - start;
    return { first, second, firstMs, secondMs };
  } finally {
    engine.endScope();
  }
}

async function forwardKernels(run: () => tf.Tensor): Promise<KernelCount> {
  const profile = await tf.profile(() => {
    const out = run();
    out.dispose();
  });
  return countKernels(profile.kernels);
}

interface TimeBreakdown {
  readonly wallMs: number;
  readonly kernelMs: number;
  /** wall − Σ kernel time: JS-side dispatch, tidy bookkeeping, host work. */
  readonly outsideKernelsMs: number;
  readonly kernels: number;
  readonly top: { name: string; calls: number; ms: number }[];
}

/** The least-disturbed of PROFILE_REPEATS profiled calls (after two warm-up calls). */
async function timeBreakdown(step: () => tf.Tensor): Promise<TimeBreakdown> {
  step().dispose();
  step().dispose();
  let best: TimeBreakdown | undefined;
  for (let i = 0; i < PROFILE_REPEATS; i++) {
    const b = await profileOnce(step);
    if (best === undefined || b.wallMs < best.wallMs) best = b;
  }
  return best as TimeBreakdown;
}

/** One call under tf.profile: time per kernel name, and the part of the wall time outside kernels. */
async function profileOnce(step: () => tf.Tensor): Promise<TimeBreakdown> {
  const start = performance.now();
  const profile = await tf.profile(() => {
    const out = step();
    out.dataSync();
    out.dispose();
  });
  const wallMs = performance.now() - start;
  const { kernelMs, top } = kernelTimes(profile.kernels, TOP_KERNELS, 2);
  return { wallMs: round(wallMs, 2), kernelMs: round(kernelMs, 2), outsideKernelsMs: round(wallMs - kernelMs, 2), kernels: profile.kernels.length, top };
}

export async function run(args: BenchArgs): Promise<BenchResult> {
  const started = performance.now();
  await useBackend('wasm');
  const modelOptions = args.quick ? QUICK_MODEL : BENCH_MODEL;
  const rowsList = args.quick ? ROWS.quick : ROWS.full;
  const configs = args.quick ? CONFIGS.slice(0, 2) : CONFIGS;
  const base = randomLlama(modelOptions);
  const routers = builtinRouters();
  const perSite: Record<string, unknown>[] = [];
  const forward: Record<string, unknown>[] = [];
  let breakdown: { base: TimeBreakdown; routed: TimeBreakdown } | undefined;
  let prefillBreakdown: { base: TimeBreakdown; routed: TimeBreakdown } | undefined;
  try {
    const fwdIds = randomIds(FORWARD.batch, FORWARD.tokens, modelOptions.vocabSize);
    const nextIds = randomIds(FORWARD.batch, 1, modelOptions.vocabSize, 99);
    const baseDecode = async (): Promise<KernelCount> => {
      const cache = base.newCache(FORWARD.batch);
      try {
        base.forward({ ids: fwdIds, cache, output: 'last-logits' }).dispose();
        return await forwardKernels(() => base.forward({ ids: nextIds, cache, output: 'last-logits' }));
      } finally {
        cache.dispose();
      }
    };
    forward.push({
      model: 'base',
      prefill: (await forwardKernels(() => base.forward({ ids: fwdIds, output: 'last-logits' }))).total,
      decodeStep: (await baseDecode()).total,
    });
    for (const { experts, k } of configs) {
      const model = AdaptedModel.create(base, routedLoraSpec({ experts, k, r: RANK }), { routers });
      try {
        for (const strategy of STRATEGIES) {
          for (const site of SITES) {
            for (const rows of rowsList) {
              const { first, second, firstMs, secondMs } = await siteKernels(model, site, rows, strategy);
              perSite.push({
                experts,
                k,
                strategy,
                site,
                rows,
                kernels: first.total,
                routerKernels: first.total - second.total,
                combineKernels: second.total,
                ms: round(firstMs, 2),
                combineMs: round(secondMs, 2),
                byName: first.byName,
              });
              console.log(
                `  E=${experts} k=${k} ${strategy} ${site} N=${rows}: ${first.total} kernels (router ${first.total - second.total}, combine ${second.total})`,
              );
            }
          }
          const cache = base.newCache(FORWARD.batch);
          try {
            const prefill = await forwardKernels(() => model.forward({ ids: fwdIds, cache, output: 'last-logits', routing: { strategy } }));
            const step = await forwardKernels(() => model.forward({ ids: nextIds, cache, output: 'last-logits', routing: { strategy } }));
            forward.push({
              model: `routed E=${experts} k=${k}`,
              experts,
              k,
              strategy,
              prefill: prefill.total,
              decodeStep: step.total,
              decodeByName: step.byName,
            });
            console.log(`  forward E=${experts} k=${k} ${strategy}: prefill ${prefill.total} kernels, decode step ${step.total}`);
          } finally {
            cache.dispose();
          }
        }
        if (experts === 8 && k === 2) {
          const prefillIds = randomIds(1, args.quick ? 8 : PROFILE_PREFILL, modelOptions.vocabSize);
          const stepIds = randomIds(1, 1, modelOptions.vocabSize, 5);
          const withCache = async (fn: (ids: number[][], cache: ReturnType<Transformer['newCache']>) => tf.Tensor): Promise<TimeBreakdown> => {
            const cache = base.newCache(1);
            try {
              fn(prefillIds, cache).dispose();
              return await timeBreakdown(() => fn(stepIds, cache));
            } finally {
              cache.dispose();
            }
          };
          breakdown = {
            base: await withCache((ids, cache) => base.forward({ ids, cache, output: 'last-logits' })),
            routed: await withCache((ids, cache) => model.forward({ ids, cache, output: 'last-logits' })),
          };
          const size = args.quick ? PROFILE_FORWARD.quick : PROFILE_FORWARD.full;
          const ids = randomIds(size.batch, size.tokens, modelOptions.vocabSize);
          prefillBreakdown = {
            base: await timeBreakdown(() => base.forward({ ids, output: 'last-logits' })),
            routed: await timeBreakdown(() => model.forward({ ids, output: 'last-logits' })),
          };
          console.log(
            `  prefill ${size.batch}×${size.tokens} under tf.profile: base ${prefillBreakdown.base.wallMs} ms, routed ${prefillBreakdown.routed.wallMs} ms`,
          );
        }
      } finally {
        model.dispose();
      }
    }
  } finally {
    base.dispose();
  }
  return {
    name: 'ops-per-site',
    description:
      'Kernels launched per routed site (router + combine) per strategy, per whole forward routed vs base, and the kernel-time breakdown of one routed decode step',
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: {
      model: modelOptions,
      rank: RANK,
      configs,
      strategies: STRATEGIES,
      rows: rowsList,
      sites: SITES,
      forward: FORWARD,
      profilePrefill: PROFILE_PREFILL,
      profileForward: args.quick ? PROFILE_FORWARD.quick : PROFILE_FORWARD.full,
      profileRepeats: PROFILE_REPEATS,
    },
    ratios: [],
    details: { perSite, forward, decodeBreakdown: breakdown, prefillBreakdown },
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

if (isMain(import.meta.url)) {
  const result = await run(parseArgs());
  console.log(`wrote ${writeResult(result)}`);
}
