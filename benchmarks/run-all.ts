/**
 * Runs every benchmark (each in its own Node process, so one benchmark's memory and backend state never
 * affect the next), then writes benchmarks/results/README.md: a markdown table of the measured ratios
 * with the issue's targets, the date, and the machine (cores, Node version, backend).
 *
 *   npm run bench                       the full suite (~12 minutes on 2 idle cores)
 *   npm run bench -- --quick            a smoke run (< 1 minute): tiny model, few repeats → results/quick/
 *   npm run bench -- --only decode-overhead,static-adapter
 *   npm run bench -- --report-only      only regenerate README.md from the JSON already written
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatTarget, resultsDir, targetMet, targetOf, type BenchResult, type RatioResult, type Target } from './lib/harness.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const HERE = dirname(fileURLToPath(import.meta.url));
/** In run order; `requires` names a src/ file the benchmark needs (skipped with a note when absent). */
const BENCHMARKS: readonly { name: string; requires?: string }[] = [
  { name: 'ops-per-site' },
  { name: 'decode-overhead' },
  { name: 'static-adapter' },
  { name: 'prefill-overhead' },
  { name: 'backends' },
  { name: 'training-step', requires: 'src/train/trainer.ts' },
  { name: 'mixed-adapter-batch' },
  { name: 'resident-adapters' },
  { name: 'webgpu-kernels' },
  { name: 'threads' },
  { name: 'serve-pool', requires: 'src/runtime/pool.ts' },
  { name: 'adalora-vs-lora' },
];
/**
 * Targets from the issue, by ratio id (a ratio's own `target` in its JSON takes precedence): `max` bounds a
 * time ratio (lower is better), `min` a throughput ratio (higher is better).
 */
const TARGETS: Readonly<Record<string, Target>> = {
  'prefill/e8-k2': { max: 1.15 },
  'decode/batch1': { max: 1.3 },
  'static/merged-decode': { max: 1.02 },
  'static/merged-prefill': { max: 1.02 },
  'mixed/qv-generate': { max: 1.2 },
  'resident/burst': { min: 0.95 },
};
// ---------------------------------------------------------------------------------------------------------

const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const reportOnly = argv.includes('--report-only');
const onlyIndex = argv.indexOf('--only');
const only = onlyIndex >= 0 ? new Set((argv[onlyIndex + 1] ?? '').split(',').filter((s) => s !== '')) : undefined;
const root = join(HERE, '..');
const outDir = resultsDir(quick);
mkdirSync(outDir, { recursive: true });

