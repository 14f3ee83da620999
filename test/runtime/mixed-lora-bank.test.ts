// Mixed passes give each LoRA group one choice of a LoRA bank (src/runtime/mixed-hooks.ts): every row of a pass mixing static LoRA
// selections (single adapters, parallel, average, stack; different ranks, scales and sites), a non-LoRA
// selection and bare-base rows equals its solo forward (logits within 1e-4 relative, as the mixed-batching
// tests), the LoRA groups' own hooks are never called (the batched path is really taken) and the pass copies
// no rows (as many gathers as the bare base); a training forward falls back to the groups' own hooks and
// still agrees. Through RoutedRuntime: concurrent LoRA-only requests (forward and generation) equal their
// solo results, the pass gathers no rows, and the tensor count is flat.
import * as tf from '@tensorflow/tfjs';
import { firstValueFrom, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { ForwardHooks } from '../../src/base/hooks.js';
import { padLeft } from '../../src/base/generate.js';
import type { Transformer } from '../../src/base/transformer.js';
import { compositionHooks, presentPoints } from '../../src/model/composition-hooks.js';
import type { CompositionNode } from '../../src/compose/spec.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { staticLoraTerms } from '../../src/model/lora-terms.js';
import { passHooks, type HookGroup } from '../../src/runtime/mixed-hooks.js';
import { RoutedRuntime } from '../../src/runtime/runtime.js';
import type { BatchEvent, ForwardResult, GenerationEvent, Selection } from '../../src/runtime/types.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { tinyLlama } from '../helpers/tiny-models.js';
import { lora, makeFixture, prompt, type RuntimeFixture } from './fixtures.js';

const CLOSE = { rtol: 1e-4, atol: 1e-5 };

/** Kernels named GatherV2 launched by `fn` (row copies; the bare base has a few of its own). */
async function gathers(fn: () => Promise<unknown> | unknown): Promise<number> {
  const profile = await tf.profile(async () => {
    await fn();
  });
  return profile.kernels.filter((k) => k.name === 'GatherV2').length;
}

describe('batched LoRA in a mixed pass (passHooks)', () => {
  let base: Transformer;
  let model: AdaptedModel;

  beforeAll(() => {
    base = tinyLlama({ maxSeqLen: 64 });
    model = AdaptedModel.create(base, {
      seed: 11,
      adapters: [
        lora('a'),
        { kind: 'lora', name: 'b', r: 3, alpha: 5, rslora: true, init: 'random', targets: { sites: ['attn.q', 'attn.k', 'mlp.up'] } },
        { ...lora('c', ['attn.v', 'attn.o', 'mlp.gate']), rankPattern: { 'mlp.gate': 4 } },
        { kind: 'bottleneck', name: 'bn', placement: 'houlsby', init: 'random' },
      ],
    });
  });

  afterAll(() => {
    model.dispose();
    base.dispose();
  });

  const leaf = (adapter: string): CompositionNode => ({ kind: 'adapter', adapter });
  /** Compositions by group, with their rows in a batch of 8 (row 7: the bare base). */
  const GROUPS: readonly { readonly root: CompositionNode; readonly rows: readonly number[]; readonly batched: boolean }[] = [
    { root: leaf('a'), rows: [0, 5], batched: true },
    { root: { kind: 'parallel', children: [leaf('a'), leaf('c')] }, rows: [1], batched: true },
    { root: { kind: 'average', children: [leaf('b'), leaf('c')], weights: [0.3, 0.7] }, rows: [2, 6], batched: true },
    { root: { kind: 'stack', children: [leaf('b'), leaf('a')] }, rows: [3], batched: true },
    { root: { kind: 'stack', children: [leaf('a'), leaf('bn')] }, rows: [4], batched: false },
  ];
  const padded = padLeft(Array.from({ length: 8 }, (_, b) => prompt(3 + (b % 4), b)));

  /** Hooks that count their calls (begin excluded: only whether the group adapts values through them). */
  function counted(hooks: ForwardHooks): { hooks: ForwardHooks; calls: () => number } {
    let calls = 0;
    const wrapped: ForwardHooks = { ...hooks };
    for (const name of ['groupInputs', 'groupOutputs', 'blockOutput'] as const) {
      const inner = hooks[name] as ((...args: unknown[]) => unknown) | undefined;
      if (inner !== undefined) {
        (wrapped as Record<string, unknown>)[name] = (...args: unknown[]) => {
          calls++;
          return inner(...args);
        };
      }
    }
    return { hooks: wrapped, calls: () => calls };
  }

  function groupsFor(): { groups: HookGroup[]; calls: (() => number)[] } {
    const calls: (() => number)[] = [];
    const groups = GROUPS.map(({ root, rows }) => {
      const { hooks, calls: count } = counted(compositionHooks(root, model.adapters));
      calls.push(count);
      return { rows, hooks, points: presentPoints(root, model.adapters), lora: staticLoraTerms(root, model.adapters) };
    });
    return { groups, calls };
  }

  /** Logits [B, T, V] of a forward over `rows` of the padded batch with `hooks`. */
  function logits(rows: readonly number[], hooks: ForwardHooks | undefined, training = false): Float32Array {
    const ids = rows.map((b) => padded.ids[b] as number[]);
    const mask = rows.map((b) => padded.mask[b] as number[]);
    const out = base.forward({ ids, mask, training, ...(hooks === undefined ? {} : { hooks }) }); // [B, T, V]
    const values = out.dataSync() as Float32Array;
    out.dispose();
    return values;
  }

  function expectRowsSolo(all: Float32Array, training: boolean): void {
    const per = all.length / 8; // T·V values per row
    const row = (values: Float32Array, i: number) => values.subarray(i * per, (i + 1) * per);
    for (const [g, { root, rows }] of GROUPS.entries()) {
      const solo = logits(rows, compositionHooks(root, model.adapters), training);
      rows.forEach((b, i) => expectClose(row(all, b), row(solo, i), { ...CLOSE, label: `group ${g} row ${b}` }));
    }
    expectClose(row(all, 7), row(logits([7], undefined, training), 0), { ...CLOSE, label: 'base row' });
  }

  test('LoRA-only compositions have LoRA terms (stack and parallel sum, average weighs); others do not', () => {
    for (const { root, batched } of GROUPS) expect(staticLoraTerms(root, model.adapters) !== undefined, JSON.stringify(root)).toBe(batched);
    const average = staticLoraTerms(GROUPS[2]?.root as CompositionNode, model.adapters);
    // attn.v: only c (weight 0.7); attn.q: only b (0.3); mlp.gate: c with its pattern rank 4.
    expect(average?.get('0|attn.v')?.map((t) => [t.module.adapter, t.weight])).toEqual([['c', 0.7]]);
    expect(average?.get('1|attn.q')?.map((t) => [t.module.adapter, t.weight])).toEqual([['b', 0.3]]);
    expect(average?.get('0|mlp.gate')?.map((t) => t.module.rank)).toEqual([4]);
    const route: CompositionNode = {
      kind: 'route',
      experts: ['a', 'b'],
      router: { kind: 'soft' },
      nullExpert: false,
      granularity: 'token',
      placement: 'site',
      readLayer: 0,
      strategy: 'auto',
      aux: { balance: 0, zLoss: 0, importance: 0, entropy: 0 },
    };
    expect(staticLoraTerms(route, model.adapters)).toBeUndefined();
  });

  test('every row equals its solo forward; LoRA groups skip their hooks; no row copies; nothing leaks', async () => {
    const start = tf.memory().numTensors;
    const { groups, calls } = groupsFor();
    const pass = passHooks(groups, 8, base.config.nLayers);
    let all: Float32Array = new Float32Array();
    const mixedGathers = await gathers(() => {
      all = logits([0, 1, 2, 3, 4, 5, 6, 7], pass.hooks);
    });
    pass.dispose();
    expect(tf.memory().numTensors).toBe(start);
    expectRowsSolo(all, false);
    GROUPS.forEach(({ batched }, g) => expect((calls[g] as () => number)() > 0, `group ${g} hooks called`).toBe(!batched));

    // Without the non-LoRA group, the pass gathers no rows at all: as many GatherV2 as the bare base.
    const loraOnly = passHooks(groupsFor().groups.slice(0, 4), 8, base.config.nLayers);
    const loraGathers = await gathers(() => logits([0, 1, 2, 3, 4, 5, 6, 7], loraOnly.hooks));
    loraOnly.dispose();
    const baseGathers = await gathers(() => logits([0, 1, 2, 3, 4, 5, 6, 7], undefined));
    expect(loraGathers).toBe(baseGathers);
    expect(mixedGathers).toBeGreaterThan(baseGathers); // the bottleneck group's rows are copied
    expect(tf.memory().numTensors).toBe(start);
  });

  test('a training forward runs every group through its own hooks, with the same results', () => {
    const start = tf.memory().numTensors;
    const { groups, calls } = groupsFor();
    const pass = passHooks(groups, 8, base.config.nLayers);
    const all = logits([0, 1, 2, 3, 4, 5, 6, 7], pass.hooks, true);
    pass.dispose();
    expect(tf.memory().numTensors).toBe(start);
    expectRowsSolo(all, true);
    GROUPS.forEach((_, g) => expect((calls[g] as () => number)(), `group ${g} hooks called`).toBeGreaterThan(0));
  });
});

describe('batched LoRA through RoutedRuntime', () => {
  let fx: RuntimeFixture;
  let runtime: RoutedRuntime;
  let start: number;
  const SELECTIONS: readonly Selection[] = [
    { adapter: 'a' },
    { adapter: 'b' },
    { adapter: 'c' },
    { adapter: 'a2' },
    { combine: 'parallel', adapters: ['a', 'c'] },
    { combine: 'average', adapters: ['b', 'c'], weights: [0.3, 0.7] },
    { combine: 'stack', adapters: ['a2', 'b'] },
    'base',
  ];

  beforeAll(async () => {
    fx = await makeFixture();
    start = tf.memory().numTensors;
    runtime = RoutedRuntime.create({ base: fx.base, batching: { windowMs: 5, maxBatchSize: 16 } });
    for (const name of ['a', 'b', 'c', 'a2'] as const) await runtime.load(name, { kind: 'peft', dir: fx.peft[name] });
  });

  afterAll(async () => {
    runtime.dispose();
    await runtime.idle();
    expect(tf.memory().numTensors).toBe(start);
    await fx.dispose();
  });

  const rowsOf = (i: number): number[][] => [prompt(2 + (i % 5), i), prompt(6 - (i % 3), i + 20)];
  const forward = (i: number) => runtime.forward(rowsOf(i), { select: SELECTIONS[i] as Selection });
  const generate = async (i: number): Promise<number[]> => {
    const sampling = i % 2 === 0 ? { temperature: 0 } : { temperature: 0.8, seed: 100 + i };
    const events = await firstValueFrom(
      runtime.generate$(prompt(3 + (i % 4), i), { select: SELECTIONS[i] as Selection, maxNewTokens: 5, eosId: null, ...sampling }).pipe(toArray()),
    );
    return (events.at(-1) as Extract<GenerationEvent, { kind: 'end' }>).tokens;
  };

  test('concurrent LoRA-only requests equal their solo results, in one pass each kind, with flat tensor counts', async () => {
    const indices = SELECTIONS.map((_, i) => i);
    const soloLogits: ForwardResult[] = [];
    const soloTokens: number[][] = [];
    for (const i of indices) {
      soloLogits.push(await forward(i));
      soloTokens.push(await generate(i));
    }
    await runtime.idle();
    const before = tf.memory().numTensors;
    const events: BatchEvent[] = [];
    const subscription = runtime.batches$.subscribe((e) => events.push(e));
    const [together, tokens] = await Promise.all([Promise.all(indices.map(forward)), Promise.all(indices.map(generate))]);
    subscription.unsubscribe();
    await runtime.idle();
    expect(tf.memory().numTensors).toBe(before);
    together.forEach((out, i) => {
      expect(out.shape).toEqual(soloLogits[i]?.shape);
      expectClose(out.logits, soloLogits[i]?.logits ?? [], { ...CLOSE, label: `forward ${i}` });
    });
    tokens.forEach((t, i) => expect(t, `generate ${i}`).toEqual(soloTokens[i]));
    expect(events.map((e) => [e.kind, e.groups])).toEqual([
      ['logits', SELECTIONS.length],
      ['generate', SELECTIONS.length],
    ]);
  });

  test('a mixed LoRA pass copies no rows: as many gathers as the bare base', async () => {
    const indices = SELECTIONS.map((_, i) => i);
    const mixed = await gathers(() => Promise.all(indices.map(forward)));
    const bare = await gathers(() => Promise.all(indices.map((i) => runtime.forward(rowsOf(i), { select: 'base' }))));
    expect(mixed).toBe(bare);
  });
});
