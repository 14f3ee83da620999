// Issue 20, case by case, through the library: hostile or broken input gets a typed error (or is handled),
// fast — no process abort, no hang, no read outside a directory, no silent NaN. The CLI side of each case is
// in cli-cases.test.ts; crash consistency, long lines and queueing have files of their own.
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { createAdapter } from '../../src/adapters/instance.js';
import { AdapterSpec } from '../../src/adapters/registry.js';
import { loadBaseModel } from '../../src/base/checkpoints/load-model.js';
import { ModelConfig } from '../../src/base/config.js';
import type { Transformer } from '../../src/base/transformer.js';
import { checkSpecAgainstModel, parseAdaptedModelSpec } from '../../src/compose/model-spec.js';
import { parseConfig } from '../../src/config/parse.js';
import { CheckpointError, ConfigError, NonFiniteError } from '../../src/errors.js';
import { parseSafetensors, readSafetensorsFile, serializeSafetensors, type TensorToWrite } from '../../src/formats/safetensors.js';
import { readPeftAdapter, writePeftAdapter } from '../../src/io/peft-adapter.js';
import { MANIFEST_FILE, loadRoutedModel, saveRoutedModel } from '../../src/io/routed-model-dir.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { parseJsonlDataset } from '../../src/train/dataset.js';
import { DatasetError } from '../../src/train/dataset-errors.js';
import { Trainer } from '../../src/train/trainer.js';
import { tinyLlama, tinyLlamaCheckpoint, writeHfModelDir } from '../helpers/tiny-models.js';
import { cyclicComposition, deepComposition, exponentialComposition } from './inputs.js';

const routers = builtinRouters();
let base: Transformer;
let dir: string;

beforeAll(async () => {
  base = tinyLlama();
  dir = await mkdtemp(join(tmpdir(), 'routed-peft-hostile-'));
});
afterAll(async () => {
  base.dispose();
  await rm(dir, { recursive: true, force: true });
});

/** Runs `fn`, expects it to throw an instance of `type`, and returns the error and the milliseconds it took. */
async function refused<E extends Error>(fn: () => unknown, type: abstract new (...args: never[]) => E): Promise<{ error: E; ms: number }> {
  const start = performance.now();
  try {
    await fn();
  } catch (error) {
    const ms = performance.now() - start;
    expect(error).toBeInstanceOf(type);
    return { error: error as E, ms };
  }
  throw new Error('expected a refusal, but the call succeeded');
}

const lora = (extra: Record<string, unknown> = {}) => ({ kind: 'lora', name: 'e0', r: 2, alpha: 4, ...extra });

/** Rewrites one float tensor of a safetensors file: values[at] = value. */
async function poke(file: string, tensor: string, at: number, value: number): Promise<void> {
  const parsed = await readSafetensorsFile(file);
  const out = new Map<string, TensorToWrite>();
  for (const [name, entry] of parsed.entries) {
    const bytes = Uint8Array.from(entry.bytes);
    if (name === tensor) new DataView(bytes.buffer).setFloat32(at * 4, value, true);
    out.set(name, { dtype: entry.dtype, shape: entry.shape, data: bytes });
  }
  await writeFile(file, serializeSafetensors(out, { ...parsed.metadata }));
}

