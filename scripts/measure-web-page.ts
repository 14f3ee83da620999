/**
 * The page's own timings in headless Chromium, per backend: builds the page, serves it with the demo base
 * and the shipped routed model, generates greedily three times on each backend the browser offers, and
 * prints the Timings table the page shows (the last of the three runs, after warm-up).
 *
 *   node --import tsx scripts/measure-web-page.ts [--tokens 32] [--chromium PATH]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';
import { build } from 'vite';
import { serveStatic } from '../src/server/static-site.js';

const { values } = parseArgs({ options: { tokens: { type: 'string', default: '32' }, chromium: { type: 'string', default: '/usr/bin/chromium' } } });
const root = join(import.meta.dirname, '..');
const outDir = await mkdtemp(join(tmpdir(), 'routed-peft-web-measure-'));
await build({ configFile: join(root, 'web', 'vite.config.ts'), logLevel: 'error', build: { outDir, emptyOutDir: true } });
const { server, url } = await serveStatic(
  [
    { prefix: '/', dir: outDir },
    { prefix: '/models/base/', dir: join(root, 'demo-model') },
    { prefix: '/models/routed/', dir: join(root, 'web', 'models', 'routed-demo') },
  ],
  { host: '127.0.0.1', port: 0 },
);
const browser = await chromium.launch({ executablePath: values.chromium, args: ['--enable-unsafe-webgpu', '--enable-features=Vulkan'] });
try {
  for (const backend of ['wasm', 'webgpu']) {
    const page = await browser.newPage();
    await page.goto(`${url}?backend=${backend}&eos=0&tokens=${values.tokens}&prompt=${encodeURIComponent('r:kqzt=')}`);
    const state = (): Promise<string> =>
      page.evaluate(() => (globalThis as unknown as { document: { body: { dataset: { state: string } } } }).document.body.dataset.state);
    await page.waitForFunction(
      () => (globalThis as unknown as { document: { body: { dataset: { state: string } } } }).document.body.dataset.state !== 'loading',
    );
    if (!(await page.isChecked(`input[name=backend][value=${backend}]`))) {
      console.log(`${backend}: ${await page.textContent('#backend-note')}`);
      continue;
    }
    for (let run = 0; run < 3; run++) {
      await page.click('#generate');
      await page.waitForFunction(
        () => ['done', 'error'].includes((globalThis as unknown as { document: { body: { dataset: { state: string } } } }).document.body.dataset.state),
        null,
        { timeout: 120_000 },
      );
    }
    console.log(`${backend} (${await state()}): ${await page.textContent('#backend-note')}`);
    const rows = await page.$$eval('#timings tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent ?? '')));
    for (const [name, value] of rows) console.log(`  ${name}: ${value}`);
    await page.close();
  }
} finally {
  await browser.close();
  server.close();
  await rm(outDir, { recursive: true, force: true });
}
