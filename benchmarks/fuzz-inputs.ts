/**
 * The long fuzz run of issue 20: seeded hostile inputs of the five kinds the library reads from untrusted
 * files (test/hostile/inputs.ts: safetensors files, specs, PEFT adapter configs, routed-model manifests,
 * JSONL rows), each fed to the real parsers and loaders, counting accepted inputs, typed errors
 * (RoutedPeftError), untyped errors (anything else: a bug) and hangs.
 *
 * Cases run in a child process that reports each result; a watchdog kills the child when one case takes
 * longer than --hang-ms (default 5000), counts a hang, and starts a new child at the next case — so a real
 * infinite loop is counted, not waited for.
 *
 *   node --import tsx benchmarks/fuzz-inputs.ts                 5 × 4,000 cases (20,000), seed 20
 *   node --import tsx benchmarks/fuzz-inputs.ts --cases 400     per kind
 *   node --import tsx benchmarks/fuzz-inputs.ts --seed 7 --only spec,jsonl
 *
 * Writes benchmarks/results/fuzz-inputs.json (counts per kind, the slowest case, the first untyped errors).
 * Exit 1 when any case was untyped or hung. FUZZ_INJECT_HANG=<index> makes that case spin for ever, to
 * check the watchdog (`--cases 20 --only jsonl --hang-ms 1000` then reports 1 hang).
 */
import { fork } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const SELF = fileURLToPath(import.meta.url);

type Outcome = 'ok' | 'typed' | 'untyped';
type Kind = 'safetensors' | 'spec' | 'adapter-config' | 'manifest' | 'jsonl';
const KINDS: readonly Kind[] = ['safetensors', 'spec', 'adapter-config', 'manifest', 'jsonl'];

interface Job {
  readonly kind: Kind;
  readonly seed: number;
  readonly cases: number;
  /** First case index to run (after a hang the child restarts past the hung case). */
  readonly start: number;
}

type ChildMessage =
  | { readonly type: 'ready' }
  | { readonly type: 'start'; readonly index: number }
  | { readonly type: 'result'; readonly index: number; readonly outcome: Outcome; readonly ms: number; readonly detail?: string }
  | { readonly type: 'done' }
  | { readonly type: 'fatal'; readonly message: string };

/** Cases are generated per chunk, so a restarted child regenerates exactly the same ones. */
const CHUNK = 250;

// ---------------------------------------------------------------------------------------------------------
// Child: runs a job's cases and reports each one.

async function child(): Promise<void> {
  const { BACKEND_ENV_VAR, selectBackend } = await import('../src/backend.js');
  const wanted = process.env[BACKEND_ENV_VAR];
  await selectBackend({ env: { [BACKEND_ENV_VAR]: wanted === undefined || wanted === '' ? 'wasm' : wanted } });
  const fc = (await import('fast-check')).default;
  const { arbitraryOf, createFuzzContext, runCase } = await import('../test/hostile/inputs.js');
  const context = await createFuzzContext();
  const send = (message: ChildMessage): void => {
    process.send?.(message);
  };
  process.on('message', async (job: Job) => {
    const arbitrary = arbitraryOf(job.kind, context);
    for (let chunkStart = Math.floor(job.start / CHUNK) * CHUNK; chunkStart < job.cases; chunkStart += CHUNK) {
      const count = Math.min(CHUNK, job.cases - chunkStart);
      let inputs: unknown[];
      try {
        inputs = fc.sample(arbitrary, { seed: job.seed * 1_000_003 + chunkStart, numRuns: count });
      } catch (error) {
        // A bug of the generators, not an outcome of the library: stop the run and say so.
        send({ type: 'fatal', message: `generating ${job.kind} cases failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}` });
        process.exit(2);
      }
      for (let i = 0; i < count; i++) {
        const index = chunkStart + i;
        if (index < job.start) continue;
        send({ type: 'start', index });
        if (process.env['FUZZ_INJECT_HANG'] === String(index)) for (;;);
        const result = await runCase(job.kind, inputs[i], context);
        send({ type: 'result', index, outcome: result.outcome, ms: result.ms, ...(result.detail === undefined ? {} : { detail: result.detail }) });
      }
    }
    send({ type: 'done' });
    await context.dispose();
    process.exit(0);
  });
  send({ type: 'ready' });
}

// ---------------------------------------------------------------------------------------------------------
// Parent: the watchdog.

interface KindReport {
  kind: Kind;
  cases: number;
  ok: number;
  typed: number;
  untyped: number;
  hangs: number;
  slowestMs: number;
  seconds: number;
  untypedExamples: string[];
  hungCases: number[];
}

