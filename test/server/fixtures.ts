// Shared fixtures for the server tests: the shipped demo base (a char-level llama with a tokenizer), PEFT
// adapter directories and a routed-model directory built on it inside one temp "adapter directory", a
// RoutedRuntime serving them, and a RoutedServer on 127.0.0.1 (port 0) with an `openai` client pointed at it.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { builtinRouters } from '../../routers/index.js';
import type { AdapterInstance } from '../../src/adapters/instance.js';
import { loadBaseModel } from '../../src/base/checkpoints/load-model.js';
import type { Transformer } from '../../src/base/transformer.js';
import { writePeftAdapter } from '../../src/io/peft-adapter.js';
import { saveRoutedModel } from '../../src/io/routed-model-dir.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { RoutedRuntime } from '../../src/runtime/runtime.js';
import type { Selection } from '../../src/runtime/types.js';
import { RoutedServer, type RoutedServerOptions } from '../../src/server/server.js';
import { loadTokenizer } from '../../src/tokenizers/load-tokenizer.js';
import type { Tokenizer } from '../../src/tokenizers/tokenizer.js';

export const routers = builtinRouters();
export const demoModelDir = fileURLToPath(new URL('../../demo-model/', import.meta.url));

const lora = (name: string, sites: string[] = ['attn.q', 'attn.v', 'mlp.down']) => ({
  kind: 'lora',
  name,
  r: 4,
  alpha: 64,
  init: 'random',
  targets: { sites },
});

export const ROUTED_SPEC = {
  seed: 5,
  adapters: [lora('e0'), lora('e1'), lora('e2', ['attn.k', 'mlp.up'])],
  composition: { kind: 'route', experts: ['e0', 'e1', 'e2'], router: { kind: 'top-k', k: 2 } },
};

export interface ServerFixture {
  readonly base: Transformer;
  readonly tokenizer: Tokenizer;
  /** The adapter directory: entries `a`, `b`, `a-v2` (PEFT LoRA) and `moe` (routed). */
  readonly adapterDir: string;
  dir(name: 'a' | 'b' | 'a-v2' | 'moe'): string;
  dispose(): Promise<void>;
}

export async function makeServerFixture(): Promise<ServerFixture> {
  const { model: base } = await loadBaseModel(demoModelDir);
  const tokenizer = await loadTokenizer(demoModelDir);
  const adapterDir = await mkdtemp(join(tmpdir(), 'routed-serve-'));
  const source = AdaptedModel.create(base, { seed: 11, adapters: [lora('a'), lora('b'), lora('a-v2')] });
  try {
    for (const name of ['a', 'b', 'a-v2']) await writePeftAdapter(join(adapterDir, name), source.adapters.get(name) as AdapterInstance, base);
  } finally {
    source.dispose();
  }
  const routed = AdaptedModel.create(base, ROUTED_SPEC, { routers });
  try {
    await saveRoutedModel(join(adapterDir, 'moe'), routed);
  } finally {
    routed.dispose();
  }
  return {
    base,
    tokenizer,
    adapterDir,
    dir: (name) => join(adapterDir, name),
    dispose: async () => {
      base.dispose();
      await rm(adapterDir, { recursive: true, force: true });
    },
  };
}

/** A runtime on the fixture's base serving `a`, `b` (adapters) and `moe` (routed). */
export async function makeRuntime(fx: ServerFixture, options: { readonly memoryBudgetBytes?: number } = {}): Promise<RoutedRuntime> {
  const runtime = RoutedRuntime.create({ base: fx.base, routers, tokenizer: fx.tokenizer, ...options });
  await runtime.load('a', { kind: 'peft', dir: fx.dir('a') });
  await runtime.load('b', { kind: 'peft', dir: fx.dir('b') });
  await runtime.load('moe', { kind: 'routed', dir: fx.dir('moe') });
  return runtime;
}

export interface RunningServer {
  readonly server: RoutedServer;
  readonly url: string;
  readonly client: OpenAI;
  close(): Promise<void>;
}

export async function startServer(options: RoutedServerOptions, apiKey = options.apiKey ?? 'unused'): Promise<RunningServer> {
  const server = await RoutedServer.create(options);
  const { url } = await server.listen({ host: '127.0.0.1', port: 0 });
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey, maxRetries: 0, timeout: 30_000 });
  return { server, url, client, close: () => server.close() };
}

/** The selection a served model name stands for. */
export function selectionOf(model: string): Selection {
  if (model === 'base') return 'base';
  if (model === 'moe') return { routed: 'moe' };
  return { adapter: model };
}

/** Prompt ids for text as the server encodes completion prompts (BOS first: the demo base is a llama). */
export function promptIds(fx: ServerFixture, text: string): number[] {
  return fx.tokenizer.encode(text, { addBos: true });
}

/** Reads a Prometheus sample: the sum of every series of `name` whose labels include `labels`. */
export function metricValue(text: string, name: string, labels: Readonly<Record<string, string>> = {}): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const match = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const labelText = match[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => labelText.includes(`${k}="${v}"`))) total += Number(match[3]);
  }
  return total;
}
