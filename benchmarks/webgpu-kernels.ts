/**
 * The library's WGSL kernels against their composed-tfjs-ops references, on the same backend (webgpu):
 *
 *  - routed LoRA (src/adapters/lora/webgpu-mix.ts) vs the bank's tfjs ops, for a decode row and a prefill,
 *    one site and a q/k/v group: time ratio kernel / reference; the same for membership gates (mixed-adapter
 *    batches, the dense-gate variant);
 *  - top-k gating (src/routing/webgpu-gating.ts) vs gating.ts topKSlots with tfjs ops: time ratio;
 *  - the routed-site kernel (src/routing/webgpu-routed-site.ts: router, gating, experts and the add in one
 *    dispatch per site) vs the same in tfjs ops (router matmul, topKSlots, the bank's mix, add): time ratio;
 *  - dispatches of one KV-cached decode step: the bare base, the routed model with every kernel, with the
 *    separate kernels only (no routed-site kernel) and with the reference ops, per routed site group (counted
 *    at the backend, runWebGPUProgram), and their step times.
 *
 *   node --import tsx benchmarks/webgpu-kernels.ts [--quick]     (part of `npm run bench`)
 *
 * It runs unchanged on a real GPU. On a machine with only a software adapter (lavapipe) it still runs, and
 * the JSON says `software: true`: those times measure a CPU emulating a GPU, so only the dispatch counts and
 * correctness carry over. Without any WebGPU adapter it writes a result saying so and exits 0.
 */
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../routers/index.js';
import { LoraBank, type LoraTerm, type LoraWeights, registerLoraMixKernel, unregisterLoraMixKernel } from '../src/adapters/lora/bank.js';
import { webgpuLoraMix } from '../src/adapters/lora/webgpu-mix.js';
import { selectBackend } from '../src/backend.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import { registerTopKSlotsKernel, topKSlots, unregisterTopKSlotsKernel } from '../src/routing/gating.js';
import { registerRoutedSiteKernel, unregisterRoutedSiteKernel } from '../src/routing/fused-group.js';
import type { LinearTopK } from '../src/routing/router.js';
import { webgpuTopKSlots } from '../src/routing/webgpu-gating.js';
import { webgpuRoutedSiteOutputs } from '../src/routing/webgpu-routed-site.js';
import { isMain, machineInfo, median, parseArgs, round, writeResult, type BenchArgs, type BenchResult, type RatioResult } from './lib/harness.js';
import { QUICK_MODEL, randomLlama, type RandomLlamaOptions } from './lib/random-model.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const FULL = { width: 512, experts: 8, k: 2, rank: 8, prefillRows: 128, warmup: 3, rounds: 15 };
const QUICK = { width: 128, experts: 8, k: 2, rank: 8, prefillRows: 32, warmup: 2, rounds: 5 };
/** A decode-step model: small enough for a software adapter, the same architecture as the other benchmarks. */
const DECODE_MODEL: RandomLlamaOptions = { dim: 256, nLayers: 4, nHeads: 4, nKvHeads: 4, hiddenDim: 688, vocabSize: 1024, maxSeqLen: 128 };
const DECODE_ROUNDS = { full: 15, quick: 4 };
// ---------------------------------------------------------------------------------------------------------

const routers = builtinRouters();

/** Median ms of fn (each run ends with await data() of what it returns, so the GPU work is inside). */
async function time(fn: () => tf.Tensor[], warmup: number, rounds: number): Promise<number> {
  const once = async (): Promise<number> => {
    const t0 = performance.now();
    const outs = fn();
    await Promise.all(outs.map((t) => t.data()));
    const ms = performance.now() - t0;
    tf.dispose(outs);
    return ms;
  };
  for (let i = 0; i < warmup; i++) await once();
  const samples: number[] = [];
  for (let i = 0; i < rounds; i++) samples.push(await once());
  return median(samples);
}

/** Calls of the webgpu backend's runWebGPUProgram while fn runs. */
async function dispatches(fn: () => Promise<void>): Promise<number> {
  const backend = tf.backend() as unknown as { runWebGPUProgram: (...args: unknown[]) => unknown };
  const original = backend.runWebGPUProgram;
  let count = 0;
  backend.runWebGPUProgram = function (this: unknown, ...args: unknown[]) {
    count++;
    return original.apply(this, args);
  };
  try {
    await fn();
  } finally {
    backend.runWebGPUProgram = original;
  }
  return count;
}

function seeded(shape: [number, number], seed: number): tf.Tensor2D {
  return tf.randomUniform(shape, -0.1, 0.1, 'float32', seed);
}

