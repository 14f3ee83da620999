// The routed-model workflow through the CLI: init from each shipped example spec, generate with --routed
// --trace (trace invariants), forward, inspect; PEFT adapters through --adapter / --combine.
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import type { RoutingTraceEntry } from '../../src/routing/trace.js';
import { SHARED_MODELS_SKIP_NOTE, hasSharedModels, stories260kPath, tok512Path } from '../helpers/tiny-models.js';

const examplesDir = fileURLToPath(new URL('../../examples/', import.meta.url));
const context = { routers: builtinRouters() };

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const io = createMemoryIo();
  const code = await main(argv, io, context);
  return { code, out: io.out, err: io.err };
}

describe.skipIf(!hasSharedModels)(`routed models through the CLI on stories260K${SHARED_MODELS_SKIP_NOTE}`, () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-routed-cli-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  test.each(['topk-lora-experts.json', 'switch-capacity.json', 'unipelt-mixed.json'])(
    'example %s: init, then generate --routed --trace satisfies the routing invariants',
    async (file) => {
      const out = join(dir, file.replace('.json', ''));
      const init = await run('init', '--model', stories260kPath, '--spec', join(examplesDir, file), '--out', out, '--format', 'json');
      expect(init.err).toBe('');
      expect(init.code).toBe(0);
      const summary = JSON.parse(init.out) as { parameters: { trainable: number; frozen: number } };
      expect(summary.parameters.trainable).toBeGreaterThan(0);
      expect(summary.parameters.frozen).toBe(260032);
      expect((await readdir(out)).sort()).toContain('routed-peft.json');

      const gen = await run(
        'generate',
        '--model',
        stories260kPath,
        '--tokenizer',
        tok512Path,
        '--routed',
        out,
        '--max-new-tokens',
        '6',
        '--temperature',
        '0',
        '--format',
        'json',
        '--trace',
      );
      expect(gen.code).toBe(0);
      const result = JSON.parse(gen.out) as {
        ids: number[];
        text: string;
        trace: RoutingTraceEntry[];
        routing: { layer: number; site: string; tokens: number; droppedRate: number }[];
      };
      expect(result.ids).toHaveLength(7);
      expect(result.routing.length).toBeGreaterThan(0);
      expect(result.routing.every((r) => r.tokens > 0 && r.droppedRate >= 0 && r.droppedRate <= 1)).toBe(true);
      expect(result.trace.length).toBeGreaterThan(0);
      const spec = JSON.parse(await readFile(join(examplesDir, file), 'utf8')) as {
        composition: { experts: string[]; nullExpert?: boolean; router: { kind: string; k?: number } };
      };
      const allowed = new Set([...spec.composition.experts, ...(spec.composition.nullExpert === true ? ['null'] : [])]);
      for (const entry of result.trace) {
        expect(entry.experts.every((e) => allowed.has(e))).toBe(true);
        expect(entry.weights.every((w) => w > 0 && Number.isFinite(w))).toBe(true);
        expect(entry.layer).toBeGreaterThanOrEqual(0);
        expect(entry.layer).toBeLessThan(5);
        if (entry.dropped) expect(entry.experts).toEqual([]);
        else if (spec.composition.router.kind !== 'switch') expect(entry.weights.reduce((s, w) => s + w, 0)).toBeCloseTo(1, 5);
        if (spec.composition.router.kind === 'top-k') expect(new Set(entry.experts).size).toBe(spec.composition.router.k);
      }
    },
  );

  test('a freshly initialised routed LoRA model (B = 0) generates exactly what the base generates', async () => {
    const out = join(dir, 'topk-lora-experts');
    const routed = await run(
      'generate',
      '--model',
      stories260kPath,
      '--tokenizer',
      tok512Path,
      '--routed',
      out,
      '--max-new-tokens',
      '20',
      '--temperature',
      '0',
      '--format',
      'json',
    );
    const plain = await run(
      'generate',
      '--model',
      stories260kPath,
      '--tokenizer',
      tok512Path,
      '--max-new-tokens',
      '20',
      '--temperature',
      '0',
      '--format',
      'json',
    );
    expect(JSON.parse(routed.out)).toEqual(JSON.parse(plain.out));
  });

  test('inspect reports the trainable count of a routed model; forward accepts --routed', async () => {
    const out = join(dir, 'switch-capacity');
    const inspect = await run('inspect', '--model', stories260kPath, '--routed', out, '--format', 'json');
    expect(inspect.code).toBe(0);
    const report = JSON.parse(inspect.out) as { adapters: { trainable: number }[]; routers: { trainable: number; routers: number }[]; trainable: number };
    // 8 LoRA experts r=4 on gate/up/down: per layer 2·(4·64 + 172·4) + (4·172 + 64·4) = 2832; 5 layers.
    expect(report.adapters.every((a) => a.trainable === 5 * 2832)).toBe(true);
    // One switch router per layer: W_g [64, 8].
    expect(report.routers[0]).toMatchObject({ routers: 5, trainable: 5 * 64 * 8 });
    const forward = await run('forward', '--model', stories260kPath, '--routed', out, '--ids', '1,403');
    expect(forward.code).toBe(0);
    expect((JSON.parse(forward.out) as { logits: number[][] }).logits).toHaveLength(2);
  });

  test('--routed with a missing directory, and --trace without json, are clear errors', async () => {
    const missing = await run('generate', '--model', stories260kPath, '--routed', join(dir, 'nope'), '--format', 'json');
    expect(missing.code).toBe(1);
    expect(missing.err).toMatch(/no routed-peft.json/);
    const traceText = await run('generate', '--model', stories260kPath, '--routed', join(dir, 'nope'), '--trace');
    expect(traceText.code).toBe(2);
  });
});

