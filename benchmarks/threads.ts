/**
 * Threads: the same work on 1 thread and on N threads (default: the available parallelism) of the wasm
 * backend — base prefill, routed prefill (E=8 k=2 r=8 on all seven sites) and a routed training step — and
 * the training step on N data-parallel replicas (src/train/data-parallel.ts: N − 1 worker threads besides
 * the caller, one wasm thread each), at 2 × 128 and at the 4 × 128.
 *
 * tfjs-wasm creates its thread pool once per process, so each side runs in its own child process (the same
 * script with --child; the replicas' side with --replicas N): all build the same model from the same seed, then the parent asks them for one
 * timed call at a time — each round runs every case on both sides, alternating which side goes first
 * (ABBA…); the threads cases run first, then the N-thread side stops and the replicas' side starts — so load from other processes hits both sides and every case alike. A side waiting for its turn is idle. Ratios are the median over rounds of
 * wall(1 thread) / wall(N threads) — a speed-up, higher is better; "cpu" is the same on process CPU time
 * (all threads of the child), which shows how much extra work the threads cost (≈ 1 when none). The 1-minute
 * load average is recorded before and after: when it is above the core count, other processes took cores
 * the N-thread side needed, and the speed-up is understated.
 *
 * The parent also checks that both sides computed the same last-position logits (max relative difference).
 *
 *   node --import tsx benchmarks/threads.ts [--quick] [--threads N]
 */