async function loraCases(s: typeof FULL) {
  const out: Record<string, unknown>[] = [];
  for (const sites of [1, 3]) {
    const loras: LoraWeights[] = [];
    const terms: LoraTerm[][] = Array.from({ length: sites }, (_, g) =>
      Array.from({ length: s.experts }, (_, e) => {
        const lora = {
          a: tf.tidy(() => tf.variable(seeded([s.rank, s.width], 10 * e + g))),
          b: tf.tidy(() => tf.variable(seeded([s.width, s.rank], 10 * e + g + 5))),
          rank: s.rank,
          scale: 2,
          dropout: 0,
        };
        loras.push(lora);
        return { lora, choice: e, weight: 1 };
      }),
    );
    const bank = new LoraBank(terms, s.experts);
    for (const rows of [1, s.prefillRows]) {
      const x = seeded([rows, s.width], 3);
      const scores = seeded([rows * sites, s.experts], 4);
      const [ids, weights] = tf.tidy(() => {
        const slots = topKSlots(scores, undefined, { k: s.k, training: false });
        return [slots.expertIds, slots.weights];
      }) as [tf.Tensor2D, tf.Tensor2D];
      const gates = { kind: 'slots' as const, ids, weights };
      const mix = () => tf.tidy(() => [...bank.mix(x, gates, { training: false })]);
      unregisterLoraMixKernel('webgpu');
      const reference = await time(mix, s.warmup, s.rounds);
      registerLoraMixKernel('webgpu', webgpuLoraMix);
      const kernel = await time(mix, s.warmup, s.rounds);
      out.push(bankCase('lora', s, sites, rows, { kernel, reference }, { k: s.k }));
      out.push(await routedSiteCase(s, bank, x, sites, rows));
      // Membership gates of a mixed-adapter batch: row n uses adapter n mod E (the dense-gate variant).
      const membership = tf.tidy(() =>
        tf
          .oneHot(
            tf.tensor1d(
              Array.from({ length: rows }, (_, n) => n % s.experts),
              'int32',
            ),
            s.experts,
          )
          .toFloat(),
      ) as tf.Tensor2D;
      const mixDense = () => tf.tidy(() => [...bank.mix(x, { kind: 'dense', gates: membership }, { training: false })]);
      unregisterLoraMixKernel('webgpu');
      const denseReference = await time(mixDense, s.warmup, s.rounds);
      registerLoraMixKernel('webgpu', webgpuLoraMix);
      const denseKernel = await time(mixDense, s.warmup, s.rounds);
      out.push(bankCase('lora-membership', s, sites, rows, { kernel: denseKernel, reference: denseReference }));
      tf.dispose([x, scores, ids, weights, membership]);
    }
    bank.dispose();
    tf.dispose(loras.flatMap((l) => [l.a, l.b]));
  }
  return out;
}

/** The routed-site kernel against router matmul + topKSlots + the bank's mix + add, all in tfjs ops. */
async function routedSiteCase(s: typeof FULL, bank: LoraBank, x: tf.Tensor2D, sites: number, rows: number) {
  const gates: LinearTopK[] = Array.from({ length: sites }, (_, g) => ({ gate: seeded([s.width, s.experts], 20 + g), k: s.k, temperature: 1 })); // [I, E] each
  const ys = Array.from({ length: sites }, (_, g) => seeded([rows, s.width], 30 + g)); // G × [N, O]
  const composed = () =>
    tf.tidy(() => {
      const scores = tf.concat(
        gates.map((g) => tf.matMul(x, g.gate)),
        1,
      ); // [N, G·E]
      const slots = topKSlots(tf.reshape<tf.Rank.R2>(scores, [rows * sites, s.experts]), undefined, { k: s.k, training: false }); // [N·G, K]
      const deltas = bank.mix(x, { kind: 'slots', ids: slots.expertIds, weights: slots.weights }, { training: false }); // G × [N, O]
      return ys.map((y, g) => tf.add(y, deltas[g] as tf.Tensor2D)); // G × [N, O]
    });
  const fused = () => tf.tidy(() => webgpuRoutedSiteOutputs(gates, bank, x, ys, undefined) ?? []);
  unregisterLoraMixKernel('webgpu');
  unregisterTopKSlotsKernel('webgpu');
  const reference = await time(composed, s.warmup, s.rounds);
  const referenceDispatches = await dispatches(async () => tf.dispose(composed()));
  registerLoraMixKernel('webgpu', webgpuLoraMix);
  registerTopKSlotsKernel('webgpu', webgpuTopKSlots);
  const kernel = await time(fused, s.warmup, s.rounds);
  const kernelDispatches = await dispatches(async () => tf.dispose(fused()));
  tf.dispose([...gates.map((g) => g.gate), ...ys]);
  return bankCase('routed-site', s, sites, rows, { kernel, reference }, { k: s.k }, { kernelDispatches, referenceDispatches });
}