function runKind(kind: Kind, seed: number, cases: number, hangMs: number): Promise<KindReport> {
  const report: KindReport = { kind, cases, ok: 0, typed: 0, untyped: 0, hangs: 0, slowestMs: 0, seconds: 0, untypedExamples: [], hungCases: [] };
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const launch = (start: number): void => {
      if (start >= cases) {
        report.seconds = (performance.now() - started) / 1000;
        resolve(report);
        return;
      }
      const proc = fork(SELF, ['--child'], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'ignore', 'ignore', 'ipc'] });
      let current: number | undefined;
      let timer: ReturnType<typeof setTimeout> | undefined;
      let finished = false;
      const arm = (): void => {
        if (timer !== undefined) clearTimeout(timer);
        timer = setTimeout(() => {
          // No result within hangMs: a hang. Kill the child and go on after the hung case.
          finished = true;
          const hung = current ?? start;
          report.hangs++;
          report.hungCases.push(hung);
          proc.kill('SIGKILL');
          launch(hung + 1);
        }, hangMs);
      };
      proc.on('message', (message: ChildMessage) => {
        if (message.type === 'ready') {
          proc.send({ kind, seed, cases, start } satisfies Job);
          arm();
        } else if (message.type === 'start') {
          current = message.index;
          arm();
        } else if (message.type === 'result') {
          report[message.outcome]++;
          report.slowestMs = Math.max(report.slowestMs, message.ms);
          if (message.outcome === 'untyped' && report.untypedExamples.length < 10) report.untypedExamples.push(`#${message.index}: ${message.detail ?? ''}`);
          arm();
        } else if (message.type === 'fatal') {
          finished = true;
          if (timer !== undefined) clearTimeout(timer);
          proc.kill('SIGKILL');
          reject(new Error(message.message));
        } else if (message.type === 'done') {
          finished = true;
          if (timer !== undefined) clearTimeout(timer);
          report.seconds = (performance.now() - started) / 1000;
          resolve(report);
        }
      });
      proc.on('exit', (code, signal) => {
        if (finished) return;
        finished = true;
        if (timer !== undefined) clearTimeout(timer);
        if (current === undefined) {
          reject(new Error(`the fuzz child exited (${signal ?? `exit ${code}`}) before running a case`));
          return;
        }
        // Died without a result (an abort, out of memory): count it as an untyped failure of the current case.
        const died = current ?? start;
        report.untyped++;
        if (report.untypedExamples.length < 10) report.untypedExamples.push(`#${died}: the process died (${signal ?? `exit ${code}`})`);
        launch(died + 1);
      });
      proc.on('error', reject);
    };
    launch(0);
  });
}

async function parent(): Promise<void> {
  const argv = process.argv.slice(2);
  const flag = (name: string): string | undefined => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const cases = Number(flag('cases') ?? 4000);
  const seed = Number(flag('seed') ?? 20);
  const hangMs = Number(flag('hang-ms') ?? 5000);
  const only = flag('only')?.split(',') as Kind[] | undefined;
  const kinds = KINDS.filter((k) => only === undefined || only.includes(k));
  const reports: KindReport[] = [];
  for (const kind of kinds) {
    const report = await runKind(kind, seed, cases, hangMs);
    reports.push(report);
    console.log(
      `${kind.padEnd(15)} ${String(report.cases).padStart(6)} cases: ${String(report.ok).padStart(6)} ok, ${String(report.typed).padStart(6)} typed errors, ${report.untyped} untyped, ${report.hangs} hangs; slowest ${report.slowestMs.toFixed(0)} ms; ${report.seconds.toFixed(1)} s`,
    );
    for (const e of report.untypedExamples) console.log(`  untyped ${e}`);
  }
  const total = reports.reduce(
    (t, r) => ({ cases: t.cases + r.cases, ok: t.ok + r.ok, typed: t.typed + r.typed, untyped: t.untyped + r.untyped, hangs: t.hangs + r.hangs }),
    { cases: 0, ok: 0, typed: 0, untyped: 0, hangs: 0 },
  );
  console.log(`total           ${total.cases} cases: ${total.ok} ok, ${total.typed} typed errors, ${total.untyped} untyped, ${total.hangs} hangs`);
  const out = join(HERE, 'results');
  mkdirSync(out, { recursive: true });
  writeFileSync(
    join(out, 'fuzz-inputs.json'),
    `${JSON.stringify({ benchmark: 'fuzz-inputs', date: new Date().toISOString().slice(0, 10), seed, casesPerKind: cases, hangMs, total, kinds: reports }, null, 2)}\n`,
  );
  process.exitCode = total.untyped > 0 || total.hangs > 0 ? 1 : 0;
}

if (process.argv.includes('--child')) await child();
else await parent();