describe.skipIf(!hasSharedModels)(`PEFT adapters through --adapter${SHARED_MODELS_SKIP_NOTE}`, () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-adapter-cli-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  test('forward with --adapter equals the library with the same adapters; --combine average and parallel weigh them, stack refuses weights', async () => {
    const tf = await import('@tensorflow/tfjs');
    const { loadBaseModel } = await import('../../src/base/checkpoints/load-model.js');
    const { writePeftAdapter } = await import('../../src/io/peft-adapter.js');
    const { AdaptedModel } = await import('../../src/model/adapted-model.js');
    const { model: base } = await loadBaseModel(stories260kPath);
    const lora = (name: string) => ({ kind: 'lora', name, r: 4, alpha: 8, init: 'random', targets: { sites: ['attn.q', 'attn.v'] } });
    const model = AdaptedModel.create(base, { seed: 5, adapters: [lora('a'), lora('b')] });
    await writePeftAdapter(join(dir, 'a'), model.adapters.get('a') as never, base);
    await writePeftAdapter(join(dir, 'b'), model.adapters.get('b') as never, base);
    const expected = model.forward({ ids: [[1, 403, 407]], select: { combine: 'average', adapters: ['a', 'b'], weights: [0.75, 0.25] } });
    const expectedRows = (await expected.array()) as number[][][];
    tf.dispose(expected);
    model.dispose();
    base.dispose();
    const cli = await run(
      'forward',
      '--model',
      stories260kPath,
      '--adapter',
      join(dir, 'a'),
      '--adapter',
      join(dir, 'b'),
      '--combine',
      'average',
      '--weights',
      '0.75,0.25',
      '--ids',
      '1,403,407',
    );
    expect(cli.code).toBe(0);
    const rows = (JSON.parse(cli.out) as { logits: number[][] }).logits;
    rows.forEach((row, t) => row.forEach((v, i) => expect(v).toBeCloseTo(expectedRows[0]?.[t]?.[i] ?? NaN, 4)));
    const inspect = await run('inspect', '--model', stories260kPath, '--adapter', join(dir, 'a'), '--format', 'json');
    expect((JSON.parse(inspect.out) as { trainable: number }).trainable).toBe(5 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4));
    // --weights with parallel (the default --combine) is a weighted sum: the same as average with those weights.
    const weighted = (combine: string | undefined) =>
      run(
        'forward',
        '--model',
        stories260kPath,
        '--adapter',
        join(dir, 'a'),
        '--adapter',
        join(dir, 'b'),
        ...(combine === undefined ? [] : ['--combine', combine]),
        '--weights',
        '0.75,0.25',
        '--ids',
        '1,403,407',
      );
    for (const combine of ['parallel', undefined]) {
      const parallel = await weighted(combine);
      expect(parallel.code, parallel.err).toBe(0);
      expect((JSON.parse(parallel.out) as { logits: number[][] }).logits).toEqual(rows);
    }
    // A stack takes no weights.
    const bad = await weighted('stack');
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/stack takes no weights/);
  });
});