/** One bank-kernel case's record (id `<kind>/<site|qkv-group>-<decode|prefillN>`), logged as it is made. */
function bankCase(
  kind: string,
  s: typeof FULL,
  sites: number,
  rows: number,
  ms: { readonly kernel: number; readonly reference: number },
  shape: { readonly k?: number } = {},
  dispatchCounts?: { readonly kernelDispatches: number; readonly referenceDispatches: number },
): Record<string, unknown> {
  const id = `${kind}/${sites === 1 ? 'site' : 'qkv-group'}-${rows === 1 ? 'decode' : `prefill${rows}`}`;
  const ratio = ms.kernel / ms.reference;
  const counts = dispatchCounts === undefined ? '' : `  dispatches ${dispatchCounts.kernelDispatches} vs ${dispatchCounts.referenceDispatches}`;
  console.log(`${id.padEnd(28)} kernel ${ms.kernel.toFixed(2)} ms  reference ${ms.reference.toFixed(2)} ms  ratio ${ratio.toFixed(2)}${counts}`);
  return {
    id,
    rows,
    sites,
    experts: s.experts,
    ...shape,
    rank: s.rank,
    width: s.width,
    kernelMs: round(ms.kernel),
    referenceMs: round(ms.reference),
    ratio: round(ratio),
    ...dispatchCounts,
  };
}

async function gatingCases(s: typeof FULL) {
  const out: Record<string, unknown>[] = [];
  for (const rows of [3, 3 * s.prefillRows]) {
    const scores = seeded([rows, s.experts], 9);
    const decide = () =>
      tf.tidy(() => {
        const slots = topKSlots(scores, undefined, { k: s.k, training: false });
        return [slots.expertIds, slots.weights];
      });
    unregisterTopKSlotsKernel('webgpu');
    const reference = await time(decide, s.warmup, s.rounds);
    const referenceDispatches = await dispatches(async () => tf.dispose(decide()));
    registerTopKSlotsKernel('webgpu', webgpuTopKSlots);
    const kernel = await time(decide, s.warmup, s.rounds);
    const kernelDispatches = await dispatches(async () => tf.dispose(decide()));
    const name = `gating/top${s.k}-of-${s.experts}-rows${rows}`;
    out.push({
      id: name,
      rows,
      kernelMs: round(kernel),
      referenceMs: round(reference),
      ratio: round(kernel / reference),
      kernelDispatches,
      referenceDispatches,
    });
    console.log(
      `${name.padEnd(28)} kernel ${kernel.toFixed(2)} ms  reference ${reference.toFixed(2)} ms  ratio ${(kernel / reference).toFixed(2)}  dispatches ${kernelDispatches} vs ${referenceDispatches}`,
    );
    scores.dispose();
  }
  return out;
}

