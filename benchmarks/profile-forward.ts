/**
 * A profiling tool (not part of run-all): one forward of a chosen variant under tf.profile, with the time
 * of each kernel grouped by kernel name and input shapes, so the slowest kernels are visible at a glance.
 *
 *   node --import tsx benchmarks/profile-forward.ts [variant] [batch] [tokens]
 *
 * variants: base | routed (the library, E=8 k=2 r=8 on all sites). Writes nothing; prints the table.
 */
import * as tf from '@tensorflow/tfjs';
import { builtinRouters } from '../routers/index.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import { useBackend } from './lib/harness.js';
import { BENCH_MODEL, randomIds, randomLlama } from './lib/random-model.js';
import { routedLoraSpec } from './lib/specs.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const EXPERTS = 8;
const K = 2;
const RANK = 8;
const DEFAULTS = { variant: 'routed', batch: 4, tokens: 128 };
const TOP = 16;
const VARIANTS = ['base', 'routed'] as const;
// ---------------------------------------------------------------------------------------------------------

type Variant = (typeof VARIANTS)[number];

const [variantArg, batchArg, tokensArg] = process.argv.slice(2);
const variant = (variantArg ?? DEFAULTS.variant) as Variant;
if (!VARIANTS.includes(variant)) throw new Error(`unknown variant ${variant}; use one of ${VARIANTS.join(', ')}`);
const batch = Number(batchArg ?? DEFAULTS.batch);
const tokens = Number(tokensArg ?? DEFAULTS.tokens);

await useBackend('wasm');
const base = randomLlama(BENCH_MODEL);
const spec = routedLoraSpec({ experts: EXPERTS, k: K, r: RANK });
const routed = AdaptedModel.create(base, spec, { routers: builtinRouters() });
const ids = randomIds(batch, tokens, BENCH_MODEL.vocabSize);
const forwards: Record<Variant, () => tf.Tensor> = {
  base: () => base.forward({ ids, output: 'last-logits' }),
  routed: () => routed.forward({ ids, output: 'last-logits' }),
};
const run = forwards[variant];
for (let i = 0; i < 2; i++) run().dispose(); // warm
const start = performance.now();
const profile = await tf.profile(() => {
  const out = run();
  out.dataSync();
  out.dispose();
});
const wall = performance.now() - start;
const groups = new Map<string, { calls: number; ms: number }>();
let kernelMs = 0;
for (const k of profile.kernels) {
  const key = `${k.name} ${JSON.stringify(k.inputShapes.slice(0, 2))}`;
  const entry = groups.get(key) ?? { calls: 0, ms: 0 };
  entry.calls += 1;
  entry.ms += Number(k.kernelTimeMs);
  kernelMs += Number(k.kernelTimeMs);
  groups.set(key, entry);
}
console.log(`${variant} ${batch}×${tokens}: wall ${wall.toFixed(1)} ms, Σ kernels ${kernelMs.toFixed(1)} ms, ${profile.kernels.length} kernels`);
console.log('      ms  calls  kernel [input shapes]');
for (const [key, e] of [...groups].sort((a, b) => b[1].ms - a[1].ms).slice(0, TOP))
  console.log(`${e.ms.toFixed(1).padStart(8)} ${String(e.calls).padStart(6)}  ${key}`);
routed.dispose();
base.dispose();
