// The page end to end in headless Chromium: built with vite, served by `routed-peft web`'s server, driven
// with playwright-core. Greedy generation in the page must give Node's ids for the same model and prompt,
// and the heat map must show exactly the experts (and weights) Node's routing trace records. Writes the
// README's screenshot (docs/browser-page.png). Skips where no Chromium is installed.
import { mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { type Browser, chromium, type Page } from 'playwright-core';
import { build } from 'vite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { loadBaseModel } from '../../src/base/checkpoints/load-model.js';
import { loadRoutedModel } from '../../src/io/routed-model-dir.js';
import type { RoutingTraceEntry } from '../../src/routing/trace.js';
import { serveStatic } from '../../src/server/static-site.js';
import { loadTokenizer } from '../../src/tokenizers/load-tokenizer.js';
import { CHROMIUM_SKIP_NOTE, chromiumPath } from '../helpers/chromium.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const demoModel = join(root, 'demo-model');
const routedDemo = join(root, 'web', 'models', 'routed-demo');
/** README's screenshot with UPDATE_SCREENSHOT=1 (so a plain test run leaves the checkout clean), else a temporary file. */
const screenshot = process.env.UPDATE_SCREENSHOT === '1' ? join(root, 'docs', 'browser-page.png') : join(tmpdir(), `routed-peft-page-${process.pid}.png`);
const PROMPT = 'r:kqzt=';
const NEW_TOKENS = 8;

interface NodeReference {
  readonly ids: number[];
  readonly trace: RoutingTraceEntry[];
}

/** Greedy generation and the routing trace in Node, on wasm, through the Node loaders. */
async function nodeReference(): Promise<NodeReference> {
  const start = tf.memory().numTensors;
  const { model: base } = await loadBaseModel(demoModel);
  const tokenizer = await loadTokenizer(demoModel);
  const { model } = await loadRoutedModel(routedDemo, base, { routers: builtinRouters() });
  const trace: RoutingTraceEntry[] = [];
  const [ids] = await model.generateAsync([tokenizer.encode(PROMPT, { addBos: true })], { maxNewTokens: NEW_TOKENS, temperature: 0, routing: { trace } });
  model.dispose();
  base.dispose();
  expect(tf.memory().numTensors).toBe(start);
  return { ids: ids as number[], trace };
}

/** The heat map's chosen cells, `layer|site|token|expert` → weight, as drawn. */
async function drawnCells(page: Page): Promise<Map<string, number>> {
  const cells = await page.$$eval('#heatmap rect.chosen', (rects) =>
    rects.map(
      (r) =>
        [
          `${r.getAttribute('data-layer')}|${r.getAttribute('data-site')}|${r.getAttribute('data-token')}|${r.getAttribute('data-expert')}`,
          Number(r.getAttribute('data-weight')),
        ] as const,
    ),
  );
  return new Map(cells);
}

const waitFor = (page: Page, states: readonly string[]): Promise<unknown> =>
  page.waitForFunction(
    (wanted) =>
      wanted.includes((globalThis as unknown as { document: { body: { dataset: Record<string, string | undefined> } } }).document.body.dataset['state'] ?? ''),
    states,
    { timeout: 45_000 },
  );

describe.skipIf(chromiumPath === undefined)(`the browser page in headless Chromium${CHROMIUM_SKIP_NOTE}`, () => {
  let outDir: string;
  let server: Server | undefined;
  let url: string;
  let browser: Browser | undefined;
  let page: Page;
  let reference: NodeReference;

  beforeAll(async () => {
    outDir = await mkdtemp(join(tmpdir(), 'routed-peft-web-'));
    await build({ configFile: join(root, 'web', 'vite.config.ts'), logLevel: 'error', build: { outDir, emptyOutDir: true } });
    ({ server, url } = await serveStatic(
      [
        { prefix: '/', dir: outDir },
        { prefix: '/models/base/', dir: demoModel },
        { prefix: '/models/routed/', dir: routedDemo },
      ],
      { host: '127.0.0.1', port: 0 },
    ));
    reference = await nodeReference();
    // WebGPU comes up on SwiftShader (or a real GPU) with these flags where the build allows it.
    browser = await chromium.launch({ executablePath: chromiumPath as string, args: ['--enable-unsafe-webgpu', '--enable-features=Vulkan'] });
    page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  });

  afterAll(async () => {
    await browser?.close();
    await new Promise<void>((done) => (server === undefined ? done() : server.close(() => done())));
    await rm(outDir, { recursive: true, force: true });
    if (process.env.UPDATE_SCREENSHOT !== '1') await rm(screenshot, { force: true });
  });

  it("generates Node's ids on wasm and draws exactly the traced experts", async () => {
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    await page.goto(`${url}?run=1&tokens=${NEW_TOKENS}&prompt=${encodeURIComponent(PROMPT)}`);
    await waitFor(page, ['done', 'error']);
    expect(await page.textContent('#status')).toMatch(/^done/);
    expect(errors).toEqual([]);
    expect(JSON.parse((await page.getAttribute('#ids', 'data-ids')) as string)).toEqual(reference.ids);

    const expected = new Map<string, number>();
    for (const e of reference.trace) e.experts.forEach((expert, i) => expected.set(`${e.layer}|${e.site}|${e.token}|${expert}`, e.weights[i] as number));
    const drawn = await drawnCells(page);
    expect(expected.size).toBeGreaterThan(0);
    expect([...drawn.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [key, weight] of expected) expect(drawn.get(key), key).toBeCloseTo(weight, 5);

    // A second generation leaves as many live tensors as the first: nothing leaks per call.
    const alive = async (): Promise<string | undefined> => (await page.textContent('#timings'))?.match(/tensors alive(\d+)/)?.[1];
    const after = await alive();
    expect(after).toMatch(/^\d+$/);
    await page.click('#generate');
    await waitFor(page, ['done', 'error']);
    expect(await alive()).toBe(after);
    expect(JSON.parse((await page.getAttribute('#ids', 'data-ids')) as string)).toEqual(reference.ids);
    await page.screenshot({ path: screenshot, fullPage: true });
  });

  it('trains the routed model from the pasted JSONL with a progress bar, then generates what it learnt', async () => {
    // The page's sample rows include {"prompt": "r:kqzt=", "completion": "tzqk"}; the shipped model gets it wrong.
    expect(await page.textContent('#output')).not.toBe(`${PROMPT}tzqk`);
    await page.fill('#train-steps', '30');
    await page.click('#train');
    await waitFor(page, ['ready', 'error']);
    expect(await page.textContent('#status')).toBe('trained: generate to use the result');
    expect(await page.$eval('#train-progress', (p) => [(p as unknown as { value: number }).value, (p as unknown as { max: number }).max])).toEqual([30, 30]);
    const status = (await page.textContent('#train-status')) as string;
    expect(status).toMatch(/^step 30\/30, loss \d/);
    expect(Number(/loss ([\d.]+)/.exec(status)?.[1])).toBeLessThan(0.2);
    await page.click('#generate');
    await waitFor(page, ['done', 'error']);
    expect(await page.textContent('#output')).toBe(`${PROMPT}tzqk`);
  });

  it('loads a routed-model folder the user picks, through the same loader, and refuses one that is not', async () => {
    // The trained model is replaced by the shipped one read from the picked folder: Node's ids again.
    await page.setInputFiles('#routed-folder', routedDemo);
    await waitFor(page, ['ready', 'error']);
    expect(await page.textContent('#routed-source')).toBe('from dropped files (routed-demo)');
    await page.click('#generate');
    await waitFor(page, ['done', 'error']);
    expect(JSON.parse((await page.getAttribute('#ids', 'data-ids')) as string)).toEqual(reference.ids);
    await page.setInputFiles('#routed-folder', join(root, 'examples'));
    await waitFor(page, ['ready', 'error']);
    expect(await page.textContent('#status')).toMatch(/^cannot load the folder: no routed-peft\.json in the directory \(at dropped files \(examples\)\)/);
    // The previous model stays loaded and usable.
    await page.click('#generate');
    await waitFor(page, ['done', 'error']);
    expect(JSON.parse((await page.getAttribute('#ids', 'data-ids')) as string)).toEqual(reference.ids);
  });

  it('switches to webgpu and generates the same ids there, or says why it cannot', async () => {
    const note = (await page.textContent('#backend-note')) as string;
    const webgpu = page.locator('input[name=backend][value=webgpu]');
    if (await webgpu.isDisabled()) {
      expect(note).toMatch(/^webgpu unavailable: /);
      return;
    }
    await webgpu.check();
    await waitFor(page, ['ready', 'error']);
    expect(await page.textContent('#status')).toBe('ready on webgpu');
    await page.click('#generate');
    await waitFor(page, ['done', 'error']);
    expect(await page.textContent('#status')).toMatch(/^done/);
    expect(JSON.parse((await page.getAttribute('#ids', 'data-ids')) as string)).toEqual(reference.ids);
    // Traces read synchronously: the page says so instead of drawing nothing silently.
    expect(await page.textContent('#heatmap-note')).toMatch(/cannot do: switch to wasm/);
    expect(await page.$$eval('#heatmap rect', (r) => r.length)).toBe(0);
  });
});
