// The server under bad input and pressure: wrong types, unknown fields, bad JSON, huge bodies, unknown models
// and routes, missing or wrong API keys each get the right 4xx in OpenAI's error shape and the server keeps
// serving; a full queue answers 429 with Retry-After; a client that disconnects cancels its generation (the
// runtime ends it as cancelled and frees its slot); no tensor is left behind.
import * as tf from '@tensorflow/tfjs';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { RoutedRuntime } from '../../src/runtime/runtime.js';
import { makeRuntime, makeServerFixture, metricValue, startServer, type RunningServer, type ServerFixture } from './fixtures.js';

const KEY = 'test-key-123';

let fx: ServerFixture;
let runtime: RoutedRuntime;
let running: RunningServer;
let tensorsAtStart: number;

beforeAll(async () => {
  fx = await makeServerFixture();
  tensorsAtStart = tf.memory().numTensors;
  runtime = await makeRuntime(fx);
  running = await startServer({ runtime, apiKey: KEY, maxConcurrency: 2, maxQueue: 1, maxTokens: 40, bodyLimitBytes: 16 * 1024 });
});

afterAll(async () => {
  await running.close();
  runtime.dispose();
  await runtime.idle();
  expect(tf.memory().numTensors).toBe(tensorsAtStart);
  await fx.dispose();
});

async function post(
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: Record<string, unknown>; headers: Headers }> {
  const response = await fetch(`${running.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: response.status, json: (await response.json()) as Record<string, unknown>, headers: response.headers };
}

interface ErrorBody {
  readonly error: { readonly message: string; readonly type: string; readonly param: string | null; readonly code: string | null };
}

async function stillServes(): Promise<void> {
  const ok = await running.client.completions.create({ model: 'a', prompt: 'ab', max_tokens: 2, temperature: 0 });
  expect(ok.choices).toHaveLength(1);
}

const waitFor = async (check: () => boolean | Promise<boolean>, what: string): Promise<void> => {
  for (let i = 0; i < 400; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`timed out waiting for ${what}`);
};

describe('bad requests get the right 4xx and the server keeps serving', () => {
  test.each([
    ['a wrong type', { model: 'a', prompt: 'ab', max_tokens: '5' }, 400, 'max_tokens', /max_tokens.*expected number/],
    ['a nested wrong type', { model: 'a', messages: [{ role: 'user', content: 5 }] }, 400, 'messages[0].content', /messages\[0\]\.content/],
    ['an unknown field', { model: 'a', prompt: 'ab', max_token: 5 }, 400, 'max_token', /unknown field "max_token"/],
    ['a bad role', { model: 'a', messages: [{ role: 'wizard', content: 'x' }] }, 400, 'messages[0].role', /role/],
    ['a missing field', { prompt: 'ab' }, 400, 'model', /model/],
    ['a negative max_tokens', { model: 'a', prompt: 'ab', max_tokens: -1 }, 400, 'max_tokens', /max_tokens/],
    ['max_tokens over the server limit', { model: 'a', prompt: 'ab', max_tokens: 41 }, 400, 'max_tokens', /limit of 40/],
    ['a token id outside the vocabulary', { model: 'a', prompt: [1, 999] }, 400, 'prompt[1]', /outside the vocabulary/],
    ['an unsupported penalty', { model: 'a', prompt: 'ab', presence_penalty: 0.5 }, 400, 'presence_penalty', /not supported/],
    ['tools', { model: 'a', messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function' }] }, 400, 'tools', /tool calling/],
    ['too many generations', { model: 'a', prompt: ['a', 'b', 'c'], n: 6 }, 400, 'n', /18 generations, more than 16/],
    ['stop sequences too long', { model: 'a', prompt: 'ab', stop: ['x'.repeat(65)] }, 400, 'stop[0]', /stop\[0\]/],
    ['an unknown model', { model: 'nope', prompt: 'ab' }, 404, 'model', /"nope" does not exist.*Served models: base, a, b, moe/],
  ])('%s', async (_what, body, status, param, message) => {
    const path = 'messages' in body ? '/v1/chat/completions' : '/v1/completions';
    const response = await post(path, body);
    expect(response.status).toBe(status);
    const { error } = response.json as unknown as ErrorBody;
    expect(error.param).toBe(param);
    expect(error.message).toMatch(message);
    expect(error.type).toBe('invalid_request_error');
    if (status === 404) expect(error.code).toBe('model_not_found');
    await stillServes();
  });

  test('bad JSON is a 400, a huge body a 413, a non-object a 400, an unknown route a 404', async () => {
    const badJson = await post('/v1/completions', '{"model": "a", ');
    expect(badJson.status).toBe(400);
    expect((badJson.json as unknown as ErrorBody).error.code).toBe('invalid_json');
    const huge = await post('/v1/completions', { model: 'a', prompt: 'x'.repeat(20_000) });
    expect(huge.status).toBe(413);
    expect((huge.json as unknown as ErrorBody).error.code).toBe('request_too_large');
    const array = await post('/v1/completions', [1, 2]);
    expect(array.status).toBe(400);
    const route = await post('/v1/nothing', {});
    expect(route.status).toBe(404);
    await stillServes();
  });

  test('the openai client raises its usual errors: 404 NotFoundError, 400 BadRequestError', async () => {
    await expect(running.client.completions.create({ model: 'nope', prompt: 'x' })).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(running.client.completions.create({ model: 'a', prompt: 'x', max_tokens: 1000 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
  });

  test('a missing or wrong API key is a 401; /health and /metrics need none', async () => {
    const wrong = new OpenAI({ baseURL: `${running.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
    await expect(wrong.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    const none = await fetch(`${running.url}/v1/models`);
    expect(none.status).toBe(401);
    expect(((await none.json()) as ErrorBody).error.code).toBe('invalid_api_key');
    const metrics = await fetch(`${running.url}/metrics`);
    expect(metrics.status).toBe(200);
    const health = await fetch(`${running.url}/health`);
    expect(health.status).toBe(200);
    await stillServes();
  });

  test('run-time loading is off unless enabled (403)', async () => {
    const response = await post('/v1/load_lora_adapter', { lora_name: 'x', lora_path: 'a' });
    expect(response.status).toBe(403);
    expect((response.json as unknown as ErrorBody).error.code).toBe('loading_disabled');
  });
});

