// Backend selection: auto order and recorded failures, explicit preferences, env validation, idempotency,
// and that nothing printed while loading a backend reaches stdout.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { BackendError, SyncReadError } from '../src/errors.js';
import { WEBGPU_SKIP_NOTE, hasWebGpu } from './helpers/webgpu.js';
import {
  BACKEND_ENV_VAR,
  getBackendCapabilities,
  getBackendReport,
  isBackendPreference,
  readSync,
  resolveBackendPreference,
  selectBackend,
} from '../src/backend.js';

const root = fileURLToPath(new URL('..', import.meta.url));
/** These tests describe a machine without the native tfjs-node packages (like this one and CI). */
const nativeInstalled = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'].some((name) => {
  try {
    createRequire(import.meta.url).resolve(name);
    return true;
  } catch {
    return false;
  }
});
let previous: string;

beforeEach(() => {
  previous = tf.getBackend();
});

afterEach(async () => {
  vi.unstubAllEnvs();
  if (tf.getBackend() !== previous) await tf.setBackend(previous);
});

describe('auto', () => {
  test.skipIf(nativeInstalled)('picks wasm here and records both tensorflow attempts as failed with a reason', async () => {
    const report = await selectBackend({ preference: 'auto' });
    expect(report.chosen).toBe('wasm');
    expect(report.preference).toBe('auto');
    expect(tf.getBackend()).toBe('wasm');
    expect(report.attempts.map((a) => a.backend)).toEqual(['tensorflow-gpu', 'tensorflow', 'webgpu', 'wasm']);
    const [gpu, node, webgpu, wasm] = report.attempts;
    // No hardware WebGPU adapter here: either none at all, or a software one that auto refuses.
    expect(webgpu?.ok).toBe(false);
    expect(webgpu?.reason).toMatch(/adapter|webgpu/i);
    if (webgpu?.adapter !== undefined) expect(webgpu.reason).toMatch(/software/);
    expect(gpu?.ok).toBe(false);
    expect(gpu?.reason).toMatch(/tfjs-node-gpu/);
    expect(node?.ok).toBe(false);
    expect(node?.reason).toMatch(/tfjs-node/);
    expect(wasm).toMatchObject({ ok: true });
    expect(wasm?.reason).toBeUndefined();
    for (const attempt of report.attempts) expect(attempt.ms).toBeGreaterThanOrEqual(0);
    expect(getBackendReport()).toBe(report);
  });

  test('is idempotent: the same preference returns the remembered report', async () => {
    const first = await selectBackend({ preference: 'auto' });
    const [second, third] = await Promise.all([selectBackend({ preference: 'auto' }), selectBackend({ preference: 'auto' })]);
    expect(second).toBe(first);
    expect(third).toBe(first);
  });

  test.skipIf(nativeInstalled)('re-activates the remembered backend if something switched tfjs away from it', async () => {
    const first = await selectBackend({ preference: 'auto' });
    await tf.setBackend('cpu');
    expect(await selectBackend({ preference: 'auto' })).toBe(first);
    expect(tf.getBackend()).toBe('wasm');
  });

  test('is the default when the env variable is unset or empty', () => {
    expect(resolveBackendPreference({ env: {} })).toBe('auto');
    expect(resolveBackendPreference({ env: { [BACKEND_ENV_VAR]: '' } })).toBe('auto');
    expect(resolveBackendPreference({ env: { [BACKEND_ENV_VAR]: ' CPU ' } })).toBe('cpu');
  });
});

describe('explicit preferences', () => {
  test.skipIf(nativeInstalled)('tensorflow that cannot load throws BackendError saying why and how to fix it, without falling back', async () => {
    const before = tf.getBackend();
    const error = await selectBackend({ preference: 'tensorflow' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BackendError);
    const message = (error as BackendError).message;
    expect(message).toMatch(/'tensorflow' backend could not be loaded/);
    expect(message).toMatch(/tensorflow-gpu: .*tfjs-node-gpu/);
    expect(message).toMatch(/npm install @tensorflow\/tfjs-node-gpu/);
    expect(message).toMatch(/wasm or cpu/);
    expect(tf.getBackend()).toBe(before);
    expect(getBackendReport()?.preference).not.toBe('tensorflow');
  });

  test.skipIf(nativeInstalled)('tensorflow from the env variable fails the same way', async () => {
    vi.stubEnv(BACKEND_ENV_VAR, 'tensorflow');
    await expect(selectBackend()).rejects.toThrow(/tfjs-node-gpu/);
  });

  test('cpu works', async () => {
    const report = await selectBackend({ preference: 'cpu' });
    expect(report).toMatchObject({ chosen: 'cpu', preference: 'cpu', attempts: [{ backend: 'cpu', ok: true }] });
    expect(tf.getBackend()).toBe('cpu');
    expect(tf.tidy(() => tf.add(tf.scalar(2), tf.scalar(3)).dataSync()[0])).toBe(5);
  });

  test('wasm works', async () => {
    const report = await selectBackend({ preference: 'wasm' });
    expect(report).toMatchObject({ chosen: 'wasm', attempts: [{ backend: 'wasm', ok: true }] });
    expect(tf.getBackend()).toBe('wasm');
  });
});

describe('invalid values', () => {
  test('an invalid env value throws BackendError naming the value and the valid ones', async () => {
    vi.stubEnv(BACKEND_ENV_VAR, 'metal');
    const error = await selectBackend().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BackendError);
    expect((error as Error).message).toMatch(/ROUTED_PEFT_BACKEND value 'metal'/);
    expect((error as Error).message).toMatch(/tensorflow, webgpu, wasm, cpu, auto/);
  });

  test('an invalid preference option throws BackendError', () => {
    expect(() => resolveBackendPreference({ preference: 'gpu' as never })).toThrow(BackendError);
    expect(isBackendPreference('wasm')).toBe(true);
    expect(isBackendPreference('webgl')).toBe(false);
  });
});

