// The browser's loaders — the same readers as Node's, behind a FileSource — read the demo base, its
// tokenizer and the page's routed model from URLs (served by `routed-peft web`'s server), from dropped
// files and from memory, and compute exactly what the Node path loaders compute. Bad paths, missing files
// and unavailable backends are refused by name.
import { readFile, readdir } from 'node:fs/promises';
import { request, type Server } from 'node:http';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { loadBaseModel, loadBaseModelFrom } from '../../src/base/checkpoints/load-model.js';
import type { Transformer } from '../../src/base/transformer.js';
import { selectBrowserBackend } from '../../src/browser-backend.js';
import { BackendError, CheckpointError } from '../../src/errors.js';
import type { FileSource } from '../../src/formats/file-source.js';
import { droppedFiles, memoryFiles } from '../../src/formats/memory-files.js';
import { urlFiles } from '../../src/formats/url-files.js';
import { LoraModule } from '../../src/adapters/lora/index.js';
import { readPeftAdapter, readPeftAdapterFrom } from '../../src/io/peft-adapter.js';
import { loadRoutedModel, loadRoutedModelFrom } from '../../src/io/routed-model-dir.js';
import { serveStatic } from '../../src/server/static-site.js';
import { HfTokenizer } from '../../src/tokenizers/hf-tokenizer.js';
import { loadTokenizer } from '../../src/tokenizers/load-tokenizer.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const demoModel = join(root, 'demo-model');
const routedDemo = join(root, 'web', 'models', 'routed-demo');
const IDS = [[1, 22, 43, 15, 21, 30, 24, 42]];

async function filesBelow(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => relative(dir, join(e.parentPath, e.name)));
}

/** Logits of the routed model loaded from `files` on the base loaded from `baseFiles`, as plain numbers. */
async function routedLogits(baseFiles: FileSource, files: FileSource): Promise<Float32Array> {
  const { model: base } = await loadBaseModelFrom(baseFiles);
  const { model } = await loadRoutedModelFrom(files, base, { routers: builtinRouters() });
  const logits = model.forward({ ids: IDS }); // [1, T, V]
  const values = (await logits.data()) as Float32Array;
  logits.dispose();
  model.dispose();
  base.dispose();
  return values;
}

let server: Server | undefined;
let url: string;
let nodeLogits: Float32Array;
let nodeBaseLogits: Float32Array;

beforeAll(async () => {
  ({ server, url } = await serveStatic(
    [
      { prefix: '/models/base/', dir: demoModel },
      { prefix: '/models/routed/', dir: routedDemo },
    ],
    { host: '127.0.0.1', port: 0 },
  ));
  const { model: base } = await loadBaseModel(demoModel);
  const { model } = await loadRoutedModel(routedDemo, base, { routers: builtinRouters() });
  const logits = model.forward({ ids: IDS }); // [1, T, V]
  nodeLogits = (await logits.data()) as Float32Array;
  const baseLogits = (base as Transformer).forward({ ids: IDS }); // [1, T, V]
  nodeBaseLogits = (await baseLogits.data()) as Float32Array;
  tf.dispose([logits, baseLogits]);
  model.dispose();
  base.dispose();
});

afterAll(async () => {
  await new Promise<void>((done) => (server === undefined ? done() : server.close(() => done())));
});