describe('pressure', () => {
  test('a full queue answers 429 with Retry-After; admitted requests still complete', async () => {
    // 2 running + 1 queued fit; the 4th and 5th are refused.
    const long = { model: 'moe', prompt: 'ab', max_tokens: 40, temperature: 0, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming;
    const results = await Promise.allSettled(Array.from({ length: 5 }, () => running.client.completions.create(long)));
    const refused = results.filter((r) => r.status === 'rejected');
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(3);
    expect(refused).toHaveLength(2);
    for (const r of refused) {
      const error = (r as PromiseRejectedResult).reason;
      expect(error).toBeInstanceOf(OpenAI.RateLimitError);
      expect(Number((error as InstanceType<typeof OpenAI.RateLimitError>).headers?.get('retry-after'))).toBeGreaterThanOrEqual(1);
    }
    const metrics = await (await fetch(`${running.url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } })).text();
    expect(metricValue(metrics, 'routed_peft_rejected_total', { reason: 'queue_full' })).toBe(2);
    expect(metricValue(metrics, 'routed_peft_requests_total', { status: '429' })).toBe(2);
  });

  test('a client that disconnects cancels its generation: the runtime ends it as cancelled and frees its slot', async () => {
    await stillServes(); // warm, then compare tensors
    const tensors = tf.memory().numTensors;
    const metricsText = async (): Promise<string> => (await fetch(`${running.url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } })).text();
    const before = metricValue(await metricsText(), 'routed_peft_cancelled_total', { stage: 'running' });
    const generatedBefore = metricValue(await metricsText(), 'routed_peft_generation_tokens_total');
    // streaming: read one chunk, then abort
    const controller = new AbortController();
    const stream = await running.client.completions.create(
      { model: 'a', prompt: 'ab', max_tokens: 40, temperature: 0, stream: true, ignore_eos: true } as OpenAI.CompletionCreateParamsStreaming,
      { signal: controller.signal },
    );
    const iterator = stream[Symbol.asyncIterator]();
    await iterator.next();
    controller.abort();
    await waitFor(
      async () => metricValue(await metricsText(), 'routed_peft_cancelled_total', { stage: 'running' }) === before + 1,
      'the streamed cancellation',
    );
    // not streaming: give up while it generates
    const plain = new AbortController();
    const pending = fetch(`${running.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ model: 'moe', prompt: 'ab', max_tokens: 40, ignore_eos: true }),
      signal: plain.signal,
    }).catch((e: unknown) => e);
    await waitFor(() => running.server.load.running === 1, 'the request running');
    await new Promise((r) => setTimeout(r, 30));
    plain.abort();
    await pending;
    await waitFor(async () => metricValue(await metricsText(), 'routed_peft_cancelled_total', { stage: 'running' }) === before + 2, 'two cancellations');
    await waitFor(() => running.server.load.running === 0, 'slots freed');
    const text = await metricsText();
    expect(metricValue(text, 'routed_peft_generation_tokens_total') - generatedBefore).toBeLessThan(80); // both stopped early
    expect(metricValue(text, 'routed_peft_requests_total', { status: '499' })).toBe(2);
    await runtime.idle();
    expect(runtime.stats().targets.every((t) => t.inUse === 0)).toBe(true);
    expect(tf.memory().numTensors).toBe(tensors);
    await stillServes();
  });
});