describe('crash: huge task and label ids', () => {
  test('a JSONL row with "task": 1e9 is a DatasetError naming the line and the limit, in milliseconds (was: V8 abort)', async () => {
    const { error, ms } = await refused(() => parseJsonlDataset('{"text": "a", "task": 1000000000}\n', 'data.jsonl'), DatasetError);
    expect(error.message).toMatch(/line 1: task 1000000000 exceeds the largest id 65535/);
    expect(ms).toBeLessThan(1000);
  });

  test('a JSONL row with "label": 1e9 likewise', async () => {
    const { error, ms } = await refused(() => parseJsonlDataset('{"text": "a", "label": 1000000000}\n', 'data.jsonl'), DatasetError);
    expect(error.message).toMatch(/label 1000000000 exceeds the largest id 65535/);
    expect(ms).toBeLessThan(1000);
  });

  test('"task": 1e7 among good rows is skipped as malformed at once (was: a hang in parseJsonlDataset)', () => {
    const good = Array.from({ length: 20 }, (_, i) => JSON.stringify({ text: `row ${i}`, task: i % 3 }));
    const start = performance.now();
    const dataset = parseJsonlDataset([...good, '{"text": "x", "task": 10000000}'].join('\n'), 'data.jsonl');
    expect(performance.now() - start).toBeLessThan(1000);
    expect(dataset.problems).toEqual([{ line: 21, message: expect.stringMatching(/task 10000000 exceeds the largest id/) }]);
    expect(dataset.tasks).toEqual(['0', '1', '2']);
  });
});