async function decodeCase(quick: boolean) {
  const options = quick ? QUICK_MODEL : DECODE_MODEL;
  const base = randomLlama(options);
  const lora = (name: string) => ({ kind: 'lora', name, r: 8, alpha: 16, init: 'random', targets: { sites: ['attn.q', 'attn.k', 'attn.v', 'mlp.down'] } });
  const model = AdaptedModel.create(
    base,
    {
      seed: 1,
      adapters: [lora('e0'), lora('e1'), lora('e2'), lora('e3')],
      composition: { kind: 'route', experts: ['e0', 'e1', 'e2', 'e3'], router: { kind: 'top-k', k: 2 } },
    },
    { routers },
  );
  const groups = base.config.nLayers * 2; // q/k/v and down per layer
  const rounds = quick ? DECODE_ROUNDS.quick : DECODE_ROUNDS.full;
  const measure = async (forward: (ids: number[][], cache: ReturnType<typeof base.newCache>) => tf.Tensor) => {
    const cache = base.newCache(1);
    try {
      await forward([[1, 5, 9, 4, 7, 3, 2, 8]], cache).data(); // an 8-token prompt in the cache
      let step = 0;
      const one = () => [forward([[3 + (step++ % 20)]], cache)];
      const ms = await time(one, 2, rounds);
      const count = await dispatches(async () => tf.dispose(one()));
      return { ms, count };
    } finally {
      cache.dispose();
    }
  };
  const bare = await measure((ids, cache) => base.forward({ ids, cache, output: 'last-logits' }));
  const kernels = await measure((ids, cache) => model.forward({ ids, cache, output: 'last-logits' }));
  unregisterRoutedSiteKernel('webgpu');
  const separate = await measure((ids, cache) => model.forward({ ids, cache, output: 'last-logits' }));
  unregisterLoraMixKernel('webgpu');
  unregisterTopKSlotsKernel('webgpu');
  const reference = await measure((ids, cache) => model.forward({ ids, cache, output: 'last-logits' }));
  registerRoutedSiteKernel('webgpu', webgpuRoutedSiteOutputs);
  registerLoraMixKernel('webgpu', webgpuLoraMix);
  registerTopKSlotsKernel('webgpu', webgpuTopKSlots);
  model.dispose();
  base.dispose();
  const perGroup = (n: number) => round((n - bare.count) / groups, 2);
  const result = {
    id: 'decode/dispatches',
    model: options,
    routedSiteGroups: groups,
    baseDispatches: bare.count,
    kernelDispatches: kernels.count,
    separateKernelDispatches: separate.count,
    referenceDispatches: reference.count,
    extraPerGroupKernels: perGroup(kernels.count),
    extraPerGroupSeparateKernels: perGroup(separate.count),
    extraPerGroupReference: perGroup(reference.count),
    baseStepMs: round(bare.ms),
    kernelStepMs: round(kernels.ms),
    separateKernelStepMs: round(separate.ms),
    referenceStepMs: round(reference.ms),
  };
  console.log(
    `decode step: base ${bare.count} dispatches (${bare.ms.toFixed(1)} ms); routed with kernels ${kernels.count} (+${result.extraPerGroupKernels}/group, ${kernels.ms.toFixed(1)} ms); separate kernels ${separate.count} (+${result.extraPerGroupSeparateKernels}/group, ${separate.ms.toFixed(1)} ms); with reference ops ${reference.count} (+${result.extraPerGroupReference}/group, ${reference.ms.toFixed(1)} ms)`,
  );
  return result;
}

const DESCRIPTION =
  'WGSL kernels (routed LoRA, top-k gating, routed site) vs their composed-tfjs-ops references on webgpu; dispatches per routed decode step vs the base';

function ratioOf(c: { id: string; kernelMs: number; referenceMs: number; ratio: number }, software: boolean): RatioResult {
  return {
    id: c.id,
    label: `${c.id}: kernel / composed ops`,
    numerator: 'kernel',
    denominator: 'reference',
    ratio: c.ratio,
    numeratorMs: c.kernelMs,
    denominatorMs: c.referenceMs,
    ...(software ? { note: 'software Vulkan (lavapipe): a CPU emulating a GPU, not GPU speed' } : {}),
  };
}

export async function run(args: BenchArgs): Promise<BenchResult> {
  const started = performance.now();
  const sizes = args.quick ? QUICK : FULL;
  const common = {
    name: 'webgpu-kernels',
    description: DESCRIPTION,
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: { ...sizes, decodeModel: args.quick ? QUICK_MODEL : DECODE_MODEL },
  };
  let report: Awaited<ReturnType<typeof selectBackend>>;
  try {
    report = await selectBackend({ preference: 'webgpu' });
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    console.log(`webgpu-kernels: skipped — ${reason}`);
    return { ...common, ratios: [], details: { skipped: reason }, seconds: 0 };
  }
  const adapter = report.attempts.find((a) => a.backend === 'webgpu')?.adapter;
  const software = adapter?.software ?? false;
  console.log(
    `adapter: ${adapter?.vendor ?? '?'} ${adapter?.device ?? ''} (${adapter?.architecture ?? '?'})${software ? ' — SOFTWARE Vulkan: times are a CPU emulating a GPU' : ''}`,
  );
  const lora = await loraCases(sizes);
  const gating = await gatingCases(sizes);
  const decode = await decodeCase(args.quick);
  const ratios = [...lora, ...gating].map((c) => ratioOf(c as { id: string; kernelMs: number; referenceMs: number; ratio: number }, software));
  return { ...common, ratios, details: { adapter, software, lora, gating, decode }, seconds: round((performance.now() - started) / 1000, 1) };
}

if (isMain(import.meta.url)) {
  const result = await run(parseArgs());
  writeResult(result);
  process.exit(0); // Dawn keeps the event loop alive
}
