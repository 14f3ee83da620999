// `routed-peft info` and the CLI dispatcher: help, version, unknown commands, usage errors and exit codes.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { BACKEND_ENV_VAR } from '../../src/backend.js';
import { commands, findCommand } from '../../src/cli/commands.js';
import type { InfoReport } from '../../src/cli/info-command.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { packageVersion } from '../../src/version.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
/** The backend expectations below describe a machine without the native tfjs-node packages (like this one and CI). */
const nativeInstalled = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'].some((name) => {
  try {
    createRequire(import.meta.url).resolve(name);
    return true;
  } catch {
    return false;
  }
});

afterEach(() => {
  vi.unstubAllEnvs();
});

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const io = createMemoryIo();
  const code = await main(argv, io);
  return { code, out: io.out, err: io.err };
}

describe('info', () => {
  test.skipIf(nativeInstalled)('--format json prints one object naming the chosen backend and every attempt', async () => {
    vi.stubEnv(BACKEND_ENV_VAR, 'auto');
    const { code, out, err } = await run('info', '--format', 'json');
    expect(err).toBe('');
    expect(code).toBe(0);
    expect(out.endsWith('\n')).toBe(true);
    expect(out.trim().split('\n')).toHaveLength(1);
    const info = JSON.parse(out) as InfoReport;
    expect(info.name).toBe('routed-peft');
    expect(info.version).toBe(packageVersion());
    expect(info.node).toBe(process.version);
    expect(info.backend.chosen).toBe('wasm');
    expect(info.backend.preference).toBe('auto');
    expect(info.backend.attempts.map((a) => [a.backend, a.ok])).toEqual([
      ['tensorflow-gpu', false],
      ['tensorflow', false],
      ['webgpu', false], // no hardware adapter here (none, or a software one auto refuses)
      ['wasm', true],
    ]);
    expect(info.backend.attempts[0]?.reason).toMatch(/tfjs-node-gpu/);
  });

  test.skipIf(nativeInstalled)('text format (the default) names the backend and why the others failed', async () => {
    vi.stubEnv(BACKEND_ENV_VAR, 'auto');
    const { code, out } = await run('info');
    expect(code).toBe(0);
    expect(out).toContain(`routed-peft ${packageVersion()}`);
    expect(out).toMatch(/backend\s+wasm \(preference: auto\)/);
    expect(out).toMatch(/tensorflow-gpu\s+failed.*tfjs-node-gpu/);
    expect(out).toMatch(/wasm\s+loaded/);
  });

  test('a bad --format is a usage error: message and usage on stderr, exit 2', async () => {
    const { code, out, err } = await run('info', '--format', 'xml');
    expect(code).toBe(2);
    expect(out).toBe('');
    expect(err).toContain("--format: 'xml'");
    expect(err).toContain('Usage: routed-peft info');
  });

  test.skipIf(nativeInstalled)('a backend that cannot load is exit 1 with the reason on stderr', async () => {
    vi.stubEnv(BACKEND_ENV_VAR, 'tensorflow');
    const { code, out, err } = await run('info', '--format', 'json');
    expect(code).toBe(1);
    expect(out).toBe('');
    expect(err).toMatch(/tfjs-node-gpu/);
    expect(err).not.toContain('Usage:');
  });

  test('a real process prints nothing but the JSON object on stdout', () => {
    const script = `const { main } = await import(${JSON.stringify(new URL('../../src/cli/main.ts', import.meta.url).href)});
process.exitCode = await main(['info', '--format', 'json']);`;
    const result = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: root,
      encoding: 'utf8',
      env: { ...process.env, [BACKEND_ENV_VAR]: 'cpu' },
    });
    expect(result.status, result.stderr).toBe(0);
    const info = JSON.parse(result.stdout) as InfoReport;
    expect(info.backend).toMatchObject({ chosen: 'cpu', preference: 'cpu' });
  });
});

describe('dispatcher', () => {
  test('--help lists every command on stdout, exit 0', async () => {
    const { code, out, err } = await run('--help');
    expect(code).toBe(0);
    expect(err).toBe('');
    for (const name of Object.keys(commands)) expect(out).toMatch(new RegExp(`^  ${name} `, 'm'));
  });

  test('no command prints usage on stderr, exit 2', async () => {
    const { code, out, err } = await run();
    expect(code).toBe(2);
    expect(out).toBe('');
    expect(err).toContain('Usage: routed-peft <command>');
  });

  test('an unknown command or option is a usage error, exit 2', async () => {
    for (const bad of ['bogus', '--bogus', 'constructor', 'toString']) {
      const { code, out, err } = await run(bad);
      expect(code).toBe(2);
      expect(out).toBe('');
      expect(err).toContain(`'${bad}'`);
      expect(err).toContain('Usage: routed-peft <command>');
    }
  });

  test('--version prints the package version', async () => {
    expect(await run('--version')).toEqual({ code: 0, out: `${packageVersion()}\n`, err: '' });
    expect(packageVersion()).toMatch(/^\d+\.\d+\.\d+/);
  });

  test('<command> --help and help <command> print the command usage, exit 0', async () => {
    for (const argv of [
      ['info', '--help'],
      ['info', '-h'],
      ['help', 'info'],
    ]) {
      const { code, out } = await run(...argv);
      expect(code).toBe(0);
      expect(out).toContain('Usage: routed-peft info [--format text|json]');
    }
  });

  test('every registered command is keyed by its own name', () => {
    for (const [key, command] of Object.entries(commands)) expect(command.name).toBe(key);
    expect(findCommand('info')?.name).toBe('info');
    expect(findCommand('hasOwnProperty')).toBeUndefined();
  });
});