describe('hang: catastrophic regular expressions from files (ReDoS)', () => {
  test('target_modules "(a+)+$" and "([a-z_.0-9]+)+X" in adapter_config.json: the loader finishes in < 1 s with a typed error', async () => {
    const model = AdaptedModel.create(base, { adapters: [lora()] });
    const peft = join(dir, 'redos-peft');
    await writePeftAdapter(peft, model.adapters.get('e0') as never, base);
    model.dispose();
    const config = JSON.parse(await readFile(join(peft, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    for (const regex of ['(a+)+$', '([a-z_.0-9]+)+X', '(.*.*)*x']) {
      await writeFile(join(peft, 'adapter_config.json'), JSON.stringify({ ...config, target_modules: regex }));
      const { error, ms } = await refused(() => readPeftAdapter(peft, base), CheckpointError);
      expect(error.message).toMatch(/no tensor .* belongs to a module that adapter_config.json targets/);
      expect(ms).toBeLessThan(1000);
    }
    // rank_pattern keys are regular expressions too.
    await writeFile(join(peft, 'adapter_config.json'), JSON.stringify({ ...config, rank_pattern: { '([a-z_.0-9]+)+X': 4 } }));
    const start = performance.now();
    const { instance } = await readPeftAdapter(peft, base);
    expect(performance.now() - start).toBeLessThan(1000);
    instance.dispose();
  });

  test('a /regex/ site entry or rankPattern key in a spec runs in linear time; lookaround is refused by name', async () => {
    const start = performance.now();
    await refused(() => AdaptedModel.create(base, { adapters: [lora({ targets: { sites: ['/([a-z.]+)+X/'] } })] }), ConfigError);
    await refused(() => AdaptedModel.create(base, { adapters: [lora({ rankPattern: { '/(a+)+$/': 4 } })] }), ConfigError);
    expect(performance.now() - start).toBeLessThan(1000);
    const { error } = await refused(() => AdaptedModel.create(base, { adapters: [lora({ targets: { sites: ['/(?=attn)attn.q/'] } })] }), ConfigError);
    expect(error.message).toMatch(/cannot be compiled by the linear-time regex engine/);
    expect(error.path).toBe('spec.adapters[0].targets.sites[0]');
  });
});

describe('path escape: paths in a manifest stay inside its directory', () => {
  let routed: string;
  let manifest: Record<string, unknown>;
  beforeAll(async () => {
    const model = AdaptedModel.create(base, { adapters: [lora()] });
    routed = join(dir, 'escape', 'routed');
    manifest = (await saveRoutedModel(routed, model)) as unknown as Record<string, unknown>;
    model.dispose();
    // A complete adapter outside the directory, which an escaping path would load.
    await mkdir(join(dir, 'escape', 'outside'), { recursive: true });
    await writePeftAdapter(join(dir, 'escape', 'outside', 'e0'), AdaptedModel.create(base, { adapters: [lora()] }).adapters.get('e0') as never, base);
  });

  const withPath = async (path: string): Promise<CheckpointError> => {
    await writeFile(join(routed, MANIFEST_FILE), JSON.stringify({ ...manifest, adapters: { e0: { path, format: 'peft' } } }));
    return (await refused(() => loadRoutedModel(routed, base), CheckpointError)).error;
  };

  test('"../…" is refused, naming the field and the path (was: followed outside, silently)', async () => {
    const error = await withPath('../../outside/e0');
    expect(error.message).toMatch(/adapters\.e0\.path "\.\.\/\.\.\/outside\/e0" leads outside the directory/);
  });

  test('an absolute path, and a symbolic link inside the directory that points out, are refused too', async () => {
    expect((await withPath(join(dir, 'escape', 'outside', 'e0'))).message).toMatch(/is an absolute path/);
    await symlink(join(dir, 'escape', 'outside'), join(routed, 'link-out'));
    expect((await withPath('link-out/e0')).message).toMatch(/is a symbolic link to .* outside the directory/);
    await writeFile(join(routed, MANIFEST_FILE), JSON.stringify({ ...manifest, routers: '../../outside/e0/adapter_model.safetensors' }));
    await refused(() => loadRoutedModel(routed, base), CheckpointError);
  });
});

describe('untyped errors → typed: sizes, recursion', () => {
  test('r = 1e9 or 2^31 is a ConfigError naming spec.adapters[0].r and the limit (was: RangeError: Invalid typed array length)', async () => {
    for (const r of [1e9, 2 ** 31]) {
      const { error, ms } = await refused(() => AdaptedModel.create(base, { adapters: [lora({ r })] }), ConfigError);
      expect(error.message).toMatch(/spec\.adapters\[0\]\.r: Too big: expected (int|number) to be <=65536/);
      expect(ms).toBeLessThan(1000);
    }
  });

  test('bottleneckDim 1e9, prefixLength 2^31 and a huge rankPattern value are ConfigErrors naming the field', async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ kind: 'bottleneck', name: 'b', bottleneckDim: 1e9 }, /adapters\[0\]\.bottleneckDim: Too big/],
      [{ kind: 'prefix', name: 'p', prefixLength: 2 ** 31 }, /adapters\[0\]\.prefixLength: Too big/],
      [{ kind: 'prefix', name: 'p', prefixLength: 100 }, /prefixLength 100, more than the model's context of 64 tokens/],
      [lora({ rankPattern: { 'attn.q': 2 ** 31 } }), /rankPattern\.attn\.q: Too big/],
    ];
    for (const [adapter, message] of cases) {
      const { error } = await refused(() => AdaptedModel.create(base, { adapters: [adapter] }), ConfigError);
      expect(error.message).toMatch(message);
    }
  });

  test('a rank within the field limit but too large for the model is refused before allocating, naming the parameter limit', async () => {
    const big = parseConfig(
      ModelConfig,
      {
        family: 'llama',
        vocabSize: 32000,
        dim: 8192,
        hiddenDim: 28672,
        nLayers: 80,
        nHeads: 64,
        nKvHeads: 8,
        maxSeqLen: 4096,
        normEps: 1e-5,
        tiedEmbeddings: false,
      },
      'config',
    );
    const spec = parseConfig(AdapterSpec, lora({ r: 65_536, targets: { sites: 'all-linear' } }), 'adapter');
    const { error } = await refused(() => createAdapter(spec, big, 0, 'spec.adapters[0]'), ConfigError);
    expect(error.message).toMatch(/more than the limit of 268435456/);
  });

  test('a composition nested 10,000 deep is a ConfigError (was: Maximum call stack size exceeded)', async () => {
    const { error, ms } = await refused(() => AdaptedModel.create(base, { adapters: [lora()], composition: deepComposition(10_000) }), ConfigError);
    expect(error.message).toMatch(/nested more than 64 levels deep/);
    expect(ms).toBeLessThan(1000);
  });

  test('a composition containing itself, or a DAG of 2^60 paths, is a ConfigError, fast', async () => {
    const cyclic = await refused(() => AdaptedModel.create(base, { adapters: [lora()], composition: cyclicComposition() }), ConfigError);
    expect(cyclic.error.message).toMatch(/contains itself \(a cycle\)/);
    const dag = await refused(() => AdaptedModel.create(base, { adapters: [lora()], composition: exponentialComposition(60) }), ConfigError);
    expect(dag.error.message).toMatch(/more than 10000 nodes/);
    expect(cyclic.ms + dag.ms).toBeLessThan(1000);
    // A per-call composition goes through the same schema.
    const model = AdaptedModel.create(base, { adapters: [lora()] });
    const perCall = await refused(() => model.forward({ ids: [[1, 2]], select: { composition: cyclicComposition() as never } }), ConfigError);
    expect(perCall.error.message).toMatch(/contains itself \(a cycle\)/);
    model.dispose();
  });

  test('a spec value nested 20,000 deep or cyclic is described in the error, not stringified to death', async () => {
    let deep: unknown = 1;
    for (let i = 0; i < 20_000; i++) deep = [deep];
    const cyclic: Record<string, unknown> = { kind: 'lora', name: 'e0' };
    cyclic['r'] = cyclic;
    await refused(() => AdaptedModel.create(base, { adapters: [lora({ r: deep })] }), ConfigError);
    const { error } = await refused(() => AdaptedModel.create(base, { adapters: [cyclic] }), ConfigError);
    expect(error.message).toMatch(/spec\.adapters\[0\]\.r/);
  });
});

