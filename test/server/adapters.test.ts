// Run-time adapter loading (vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter): loads by entry name
// from the allow-listed adapter directory only (no path from a request reaches the filesystem), routed-model
// entries load as routed models, loading a served name hot-swaps it without disturbing running requests,
// unloading makes the name a 404.
import { symlink } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { RoutedRuntime } from '../../src/runtime/runtime.js';
import { RoutedServer } from '../../src/server/server.js';
import { makeRuntime, makeServerFixture, promptIds, startServer, type RunningServer, type ServerFixture } from './fixtures.js';

let fx: ServerFixture;
let runtime: RoutedRuntime;
let running: RunningServer;
let tensorsAtStart: number;

beforeAll(async () => {
  fx = await makeServerFixture();
  tensorsAtStart = tf.memory().numTensors;
  runtime = await makeRuntime(fx);
  await runtime.load('v2-reference', { kind: 'peft', dir: fx.dir('a-v2') });
  running = await startServer({ runtime, adapterDir: fx.adapterDir, allowRuntimeLoading: true });
});

afterAll(async () => {
  await running.close();
  runtime.dispose();
  await runtime.idle();
  expect(tf.memory().numTensors).toBe(tensorsAtStart);
  await fx.dispose();
});

async function post(path: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const response = await fetch(`${running.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: response.status, json: (await response.json()) as Record<string, unknown> };
}

const errorOf = (json: Record<string, unknown>) => (json as { error: { message: string; param: string | null; code: string } }).error;

describe('run-time adapter loading', () => {
  test('loads a PEFT adapter and a routed model by entry name; they are served at once', async () => {
    const loaded = await post('/v1/load_lora_adapter', { lora_name: 'x', lora_path: 'a' });
    expect(loaded).toMatchObject({ status: 200, json: { id: 'x', kind: 'adapter', replaced: false } });
    const routed = await post('/v1/load_lora_adapter', { lora_name: 'moe' + '2', lora_path: 'moe' });
    expect(routed.json).toMatchObject({ kind: 'routed' });
    expect((await running.client.models.list()).data.map((m) => m.id)).toEqual(['base', 'a', 'b', 'moe', 'v2-reference', 'x', 'moe2']);
    const ids = promptIds(fx, 'ab|');
    const expected = await runtime.generate(ids, { select: { routed: 'moe' }, maxNewTokens: 8, temperature: 0 });
    const response = await running.client.completions.create({ model: 'moe2', prompt: 'ab|', max_tokens: 8, temperature: 0 });
    expect(response.choices[0]?.text).toBe(expected.text);
  });

  test.each([
    ['a path with a separator', '../a', 400, 'invalid_value'],
    ['an absolute path', '/etc', 400, 'invalid_value'],
    ['a dotted escape', 'a/../../x', 400, 'invalid_value'],
    ['a missing entry', 'zzz', 404, 'adapter_not_found'],
  ])('refuses %s', async (_what, path, status, code) => {
    const response = await post('/v1/load_lora_adapter', { lora_name: 'evil', lora_path: path });
    expect(response.status).toBe(status);
    expect(errorOf(response.json)).toMatchObject({ param: 'lora_path', code });
    expect(errorOf(response.json).message).not.toContain(fx.adapterDir);
  });

  test('refuses a symlink that leads outside the adapter directory, and a reserved or malformed name', async () => {
    await symlink(join(fx.adapterDir, '..'), join(fx.adapterDir, 'escape'));
    const response = await post('/v1/load_lora_adapter', { lora_name: 'evil', lora_path: 'escape' });
    expect(response.status).toBe(404);
    expect((await post('/v1/load_lora_adapter', { lora_name: 'base', lora_path: 'a' })).status).toBe(400);
    expect(errorOf((await post('/v1/load_lora_adapter', { lora_name: 'a b', lora_path: 'a' })).json).param).toBe('lora_name');
  });

  test('loading a served name hot-swaps it: the running request keeps the old weights, the next one gets the new', async () => {
    await post('/v1/load_lora_adapter', { lora_name: 'hot', lora_path: 'a' });
    const ids = promptIds(fx, 'ab');
    const old = await runtime.generate(ids, { select: { adapter: 'a' }, maxNewTokens: 50, temperature: 0, eosId: null });
    const fresh = await runtime.generate(ids, { select: { adapter: 'v2-reference' }, maxNewTokens: 50, temperature: 0, eosId: null });
    expect(fresh.tokens).not.toEqual(old.tokens);
    const stream = await running.client.completions.create({
      model: 'hot',
      prompt: 'ab',
      max_tokens: 50,
      temperature: 0,
      stream: true,
      ignore_eos: true,
    } as OpenAI.CompletionCreateParamsStreaming);
    const iterator = stream[Symbol.asyncIterator]();
    let text = (await iterator.next()).value?.choices[0]?.text ?? '';
    const swapped = await post('/v1/load_lora_adapter', { lora_name: 'hot', lora_path: 'a-v2' });
    expect(swapped.json).toMatchObject({ replaced: true });
    expect(running.server.load.running).toBe(1); // still streaming on the old weights
    expect(runtime.stats().retiredInUse).toBe(1);
    for (let next = await iterator.next(); next.done !== true; next = await iterator.next()) text += next.value.choices[0]?.text ?? '';
    expect(text).toBe(old.text);
    const after = await running.client.completions.create({
      model: 'hot',
      prompt: 'ab',
      max_tokens: 50,
      temperature: 0,
      ignore_eos: true,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(after.choices[0]?.text).toBe(fresh.text);
    expect(runtime.stats().retiredInUse).toBe(0);
  });

  test('unloading makes the name a 404; unloading an unknown name is a 404', async () => {
    expect((await post('/v1/unload_lora_adapter', { lora_name: 'x' })).status).toBe(200);
    const gone = await post('/v1/completions', { model: 'x', prompt: 'ab' });
    expect(gone.status).toBe(404);
    expect(errorOf(gone.json).code).toBe('model_not_found');
    expect((await post('/v1/unload_lora_adapter', { lora_name: 'x' })).status).toBe(404);
  });

  test('allowRuntimeLoading without an adapter directory is a configuration error', async () => {
    await expect(RoutedServer.create({ runtime, allowRuntimeLoading: true })).rejects.toThrow(/adapterDir/);
  });
});