describe('stdout stays clean', () => {
  test.skipIf(nativeInstalled)('console output while loading a backend goes to stderr', async () => {
    vi.resetModules();
    vi.doMock('@tensorflow/tfjs-node-gpu', () => {
      console.log('Hi there 👋 from a noisy backend package');
      console.info('more noise');
      return {}; // loads, but registers no backend
    });
    const stdout = vi.spyOn(process.stdout, 'write');
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      const fresh = await import('../src/backend.js');
      const report = await fresh.selectBackend({ preference: 'auto' });
      expect(report.chosen).toBe('wasm');
      expect(report.attempts[0]?.reason).toMatch(/did not register the 'tensorflow' backend/);
      const written = (spy: typeof stdout): string => spy.mock.calls.map((c) => String(c[0])).join('');
      expect(written(stdout)).not.toMatch(/Hi there|more noise/);
      expect(written(stderr)).toMatch(/Hi there/);
    } finally {
      stdout.mockRestore();
      stderr.mockRestore();
      vi.doUnmock('@tensorflow/tfjs-node-gpu');
    }
  });

  test("tfjs's own Node.js hint (cpu backend, first tensor) goes to stderr, not stdout", () => {
    const script = [
      `const { selectBackend } = await import(${JSON.stringify(new URL('../src/backend.ts', import.meta.url).href)});`,
      `const tf = await import('@tensorflow/tfjs');`,
      `await selectBackend({ preference: 'cpu' });`,
      `tf.add(tf.scalar(1), tf.scalar(2)).dataSync();`,
      `await selectBackend({ preference: 'auto' });`,
    ].join('\n');
    const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: root,
      encoding: 'utf8',
      env: { ...process.env, [BACKEND_ENV_VAR]: '' },
    });
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(/running TensorFlow.js in Node.js/);
  });
});

describe('capabilities', () => {
  test('host memory and synchronous reads are capabilities of the backend, not name checks', () => {
    expect(getBackendCapabilities('wasm')).toEqual({ hostMemory: true, syncReads: true });
    expect(getBackendCapabilities('cpu')).toEqual({ hostMemory: true, syncReads: true });
    expect(getBackendCapabilities('webgpu')).toEqual({ hostMemory: false, syncReads: false });
    expect(getBackendCapabilities('some-future-backend')).toEqual({ hostMemory: false, syncReads: false });
    expect(getBackendCapabilities()).toEqual(getBackendCapabilities(tf.getBackend()));
  });

  test('readSync reads on a backend with synchronous reads', () => {
    const t = tf.tensor1d([1, 2, 3]);
    expect([...readSync(t, 'a test', 'use data()')]).toEqual([1, 2, 3]);
    t.dispose();
  });
});

describe(`webgpu${WEBGPU_SKIP_NOTE}`, () => {
  test.skipIf(!hasWebGpu)('ROUTED_PEFT_BACKEND=webgpu forces it and records the adapter', async () => {
    vi.stubEnv(BACKEND_ENV_VAR, 'webgpu');
    const report = await selectBackend();
    expect(report.chosen).toBe('webgpu');
    expect(tf.getBackend()).toBe('webgpu');
    const [attempt] = report.attempts;
    expect(attempt?.ok).toBe(true);
    expect(attempt?.adapter?.limits.maxStorageBufferBindingSize).toBeGreaterThan(0);
    expect(typeof attempt?.adapter?.architecture).toBe('string');
    const t = tf.tensor1d([1, 2, 3]);
    expect([...(await t.data())]).toEqual([1, 2, 3]);
    let error: unknown;
    try {
      readSync(t, 'A test read', 'Use await tensor.data()');
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(SyncReadError);
    expect((error as Error).message).toMatch(/A test read reads a tensor synchronously, which the 'webgpu' backend cannot do\. Use await tensor\.data\(\)/);
    t.dispose();
    await selectBackend({ preference: 'wasm' });
  });

  test.skipIf(!hasWebGpu)('auto never picks a software adapter, and says why', async () => {
    const report = await selectBackend({ preference: 'auto' });
    const webgpu = report.attempts.find((a) => a.backend === 'webgpu');
    if (webgpu?.adapter?.software === true) {
      expect(webgpu.ok).toBe(false);
      expect(webgpu.reason).toMatch(/software.*ROUTED_PEFT_BACKEND=webgpu/);
      expect(report.chosen).not.toBe('webgpu');
    } else expect(report.chosen === 'webgpu' || report.chosen === 'tensorflow').toBe(true);
  });
});