describe('nonsense accepted → refused', () => {
  test('a rankPattern key that matches no site the adapter attaches to is a ConfigError naming the key', async () => {
    const { error } = await refused(() => AdaptedModel.create(base, { adapters: [lora({ rankPattern: { 'mlp.down': 4 } })] }), ConfigError);
    expect(error.message).toMatch(/rankPattern key "mlp.down" matches no site this adapter attaches to/);
    expect(error.hint).toMatch(/targets attn\.q, attn\.v in layers 0, 1/);
    await refused(() => AdaptedModel.create(base, { adapters: [lora({ alphaPattern: { 'layers.7.attn.q': 2 } })] }), ConfigError);
  });

  test('a model-level router readLayer beyond the last layer is a ConfigError from the spec check, AdaptedModel.create and loadRoutedModel', async () => {
    const spec = {
      adapters: [lora(), lora({ name: 'e1' })],
      composition: { kind: 'route', experts: ['e0', 'e1'], router: { kind: 'top-k', k: 1 }, placement: 'model', readLayer: 5 },
    };
    const { error } = await refused(() => checkSpecAgainstModel(parseAdaptedModelSpec(spec), base.config), ConfigError);
    expect(error.message).toMatch(/reads the hidden state entering layer 5, but the model has layers 0\.\.1/);
    // AdaptedModel.create runs the same check.
    const direct = await refused(() => AdaptedModel.create(base, spec, { routers }), ConfigError);
    expect(direct.error.message).toMatch(/layer 5/);
    // A manifest carrying such a spec is refused at load.
    const valid = { ...spec, composition: { ...spec.composition, readLayer: 1 } };
    const model = AdaptedModel.create(base, valid, { routers });
    const out = join(dir, 'readlayer');
    const manifest = await saveRoutedModel(out, model);
    model.dispose();
    await writeFile(join(out, MANIFEST_FILE), JSON.stringify({ ...manifest, spec }));
    await refused(() => loadRoutedModel(out, base, { routers }), ConfigError);
  });
});

