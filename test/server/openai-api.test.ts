// The server through the official `openai` client: completions and chat, plain and streamed, for each kind
// of target (base, PEFT adapter, routed model) — every greedy result equals RoutedRuntime called directly
// on the same ids. Also: the model list, n, seeds, stop sequences, logprobs, echo, the routing-trace
// extension, usage, the metrics endpoint, and that no tensor is left behind.
import * as tf from '@tensorflow/tfjs';
import type OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { RoutedRuntime } from '../../src/runtime/runtime.js';
import type { RoutingTraceEntry } from '../../src/routing/trace.js';
import { makeRuntime, makeServerFixture, metricValue, promptIds, selectionOf, startServer, type RunningServer, type ServerFixture } from './fixtures.js';

interface Extension {
  readonly routed_peft?: { readonly token_ids?: number[]; readonly prompt_token_ids?: number[]; readonly trace?: RoutingTraceEntry[] };
}

let fx: ServerFixture;
let runtime: RoutedRuntime;
let running: RunningServer;
let client: OpenAI;
let tensorsAtStart: number;

beforeAll(async () => {
  fx = await makeServerFixture();
  tensorsAtStart = tf.memory().numTensors;
  runtime = await makeRuntime(fx);
  running = await startServer({ runtime });
  client = running.client;
});

afterAll(async () => {
  await running.close();
  runtime.dispose();
  await runtime.idle();
  expect(tf.memory().numTensors).toBe(tensorsAtStart);
  await fx.dispose();
});

const MODELS = ['base', 'a', 'moe'] as const;
const PROMPT = 'kq3z|';

/** The runtime's own greedy answer for these ids. */
async function direct(model: string, ids: number[], maxNewTokens: number) {
  return runtime.generate(ids, { select: selectionOf(model), maxNewTokens, temperature: 0 });
}

