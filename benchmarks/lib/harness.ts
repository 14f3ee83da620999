/**
 * Shared benchmark machinery (DESIGN.md principle 10: benchmarks are scripts, not tests).
 *
 * - `compare` times several cases side by side in ONE run: warm-up calls first, then rounds in which every
 *   case runs once, the order alternating between rounds (ABBA…) so slow drift (thermal, GC, a growing
 *   KV cache) hits every case alike. Ratios are the MEDIAN over rounds of the per-round ratio a_i / b_i.
 * - Every timed call is synchronous on wasm/cpu/tensorflow; a case returns its output tensor, which is read
 *   back (dataSync) inside the timed region and disposed, so the time covers the whole computation.
 *   `compareAsync` does the same for promise-returning calls (RoutedRuntime requests, which go through the
 *   batcher's event-loop window): the timed region ends when the promise settles.
 * - A target is an upper bound on a time ratio, or (`higherIsBetter`, e.g. a throughput ratio) a lower bound.
 * - `writeResult` writes benchmarks/results/<name>.json; run-all.ts turns those into results/README.md.
 */
import { availableParallelism, cpus, loadavg, platform, arch } from 'node:os';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { getBackendReport, selectBackend, type BackendPreference, type BackendReport } from '../../src/backend.js';

export const RESULTS_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'results');

export interface BenchArgs {
  /** Smoke run: small sizes, few repeats (the whole suite in under a minute). */
  readonly quick: boolean;
}

let quickMode = false;
/** Read when the benchmark starts (the tree may change while it runs; run-all flags that). */
const commitAtStart = gitCommit();

export function parseArgs(argv: readonly string[] = process.argv.slice(2)): BenchArgs {
  quickMode = argv.includes('--quick');
  return { quick: quickMode };
}

/** True when this module is the script node was started with (so a benchmark file also runs standalone). */
export function isMain(importMetaUrl: string): boolean {
  const script = process.argv[1];
  return script !== undefined && fileURLToPath(importMetaUrl) === script;
}

/** The backend every benchmark but `threads` runs on: one wasm thread, so their ratios stay comparable across machines and runs. */
export async function useBackend(preference: BackendPreference): Promise<BackendReport> {
  return selectBackend({ preference, threads: 1 });
}

export interface MachineInfo {
  readonly cores: number;
  readonly cpuModel: string;
  readonly node: string;
  readonly platform: string;
  readonly tfjs: string;
  readonly backend: string;
  /** 1-minute load average when the result was written: above the core count, other processes competed for the CPU. */
  readonly loadAverage?: number;
  /** The commit measured, `+dirty` when src/ or routers/ had uncommitted changes. */
  readonly commit?: string;
}

/** `git rev-parse --short HEAD`, marked +dirty when src/ or routers/ differ from it (undefined outside git). */
function gitCommit(): string | undefined {
  try {
    const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src', 'routers'], { cwd: root, encoding: 'utf8' }).trim() !== '';
    return dirty ? `${head}+dirty` : head;
  } catch {
    return undefined;
  }
}