describe('silent NaN → refused at load (with an opt-out)', () => {
  test('NaN in a PEFT adapter is a NonFiniteError naming the tensor and the index; allowNonFinite loads it', async () => {
    const model = AdaptedModel.create(base, { adapters: [lora({ init: 'random' })] });
    const peft = join(dir, 'nan-peft');
    await writePeftAdapter(peft, model.adapters.get('e0') as never, base);
    model.dispose();
    const tensor = 'base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight';
    await poke(join(peft, 'adapter_model.safetensors'), tensor, 3, Number.NaN);
    const { error } = await refused(() => readPeftAdapter(peft, base), NonFiniteError);
    expect(error.tensor).toBe(tensor);
    expect(error.index).toBe(3);
    expect(error.message).toMatch(/holds NaN at flat index 3/);
    const { instance } = await readPeftAdapter(peft, base, { allowNonFinite: true });
    instance.dispose();
  });

  test('±Infinity in a routed model (router weights) is refused by loadRoutedModel', async () => {
    const spec = { adapters: [lora(), lora({ name: 'e1' })], composition: { kind: 'route', experts: ['e0', 'e1'], router: { kind: 'top-k', k: 1 } } };
    const model = AdaptedModel.create(base, spec, { routers });
    const out = join(dir, 'inf-routed');
    await saveRoutedModel(out, model);
    model.dispose();
    const file = join(out, 'routers.safetensors');
    const [first] = (await readSafetensorsFile(file)).entries.keys();
    await poke(file, first as string, 0, Number.NEGATIVE_INFINITY);
    const { error } = await refused(() => loadRoutedModel(out, base, { routers }), NonFiniteError);
    expect(error.message).toMatch(/-Infinity at flat index 0/);
    const loaded = await loadRoutedModel(out, base, { routers, allowNonFinite: true });
    loaded.model.dispose();
  });

  test('a base model whose weights hold NaN is refused (opt-out: allowNonFinite)', async () => {
    const checkpoint = tinyLlamaCheckpoint();
    const embed = checkpoint.tensors.get('model.embed_tokens.weight');
    if (embed === undefined) throw new Error('no embedding');
    embed.values[7] = Number.NaN;
    const path = join(dir, 'nan-base');
    await writeHfModelDir(path, checkpoint);
    const { error } = await refused(() => loadBaseModel(path), NonFiniteError);
    expect(error.tensor).toBe('model.embed_tokens.weight');
    const loaded = await loadBaseModel(path, { allowNonFinite: true });
    loaded.model.dispose();
  });
});

describe('smaller cases', () => {
  test('a manifest whose r / alpha disagree with its PEFT adapter files is a CheckpointError', async () => {
    const model = AdaptedModel.create(base, { adapters: [lora()] });
    const out = join(dir, 'disagree');
    const manifest = await saveRoutedModel(out, model);
    model.dispose();
    const spec = manifest.spec as { adapters: Record<string, unknown>[] };
    await writeFile(join(out, MANIFEST_FILE), JSON.stringify({ ...manifest, spec: { ...spec, adapters: [{ ...spec.adapters[0], alpha: 16 }] } }));
    const alpha = await refused(() => loadRoutedModel(out, base), CheckpointError);
    expect(alpha.error.message).toMatch(/the PEFT files give scale 2 .* but the manifest's spec gives 8/);
    await writeFile(join(out, MANIFEST_FILE), JSON.stringify({ ...manifest, spec: { ...spec, adapters: [{ ...spec.adapters[0], r: 4, alpha: 8 }] } }));
    const rank = await refused(() => loadRoutedModel(out, base), CheckpointError);
    expect(rank.error.message).toMatch(/the PEFT files hold rank 2, but the manifest's spec says 4/);
  });

  test('a learning rate of 1e30 is a ConfigError naming the limit (was: "succeeds" with the loss stuck at ln V)', async () => {
    const model = AdaptedModel.create(base, { adapters: [lora()] });
    const { error } = await refused(() => new Trainer(model, { optimizer: { lr: 1e30 } }), ConfigError);
    expect(error.message).toMatch(/optimizer\.lr: Too big: expected number to be <=1/);
    model.dispose();
  });

  test('duplicate keys in a safetensors header: the last one wins, as in the reference parser (documented in the README)', () => {
    const data = new Uint8Array([1, 2, 3, 4]);
    const header = '{"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}';
    const json = new TextEncoder().encode(header);
    const bytes = new Uint8Array(8 + json.length + data.length);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(json.length), true);
    bytes.set(json, 8);
    bytes.set(data, 8 + json.length);
    const file = parseSafetensors(bytes);
    expect(file.entries.size).toBe(1);
    expect(file.entries.get('t')?.shape).toEqual([4]);
  });
});
