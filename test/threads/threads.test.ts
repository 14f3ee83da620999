// Multi-threaded wasm (src/wasm-threads.ts): outputs equal to one thread, the thread count measured and
// controlled, the pool's workers never keeping a process alive, a clear fallback to one thread, no tensor leak.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { BackendError } from '../../src/errors.js';
import { getBackendReport, resolveThreads, selectBackend, wasmPoolSwitchable, wasmThreadsStats, withWasmThreads } from '../../src/backend.js';
import type { InfoReport } from '../../src/cli/info-command.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { MIN_PARALLEL_ELEMENTS, MIN_PARALLEL_MACS, setMinParallelMacs } from '../../src/wasm-threads.js';
import { causalLmLoss } from '../../src/train/losses.js';
import { randomIds, randomLlama } from '../../benchmarks/lib/random-model.js';
import { routedLoraSpec } from '../../benchmarks/lib/specs.js';
import { THREADS_TEST_MODEL, THREADS_TEST_SHAPE } from './model.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const LAUNCH = `import { main } from './src/cli/main.ts'; import { builtinRouters } from './routers/index.ts';
process.exitCode = await main(process.argv.slice(1), undefined, { routers: builtinRouters() });`;
/** This process's wasm runs on a switchable pool (the default on a machine with ≥ 2 cores). */
const threaded = getBackendReport()?.chosen === 'wasm' && wasmPoolSwitchable();

/** Runs the CLI in a fresh Node process; a pool worker that kept it alive would hit the timeout (status null). */
function cli(args: readonly string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', LAUNCH, ...args], {
    cwd: root,
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, ROUTED_PEFT_BACKEND: 'wasm', ROUTED_PEFT_THREADS: '' },
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function maxRelativeDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let scale = 0;
  let diff = 0;
  for (let i = 0; i < a.length; i++) {
    scale = Math.max(scale, Math.abs(a[i] as number));
    diff = Math.max(diff, Math.abs((a[i] as number) - (b[i] as number)));
  }
  return a.length === b.length ? diff / Math.max(scale, 1e-30) : Number.POSITIVE_INFINITY;
}

describe.skipIf(!threaded)('the pool computes what one thread computes', () => {
  // The test model is small: lower the pool's threshold so its linear maps (256 × 128 × ≥ 128 ≈ 4 M) go there.
  beforeAll(() => setMinParallelMacs(4_000_000));
  afterAll(() => setMinParallelMacs(MIN_PARALLEL_MACS));
  const ids = randomIds(THREADS_TEST_SHAPE.batch, THREADS_TEST_SHAPE.tokens, THREADS_TEST_MODEL.vocabSize);

  test('base and routed logits: N threads = 1 thread (≤ 1e-5 relative), large matmuls on the pool, no leak', () => {
    const start = tf.memory().numTensors;
    const base = randomLlama(THREADS_TEST_MODEL);
    const routed = AdaptedModel.create(base, routedLoraSpec({ experts: 4, k: 2, r: 4 }), { routers: builtinRouters() });
    try {
      for (const forward of [() => base.forward({ ids }), () => routed.forward({ ids })]) {
        const before = wasmThreadsStats().parallelMatMuls;
        const many = forward(); // [B, T, V]
        const onPool = wasmThreadsStats().parallelMatMuls - before;
        const one = withWasmThreads(1, forward); // [B, T, V]
        expect(wasmThreadsStats().parallelMatMuls - before).toBe(onPool); // withWasmThreads(1) kept them off the pool
        expect(onPool).toBeGreaterThanOrEqual(THREADS_TEST_MODEL.nLayers * 7);
        expect(maxRelativeDifference(one.dataSync(), many.dataSync())).toBeLessThanOrEqual(1e-5);
        one.dispose();
        many.dispose();
      }
    } finally {
      routed.dispose();
      base.dispose();
    }
    expect(tf.memory().numTensors).toBe(start);
  });

  test("a training step's gradients: N threads = 1 thread (≤ 1e-5 relative)", () => {
    const start = tf.memory().numTensors;
    const base = randomLlama(THREADS_TEST_MODEL);
    const routed = AdaptedModel.create(base, routedLoraSpec({ experts: 4, k: 2, r: 4 }), { routers: builtinRouters() });
    const mask = ids.map((row) => row.map(() => 1));
    const gradients = (): Map<string, Float32Array> => {
      const { value, grads } = tf.variableGrads(() => causalLmLoss(routed.forward({ ids, mask, training: true }), { ids, mask, lossMask: mask }));
      const read = new Map(Object.entries(grads).map(([name, g]) => [name, g.dataSync() as Float32Array]));
      value.dispose();
      tf.dispose(grads);
      return read;
    };
    try {
      const before = wasmThreadsStats().parallelMatMuls;
      const many = gradients();
      expect(wasmThreadsStats().parallelMatMuls).toBeGreaterThan(before); // the backward's products went to the pool too
      const one = withWasmThreads(1, gradients);
      expect(many.size).toBeGreaterThan(0);
      expect([...one.keys()].sort()).toEqual([...many.keys()].sort());
      for (const [name, g] of one) expect(maxRelativeDifference(g, many.get(name) as Float32Array), name).toBeLessThanOrEqual(1e-5);
    } finally {
      routed.dispose();
      base.dispose();
    }
    expect(tf.memory().numTensors).toBe(start);
  });

  test('large Sigmoid, Softmax and broadcasting binary ops run on the pool with the bits of one thread; equal-shape ones stay', () => {
    const start = tf.memory().numTensors;
    const rows = Math.ceil(MIN_PARALLEL_ELEMENTS / 1376) + 1;
    const x = tf.randomNormal([rows, 1376], 0, 3, 'float32', 1); // [R, F]: above the threshold
    const row = tf.randomNormal([1376], 1, 0.5, 'float32', 2); // [F]
    const y = tf.randomNormal([rows, 1376], 0, 1, 'float32', 3); // [R, F]
    const ops: Record<string, () => tf.Tensor> = {
      sigmoid: () => tf.sigmoid(x), // [R, F]
      softmax: () => tf.softmax(x), // [R, F]
      'add row': () => tf.add(x, row), // [R, F]
      'sub row': () => tf.sub(x, row), // [R, F]
      'mul row': () => tf.mul(x, row), // [R, F]
      'div row': () => tf.div(x, row), // [R, F]
    };
    try {
      for (const [name, op] of Object.entries(ops)) {
        const before = wasmThreadsStats().parallelElementwise;
        const many = op();
        expect(wasmThreadsStats().parallelElementwise - before, name).toBe(1);
        const one = withWasmThreads(1, op);
        expect(wasmThreadsStats().parallelElementwise - before, name).toBe(1); // withWasmThreads(1) kept it off the pool
        expect(Array.from(many.dataSync()), name).toEqual(Array.from(one.dataSync()));
        tf.dispose([many, one]);
      }
      const before = wasmThreadsStats().parallelElementwise;
      tf.tidy(() => {
        tf.add(x, y); // [R, F]: equal shapes
        tf.mul(x, y); // [R, F]
        tf.sigmoid(tf.slice(x, [0, 0], [4, 1376])); // [4, F]: small
      });
      expect(wasmThreadsStats().parallelElementwise).toBe(before);
    } finally {
      tf.dispose([x, row, y]);
    }
    expect(tf.memory().numTensors).toBe(start);
  });

  test("logits equal the single-threaded build's (today's one-thread path), computed in another process", () => {
    const child = spawnSync(process.execPath, ['--import', 'tsx', 'test/threads/reference-logits.ts', '1'], { cwd: root, encoding: 'utf8', timeout: 30_000 });
    expect(child.status, child.stderr).toBe(0);
    const reference = JSON.parse(child.stdout) as { threads: { build: string; used: number }; logits: number[] };
    expect(reference.threads).toMatchObject({ build: 'simd', used: 1 });
    const base = randomLlama(THREADS_TEST_MODEL);
    const logits = base.forward({ ids, output: 'last-logits' }); // [B, V]
    expect(maxRelativeDifference(reference.logits, logits.dataSync())).toBeLessThanOrEqual(1e-5);
    logits.dispose();
    base.dispose();
  });
});

describe('thread count: chosen, measured, fixed per process', () => {
  test('--threads 2: info reports the pool measured after loading, and the process exits by itself', () => {
    const { status, stdout, stderr } = cli(['info', '--threads', '2', '--format', 'json']);
    expect(status, stderr).toBe(0);
    const info = JSON.parse(stdout) as InfoReport;
    expect(info.backend.threads).toMatchObject({ requested: 2, used: 2, workers: 1, build: 'threaded-simd', parallel: 'large-matmuls' });
  });

  test('--threads 1 is the single-threaded SIMD build; the text output names the count', () => {
    const { status, stdout, stderr } = cli(['info', '--threads', '1']);
    expect(status, stderr).toBe(0);
    expect(stdout).toMatch(/^threads {2}1 \(single-threaded SIMD build\)$/m);
  });

  test('without SharedArrayBuffer it falls back to one thread and says why', () => {
    const child = spawnSync(process.execPath, ['--import', 'tsx', 'test/threads/no-shared-memory.ts'], { cwd: root, encoding: 'utf8', timeout: 30_000 });
    const { status, stdout, stderr } = child;
    expect(status, stderr).toBe(0);
    const threads = JSON.parse(stdout) as InfoReport['backend']['threads'];
    expect(threads).toMatchObject({ requested: 2, used: 1, build: 'simd' });
    expect(threads?.note).toMatch(/SharedArrayBuffer/);
    expect(stderr).toMatch(/wasm runs on one thread: SharedArrayBuffer is not available/);
  });

  test('bad counts are typed errors naming the value; --threads 0 is a usage error (exit 2)', () => {
    expect(() => resolveThreads({ env: { ROUTED_PEFT_THREADS: 'many' } })).toThrow(BackendError);
    expect(() => resolveThreads({ env: { ROUTED_PEFT_THREADS: 'many' } })).toThrow(/ROUTED_PEFT_THREADS value 'many'/);
    expect(() => resolveThreads({ threads: 0 })).toThrow(/Invalid thread count 0/);
    expect(resolveThreads({ env: { ROUTED_PEFT_THREADS: '3' } })).toBe(3);
    const { status, stderr } = cli(['info', '--threads', '0']);
    expect(status).toBe(2);
    expect(stderr).toMatch(/--threads: '0'/);
  });

  test.skipIf(getBackendReport()?.threads === undefined)('asking another count once wasm is loaded is a BackendError saying how to get it', async () => {
    const loaded = getBackendReport()?.threads?.requested ?? 1;
    await expect(selectBackend({ preference: 'wasm', threads: loaded + 1 })).rejects.toThrow(/thread pool once per process/);
    await expect(selectBackend({ preference: 'wasm', threads: loaded })).resolves.toMatchObject({ chosen: 'wasm' });
  });
});
