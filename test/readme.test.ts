// README's library and runtime examples, run as written (on stories260K), so the README stays true.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lastValueFrom, toArray } from 'rxjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../routers/index.js';
import {
  AdaptedModel,
  DataParallelGroup,
  RoutedRuntime,
  Trainer,
  loadBaseModel,
  loadTokenizer,
  saveRoutedModel,
  selectBackend,
  writePeftAdapter,
} from '../src/index.js';
import type { RoutingTraceEntry, TrainEvent } from '../src/index.js';
import { SHARED_MODELS_SKIP_NOTE, hasSharedModels, stories260kPath, tok512Path } from './helpers/tiny-models.js';

describe.skipIf(!hasSharedModels)(`README examples${SHARED_MODELS_SKIP_NOTE}`, () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-readme-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  test('library quick start, then training a few steps', async () => {
    await selectBackend({ preference: 'wasm' });
    const { model: base } = await loadBaseModel(stories260kPath);
    const tokenizer = await loadTokenizer(tok512Path);
    const routed = AdaptedModel.create(
      base,
      {
        seed: 0,
        adapters: [0, 1, 2, 3].map((i) => ({ kind: 'lora' as const, name: `e${i}`, r: 4, alpha: 8, targets: { sites: ['attn.q', 'attn.v', 'mlp.down'] } })),
        composition: { kind: 'route', experts: ['e0', 'e1', 'e2', 'e3'], router: { kind: 'top-k', k: 2 } },
      },
      { routers: builtinRouters() },
    );
    const trainer = new Trainer(routed, {
      optimizer: { lr: 1e-3, routerLr: 1e-3 },
      schedule: { warmupSteps: 10, totalSteps: 200 },
      maxGradNorm: 1,
    });
    const events: TrainEvent[] = [];
    const subscription = trainer.events$.subscribe((event) => events.push(event));
    const row = tokenizer.encode('Once upon a time there was a cat.', { addBos: true });
    trainer.step({ ids: [row], mask: [row.map(() => 1)], lossMask: [row.map((_, i) => (i === 0 ? 0 : 1))] });
    subscription.unsubscribe();
    const step = events.find((e) => e.type === 'step');
    expect(step?.type === 'step' && Number.isFinite(step.taskLoss) && step.gradNorm !== null && step.gradNorm > 0).toBe(true);

    const trace: RoutingTraceEntry[] = [];
    const [ids] = routed.generate([tokenizer.encode('Once upon a time', { addBos: true })], { maxNewTokens: 20, temperature: 0, routing: { trace } });
    expect(tokenizer.decode(ids ?? []).startsWith('Once upon a time')).toBe(true);
    expect(trace[0]).toMatchObject({ layer: 0, site: 'attn.q', route: 0, batch: 0, token: 0 });
    expect(routed.parameterReport().trainable).toBeGreaterThan(0);
    await saveRoutedModel(join(dir, 'moe'), routed);
    trainer.dispose();
    routed.dispose();
    base.dispose();
  });

  test('training on every core: a data-parallel group', async () => {
    const { model: base } = await loadBaseModel(stories260kPath);
    const tokenizer = await loadTokenizer(tok512Path);
    const routed = AdaptedModel.create(base, { adapters: [{ kind: 'lora', name: 'a', targets: { sites: ['attn.q', 'attn.v'] } }] });
    const config = { optimizer: { lr: 1e-3 }, maxGradNorm: 1 };
    const group = await DataParallelGroup.start(routed, config, { replicas: 2 }); // this thread + 1 worker thread
    const trainer = new Trainer(routed, config, { dataParallel: group });
    const rows = ['Once upon a time there was a cat.', 'The dog ran to the park.'].map((t) => tokenizer.encode(t, { addBos: true }));
    const width = Math.max(...rows.map((r) => r.length));
    const pad = (r: number[], v: (i: number) => number): number[] => Array.from({ length: width }, (_, i) => (i < r.length ? v(i) : 0));
    const batch = {
      ids: rows.map((r) => pad(r, (i) => r[i] as number)),
      mask: rows.map((r) => pad(r, () => 1)),
      lossMask: rows.map((r) => pad(r, (i) => (i === 0 ? 0 : 1))),
    };
    const first = trainer.step(batch);
    const second = trainer.step(batch);
    expect(second.loss).toBeLessThan(first.loss);
    await group.close();
    trainer.dispose();
    routed.dispose();
    base.dispose();
  });

  test('runtime example', async () => {
    const { model: base } = await loadBaseModel(stories260kPath);
    const tokenizer = await loadTokenizer(tok512Path);
    const seed = AdaptedModel.create(base, { adapters: [{ kind: 'lora', name: 'summarise', init: 'random', targets: { sites: ['attn.q', 'attn.v'] } }] });
    await writePeftAdapter(join(dir, 'summarise'), seed.adapters.get('summarise') as never, base);
    await writePeftAdapter(join(dir, 'summarise-v2'), seed.adapters.get('summarise') as never, base);
    seed.dispose();

    const runtime = RoutedRuntime.create({ base, tokenizer, routers: builtinRouters(), memoryBudgetBytes: 64 << 20 });
    await runtime.load('summarise', { kind: 'peft', dir: join(dir, 'summarise') });
    await runtime.load('moe', { kind: 'routed', dir: join(dir, 'moe') });
    const [a, b] = await Promise.all([
      runtime.forward([[1, 403, 407]], { select: { adapter: 'summarise' } }),
      runtime.score([1, 403], [407, 261], { select: { routed: 'moe' } }),
    ]);
    expect(a.shape).toEqual([1, 3, 512]);
    expect(Number.isFinite(b.logLikelihood)).toBe(true);
    const events = await lastValueFrom(runtime.generate$([1], { select: { routed: 'moe' }, maxNewTokens: 20, temperature: 0, trace: true }).pipe(toArray()));
    expect(events.at(-1)).toMatchObject({ kind: 'end', reason: 'length' });
    const iterated = [];
    for await (const event of runtime.generateIterable([1], { select: 'base', maxNewTokens: 5 })) iterated.push(event);
    expect(iterated).toHaveLength(6);
    await runtime.swap('summarise', { kind: 'peft', dir: join(dir, 'summarise-v2') });
    runtime.merge('summarise');
    runtime.dispose();
    base.dispose();
  });
});
