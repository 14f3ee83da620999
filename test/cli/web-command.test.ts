// `routed-peft web` as a real process: it serves the page at /, the base at /models/base/ and the routed
// model at /models/routed/ (application/wasm for .wasm, HEAD for existence checks), exits 0 on SIGTERM, and
// refuses a page that was never built, saying how to build it.
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const LAUNCH = `import { main } from './src/cli/main.ts'; process.exitCode = await main(process.argv.slice(1));`;

let page: string;
beforeAll(async () => {
  page = await mkdtemp(join(tmpdir(), 'routed-peft-web-page-'));
  await writeFile(join(page, 'index.html'), '<!doctype html><title>page</title>');
  await writeFile(join(page, 'x.wasm'), new Uint8Array([0, 97, 115, 109]));
});
afterAll(async () => rm(page, { recursive: true, force: true }));

describe('routed-peft web', () => {
  test('serves the page and both model directories, and exits 0 on SIGTERM', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', LAUNCH, 'web', '--page', page, '--port', '0'], { cwd: root });
    let stderr = '';
    child.stderr.on('data', (data: Buffer) => {
      stderr += data.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr.on('data', () => {
        const match = /routed-peft web: (http:\/\/\S+)/.exec(stderr);
        if (match !== null) resolve(match[1] as string);
      });
      void exited.then((code) => reject(new Error(`exited (${code}):\n${stderr}`)));
    });
    try {
      const index = await fetch(url);
      expect(index.headers.get('content-type')).toBe('text/html; charset=utf-8');
      expect(await index.text()).toContain('<title>page</title>');
      expect((await fetch(`${url}x.wasm`)).headers.get('content-type')).toBe('application/wasm');
      const config = await fetch(`${url}models/base/config.json`);
      expect(await config.text()).toBe(await readFile(join(root, 'demo-model', 'config.json'), 'utf8'));
      expect((await fetch(`${url}models/routed/routed-peft.json`, { method: 'HEAD' })).status).toBe(200);
      expect((await fetch(`${url}models/routed/missing.json`, { method: 'HEAD' })).status).toBe(404);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  });

  test('refuses a page directory that was never built, saying how to build it', async () => {
    const io = createMemoryIo();
    expect(await main(['web', '--page', join(page, 'nothing')], io)).toBe(2);
    expect(io.err).toMatch(/--page: ".*nothing" is not a directory\. Build the page first: npm run build:web/);
  });
});