export function machineInfo(): MachineInfo {
  return {
    cores: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? 'unknown',
    node: process.version,
    platform: `${platform()}-${arch()}`,
    tfjs: tf.version.tfjs,
    backend: getBackendReport()?.chosen ?? tf.getBackend(),
    loadAverage: round(loadavg()[0] ?? Number.NaN, 2),
    ...(commitAtStart === undefined ? {} : { commit: commitAtStart }),
  };
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

export function round(value: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** A case: one synchronous call whose output tensor is read back and freed inside the timed region. */
export interface Case {
  readonly name: string;
  readonly run: () => tf.Tensor | undefined;
  /** Warm-up call (default `run`): a cheaper call through the same code paths, for cases that take seconds. */
  readonly warm?: () => tf.Tensor | undefined;
  /** Untimed preparation before each call (e.g. switching the tfjs backend). */
  readonly before?: () => Promise<void>;
}

export interface CompareOptions {
  /** Warm-up rounds (every case once per round, untimed)… */
  readonly warmup: number;
  /**
   * …continued until this much time has passed (default WARMUP_MS): V8 tiers hot wasm and JS functions up
   * only after many calls, and until it has, times fall from round to round (measured: ~2× over the first
   * dozen calls of a small forward), which a fixed single warm-up call does not absorb.
   */
  readonly warmupMs?: number;
  /** At most this many warm-up rounds (e.g. the KV-cache slots a decode benchmark can spare). */
  readonly maxWarmup?: number;
  readonly rounds: number;
}

/** Default minimum warm-up time per compare() (a --quick smoke run uses QUICK_WARMUP_MS). */
export const WARMUP_MS = 3000;
export const QUICK_WARMUP_MS = 500;

export interface Timings {
  /** Wall milliseconds per round, by case name. */
  readonly samples: Readonly<Record<string, number[]>>;
  /**
   * Process CPU milliseconds (user + system) per round. wasm runs on this one thread, so on a machine where
   * other processes compete for the cores, CPU time estimates what the wall time would be on an idle machine.
   */
  readonly cpuSamples: Readonly<Record<string, number[]>>;
  readonly rounds: number;
  /** Warm-up rounds actually run. */
  readonly warmup: number;
}

function timeOnce(fn: () => tf.Tensor | undefined): { wall: number; cpu: number } {
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  const out = fn();
  if (out !== undefined) {
    out.dataSync();
    out.dispose();
  }
  const wall = performance.now() - start;
  const cpu = process.cpuUsage(cpu0);
  return { wall, cpu: (cpu.user + cpu.system) / 1000 };
}

/** An asynchronous call timed until its promise settles (wall and process CPU time). */
async function timeOnceAsync(fn: () => Promise<void>): Promise<{ wall: number; cpu: number }> {
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  await fn();
  const wall = performance.now() - start;
  const cpu = process.cpuUsage(cpu0);
  return { wall, cpu: (cpu.user + cpu.system) / 1000 };
}

/** The warm-up and interleaved rounds shared by compare and compareAsync. */
async function interleave<C extends { readonly name: string; readonly before?: () => Promise<void> }>(
  cases: readonly C[],
  options: CompareOptions,
  time: (c: C, warm: boolean) => Promise<{ wall: number; cpu: number }>,
): Promise<Timings> {
  const samples: Record<string, number[]> = Object.fromEntries(cases.map((c) => [c.name, []]));
  const cpuSamples: Record<string, number[]> = Object.fromEntries(cases.map((c) => [c.name, []]));
  const warmStart = performance.now();
  const warmupMs = options.warmupMs ?? (quickMode ? QUICK_WARMUP_MS : WARMUP_MS);
  const maxWarmup = options.maxWarmup ?? Number.POSITIVE_INFINITY;
  let warmupRounds = 0;
  for (let w = 0; w < maxWarmup && (w < options.warmup || performance.now() - warmStart < warmupMs); w++) {
    warmupRounds += 1;
    for (const c of cases) {
      await c.before?.();
      await time(c, true);
    }
  }
  for (let r = 0; r < options.rounds; r++) {
    const order = r % 2 === 0 ? cases : [...cases].reverse();
    for (const c of order) {
      await c.before?.();
      const t = await time(c, false);
      samples[c.name]?.push(round(t.wall, 3));
      cpuSamples[c.name]?.push(round(t.cpu, 3));
    }
  }
  return { samples, cpuSamples, rounds: options.rounds, warmup: warmupRounds };
}

/** Runs every case `warmup` times, then `rounds` interleaved rounds (order reversed every other round). */
export async function compare(cases: readonly Case[], options: CompareOptions): Promise<Timings> {
  return interleave(cases, options, (c, warm) => Promise.resolve(timeOnce(warm ? (c.warm ?? c.run) : c.run)));
}

/** A case whose call is asynchronous (e.g. a burst of RoutedRuntime requests): timed until its promise settles. */
export interface AsyncCase {
  readonly name: string;
  readonly run: () => Promise<void>;
  /** Warm-up call (default `run`). */
  readonly warm?: () => Promise<void>;
  /** Untimed preparation before each call. */
  readonly before?: () => Promise<void>;
}

/**
 * compare() for asynchronous calls: the same warm-up and interleaved ABBA rounds. The timed region runs from
 * the call until its promise settles, so it includes event-loop turns (timers, setImmediate) the call awaits.
 */
export async function compareAsync(cases: readonly AsyncCase[], options: CompareOptions): Promise<Timings> {
  return interleave(cases, options, (c, warm) => timeOnceAsync(warm ? (c.warm ?? c.run) : c.run));
}

/** Median over rounds of samples[a][i] / samples[b][i]. */
export function pairedRatio(samples: Readonly<Record<string, number[]>>, a: string, b: string): number {
  const xs = samples[a] ?? [];
  const ys = samples[b] ?? [];
  return median(xs.map((x, i) => x / (ys[i] ?? Number.NaN)));
}

export function medianMs(timings: Timings, name: string): number {
  return median(timings.samples[name] ?? []);
}

/** A ratio as reported in results: the median paired ratio plus both medians in ms. */
export interface RatioResult {
  readonly id: string;
  readonly label: string;
  readonly numerator: string;
  readonly denominator: string;
  /** Median over rounds of wall(a) / wall(b). */
  readonly ratio: number;
  readonly numeratorMs: number;
  readonly denominatorMs: number;
  /** Median over rounds of cpu(a) / cpu(b) (see Timings.cpuSamples). */
  readonly cpuRatio?: number;
  /** min wall(a) / min wall(b): each side's least-disturbed round. */
  readonly minRatio?: number;
  /** Target the ratio must not exceed (when the issue sets one) — or reach, when `higherIsBetter`. */
  readonly target?: number;
  /** The ratio is a throughput-like figure: the target is a lower bound (ratio ≥ target). */
  readonly higherIsBetter?: boolean;
  readonly note?: string;
}

/** A target as the issue states it: a time ratio must not exceed `max`, a throughput ratio must reach `min`. */
export type Target = { readonly max: number } | { readonly min: number };

/** The target a result carries itself (undefined when it carries none). */
export function targetOf(r: RatioResult): Target | undefined {
  if (r.target === undefined) return undefined;
  return r.higherIsBetter === true ? { min: r.target } : { max: r.target };
}

export function targetMet(ratio: number, target: Target): boolean {
  return 'min' in target ? ratio >= target.min : ratio <= target.max;
}

/** "≤ 1.2" or "≥ 0.95". */
export function formatTarget(target: Target): string {
  return 'min' in target ? `≥ ${target.min}` : `≤ ${target.max}`;
}

export function ratioResult(
  timings: Timings,
  id: string,
  label: string,
  numerator: string,
  denominator: string,
  extra: { target?: number; higherIsBetter?: boolean; note?: string } = {},
): RatioResult {
  const min = (name: string): number => Math.min(...(timings.samples[name] ?? [Number.NaN]));
  return {
    id,
    label,
    numerator,
    denominator,
    ratio: round(pairedRatio(timings.samples, numerator, denominator)),
    numeratorMs: round(medianMs(timings, numerator), 2),
    denominatorMs: round(medianMs(timings, denominator), 2),
    cpuRatio: round(pairedRatio(timings.cpuSamples, numerator, denominator)),
    minRatio: round(min(numerator) / min(denominator)),
    ...extra,
  };
}

export interface BenchResult {
  readonly name: string;
  readonly description: string;
  readonly quick: boolean;
  readonly date: string;
  readonly machine: MachineInfo;
  readonly constants: Readonly<Record<string, unknown>>;
  readonly ratios: readonly RatioResult[];
  /** Anything else worth keeping (op counts, skipped parts with reasons, raw samples). */
  readonly details?: Readonly<Record<string, unknown>>;
  readonly seconds: number;
}

/** Full runs write to results/, --quick smoke runs to results/quick/ (so they never overwrite real numbers). */
export function resultsDir(quick: boolean): string {
  return quick ? join(RESULTS_DIR, 'quick') : RESULTS_DIR;
}

export function writeResult(result: BenchResult): string {
  const dir = resultsDir(result.quick);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${result.name}.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  return file;
}

/** Prints ratios as they are measured (stdout: one line each). */
export function logRatio(r: RatioResult): void {
  const t = targetOf(r);
  const target = t === undefined ? '' : `  (target ${formatTarget(t)}: ${targetMet(r.ratio, t) ? 'met' : 'MISSED'})`;
  const cpu = r.cpuRatio === undefined ? '' : `, cpu ${r.cpuRatio.toFixed(3)}×, min ${(r.minRatio ?? Number.NaN).toFixed(3)}×`;
  console.log(`  ${r.label}: ${r.ratio.toFixed(3)}×  [${r.numeratorMs.toFixed(2)} ms / ${r.denominatorMs.toFixed(2)} ms${cpu}]${target}`);
}

/** Warm-up rounds a decode benchmark can afford: the cache slots left after the prompt and the timed rounds. */
export function decodeWarmupCap(maxSeqLen: number, prompt: number, rounds: number): number {
  return Math.max(1, maxSeqLen - prompt - rounds - 1);
}

/** Fails loudly if a benchmark leaks tensors (principle 6). */
export function assertNoLeak(startTensors: number, what: string): void {
  const now = tf.memory().numTensors;
  if (now !== startTensors) console.error(`warning: ${what} leaked ${now - startTensors} tensors`);
}

/** Kernel time of one tf.profile run: the total, and the `top` kernel names by time (calls and ms each, rounded to `digits`). */
export function kernelTimes(
  kernels: readonly { readonly name: string; readonly kernelTimeMs: unknown }[],
  top: number,
  digits: number,
): { kernelMs: number; top: { name: string; calls: number; ms: number }[] } {
  const byName = new Map<string, { calls: number; ms: number }>();
  let kernelMs = 0;
  for (const k of kernels) {
    const ms = Number(k.kernelTimeMs);
    kernelMs += ms;
    const entry = byName.get(k.name) ?? { calls: 0, ms: 0 };
    entry.calls += 1;
    entry.ms += ms;
    byName.set(k.name, entry);
  }
  const slowest = [...byName]
    .sort((a, b) => b[1].ms - a[1].ms)
    .slice(0, top)
    .map(([name, e]) => ({ name, calls: e.calls, ms: round(e.ms, digits) }));
  return { kernelMs, top: slowest };
}