const notes: string[] = [];
const started = performance.now();
if (!reportOnly) {
  const names = BENCHMARKS.map((b) => b.name);
  for (const name of names) {
    if (only !== undefined && !only.has(name)) continue;
    const requires = BENCHMARKS.find((b) => b.name === name)?.requires;
    if (requires !== undefined && !existsSync(join(root, requires))) {
      notes.push(`${name}: skipped — ${requires} does not exist`);
      console.log(`== ${name}: skipped (${requires} does not exist)`);
      continue;
    }
    console.log(`== ${name}${quick ? ' (quick)' : ''}`);
    const t0 = performance.now();
    const child = spawnSync(process.execPath, ['--import', 'tsx', join(HERE, `${name}.ts`), ...(quick ? ['--quick'] : [])], {
      cwd: root,
      stdio: ['ignore', 'inherit', 'pipe'],
      encoding: 'utf8',
    });
    const seconds = ((performance.now() - t0) / 1000).toFixed(1);
    if (child.status !== 0) {
      const tail = (child.stderr ?? '').trim().split('\n').slice(-5).join(' | ');
      notes.push(`${name}: FAILED (exit ${child.status ?? child.signal}) — ${tail}`);
      console.log(`== ${name}: FAILED after ${seconds} s\n${child.stderr}`);
    } else {
      console.log(`== ${name}: ${seconds} s`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// The markdown report

function load(name: string): BenchResult | undefined {
  const file = join(outDir, `${name}.json`);
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as BenchResult) : undefined;
}

const results = BENCHMARKS.map((b) => load(b.name)).filter((r): r is BenchResult => r !== undefined);
const fmt = (n: number, digits = 2): string => (Number.isFinite(n) ? n.toFixed(digits) : '—');

function row(r: RatioResult, bench: string): string {
  const target = targetOf(r) ?? TARGETS[r.id];
  const status = target === undefined ? '' : targetMet(r.ratio, target) ? 'met' : '**missed**';
  const times = Number.isFinite(r.numeratorMs) ? `${fmt(r.numeratorMs)} / ${fmt(r.denominatorMs)} ms` : (r.note ?? '');
  const cpu = r.cpuRatio === undefined || !Number.isFinite(r.numeratorMs) ? '' : `${fmt(r.cpuRatio, 3)}×`;
  const min = r.minRatio === undefined || !Number.isFinite(r.numeratorMs) ? '' : `${fmt(r.minRatio, 3)}×`;
  return `| ${bench} | ${r.label} | **${fmt(r.ratio, 3)}×** | ${cpu} | ${min} | ${times} | ${target === undefined ? '' : formatTarget(target)} | ${status} |`;
}

const machine = results[0]?.machine;
const lines: string[] = [];
lines.push(`# Benchmark results${quick ? ' (quick smoke run — tiny model, not representative)' : ''}`);
lines.push('');
lines.push(
  'Generated by `npm run bench` (benchmarks/run-all.ts); every ratio is the median over interleaved rounds of a/b measured side by side in one process. Raw samples are in the JSON files next to this one.',
);
lines.push('');
if (machine !== undefined) {
  const dates = results.map((r) => r.date).sort();
  lines.push(`- date: ${dates[0] ?? ''} … ${dates[dates.length - 1] ?? ''}`);
  lines.push(`- machine: ${machine.cores} cores (${machine.cpuModel}), ${machine.platform}, Node ${machine.node}`);
  lines.push(`- backend: ${machine.backend} (tfjs ${machine.tfjs}; every benchmark but \`threads\` runs on one wasm thread, \`threads\` compares 1 with N)`);
  const commits = [...new Set(results.map((r) => r.machine.commit ?? 'unknown'))];
  lines.push(
    `- commit measured: ${commits.join(', ')}${commits.length > 1 ? ' — **the tree changed during the run; results are not all from one commit**' : ''}`,
  );
  lines.push(`- benchmark time: ${results.map((r) => `${r.name} ${r.seconds} s`).join(', ')}`);
  lines.push(
    `- 1-minute load average when each finished (above ${machine.cores}, other processes competed for the cores): ${results.map((r) => `${r.name} ${r.machine.loadAverage ?? '?'}`).join(', ')}`,
  );
}
lines.push('');
lines.push(
  '"measured" is the median over rounds of wall(a)/wall(b); "cpu" the same on process CPU time (wasm runs on one thread, so when other processes compete for the cores this estimates the idle-machine ratio); "min" is min wall(a) / min wall(b). The status compares "measured" with the target: "≤" bounds a time ratio (lower is better); "≥" bounds a throughput ratio, reported as time(a)/time(b) = throughput(b)/throughput(a) (higher is better).',
);
lines.push('');
lines.push('| benchmark | ratio | measured | cpu | min | a / b (median wall) | target | status |');
lines.push('|---|---|---|---|---|---|---|---|');
for (const r of results) for (const ratio of r.ratios) lines.push(row(ratio, r.name));
lines.push('');

const ops = results.find((r) => r.name === 'ops-per-site');
if (ops !== undefined) {
  const details = ops.details as { perSite: Record<string, unknown>[]; forward: Record<string, unknown>[] };
  lines.push('## Kernels per routed site group (tf.profile around one groupOutputs hook call)');
  lines.push('');
  lines.push('| E | k | strategy | site | rows N | kernels | router | combine |');
  lines.push('|---|---|---|---|---|---|---|---|');
  for (const p of details.perSite) {
    if (p['site'] !== 'attn.q') continue;
    lines.push(
      `| ${String(p['experts'])} | ${String(p['k'])} | ${String(p['strategy'])} | ${String(p['site'])} | ${String(p['rows'])} | ${String(p['kernels'])} | ${String(p['routerKernels'])} | ${String(p['combineKernels'])} |`,
    );
  }
  lines.push('');
  lines.push('The base site is 1 kernel (one BatchMatMul). Other sites count the same (see ops-per-site.json).');
  lines.push('');
  lines.push('| forward | strategy | kernels, prefill | kernels, decode step |');
  lines.push('|---|---|---|---|');
  for (const f of details.forward)
    lines.push(`| ${String(f['model'])} | ${String(f['strategy'] ?? '—')} | ${String(f['prefill'])} | ${String(f['decodeStep'])} |`);
  lines.push('');
  type Breakdown = { wallMs: number; kernelMs: number; outsideKernelsMs: number; kernels: number; top: { name: string; calls: number; ms: number }[] };
  const breakdowns = ops.details as { decodeBreakdown?: { base: Breakdown; routed: Breakdown }; prefillBreakdown?: { base: Breakdown; routed: Breakdown } };
  const profiled: [string, { base: Breakdown; routed: Breakdown } | undefined][] = [
    ['decode step, batch 1', breakdowns.decodeBreakdown],
    ['prefill, 1×128 tokens', breakdowns.prefillBreakdown],
  ];
  if (profiled.some(([, b]) => b !== undefined)) {
    lines.push('## Where the time goes (tf.profile, E=8 k=2 dense; the least-disturbed of 3 profiled calls)');
    lines.push('');
    lines.push('| call | model | wall ms | Σ kernel ms | outside kernels ms | kernels | top kernels (calls, ms) |');
    lines.push('|---|---|---|---|---|---|---|');
    for (const [what, b] of profiled) {
      if (b === undefined) continue;
      for (const [model, x] of [
        ['base', b.base],
        ['routed', b.routed],
      ] as const) {
        lines.push(
          `| ${what} | ${model} | ${fmt(x.wallMs, 1)} | ${fmt(x.kernelMs, 1)} | ${fmt(x.outsideKernelsMs, 1)} | ${x.kernels} | ${x.top
            .slice(0, 5)
            .map((t) => `${t.name} ${t.calls}× ${fmt(t.ms, 1)}`)
            .join('; ')} |`,
        );
      }
    }
    lines.push('');
  }
}

const training = results.find((r) => r.name === 'training-step');
if (training !== undefined) {
  const d = training.details as { budgets?: Record<string, number>; memory?: Record<string, number> };
  lines.push('## Training');
  lines.push('');
  lines.push(
    `- trainable parameters: routed ${d.budgets?.['routed'] ?? '?'} (experts + routers), single LoRA r=${d.budgets?.['singleRank'] ?? '?'}: ${d.budgets?.['single'] ?? '?'}`,
  );
  lines.push(
    `- tensor memory above resident (MiB): ${Object.entries(d.memory ?? {})
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  );
  lines.push('');
}

const adalora = results.find((r) => r.name === 'adalora-vs-lora');
if (adalora !== undefined) {
  const d = adalora.details as { means: Record<string, Record<string, number>>; margin: number };
  const c = adalora.constants as { rank: number; initRank: number; seeds: number[] };
  const tasks = Object.keys(d.means['lora'] ?? {}).filter((t) => t !== 'mean');
  lines.push(`## AdaLoRA (${c.initRank} → ${c.rank} per module) vs uniform LoRA r=${c.rank}, demo tasks, exact-match %, mean over seeds ${c.seeds.join(', ')}`);
  lines.push('');
  lines.push(`| arm | ${tasks.join(' | ')} | mean |`);
  lines.push(`|---|${tasks.map(() => '---|').join('')}---|`);
  for (const [arm, acc] of Object.entries(d.means))
    lines.push(`| ${arm} | ${tasks.map((t) => fmt((acc[t] ?? 0) * 100, 1)).join(' | ')} | ${fmt((acc['mean'] ?? 0) * 100, 1)} |`);
  lines.push('');
  lines.push(
    `AdaLoRA − LoRA, both at the demo's learning rate: ${d.margin >= 0 ? '+' : ''}${fmt(d.margin * 100, 1)} points (per-seed tables and final ranks in adalora-vs-lora.json; other schedules and per-arm learning rates in adalora-vs-lora.*.json and the main README's AdaLoRA section).`,
  );
  lines.push('');
}

const skipped = results.flatMap((r) => {
  const s = (r.details as { skipped?: (string | { backend: string; reason: string })[] } | undefined)?.skipped ?? [];
  return s.map((x) => `${r.name}: ${typeof x === 'string' ? x : `${x.backend} skipped — ${x.reason}`}`);
});
if (skipped.length + notes.length > 0) {
  lines.push('## Skipped or failed');
  lines.push('');
  for (const s of [...skipped, ...notes]) lines.push(`- ${s}`);
  lines.push('');
}
lines.push('See ANALYSIS.md for the causes of missed targets and proposed fixes.');
lines.push('');
writeFileSync(join(outDir, 'README.md'), lines.join('\n'));
console.log(`wrote ${join(outDir, 'README.md')} (${((performance.now() - started) / 1000).toFixed(1)} s)`);
if (notes.some((n) => n.includes('FAILED'))) process.exitCode = 1;
