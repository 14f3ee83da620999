// `routed-peft serve` as a real process: it prints where it listens, serves adapters and routed models given
// as NAME=DIR, and on SIGTERM stops accepting, lets the running request finish, then exits 0. Also its
// argument errors; and with --workers 2 (a RuntimePool) the same answers as one runtime.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { main } from '../../src/cli/main.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { demoModelDir, makeServerFixture, type ServerFixture } from './fixtures.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
// The launcher's work (bin/routed-peft.js), from source: main() with the built-in routers.
const LAUNCH = `import { main } from './src/cli/main.ts'; import { builtinRouters } from './routers/index.ts';
process.exitCode = await main(process.argv.slice(1), undefined, { routers: builtinRouters() });`;

let fx: ServerFixture;

beforeAll(async () => {
  fx = await makeServerFixture();
});

afterAll(async () => {
  await fx.dispose();
});

interface Child {
  readonly process: ChildProcessWithoutNullStreams;
  readonly url: string;
  stderr(): string;
  readonly exited: Promise<number | null>;
}

async function startCli(args: string[]): Promise<Child> {
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', LAUNCH, 'serve', ...args], {
    cwd: root,
    env: { ...process.env, ROUTED_PEFT_BACKEND: 'wasm', ROUTED_PEFT_API_KEY: 'from-env' },
  });
  let stderr = '';
  child.stderr.on('data', (data: Buffer) => {
    stderr += data.toString();
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not start:\n${stderr}`)), 30_000);
    child.stderr.on('data', () => {
      const match = /listening on (http:\/\/\S+)/.exec(stderr);
      if (match !== null) {
        clearTimeout(timer);
        resolve(match[1] as string);
      }
    });
    void exited.then((code) => reject(new Error(`the server exited (${code}):\n${stderr}`)));
  });
  return { process: child, url, stderr: () => stderr, exited };
}

describe('routed-peft serve', () => {
  test('serves NAME=DIR targets, and on SIGTERM finishes the running request, then exits 0', async () => {
    const child = await startCli(['--model', demoModelDir, '--adapter', `a=${fx.dir('a')}`, '--routed', `moe=${fx.dir('moe')}`, '--port', '0']);
    try {
      expect(child.stderr()).toContain('models: base, a, moe; API key required');
      const client = new OpenAI({ baseURL: `${child.url}/v1`, apiKey: 'from-env', maxRetries: 0 });
      expect((await client.models.list()).data.map((m) => m.id)).toEqual(['base', 'a', 'moe']);
      const stream = await client.completions.create({
        model: 'moe',
        prompt: 'ab',
        max_tokens: 50,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
        ignore_eos: true,
      } as OpenAI.CompletionCreateParamsStreaming);
      const iterator = stream[Symbol.asyncIterator]();
      let text = (await iterator.next()).value?.choices[0]?.text ?? '';
      child.process.kill('SIGTERM');
      let finish: string | null = null;
      let usage: OpenAI.CompletionUsage | undefined;
      for (let next = await iterator.next(); next.done !== true; next = await iterator.next()) {
        text += next.value.choices[0]?.text ?? '';
        finish = next.value.choices[0]?.finish_reason ?? finish;
        usage = next.value.usage ?? usage;
      }
      expect(finish).toBe('length');
      expect(usage?.completion_tokens).toBe(50);
      expect(text.length).toBeGreaterThan(0);
      expect(await child.exited).toBe(0);
      expect(child.stderr()).toMatch(/SIGTERM: draining 1 running/);
      expect(child.stderr()).toContain('stopped');
      await expect(fetch(`${child.url}/health`)).rejects.toThrow(); // no longer listening
    } finally {
      child.process.kill('SIGKILL');
    }
  });

  test('--workers 2 serves the same greedy completions as one runtime, concurrently, and unloads on every worker', async () => {
    const args = ['--model', demoModelDir, '--adapter', `a=${fx.dir('a')}`, '--routed', `moe=${fx.dir('moe')}`, '--port', '0', '--api-key', 'k'];
    const ask = async (url: string) => {
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'k', maxRetries: 0 });
      const requests = ['base', 'a', 'moe', 'a', 'moe', 'base'].map((model, i) =>
        client.completions.create({ model, prompt: ['ab', 'kq3z|', 'x+y='][i % 3] as string, max_tokens: 8, temperature: 0 }),
      );
      return { client, texts: (await Promise.all(requests)).map((r) => r.choices[0]?.text) };
    };
    const one = await startCli(args);
    let expected: (string | undefined)[];
    try {
      expected = (await ask(one.url)).texts;
    } finally {
      one.process.kill('SIGKILL');
    }
    const pooled = await startCli([...args, '--workers', '2', '--allow-runtime-loading', '--adapter-dir', fx.adapterDir]);
    try {
      expect(pooled.stderr()).toContain('models: base, a, moe');
      const { client, texts } = await ask(pooled.url);
      expect(texts).toEqual(expected);
      const metrics = await (await fetch(`${pooled.url}/metrics`)).text();
      expect(metrics).toMatch(/routed_peft_batch_rows_count\{kind="generate"\} [1-9]/); // workers' passes reach the metrics
      const unload = await fetch(`${pooled.url}/v1/unload_lora_adapter`, {
        method: 'POST',
        headers: { authorization: 'Bearer k', 'content-type': 'application/json' },
        body: JSON.stringify({ lora_name: 'a' }),
      });
      expect(unload.status).toBe(200);
      expect((await client.models.list()).data.map((m) => m.id)).toEqual(['base', 'moe']);
      await expect(client.completions.create({ model: 'a', prompt: 'ab', max_tokens: 2 })).rejects.toThrow(/does not exist/);
      pooled.process.kill('SIGTERM');
      expect(await pooled.exited).toBe(0);
    } finally {
      pooled.process.kill('SIGKILL');
    }
  }, 120_000);

  test('argument errors are usage errors (exit 2) naming the flag', async () => {
    const cases: [string[], RegExp][] = [
      [['--model', demoModelDir, '--port', 'x'], /--port: 'x'/],
      [['--model', demoModelDir, '--allow-runtime-loading'], /needs --adapter-dir/],
      [['--model', demoModelDir, '--adapter', 'base=/tmp'], /reserved for the base model/],
      [['--model', demoModelDir, '--adapter', `a=${fx.dir('a')}`, '--routed', `a=${fx.dir('moe')}`], /two targets are named "a"/],
      [['--model', demoModelDir, '--memory-budget', 'lots'], /--memory-budget: 'lots'/],
      [['--model', demoModelDir, '--workers', '0'], /--workers/],
    ];
    for (const [args, message] of cases) {
      const io = createMemoryIo();
      expect(await main(['serve', ...args], io)).toBe(2);
      expect(io.err).toMatch(message);
    }
  });
});
