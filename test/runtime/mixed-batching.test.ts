// Concurrent requests with different selections (PEFT adapters, static combinations, routed models at token
// and sequence level, the base), different lengths and kinds (forward, score, streamed generation) share
// passes, and each gets the result it gets alone: logits within 1e-4 relative, identical greedy and seeded
// tokens. Property-tested over random request mixes (seeded, few runs); isolation rules (prefix, switch)
// by example.
import { fc } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { firstValueFrom, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { RoutedRuntime } from '../../src/runtime/runtime.js';
import type { BatchEvent, GenerationEvent, Selection } from '../../src/runtime/types.js';
import type { RoutingTraceEntry } from '../../src/routing/trace.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { makeFixture, PREFIX_SPEC, routers, type RuntimeFixture } from './fixtures.js';

const SELECTIONS: readonly Selection[] = [
  'base',
  { adapter: 'a' },
  { adapter: 'b' },
  { combine: 'parallel', adapters: ['a', 'c'] },
  { combine: 'average', adapters: ['b', 'c'], weights: [0.3, 0.7] },
  { routed: 'moe' },
  { routed: 'seq' },
  { routed: 'seq2' },
];

type Kind = 'forward' | 'score' | 'generate';

interface RequestSpec {
  readonly kind: Kind;
  readonly select: number;
  readonly rows: number[][];
  readonly continuation: number[];
  readonly maxNewTokens: number;
  /** undefined: greedy; otherwise a sampling seed. */
  readonly seed: number | undefined;
}

type Outcome = (
  | { readonly kind: 'forward'; readonly logits: Float32Array; readonly shape: readonly number[] }
  | { readonly kind: 'score'; readonly tokenLogProbs: number[] }
  | { readonly kind: 'generate'; readonly tokens: number[]; readonly streamed: number[] }
) & { readonly trace: readonly RoutingTraceEntry[] };

const token = fc.integer({ min: 3, max: 31 });
const row = fc.array(token, { minLength: 1, maxLength: 7 });
const requestSpec: fc.Arbitrary<RequestSpec> = fc.record({
  kind: fc.constantFrom<Kind>('forward', 'score', 'generate'),
  select: fc.integer({ min: 0, max: SELECTIONS.length - 1 }),
  rows: fc.array(row, { minLength: 1, maxLength: 2 }),
  continuation: fc.array(token, { minLength: 1, maxLength: 3 }),
  maxNewTokens: fc.integer({ min: 1, max: 5 }),
  seed: fc.option(fc.integer({ min: 0, max: 1000 }), { nil: undefined }),
});

let fx: RuntimeFixture;
let runtime: RoutedRuntime;
let start: number;

beforeAll(async () => {
  fx = await makeFixture();
  start = tf.memory().numTensors;
  runtime = RoutedRuntime.create({ base: fx.base, routers, batching: { windowMs: 5, maxBatchSize: 16 } });
  await runtime.load('a', { kind: 'peft', dir: fx.peft.a });
  await runtime.load('b', { kind: 'peft', dir: fx.peft.b });
  await runtime.load('c', { kind: 'peft', dir: fx.peft.c });
  await runtime.load('moe', { kind: 'routed', dir: fx.routed });
  await runtime.load('seq', { kind: 'routed', dir: fx.sequence });
  await runtime.load('seq2', { kind: 'routed', dir: fx.sequenceTopK });
  await runtime.load('sw', { kind: 'routed', dir: fx.switched });
  await runtime.load('pre', { kind: 'instance', model: AdaptedModel.create(fx.base, PREFIX_SPEC) });
});

afterAll(async () => {
  runtime.dispose();
  await runtime.idle();
  expect(tf.memory().numTensors).toBe(start);
  await fx.dispose();
});

async function run(spec: RequestSpec, selections: readonly Selection[] = SELECTIONS): Promise<Outcome> {
  const select = selections[spec.select] as Selection;
  switch (spec.kind) {
    case 'forward': {
      const out = await runtime.forward(spec.rows, { select, trace: true });
      return { kind: 'forward', logits: out.logits, shape: out.shape, trace: out.trace ?? [] };
    }
    case 'score': {
      const out = await runtime.score(spec.rows[0] as number[], spec.continuation, { select, trace: true });
      return { kind: 'score', tokenLogProbs: out.tokenLogProbs, trace: out.trace ?? [] };
    }
    case 'generate': {
      const sampling = spec.seed === undefined ? { temperature: 0 } : { temperature: 0.8, topP: 0.9, seed: spec.seed };
      const events = await firstValueFrom(
        runtime.generate$(spec.rows[0] as number[], { select, maxNewTokens: spec.maxNewTokens, eosId: null, trace: true, ...sampling }).pipe(toArray()),
      );
      const end = events.at(-1) as Extract<GenerationEvent, { kind: 'end' }>;
      return { kind: 'generate', tokens: end.tokens, streamed: events.flatMap((e) => (e.kind === 'token' ? [e.token] : [])), trace: end.trace ?? [] };
    }
  }
}

function expectSame(actual: Outcome, expected: Outcome, label: string): void {
  expect(actual.kind).toBe(expected.kind);
  // Routing traces: the same decisions for the same (row, position), weights within round-off.
  const where = (e: RoutingTraceEntry) => ({
    layer: e.layer,
    site: e.site,
    route: e.route,
    batch: e.batch,
    token: e.token,
    experts: e.experts,
    dropped: e.dropped,
  });
  expect(actual.trace.map(where), label).toEqual(expected.trace.map(where));
  expectClose(
    actual.trace.flatMap((e) => e.weights),
    expected.trace.flatMap((e) => e.weights),
    { rtol: 1e-4, atol: 1e-5, label: `${label} trace` },
  );
  if (actual.kind === 'forward' && expected.kind === 'forward') {
    expect(actual.shape).toEqual(expected.shape);
    expectClose(actual.logits, expected.logits, { rtol: 1e-4, atol: 1e-5, label });
  } else if (actual.kind === 'score' && expected.kind === 'score') {
    expectClose(actual.tokenLogProbs, expected.tokenLogProbs, { rtol: 1e-4, atol: 1e-5, label });
  } else if (actual.kind === 'generate' && expected.kind === 'generate') {
    expect(actual.tokens, label).toEqual(expected.tokens);
    expect(actual.streamed, label).toEqual(actual.tokens);
  }
}

describe('mixed concurrent requests', () => {
  test('every request in a random mix equals its solo result (fast-check, seeded)', async () => {
    const events: BatchEvent[] = [];
    const subscription = runtime.batches$.subscribe((e) => events.push(e));
    await fc.assert(
      fc.asyncProperty(fc.array(requestSpec, { minLength: 2, maxLength: 7 }), async (specs) => {
        const solo: Outcome[] = [];
        for (const spec of specs) solo.push(await run(spec));
        const together = await Promise.all(specs.map((spec) => run(spec)));
        together.forEach((outcome, i) => expectSame(outcome, solo[i] as Outcome, `request ${i} ${JSON.stringify(specs[i])}`));
      }),
      { numRuns: 10, seed: 20240611, endOnFailure: true },
    );
    subscription.unsubscribe();
    // The mixes really shared passes across selections, for forwards and for generation.
    expect(events.some((e) => e.kind === 'logits' && e.groups >= 2)).toBe(true);
    expect(events.some((e) => e.kind === 'generate' && e.groups >= 2)).toBe(true);
    await runtime.idle();
    expect(runtime.stats().targets.every((t) => t.inUse === 0)).toBe(true);
  });

  test('a fixed mix of every selection, streaming and different lengths, in one window', async () => {
    const specs: RequestSpec[] = SELECTIONS.flatMap((_, select) => [
      { kind: 'generate' as const, select, rows: [[3 + select, 9, 4, 12].slice(0, 1 + (select % 4))], continuation: [5], maxNewTokens: 6, seed: undefined },
      { kind: 'forward' as const, select, rows: [[7, 8, 9, 10, 11].slice(select % 3), [4]], continuation: [5], maxNewTokens: 1, seed: undefined },
    ]);
    const solo: Outcome[] = [];
    for (const spec of specs) solo.push(await run(spec));
    const events: BatchEvent[] = [];
    const subscription = runtime.batches$.subscribe((e) => events.push(e));
    const together = await Promise.all(specs.map((spec) => run(spec)));
    subscription.unsubscribe();
    together.forEach((outcome, i) => expectSame(outcome, solo[i] as Outcome, `request ${i}`));
    expect(events.find((e) => e.kind === 'generate')?.groups).toBe(SELECTIONS.length);
    expect(events.find((e) => e.kind === 'logits')?.groups).toBe(SELECTIONS.length);
  });

  test('prefix selections and batch-coupled (switch) routes get passes of their own, and still equal solo', async () => {
    const selections: Selection[] = [{ routed: 'pre' }, { routed: 'sw' }, { adapter: 'a' }, 'base'];
    const specs: RequestSpec[] = [0, 1, 2, 3, 0, 1].map((select, i) => ({
      kind: 'generate' as const,
      select,
      rows: [[5 + i, 6, 7, 8].slice(0, 2 + (i % 3))],
      continuation: [3],
      maxNewTokens: 5,
      seed: undefined,
    }));
    specs.push({ kind: 'forward', select: 0, rows: [[3, 4, 5], [9]], continuation: [3], maxNewTokens: 1, seed: undefined });
    specs.push({
      kind: 'forward',
      select: 1,
      rows: [
        [3, 4, 5, 6],
        [9, 10],
      ],
      continuation: [3],
      maxNewTokens: 1,
      seed: undefined,
    });
    const solo: Outcome[] = [];
    for (const spec of specs) solo.push(await run(spec, selections));
    const events: BatchEvent[] = [];
    const subscription = runtime.batches$.subscribe((e) => events.push(e));
    const together = await Promise.all(specs.map((spec) => run(spec, selections)));
    subscription.unsubscribe();
    together.forEach((outcome, i) => expectSame(outcome, solo[i] as Outcome, `request ${i}`));
    const generatePasses = events.filter((e) => e.kind === 'generate');
    // pre ×2 together (same selection), sw ×2 one each, a + base together.
    expect(generatePasses.map((e) => [...e.selections].sort().join('+')).sort()).toEqual(['adapter:a+base', 'routed:pre', 'routed:sw', 'routed:sw']);
    expect(generatePasses.find((e) => e.selections.includes('routed:pre'))?.requests).toBe(2);
  });
});