import { fork } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { availableParallelism, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { builtinRouters } from '../routers/index.js';
import { selectBackend, type WasmThreadsReport } from '../src/backend.js';
import { AdaptedModel } from '../src/model/adapted-model.js';
import { DataParallelGroup } from '../src/train/data-parallel.js';
import { Trainer, type TrainBatch } from '../src/train/trainer.js';
import {
  isMain,
  logRatio,
  machineInfo,
  median,
  parseArgs,
  ratioResult,
  round,
  writeResult,
  type BenchArgs,
  type BenchResult,
  type RatioResult,
} from './lib/harness.js';
import { BENCH_MODEL, QUICK_MODEL, randomIds, randomLlama } from './lib/random-model.js';
import { routedLoraSpec } from './lib/specs.js';

// ---------------------------------------------------------------------------------------------------------
// Constants
const FULL = { batch: 4, tokens: 128, trainBatch: 2, largeTrainBatch: 4, trainTokens: 128, warmup: 1, rounds: 7 };
const QUICK = { batch: 1, tokens: 16, trainBatch: 1, largeTrainBatch: 2, trainTokens: 16, warmup: 1, rounds: 2 };
const SPEC = { experts: 8, k: 2, r: 8 };
const TRAINER_CONFIG = { optimizer: { lr: 1e-4 }, maxGradNorm: 1 };
/** Each case: the work, and what its N-core side is (N wasm threads in one process, or N replicas). */
const CASES = [
  { name: 'base-prefill', id: 'threads/base-prefill', label: 'base prefill', versus: 'threads', target: 1.7 },
  { name: 'routed-prefill', id: 'threads/routed-prefill', label: 'routed prefill (E=8 k=2 r=8)', versus: 'threads', target: 1.7 },
  { name: 'train-step', id: 'threads/train-step', label: 'routed training step (E=8 k=2 r=8)', versus: 'threads', target: 1.6 },
  { name: 'train-step-large', id: 'threads/train-step-large', label: 'routed training step (E=8 k=2 r=8)', versus: 'threads', target: 1.6 },
  { name: 'train-step', id: 'threads/train-step-replicas', label: 'routed training step (E=8 k=2 r=8)', versus: 'replicas', target: 1.6 },
  { name: 'train-step-large', id: 'threads/train-step-large-replicas', label: 'routed training step (E=8 k=2 r=8)', versus: 'replicas', target: 1.6 },
] as const;
// ---------------------------------------------------------------------------------------------------------

type CaseName = (typeof CASES)[number]['name'];
type Request = { readonly id: number; readonly run: CaseName | 'logits' | 'exit' };
type Reply = { readonly id: number; readonly wallMs: number; readonly cpuMs: number; readonly values?: number[] };
type Ready = { readonly ready: true; readonly threads: WasmThreadsReport | undefined };

/**
 * A child: loads wasm on --threads, builds the models, answers one timed call per request. With `replicas`
 * (≥ 2) its trainer splits every batch over that many data-parallel replicas (it then runs only the training
 * steps).
 */
async function child(quick: boolean, threads: number, replicas: number | undefined): Promise<void> {
  const report = await selectBackend({ preference: 'wasm', threads });
  const sizes = quick ? QUICK : FULL;
  const modelOptions = quick ? QUICK_MODEL : BENCH_MODEL;
  const base = randomLlama(modelOptions);
  const routed = AdaptedModel.create(base, routedLoraSpec(SPEC), { routers: builtinRouters() });
  const group = replicas === undefined ? undefined : await DataParallelGroup.start(routed, TRAINER_CONFIG, { replicas });
  const trainer = new Trainer(routed, TRAINER_CONFIG, group === undefined ? {} : { dataParallel: group });
  const ids = randomIds(sizes.batch, sizes.tokens, modelOptions.vocabSize);
  const trainIds = randomIds(sizes.trainBatch, sizes.trainTokens, modelOptions.vocabSize, 9);
  const mask = trainIds.map((row) => row.map(() => 1));
  const batch: TrainBatch = { ids: trainIds, mask, lossMask: mask };
  const largeIds = randomIds(sizes.largeTrainBatch, sizes.trainTokens, modelOptions.vocabSize, 11);
  const largeMask = largeIds.map((row) => row.map(() => 1));
  const largeBatch: TrainBatch = { ids: largeIds, mask: largeMask, lossMask: largeMask };
  const calls: Record<CaseName, () => void> = {
    'base-prefill': () => {
      const logits = base.forward({ ids, output: 'last-logits' }); // [B, V]
      logits.dataSync();
      logits.dispose();
    },
    'routed-prefill': () => {
      const logits = routed.forward({ ids, output: 'last-logits' }); // [B, V]
      logits.dataSync();
      logits.dispose();
    },
    'train-step': () => void trainer.step(batch),
    'train-step-large': () => void trainer.step(largeBatch),
  };
  const send = (message: Reply | Ready): void => void process.send?.(message);
  process.on('message', (request: Request) => {
    if (request.run === 'exit') {
      trainer.dispose();
      void group?.close();
      routed.dispose();
      base.dispose();
      process.disconnect();
      return;
    }
    if (request.run === 'logits') {
      const logits = base.forward({ ids, output: 'last-logits' }); // [B, V]
      const values = Array.from(logits.dataSync());
      logits.dispose();
      send({ id: request.id, wallMs: 0, cpuMs: 0, values });
      return;
    }
    const cpu = process.cpuUsage();
    const t0 = performance.now();
    calls[request.run]();
    const wallMs = performance.now() - t0;
    const used = process.cpuUsage(cpu);
    send({ id: request.id, wallMs, cpuMs: (used.user + used.system) / 1000 });
  });
  send({ ready: true, threads: report.threads });
}

/**
 * How many cores this process can get right now: one fixed spin loop in a worker, then `threads` of them at
 * once; capacity = threads · t(one) / t(all). 2 on two idle cores; near 1 when other processes hold them.
 */
async function coreCapacity(threads: number): Promise<number> {
  const spin = "let x=0;const t=performance.now();for(let i=0;i<1e8;i++)x+=i%7;require('node:worker_threads').parentPort.postMessage(performance.now()-t+x*0);";
  const job = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const worker = new Worker(spin, { eval: true });
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
  const time = async (jobs: number): Promise<number> => {
    const t0 = performance.now();
    await Promise.all(Array.from({ length: jobs }, job));
    return performance.now() - t0;
  };
  const one = await time(1);
  const all = await time(threads);
  return round((threads * one) / all, 2);
}

interface Side {
  readonly threads: number;
  /** Data-parallel replicas (the workers on one wasm thread each, the child's own on `threads`), or undefined. */
  readonly replicas: number | undefined;
  readonly report: WasmThreadsReport | undefined;
  ask(run: Request['run']): Promise<Reply>;
  close(): Promise<void>;
}

async function startSide(threads: number, quick: boolean, replicas?: number): Promise<Side> {
  const flags = ['--child', '--threads', String(threads), ...(replicas === undefined ? [] : ['--replicas', String(replicas)]), ...(quick ? ['--quick'] : [])];
  const proc = fork(fileURLToPath(import.meta.url), flags, {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let next = 0;
  const waiting = new Map<number, (reply: Reply) => void>();
  const ready = new Promise<Ready>((resolve, reject) => {
    proc.once('error', reject);
    proc.once('exit', (code) => reject(new Error(`threads benchmark child (${threads} threads) exited with ${String(code)} before it was ready`)));
    proc.on('message', (message: Reply | Ready) => {
      if ('ready' in message) resolve(message);
      else waiting.get(message.id)?.(message);
    });
  });
  const { threads: report } = await ready;
  return {
    threads,
    replicas,
    report,
    ask: (run) =>
      new Promise<Reply>((resolve) => {
        const id = next++;
        waiting.set(id, (reply) => {
          waiting.delete(id);
          resolve(reply);
        });
        proc.send({ id, run } satisfies Request);
      }),
    close: () =>
      new Promise<void>((resolve) => {
        proc.once('exit', () => resolve());
        proc.send({ id: -1, run: 'exit' } satisfies Request);
      }),
  };
}

export async function run(args: BenchArgs & { threads?: number }): Promise<BenchResult> {
  const started = performance.now();
  const sizes = args.quick ? QUICK : FULL;
  const threads = args.threads ?? Math.max(2, availableParallelism());
  await selectBackend({ preference: 'wasm', threads: 1 }); // the parent only orchestrates (and names the backend in machineInfo)
  const loadBefore = round(loadavg()[0] ?? Number.NaN, 2);
  const capacityBefore = await coreCapacity(threads);
  console.log(`  load average ${loadBefore}; cores this process could get: ${capacityBefore} of ${threads}`);
  // One side at a time while they load and build (so neither slows the other's start). Two phases: the
  // threads cases with the N-thread side, then the replicas cases with the replicas' side, so no idle
  // process of the other comparison sits beside a timed one.
  const one = await startSide(1, args.quick);
  let many: Side | undefined = await startSide(threads, args.quick);
  let replicated: Side | undefined;
  const reports: { many?: WasmThreadsReport | undefined; replicas?: WasmThreadsReport | undefined } = { many: many.report };
  const wall: Record<string, number[]> = {};
  const cpu: Record<string, number[]> = {};
  // The 1-thread side times a training step once for each comparison, next to that comparison's other side.
  const key = (c: (typeof CASES)[number], role: 'one' | 'other'): string =>
    c.versus === 'threads' ? `${c.name}@${role === 'one' ? 1 : threads}` : role === 'one' ? `${c.name}@1/vs-replicas` : `${c.name}@${threads}-replicas`;
  const ratios: RatioResult[] = [];
  let maxRelDiff = Number.NaN;
  /** Warm-up, then rounds of every case of one comparison, alternating which side goes first (ABBA…). */
  const measure = async (cases: readonly (typeof CASES)[number][], other: Side): Promise<void> => {
    for (const c of cases) for (let w = 0; w < sizes.warmup; w++) for (const side of [one, other]) await side.ask(c.name);
    // Rounds outside, cases inside: a change of load during the run hits every case, not only the last one.
    for (let r = 0; r < sizes.rounds; r++) {
      for (const c of cases) {
        const order = r % 2 === 0 ? [one, other] : [other, one];
        for (const side of order) {
          const reply = await side.ask(c.name);
          const name = key(c, side === one ? 'one' : 'other');
          wall[name] = [...(wall[name] ?? []), reply.wallMs];
          cpu[name] = [...(cpu[name] ?? []), reply.cpuMs];
        }
      }
    }
  };
  try {
    const [a, b] = await Promise.all([one.ask('logits'), many.ask('logits')]);
    const x = a.values ?? [];
    const y = b.values ?? [];
    const scale = Math.max(...x.map(Math.abs));
    maxRelDiff = x.reduce((m, v, i) => Math.max(m, Math.abs(v - (y[i] ?? Number.NaN)) / scale), 0);
    console.log(`  logits 1 vs ${threads} threads: max |Δ| / max |x| = ${maxRelDiff.toExponential(2)}`);
    await measure(
      CASES.filter((c) => c.versus === 'threads'),
      many,
    );
    await many.close();
    many = undefined;
    replicated = await startSide(1, args.quick, threads);
    reports.replicas = replicated.report;
    await measure(
      CASES.filter((c) => c.versus === 'replicas'),
      replicated,
    );
    const timings = { samples: wall, cpuSamples: cpu, rounds: sizes.rounds, warmup: sizes.warmup };
    for (const c of CASES) {
      const rows = c.name === 'train-step' ? sizes.trainBatch : c.name === 'train-step-large' ? sizes.largeTrainBatch : sizes.batch;
      const shape = `${rows}×${c.name.startsWith('train') ? sizes.trainTokens : sizes.tokens}`;
      const what = c.versus === 'threads' ? `${threads} threads` : `${threads} data-parallel replicas`;
      const ratio = ratioResult(timings, c.id, `${c.label} ${shape}: speed-up, 1 thread / ${what} (wall)`, key(c, 'one'), key(c, 'other'), {
        target: c.target,
        higherIsBetter: true,
      });
      ratios.push(ratio);
      logRatio(ratio);
    }
  } finally {
    await Promise.all([one.close(), many?.close(), replicated?.close()]);
  }
  const loadAfter = round(loadavg()[0] ?? Number.NaN, 2);
  const capacityAfter = await coreCapacity(threads);
  console.log(`  load average ${loadAfter}; cores this process could get: ${capacityAfter} of ${threads}`);
  return {
    name: 'threads',
    description: `The same work on 1 and ${threads} wasm threads, and training steps on ${threads} data-parallel replicas (one child process per side, interleaved): base prefill, routed prefill, routed training steps`,
    quick: args.quick,
    date: new Date().toISOString(),
    machine: machineInfo(),
    constants: { model: args.quick ? QUICK_MODEL : BENCH_MODEL, spec: SPEC, threads, ...sizes, trainer: TRAINER_CONFIG },
    ratios,
    details: {
      threadsReports: { one: one.report, ...reports },
      loadAverage: { before: loadBefore, after: loadAfter },
      coreCapacity: { before: capacityBefore, after: capacityAfter },
      logitsMaxRelativeDifference: maxRelDiff,
      medianWallMs: Object.fromEntries(Object.entries(wall).map(([k, v]) => [k, round(median(v), 1)])),
      medianCpuMs: Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, round(median(v), 1)])),
      samplesMs: { wall, cpu },
    },
    seconds: round((performance.now() - started) / 1000, 1),
  };
}

if (isMain(import.meta.url)) {
  const argv = process.argv.slice(2);
  const args = parseArgs(argv);
  const at = argv.indexOf('--threads');
  const threads = at >= 0 ? Number(argv[at + 1]) : undefined;
  const replicasAt = argv.indexOf('--replicas');
  if (argv.includes('--child')) {
    await child(args.quick, threads ?? 1, replicasAt >= 0 ? Number(argv[replicasAt + 1]) : undefined);
  } else {
    const result = await run({ ...args, ...(threads === undefined ? {} : { threads }) });
    console.log(`wrote ${writeResult(result)}`);
  }
}