describe('OpenAI-compatible API', () => {
  test('GET /v1/models lists the base, the adapters and the routed model', async () => {
    const list = await client.models.list();
    const ids = list.data.map((m) => m.id);
    expect(ids).toEqual(['base', 'a', 'b', 'moe']);
    const kinds = Object.fromEntries(list.data.map((m) => [m.id, (m as unknown as { routed_peft: { kind: string } }).routed_peft.kind]));
    expect(kinds).toEqual({ base: 'base', a: 'adapter', b: 'adapter', moe: 'routed' });
    expect((await client.models.retrieve('moe')).id).toBe('moe');
  });

  test.each(MODELS)('completion on %s equals the runtime called directly', async (model) => {
    const ids = promptIds(fx, PROMPT);
    const expected = await direct(model, ids, 12);
    const response = await client.completions.create({
      model,
      prompt: PROMPT,
      max_tokens: 12,
      temperature: 0,
      routed_peft: { return_token_ids: true },
    } as OpenAI.CompletionCreateParamsNonStreaming);
    const [choice] = response.choices;
    expect(choice?.text).toBe(expected.text);
    expect((choice as Extension).routed_peft?.token_ids).toEqual(expected.tokens);
    expect((choice as Extension).routed_peft?.prompt_token_ids).toEqual(ids);
    expect(choice?.finish_reason).toBe(expected.reason === 'eos' ? 'stop' : 'length');
    expect(response.usage).toEqual({ prompt_tokens: ids.length, completion_tokens: expected.tokens.length, total_tokens: ids.length + expected.tokens.length });
    expect(response.model).toBe(model);
  });

  test('the targets really differ (an adapter is not served by the base)', async () => {
    const ids = promptIds(fx, 'abcdefgh');
    const [base, a, moe] = await Promise.all(MODELS.map((m) => direct(m, ids, 16)));
    expect(a?.tokens).not.toEqual(base?.tokens);
    expect(moe?.tokens).not.toEqual(base?.tokens);
  });

  test.each(MODELS)('streamed completion on %s concatenates to the runtime result', async (model) => {
    const ids = [1, 15, 21, 34, 30, 44]; // token-id prompt
    const expected = await direct(model, ids, 20);
    const stream = await client.completions.create({
      model,
      prompt: ids,
      max_tokens: 20,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    const finishes: (string | null)[] = [];
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        text += c.text;
        finishes.push(c.finish_reason);
      }
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(expected.text);
    expect(finishes.at(-1)).toBe(expected.reason === 'eos' ? 'stop' : 'length');
    expect(finishes.slice(0, -1).every((f) => f === null)).toBe(true);
    expect(usage?.completion_tokens).toBe(expected.tokens.length);
  });

  test.each(MODELS)('chat on %s (plain template) equals the runtime on the rendered prompt, plain and streamed', async (model) => {
    const messages = [
      { role: 'system' as const, content: 'echo' },
      { role: 'user' as const, content: 'ab3|' },
    ];
    const ids = promptIds(fx, 'system: echo\nuser: ab3|\nassistant:');
    const expected = await direct(model, ids, 10);
    const response = await client.chat.completions.create({ model, messages, max_completion_tokens: 10, temperature: 0 });
    expect(response.object).toBe('chat.completion');
    expect(response.choices[0]?.message).toMatchObject({ role: 'assistant', content: expected.text });
    expect(response.usage?.prompt_tokens).toBe(ids.length);
    const stream = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, stream: true });
    let content = '';
    let role: string | undefined;
    let finish: string | null = null;
    for await (const chunk of stream) {
      const c = chunk.choices[0];
      role ??= c?.delta.role;
      content += c?.delta.content ?? '';
      finish = c?.finish_reason ?? finish;
    }
    expect(role).toBe('assistant');
    expect(content).toBe(expected.text);
    expect(finish).toBe(expected.reason === 'eos' ? 'stop' : 'length');
  });

  test('many prompts and n choices: indices follow OpenAI (prompt × n + choice); seeded sampling repeats', async () => {
    const prompts = ['abc|', 'xyz|'];
    const response = await client.completions.create({ model: 'b', prompt: prompts, n: 2, max_tokens: 8, temperature: 0.9, seed: 42 });
    expect(response.choices.map((c) => c.index)).toEqual([0, 1, 2, 3]);
    for (const [p, text] of prompts.entries()) {
      for (const j of [0, 1]) {
        const expected = await runtime.generate(promptIds(fx, text), { select: { adapter: 'b' }, maxNewTokens: 8, temperature: 0.9, seed: 42 + j });
        expect(response.choices[p * 2 + j]?.text).toBe(expected.text);
      }
    }
  });

  test('stop sequences cut the text before the stop, plain and streamed, with finish_reason stop', async () => {
    const ids = promptIds(fx, PROMPT);
    const full = await runtime.generate(ids, { select: { adapter: 'a' }, maxNewTokens: 16, temperature: 0, eosId: null });
    const text = full.text ?? '';
    expect(text.length).toBeGreaterThan(4);
    const stop = text.slice(3, 5);
    const cut = text.slice(0, text.indexOf(stop));
    const plain = await client.completions.create({
      model: 'a',
      prompt: PROMPT,
      max_tokens: 16,
      temperature: 0,
      stop: [stop, 'never'],
      ignore_eos: true,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(plain.choices[0]).toMatchObject({ text: cut, finish_reason: 'stop' });
    const stream = await client.completions.create({
      model: 'a',
      prompt: PROMPT,
      max_tokens: 16,
      temperature: 0,
      stop,
      stream: true,
      ignore_eos: true,
    } as OpenAI.CompletionCreateParamsStreaming);
    let streamed = '';
    let finish: string | null = null;
    for await (const chunk of stream) {
      streamed += chunk.choices[0]?.text ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(streamed).toBe(cut);
    expect(finish).toBe('stop');
  });

  test('logprobs equal a log-softmax of the runtime forward; echo prepends the prompt', async () => {
    const ids = promptIds(fx, PROMPT);
    const response = await client.completions.create({
      model: 'a',
      prompt: PROMPT,
      max_tokens: 4,
      temperature: 0,
      logprobs: 3,
      ignore_eos: true,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    const lp = response.choices[0]?.logprobs;
    expect(lp?.tokens).toHaveLength(4);
    const generated = (await runtime.generate(ids, { select: { adapter: 'a' }, maxNewTokens: 4, temperature: 0, eosId: null })).tokens;
    const { logits, shape } = await runtime.forward([[...ids, ...generated.slice(0, 3)]], { select: { adapter: 'a' } });
    const vocab = shape[2];
    generated.forEach((token, j) => {
      const row = Array.from(logits.subarray((ids.length - 1 + j) * vocab, (ids.length + j) * vocab));
      const max = Math.max(...row);
      const logZ = max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0));
      expect(lp?.token_logprobs?.[j]).toBeCloseTo((row[token] as number) - logZ, 4);
      // greedy: the chosen token is the most likely one
      const top = Object.values(lp?.top_logprobs?.[j] ?? {});
      expect(top).toHaveLength(3);
      expect(Math.max(...top)).toBeCloseTo(lp?.token_logprobs?.[j] as number, 5);
    });
    const chat = await client.chat.completions.create({
      model: 'a',
      messages: [{ role: 'user', content: 'ab' }],
      max_tokens: 3,
      temperature: 0,
      logprobs: true,
      top_logprobs: 2,
    });
    expect(chat.choices[0]?.logprobs?.content?.[0]?.top_logprobs).toHaveLength(2);
    const echoed = await client.completions.create({ model: 'base', prompt: 'ab', max_tokens: 3, temperature: 0, echo: true });
    expect(echoed.choices[0]?.text.startsWith('ab')).toBe(true);
  });

  test('the routed_peft extension returns the routing trace of a routed model', async () => {
    const ids = promptIds(fx, PROMPT);
    const expected = await runtime.generate(ids, { select: { routed: 'moe' }, maxNewTokens: 5, temperature: 0, trace: true, eosId: null });
    const response = await client.completions.create({
      model: 'moe',
      prompt: PROMPT,
      max_tokens: 5,
      temperature: 0,
      ignore_eos: true,
      routed_peft: { trace: true },
    } as OpenAI.CompletionCreateParamsNonStreaming);
    const trace = (response.choices[0] as Extension).routed_peft?.trace;
    expect(trace?.length).toBeGreaterThan(0);
    expect(trace).toEqual(expected.trace);
    expect(trace?.[0]).toMatchObject({ layer: 0, route: 0, batch: 0 });
    const stream = await client.completions.create({
      model: 'moe',
      prompt: PROMPT,
      max_tokens: 5,
      temperature: 0,
      ignore_eos: true,
      stream: true,
      routed_peft: { trace: true },
    } as OpenAI.CompletionCreateParamsStreaming);
    let streamedTrace: RoutingTraceEntry[] | undefined;
    for await (const chunk of stream) streamedTrace ??= (chunk.choices[0] as Extension | undefined)?.routed_peft?.trace;
    expect(streamedTrace).toEqual(expected.trace);
  });

  test('a Jinja chat_template from tokenizer_config.json is used when present', async () => {
    const { jinjaChatTemplate } = await import('../../src/server/chat-template.js');
    const template = jinjaChatTemplate(
      {
        bos_token: '<s>',
        chat_template: '{{ bos_token }}{% for m in messages %}{{ m.role[0] }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}a>{% endif %}',
      },
      'test',
    );
    expect(template?.render([{ role: 'user', content: 'hi' }])).toBe('<s>u>hi\na>');
    const jinja = await startServer({ runtime, chatTemplate: template });
    try {
      const ids = fx.tokenizer.encode('<s>u>ab\na>');
      expect(ids[0]).toBe(1);
      const expected = await runtime.generate(ids, { select: { adapter: 'b' }, maxNewTokens: 6, temperature: 0 });
      const response = await jinja.client.chat.completions.create({ model: 'b', messages: [{ role: 'user', content: 'ab' }], max_tokens: 6, temperature: 0 });
      expect(response.choices[0]?.message.content).toBe(expected.text);
      expect(response.usage?.prompt_tokens).toBe(ids.length);
    } finally {
      await jinja.close();
    }
  });

  test('GET /metrics reports requests, tokens, batches and latency per target in Prometheus format', async () => {
    const response = await fetch(`${running.url}/metrics`);
    expect(response.headers.get('content-type')).toMatch(/text\/plain/);
    const text = await response.text();
    expect(metricValue(text, 'routed_peft_requests_total', { endpoint: '/v1/completions', model: 'moe', status: '200' })).toBeGreaterThan(0);
    expect(metricValue(text, 'routed_peft_generation_tokens_total', { model: 'a' })).toBeGreaterThan(0);
    expect(metricValue(text, 'routed_peft_request_duration_seconds_count', { endpoint: 'chat', model: 'base' })).toBeGreaterThan(0);
    expect(metricValue(text, 'routed_peft_batch_rows_count', { kind: 'generate' })).toBeGreaterThan(0);
    expect(metricValue(text, 'routed_peft_queue_depth')).toBe(0);
    expect(text).toContain('routed_peft_target_evictions_total');
    expect(((await (await fetch(`${running.url}/health`)).json()) as { status: string }).status).toBe('ok');
  });
});