describe('loading from URLs', () => {
  it('gives the Node loaders’ base, tokenizer and routed model bit for bit, leaking nothing', async () => {
    const start = tf.memory().numTensors;
    const baseFiles = urlFiles(`${url}models/base/`);
    const { model: base, path } = await loadBaseModelFrom(baseFiles);
    expect(path).toBe(`${url}models/base/`);
    const logits = base.forward({ ids: IDS }); // [1, T, V]
    expect(Buffer.from((await logits.data()).buffer).equals(Buffer.from(nodeBaseLogits.buffer))).toBe(true);
    logits.dispose();
    base.dispose();
    const routed = await routedLogits(baseFiles, urlFiles(`${url}models/routed`));
    expect(Buffer.from(routed.buffer).equals(Buffer.from(nodeLogits.buffer))).toBe(true);
    const tokenizer = await HfTokenizer.fromSource(baseFiles);
    const reference = await loadTokenizer(demoModel);
    expect(tokenizer.encode('r:kqzt=', { addBos: true })).toEqual(reference.encode('r:kqzt=', { addBos: true }));
    expect(tokenizer.eosId).toBe(reference.eosId);
    expect(tf.memory().numTensors).toBe(start);
  });

  it('reads a PEFT adapter directory from its URL with the values the Node reader gives', async () => {
    const { model: base } = await loadBaseModel(demoModel);
    const fromUrl = await readPeftAdapterFrom(urlFiles(`${url}models/routed/adapters/e1/`), base, { defaultName: 'e1' });
    const fromDisk = await readPeftAdapter(join(routedDemo, 'adapters', 'e1'), base);
    try {
      expect(fromUrl.instance.name).toBe('e1');
      expect(fromUrl.warnings).toEqual([]);
      expect([...fromUrl.instance.modules.keys()]).toEqual([...fromDisk.instance.modules.keys()]);
      for (const [key, module] of fromDisk.instance.modules) {
        const other = fromUrl.instance.modules.get(key);
        expect(other).toBeInstanceOf(LoraModule);
        expect(await (other as LoraModule).b.data()).toEqual(await (module as LoraModule).b.data());
        expect(await (other as LoraModule).a.data()).toEqual(await (module as LoraModule).a.data());
      }
    } finally {
      fromUrl.instance.dispose();
      fromDisk.instance.dispose();
      base.dispose();
    }
  });

  it('names the URL of a file the server does not have', async () => {
    const error = await loadBaseModelFrom(urlFiles(`${url}models/nothing/`)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CheckpointError);
    expect((error as CheckpointError).message).toMatch(/cannot read config\.json: HTTP 404/);
    expect((error as CheckpointError).path).toBe(`${url}models/nothing/config.json`);
  });

  it('serves nothing outside its directories', async () => {
    const status = (path: string): Promise<number> =>
      new Promise((done, fail) => {
        const target = new URL(url);
        request({ host: target.hostname, port: target.port, path, method: 'GET' }, (response) => {
          response.resume();
          done(response.statusCode ?? 0);
        })
          .on('error', fail)
          .end();
      });
    expect(await status('/models/base/config.json')).toBe(200);
    expect(await status('/models/base/%2e%2e/%2e%2e/package.json')).toBe(404);
    expect(await status('/models/base/../../package.json')).toBe(404);
    expect(await status('/models/base//etc/passwd')).toBe(404);
  });
});

describe('loading dropped files and bytes in memory', () => {
  it('reads a dropped routed-model folder as the Node loader reads the directory', async () => {
    const dropped = await Promise.all(
      (await filesBelow(routedDemo)).map(async (name) =>
        Object.assign(new File([await readFile(join(routedDemo, name))], name.split('/').pop() as string), { webkitRelativePath: `routed-demo/${name}` }),
      ),
    );
    const base: Record<string, Uint8Array> = {};
    for (const name of await filesBelow(demoModel)) base[name] = await readFile(join(demoModel, name));
    const logits = await routedLogits(memoryFiles(base), droppedFiles(dropped));
    expect(Buffer.from(logits.buffer).equals(Buffer.from(nodeLogits.buffer))).toBe(true);
  });

  it('refuses manifest paths that leave the directory, by field', async () => {
    const manifest = JSON.parse(await readFile(join(routedDemo, 'routed-peft.json'), 'utf8')) as {
      adapters: Record<string, { path: string }>;
      routers?: string;
    };
    const { model: base } = await loadBaseModel(demoModel);
    try {
      for (const [bad, message] of [
        ['../outside', /adapters\.e0\.path "\.\.\/outside" leads outside the directory/],
        ['/etc', /adapters\.e0\.path "\/etc" is an absolute path/],
        ['https://example.org/e0', /is an absolute path/],
      ] as const) {
        const edited = { ...manifest, adapters: { ...manifest.adapters, e0: { ...manifest.adapters['e0'], path: bad } } };
        const files = memoryFiles({ 'routed-peft.json': JSON.stringify(edited) }, 'test files');
        const error = await loadRoutedModelFrom(files, base, { routers: builtinRouters() }).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(CheckpointError);
        expect((error as Error).message).toMatch(message);
        expect((error as CheckpointError).path).toBe('test files: routed-peft.json');
      }
    } finally {
      base.dispose();
    }
  });
});

describe('the browser backend selector', () => {
  it('says why webgpu is unavailable and that wasm needs its file URLs, switching nothing', async () => {
    const before = tf.getBackend();
    await expect(selectBrowserBackend('webgpu')).rejects.toThrow(BackendError);
    await expect(selectBrowserBackend('webgpu')).rejects.toThrow(/webgpu is unavailable: this browser has no navigator\.gpu/);
    await expect(selectBrowserBackend('wasm')).rejects.toThrow(/the wasm backend needs the URLs of its \.wasm files/);
    await expect(selectBrowserBackend('gpu' as 'wasm')).rejects.toThrow(/unknown browser backend "gpu"/);
    expect(tf.getBackend()).toBe(before);
  });
});
