// PEFT LoRA adapter directories: a hand-built fixture in PEFT's documented format loads (unknown config
// fields warned about, values and deltas exact); our writer's names and config fields match PEFT's
// literally; write → read round trips are exact; bad inputs are typed errors naming the file; nothing leaks.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { ModuleContext } from '../../src/adapters/adapter.js';
import { LoraModule } from '../../src/adapters/lora/index.js';
import { AdapterSpec } from '../../src/adapters/registry.js';
import { seededRandom } from '../../src/base/sampling.js';
import type { SiteName } from '../../src/base/sites.js';
import type { Transformer } from '../../src/base/transformer.js';
import { createAdapter, type AdapterInstance } from '../../src/adapters/instance.js';
import { CheckpointError, ConfigError } from '../../src/errors.js';
import { peftTargetsToSites, readPeftAdapter, writePeftAdapter } from '../../src/io/peft-adapter.js';
import { parseSafetensors, decodeFloat32, serializeSafetensors } from '../../src/formats/safetensors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { tinyGpt2, tinyLlama } from '../helpers/tiny-models.js';

const ids = [
  [1, 5, 9, 3, 7],
  [2, 0, 1, 4, 6],
];

let tmp: string;
let counter = 0;
let llama: Transformer;
let gpt2: Transformer;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'peft-adapter-'));
  llama = tinyLlama(); // D 16, 4 heads, 2 kv heads (k/v out 8), FFN 40, 2 layers
  gpt2 = tinyGpt2(); // D 16, FFN 64, 2 layers
});

afterAll(async () => {
  llama.dispose();
  gpt2.dispose();
  await rm(tmp, { recursive: true, force: true });
});

function freshDir(label: string): string {
  counter += 1;
  return join(tmp, `${label}-${counter}`);
}

function random(seed: number, n: number, scale = 0.5): Float32Array {
  const next = seededRandom(seed);
  return Float32Array.from({ length: n }, () => scale * (2 * next() - 1));
}

interface FixtureTensor {
  readonly shape: number[];
  readonly data: Float32Array;
}

/** Writes an adapter directory by hand, exactly as PEFT lays it out (not with our writer). */
async function writeFixture(dir: string, config: unknown, tensors: Record<string, FixtureTensor>): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'adapter_config.json'), JSON.stringify(config, null, 2));
  const entries = new Map(Object.entries(tensors).map(([name, t]) => [name, { dtype: 'F32' as const, shape: t.shape, data: t.data }]));
  await writeFile(join(dir, 'adapter_model.safetensors'), serializeSafetensors(entries, { format: 'pt' }));
}

/** s · (x·Aᵀ)·Bᵀ by plain loops: x [N, I], A [r, I], B [O, r] → [N, O]. */
function manualDelta(x: Float32Array, n: number, a: Float32Array, b: Float32Array, r: number, inF: number, outF: number, s: number): Float32Array {
  const out = new Float32Array(n * outF);
  for (let row = 0; row < n; row++) {
    const down = new Float64Array(r);
    for (let j = 0; j < r; j++) for (let i = 0; i < inF; i++) down[j] = (down[j] as number) + (x[row * inF + i] as number) * (a[j * inF + i] as number);
    for (let o = 0; o < outF; o++) {
      let sum = 0;
      for (let j = 0; j < r; j++) sum += (down[j] as number) * (b[o * r + j] as number);
      out[row * outF + o] = s * sum;
    }
  }
  return out;
}

const context = { training: false } as unknown as ModuleContext;

function moduleDelta(module: LoraModule, x: Float32Array, n: number): Float32Array {
  const inF = module.a.shape[1];
  return tf
    .tidy(() => {
      const input = tf.tensor2d(x, [n, inF]);
      return module.delta(input, input, context).dataSync() as Float32Array;
    })
    .slice();
}

function logits(model: AdaptedModel, adapter: string): Float32Array {
  const out = model.forward({ ids, select: { adapter } });
  const values = (out.dataSync() as Float32Array).slice();
  out.dispose();
  return values;
}

function baseLogits(base: Transformer): Float32Array {
  const out = base.forward({ ids });
  const values = (out.dataSync() as Float32Array).slice();
  out.dispose();
  return values;
}

function loraAt(instance: AdapterInstance, layer: number, site: string): LoraModule {
  const module = instance.module(layer, { kind: 'site-output', site: site as SiteName });
  if (!(module instanceof LoraModule)) throw new Error(`no LoRA at layer ${layer} ${site}`);
  return module;
}

function makeAdapter(base: Transformer, spec: Record<string, unknown>, seed = 7): AdapterInstance {
  return createAdapter(AdapterSpec.parse({ kind: 'lora', init: 'random', ...spec }), base.config, seed, 'test');
}

async function expectError<E extends Error>(promise: Promise<unknown>, type: new (...args: never[]) => E): Promise<E> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(type);
    return error as E;
  }
  throw new Error('expected an error');
}

// ---------------------------------------------------------------------------------------------------------
// (1) A fixture in PEFT's documented format

/** A PEFT 0.17-style adapter_config.json: every field PEFT writes, including ones we do not know. */
function fixtureConfig(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    alpha_pattern: { v_proj: 16 },
    auto_mapping: null,
    base_model_name_or_path: 'tiny-llama',
    bias: 'none',
    corda_config: null,
    eva_config: null,
    exclude_modules: null,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: 8,
    lora_bias: false,
    lora_dropout: 0.05,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    peft_type: 'LORA',
    qalora_group_size: 16,
    r: 4,
    rank_pattern: { 'model.layers.1.self_attn.v_proj': 2 },
    revision: null,
    target_modules: ['v_proj', 'q_proj'],
    task_type: 'CAUSAL_LM',
    trainable_token_indices: null,
    use_dora: false,
    use_qalora: false,
    use_rslora: false,
    ...overrides,
  };
}

const UNKNOWN_FIELDS = [
  'corda_config',
  'eva_config',
  'exclude_modules',
  'layer_replication',
  'loftq_config',
  'lora_bias',
  'megatron_config',
  'megatron_core',
  'qalora_group_size',
  'trainable_token_indices',
  'use_qalora',
];

/** Tensors of the fixture: q (r 4) and v (r 4 in layer 0, r 2 in layer 1 via rank_pattern) in both layers. */
function fixtureTensors(): Record<string, FixtureTensor> {
  const t: Record<string, FixtureTensor> = {};
  let seed = 100;
  for (const layer of [0, 1]) {
    const p = `base_model.model.model.layers.${layer}.self_attn`;
    const rv = layer === 1 ? 2 : 4;
    t[`${p}.q_proj.lora_A.weight`] = { shape: [4, 16], data: random(seed++, 4 * 16) };
    t[`${p}.q_proj.lora_B.weight`] = { shape: [16, 4], data: random(seed++, 16 * 4) };
    t[`${p}.v_proj.lora_A.weight`] = { shape: [rv, 16], data: random(seed++, rv * 16) };
    t[`${p}.v_proj.lora_B.weight`] = { shape: [8, rv], data: random(seed++, 8 * rv) };
  }
  return t;
}

describe('a PEFT adapter built by hand in PEFT format', () => {
  test('loads with a warning per unknown config field; values, ranks and scales are the fixture', async () => {
    const dir = freshDir('fixture');
    const tensors = fixtureTensors();
    await writeFixture(dir, fixtureConfig({ some_future_field: { x: 1 } }), tensors);
    const { instance, warnings, config } = await readPeftAdapter(dir, llama, { name: 'fixture' });
    try {
      for (const field of [...UNKNOWN_FIELDS, 'some_future_field']) {
        expect(warnings.filter((w) => w.includes(`"${field}"`))).toHaveLength(1);
      }
      expect(warnings.every((w) => w.includes('adapter_config.json'))).toBe(true);
      expect(config.r).toBe(4);
      expect(config.base_model_name_or_path).toBe('tiny-llama');
      expect(instance.name).toBe('fixture');
      expect([...instance.modules.keys()].sort()).toEqual(['0|attn.q', '0|attn.v', '1|attn.q', '1|attn.v']);
      const scales: Record<string, number> = { '0|attn.q': 2, '0|attn.v': 4, '1|attn.q': 2, '1|attn.v': 8 };
      for (const layer of [0, 1]) {
        for (const [site, hf] of [
          ['attn.q', 'q_proj'],
          ['attn.v', 'v_proj'],
        ] as const) {
          const module = loraAt(instance, layer, site);
          const a = tensors[`base_model.model.model.layers.${layer}.self_attn.${hf}.lora_A.weight`] as FixtureTensor;
          const b = tensors[`base_model.model.model.layers.${layer}.self_attn.${hf}.lora_B.weight`] as FixtureTensor;
          expect(module.a.shape).toEqual(a.shape);
          expect(module.b.shape).toEqual(b.shape);
          expect(Array.from(module.a.dataSync())).toEqual(Array.from(a.data));
          expect(Array.from(module.b.dataSync())).toEqual(Array.from(b.data));
          expect(module.scale).toBe(scales[`${layer}|${site}`]);
          expect(module.dropout).toBe(0.05);
        }
      }
    } finally {
      instance.dispose();
    }
  });

  test("the loaded delta at a site is s·B·A·x by hand, and the model's logits equal a hand-assigned adapter's", async () => {
    const dir = freshDir('fixture');
    const tensors = fixtureTensors();
    await writeFixture(dir, fixtureConfig(), tensors);
    const { instance } = await readPeftAdapter(dir, llama, { name: 'fixture' });
    const model = AdaptedModel.create(llama, {
      adapters: [
        {
          kind: 'lora',
          name: 'hand',
          r: 4,
          alpha: 8,
          targets: { sites: ['attn.q', 'attn.v'] },
          rankPattern: { 'layers.1.attn.v': 2 },
          alphaPattern: { 'attn.v': 16 },
        },
      ],
    });
    model.addAdapter(instance);
    try {
      // One site by hand: layer 1 v_proj, r = 2 (rank_pattern), alpha 16 (alpha_pattern) → s = 8.
      const x = random(7, 3 * 16, 1);
      const a = tensors['base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight'] as FixtureTensor;
      const b = tensors['base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight'] as FixtureTensor;
      const expected = manualDelta(x, 3, a.data, b.data, 2, 16, 8, 16 / 2);
      const actual = moduleDelta(loraAt(instance, 1, 'attn.v'), x, 3);
      for (let i = 0; i < expected.length; i++) expect(actual[i]).toBeCloseTo(expected[i] as number, 5);

      // The whole model: the same values assigned by hand to the sites the keys name.
      const hand = model.adapters.get('hand') as AdapterInstance;
      for (const layer of [0, 1]) {
        for (const [site, hf] of [
          ['attn.q', 'q_proj'],
          ['attn.v', 'v_proj'],
        ] as const) {
          const module = loraAt(hand, layer, site);
          const key = `base_model.model.model.layers.${layer}.self_attn.${hf}`;
          const ta = tensors[`${key}.lora_A.weight`] as FixtureTensor;
          const tb = tensors[`${key}.lora_B.weight`] as FixtureTensor;
          tf.tidy(() => {
            module.a.assign(tf.tensor2d(ta.data, ta.shape as [number, number]));
            module.b.assign(tf.tensor2d(tb.data, tb.shape as [number, number]));
          });
        }
      }
      const loaded = logits(model, 'fixture');
      expect(loaded).not.toEqual(baseLogits(llama));
      expect(loaded).toEqual(logits(model, 'hand'));
    } finally {
      model.dispose();
    }
  });

  test('keys without the base_model.model. prefix and with an adapter name (lora_A.default.weight) load the same', async () => {
    const dir = freshDir('renamed');
    const tensors = fixtureTensors();
    const renamed: Record<string, FixtureTensor> = {};
    for (const [key, value] of Object.entries(tensors)) {
      renamed[key.replace('base_model.model.', '').replace(/\.lora_([AB])\.weight$/, '.lora_$1.default.weight')] = value;
    }
    await writeFixture(dir, fixtureConfig(), renamed);
    const { instance } = await readPeftAdapter(dir, llama);
    try {
      const module = loraAt(instance, 1, 'attn.v');
      const a = tensors['base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight'] as FixtureTensor;
      expect(Array.from(module.a.dataSync())).toEqual(Array.from(a.data));
      expect(instance.name).toMatch(/^renamed-\d+$/);
    } finally {
      instance.dispose();
    }
  });

  test('a fused gpt2 c_attn LoRA (shared A) becomes q, k, v modules with A copied and B split by rows', async () => {
    const dir = freshDir('gpt2-fused');
    const a = random(11, 4 * 16);
    const b = random(12, 48 * 4);
    await writeFixture(
      dir,
      { peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['c_attn'], fan_in_fan_out: true, bias: 'none', task_type: 'CAUSAL_LM' },
      {
        'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight': { shape: [4, 16], data: a },
        'base_model.model.transformer.h.0.attn.c_attn.lora_B.weight': { shape: [48, 4], data: b },
        'base_model.model.transformer.h.1.attn.c_attn.lora_A.weight': { shape: [4, 16], data: a },
        'base_model.model.transformer.h.1.attn.c_attn.lora_B.weight': { shape: [48, 4], data: b },
      },
    );
    const { instance, warnings } = await readPeftAdapter(dir, gpt2);
    try {
      expect(warnings).toEqual([]);
      const x = random(13, 2 * 16, 1);
      const fused = manualDelta(x, 2, a, b, 4, 16, 48, 2); // [2, 48] = q | k | v
      ['attn.q', 'attn.k', 'attn.v'].forEach((site, i) => {
        const module = loraAt(instance, 0, site);
        expect(Array.from(module.a.dataSync())).toEqual(Array.from(a));
        expect(Array.from(module.b.dataSync())).toEqual(Array.from(b.slice(i * 16 * 4, (i + 1) * 16 * 4)));
        expect(module.scale).toBe(2);
        const delta = moduleDelta(module, x, 2);
        for (let row = 0; row < 2; row++) {
          for (let o = 0; o < 16; o++) expect(delta[row * 16 + o]).toBeCloseTo(fused[row * 48 + i * 16 + o] as number, 5);
        }
      });
      // Writing it back gives PEFT's compact form: the same tensors.
      const out = freshDir('gpt2-fused-out');
      await writePeftAdapter(out, instance, gpt2);
      const file = parseSafetensors(new Uint8Array(await readFile(join(out, 'adapter_model.safetensors'))));
      const back = (name: string): number[] => Array.from(decodeFloat32(file.entries.get(name) as never));
      expect(back('base_model.model.transformer.h.0.attn.c_attn.lora_A.weight')).toEqual(Array.from(a));
      expect(back('base_model.model.transformer.h.0.attn.c_attn.lora_B.weight')).toEqual(Array.from(b));
      const config = JSON.parse(await readFile(join(out, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      expect(config['r']).toBe(4);
      expect(config['lora_alpha']).toBe(8);
    } finally {
      instance.dispose();
    }
  });

  test('tensors of modules the config does not target are skipped with a warning, as PEFT ignores them', async () => {
    const dir = freshDir('untargeted');
    await writeFixture(dir, fixtureConfig({ target_modules: ['q_proj'], alpha_pattern: {}, rank_pattern: {}, layers_to_transform: [1] }), {
      ...Object.fromEntries(Object.entries(fixtureTensors()).filter(([k]) => !k.includes('layers.1.self_attn.v_proj'))),
    });
    const { instance, warnings } = await readPeftAdapter(dir, llama);
    try {
      expect([...instance.modules.keys()]).toEqual(['1|attn.q']);
      expect(warnings.filter((w) => w.includes('skipped'))).toHaveLength(2); // layer 0 q_proj, layer 0 v_proj
    } finally {
      instance.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// (2) What our writer writes, checked literally against PEFT's format

describe('writePeftAdapter output', () => {
  test('llama: PEFT key names, shapes, metadata, and exactly the LoraConfig fields PEFT writes (sorted, indent 2)', async () => {
    const adapter = makeAdapter(llama, { name: 'w', r: 4, alpha: 8, targets: { sites: ['attn.q', 'attn.v'] } });
    const dir = freshDir('llama-out');
    try {
      const result = await writePeftAdapter(dir, adapter, llama, { baseModelName: 'tiny-llama' });
      const text = await readFile(join(dir, 'adapter_config.json'), 'utf8');
      const config = JSON.parse(text) as Record<string, unknown>;
      expect(config).toEqual({
        alpha_pattern: {},
        auto_mapping: null,
        base_model_name_or_path: 'tiny-llama',
        bias: 'none',
        fan_in_fan_out: false,
        inference_mode: true,
        init_lora_weights: true,
        layers_pattern: null,
        layers_to_transform: null,
        lora_alpha: 8,
        lora_dropout: 0,
        modules_to_save: null,
        peft_type: 'LORA',
        r: 4,
        rank_pattern: {},
        revision: null,
        target_modules: ['q_proj', 'v_proj'],
        task_type: 'CAUSAL_LM',
        use_dora: false,
        use_rslora: false,
      });
      expect(Object.keys(config)).toEqual(Object.keys(config).sort());
      expect(text).toBe(JSON.stringify(config, null, 2));
      expect(result.config).toEqual(config);

      const file = parseSafetensors(new Uint8Array(await readFile(join(dir, 'adapter_model.safetensors'))));
      expect(file.metadata).toEqual({ format: 'pt' });
      const shapes = Object.fromEntries([...file.entries].map(([name, e]) => [name, [...e.shape]]));
      expect(shapes).toEqual({
        'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': [4, 16],
        'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': [16, 4],
        'base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight': [4, 16],
        'base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight': [8, 4],
        'base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight': [4, 16],
        'base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight': [16, 4],
        'base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight': [4, 16],
        'base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight': [8, 4],
      });
      expect(result.tensorNames).toEqual(Object.keys(shapes));
      for (const e of file.entries.values()) expect(e.dtype).toBe('F32');
      const q1 = loraAt(adapter, 1, 'attn.q');
      expect(Array.from(decodeFloat32(file.entries.get('base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight') as never))).toEqual(
        Array.from(q1.b.dataSync()),
      );
    } finally {
      adapter.dispose();
    }
  });

  test('llama: a layer subset is layers_to_transform; per-site ranks and alphas are rank_pattern / alpha_pattern by module path', async () => {
    const adapter = makeAdapter(llama, {
      name: 'w',
      r: 4,
      alpha: 8,
      rslora: true,
      targets: { sites: ['attn.q', 'mlp.down'], layers: [1] },
      rankPattern: { 'mlp.down': 2 },
      alphaPattern: { 'mlp.down': 3 },
    });
    const dir = freshDir('llama-pattern');
    try {
      const { config } = await writePeftAdapter(dir, adapter, llama);
      expect(config).toMatchObject({
        r: 4,
        lora_alpha: 8,
        use_rslora: true,
        target_modules: ['q_proj', 'down_proj'],
        layers_to_transform: [1],
        rank_pattern: { 'model.layers.1.mlp.down_proj': 2 },
        alpha_pattern: { 'model.layers.1.mlp.down_proj': 3 },
        base_model_name_or_path: null,
      });
    } finally {
      adapter.dispose();
    }
  });

  test('gpt2: c_attn keys, fan_in_fan_out true, q/k/v fused as a rank-3r block-diagonal LoRA with the same scale', async () => {
    const adapter = makeAdapter(gpt2, { name: 'g', r: 2, alpha: 4, targets: { sites: ['attn.q', 'attn.k', 'attn.v', 'mlp.up'], layers: [1] } });
    const dir = freshDir('gpt2-out');
    try {
      const { config } = await writePeftAdapter(dir, adapter, gpt2);
      expect(config).toEqual({
        alpha_pattern: { 'transformer.h.1.mlp.c_fc': 4 },
        auto_mapping: null,
        base_model_name_or_path: null,
        bias: 'none',
        fan_in_fan_out: true,
        inference_mode: true,
        init_lora_weights: true,
        layers_pattern: null,
        layers_to_transform: [1],
        lora_alpha: 12, // 3·alpha at rank 3r keeps s = alpha / r = 2
        lora_dropout: 0,
        modules_to_save: null,
        peft_type: 'LORA',
        r: 6,
        rank_pattern: { 'transformer.h.1.mlp.c_fc': 2 },
        revision: null,
        target_modules: ['c_attn', 'c_fc'],
        task_type: 'CAUSAL_LM',
        use_dora: false,
        use_rslora: false,
      });
      const file = parseSafetensors(new Uint8Array(await readFile(join(dir, 'adapter_model.safetensors'))));
      const shapes = Object.fromEntries([...file.entries].map(([name, e]) => [name, [...e.shape]]));
      expect(shapes).toEqual({
        'base_model.model.transformer.h.1.attn.c_attn.lora_A.weight': [6, 16],
        'base_model.model.transformer.h.1.attn.c_attn.lora_B.weight': [48, 6],
        'base_model.model.transformer.h.1.mlp.c_fc.lora_A.weight': [2, 16],
        'base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight': [64, 2],
      });
      // PEFT's computation on the fused module, s' = lora_alpha / r = 12 / 6, equals our q | k | v deltas.
      const a = decodeFloat32(file.entries.get('base_model.model.transformer.h.1.attn.c_attn.lora_A.weight') as never);
      const b = decodeFloat32(file.entries.get('base_model.model.transformer.h.1.attn.c_attn.lora_B.weight') as never);
      const x = random(21, 3 * 16, 1);
      const fused = manualDelta(x, 3, a, b, 6, 16, 48, 12 / 6);
      ['attn.q', 'attn.k', 'attn.v'].forEach((site, i) => {
        const delta = moduleDelta(loraAt(adapter, 1, site), x, 3);
        for (let row = 0; row < 3; row++) {
          for (let o = 0; o < 16; o++) expect(fused[row * 48 + i * 16 + o]).toBeCloseTo(delta[row * 16 + o] as number, 5);
        }
      });
    } finally {
      adapter.dispose();
    }
  });

  test('gpt2: only one of attn.o / mlp.down makes target_modules a full regex (c_proj is ambiguous in PEFT)', async () => {
    const adapter = makeAdapter(gpt2, { name: 'o', r: 2, alpha: 4, targets: { sites: ['attn.o'] } });
    const dir = freshDir('gpt2-regex');
    try {
      const { config } = await writePeftAdapter(dir, adapter, gpt2);
      const regex = config['target_modules'] as string;
      expect(typeof regex).toBe('string');
      expect(config['layers_to_transform']).toBeNull();
      const fullMatch = (path: string): boolean => new RegExp(`^(?:${regex})$`).test(path);
      expect(fullMatch('transformer.h.0.attn.c_proj')).toBe(true);
      expect(fullMatch('transformer.h.1.attn.c_proj')).toBe(true);
      expect(fullMatch('transformer.h.0.mlp.c_proj')).toBe(false);
      expect(fullMatch('transformer.h.0.attn.c_attn')).toBe(false);
      expect(peftTargetsToSites(regex, 'gpt2')).toEqual(['attn.o']);
      const { instance } = await readPeftAdapter(dir, gpt2);
      expect([...instance.modules.keys()]).toEqual(['0|attn.o', '1|attn.o']);
      instance.dispose();
    } finally {
      adapter.dispose();
    }
  });

  test('gpt2: q, k, v adapted partly, or with different ranks, cannot be written (one LoRA on the fused c_attn)', async () => {
    const partial = makeAdapter(gpt2, { name: 'p', targets: { sites: ['attn.q', 'attn.v'] } });
    const ranks = makeAdapter(gpt2, { name: 'k', targets: { sites: ['attn.q', 'attn.k', 'attn.v'] }, rankPattern: { 'attn.k': 2 } });
    try {
      const e1 = await expectError(writePeftAdapter(freshDir('bad'), partial, gpt2), ConfigError);
      expect(e1.message).toMatch(/not attn\.k.*c_attn/);
      const e2 = await expectError(writePeftAdapter(freshDir('bad'), ranks, gpt2), ConfigError);
      expect(e2.message).toMatch(/one rank and one alpha/);
    } finally {
      partial.dispose();
      ranks.dispose();
    }
  });

  test('only LoRA adapters are written', async () => {
    const ia3 = createAdapter(AdapterSpec.parse({ kind: 'ia3', name: 'i' }), llama.config, 1, 'test');
    try {
      await expectError(writePeftAdapter(freshDir('ia3'), ia3, llama), ConfigError);
    } finally {
      ia3.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// (3) write → read round trips

describe.each([
  [
    'llama all-linear, rsLoRA, rank and alpha patterns',
    () => llama,
    { r: 4, alpha: 6, rslora: true, targets: { sites: 'all-linear' }, rankPattern: { 'attn.v': 2 }, alphaPattern: { 'layers.1.mlp.down': 3 } },
  ],
  ['llama q/v in one layer', () => llama, { r: 3, alpha: 5, targets: { sites: ['attn.q', 'attn.v'], layers: [1] } }],
  ['gpt2 all-linear, rsLoRA, per-site rank', () => gpt2, { r: 4, alpha: 8, rslora: true, targets: { sites: 'all-linear' }, rankPattern: { 'mlp.up': 2 } }],
  ['gpt2 q/k/v/o in one layer', () => gpt2, { r: 2, alpha: 16, targets: { sites: ['attn.q', 'attn.k', 'attn.v', 'attn.o'], layers: [0] } }],
] as const)('round trip: %s', (_label, getBase, spec) => {
  test('identical variables, ranks, scales, spec and logits', async () => {
    const base = getBase();
    const model = AdaptedModel.create(base, { seed: 5, adapters: [{ kind: 'lora', name: 'orig', init: 'random', ...spec }] });
    const original = model.adapters.get('orig') as AdapterInstance;
    const dir = freshDir('roundtrip');
    await writePeftAdapter(dir, original, base);
    const { instance, warnings } = await readPeftAdapter(dir, base, { name: 'loaded' });
    model.addAdapter(instance);
    try {
      expect(warnings).toEqual([]);
      expect([...instance.modules.keys()].sort()).toEqual([...original.modules.keys()].sort());
      for (const [key, m] of original.modules) {
        const o = m as LoraModule;
        const l = instance.modules.get(key) as LoraModule;
        expect(l.rank).toBe(o.rank);
        expect(l.scale).toBe(o.scale);
        expect(l.a.shape).toEqual(o.a.shape);
        expect(Array.from(l.a.dataSync())).toEqual(Array.from(o.a.dataSync()));
        expect(Array.from(l.b.dataSync())).toEqual(Array.from(o.b.dataSync()));
      }
      const o = original.spec;
      const l = instance.spec;
      if (o.kind !== 'lora' || l.kind !== 'lora') throw new Error('not LoRA');
      expect({ r: l.r, alpha: l.alpha, rslora: l.rslora, rankPattern: l.rankPattern, alphaPattern: l.alphaPattern }).toEqual({
        r: o.r,
        alpha: o.alpha,
        rslora: o.rslora,
        rankPattern: o.rankPattern,
        alphaPattern: o.alphaPattern,
      });
      const before = logits(model, 'orig');
      expect(before).not.toEqual(baseLogits(base));
      expect(logits(model, 'loaded')).toEqual(before);
    } finally {
      model.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// (4) Errors

describe('readPeftAdapter errors', () => {
  const weights = (dir: string): string => join(dir, 'adapter_model.safetensors');
  const configFile = (dir: string): string => join(dir, 'adapter_config.json');

  test('a tensor whose shape does not fit the base: names the key and both shapes', async () => {
    const dir = freshDir('shape');
    const tensors = fixtureTensors();
    tensors['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'] = { shape: [4, 15], data: random(1, 60) };
    await writeFixture(dir, fixtureConfig(), tensors);
    const error = await expectError(readPeftAdapter(dir, llama), CheckpointError);
    expect(error.path).toBe(weights(dir));
    expect(error.message).toContain('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight');
    expect(error.message).toContain('[4, 15]');
    expect(error.message).toContain('[4, 16]');
  });

  test('a rank that disagrees with r / rank_pattern, and a wrong out width of lora_B', async () => {
    const dir = freshDir('rank');
    const tensors = fixtureTensors();
    tensors['base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight'] = { shape: [2, 16], data: random(1, 32) };
    await writeFixture(dir, fixtureConfig(), tensors);
    const e1 = await expectError(readPeftAdapter(dir, llama), CheckpointError);
    expect(e1.message).toMatch(/v_proj\.lora_A\.weight.*\[2, 16\].*\[4, 16\]/);

    const dir2 = freshDir('out-width');
    const tensors2 = fixtureTensors();
    tensors2['base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight'] = { shape: [16, 4], data: random(1, 64) };
    await writeFixture(dir2, fixtureConfig(), tensors2);
    const e2 = await expectError(readPeftAdapter(dir2, llama), CheckpointError);
    expect(e2.message).toMatch(/v_proj\.lora_B\.weight.*\[16, 4\].*\[8, 4\]/);
    expect(e2.path).toBe(weights(dir2));
  });

  test.each([
    ['base_model.model.model.layers.0.self_attn.rotary_emb.lora_A.weight'],
    ['base_model.model.lm_head.lora_A.weight'],
    ['base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector'],
    ['base_model.model.model.layers.0.self_attn.q_proj.bias'],
  ])('an unknown key is an error naming it: %s', async (key) => {
    const dir = freshDir('unknown');
    await writeFixture(dir, fixtureConfig(), { ...fixtureTensors(), [key]: { shape: [4, 16], data: random(1, 64) } });
    const error = await expectError(readPeftAdapter(dir, llama), CheckpointError);
    expect(error.path).toBe(weights(dir));
    expect(error.message).toContain(JSON.stringify(key));
  });

  test('a layer the base does not have, and lora_A without lora_B', async () => {
    const dir = freshDir('layer');
    await writeFixture(dir, fixtureConfig(), {
      ...fixtureTensors(),
      'base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight': { shape: [4, 16], data: random(1, 64) },
    });
    const e1 = await expectError(readPeftAdapter(dir, llama), CheckpointError);
    expect(e1.message).toMatch(/layers\.5.*2 layers/);

    const dir2 = freshDir('no-b');
    const tensors = fixtureTensors();
    delete tensors['base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight'];
    await writeFixture(dir2, fixtureConfig(), tensors);
    const e2 = await expectError(readPeftAdapter(dir2, llama), CheckpointError);
    expect(e2.path).toBe(weights(dir2));
    expect(e2.message).toContain('"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" has no matching lora_B');
  });

  test.each([
    ['peft_type "IA3"', { peft_type: 'IA3' }, /"IA3" adapter, not LoRA/],
    ['no peft_type', { peft_type: undefined }, /no "peft_type"/],
    ['use_dora true', { use_dora: true }, /DoRA/],
    ['bias "all"', { bias: 'all' }, /bias = "all"/],
    ['modules_to_save', { modules_to_save: ['lm_head'] }, /modules_to_save/],
    ['layer_replication set', { layer_replication: [[0, 2]] }, /layer_replication/],
    ['lora_bias true', { lora_bias: true }, /lora_bias/],
    ['r not an integer', { r: 'four' }, /r: /],
  ])('config with %s is a CheckpointError at adapter_config.json', async (_label, overrides, message) => {
    const dir = freshDir('config');
    await writeFixture(dir, fixtureConfig(overrides), fixtureTensors());
    const error = await expectError(readPeftAdapter(dir, llama), CheckpointError);
    expect(error.path).toBe(configFile(dir));
    expect(error.message).toMatch(message);
  });

  test('IA3 error carries the hint that only LoRA is supported', async () => {
    const dir = freshDir('ia3');
    await writeFixture(dir, { peft_type: 'IA3', target_modules: ['k_proj'] }, {});
    const error = await expectError(readPeftAdapter(dir, llama), CheckpointError);
    expect(error.hint).toMatch(/Only LoRA adapters/);
  });

  test('missing directory, missing adapter_config.json, missing or pickle-only weights, invalid JSON', async () => {
    const missing = freshDir('missing');
    const e1 = await expectError(readPeftAdapter(missing, llama), CheckpointError);
    expect(e1.path).toBe(missing);

    const noConfig = freshDir('no-config');
    await writeFixture(noConfig, fixtureConfig(), fixtureTensors());
    await rm(configFile(noConfig));
    const e2 = await expectError(readPeftAdapter(noConfig, llama), CheckpointError);
    expect(e2.path).toBe(configFile(noConfig));

    const noWeights = freshDir('no-weights');
    await writeFixture(noWeights, fixtureConfig(), fixtureTensors());
    await rm(weights(noWeights));
    const e3 = await expectError(readPeftAdapter(noWeights, llama), CheckpointError);
    expect(e3.path).toBe(weights(noWeights));

    await writeFile(join(noWeights, 'adapter_model.bin'), 'pickle');
    const e4 = await expectError(readPeftAdapter(noWeights, llama), CheckpointError);
    expect(e4.hint).toMatch(/pickle/);

    const badJson = freshDir('bad-json');
    await writeFixture(badJson, fixtureConfig(), fixtureTensors());
    await writeFile(configFile(badJson), '{ "peft_type": ');
    const e5 = await expectError(readPeftAdapter(badJson, llama), CheckpointError);
    expect(e5.path).toBe(configFile(badJson));
  });
});

describe('peftTargetsToSites', () => {
  test('maps PEFT module names to sites per family, as PEFT matches them', () => {
    expect(peftTargetsToSites(['v_proj', 'q_proj'], 'llama')).toEqual(['attn.q', 'attn.v']);
    expect(peftTargetsToSites(['model.layers.1.mlp.down_proj', 'gate_proj'], 'llama')).toEqual(['mlp.gate', 'mlp.down']);
    expect(peftTargetsToSites(['c_attn'], 'gpt2')).toEqual(['attn.q', 'attn.k', 'attn.v']);
    expect(peftTargetsToSites(['c_proj'], 'gpt2')).toEqual(['attn.o', 'mlp.down']);
    expect(peftTargetsToSites('all-linear', 'gpt2')).toEqual(['attn.q', 'attn.k', 'attn.v', 'attn.o', 'mlp.up', 'mlp.down']);
    expect(peftTargetsToSites('.*\\.self_attn\\.(q|k)_proj', 'llama')).toEqual(['attn.q', 'attn.k']);
  });

  test('an entry that matches nothing is a ConfigError naming it', () => {
    expect(() => peftTargetsToSites(['q_proj', 'lm_head'], 'llama')).toThrow(ConfigError);
    expect(() => peftTargetsToSites(['q_proj', 'lm_head'], 'llama')).toThrow(/"lm_head"/);
    expect(() => peftTargetsToSites(['q_proj'], 'gpt2')).toThrow(/c_attn/);
  });
});

// ---------------------------------------------------------------------------------------------------------
// (5) Memory

describe('memory', () => {
  test('write, read, dispose and failed reads leave no tensors behind', async () => {
    const start = tf.memory().numTensors;
    const adapter = makeAdapter(gpt2, { name: 'm', r: 2, alpha: 4, targets: { sites: 'all-linear' } });
    const dir = freshDir('memory');
    await writePeftAdapter(dir, adapter, gpt2);
    const { instance } = await readPeftAdapter(dir, gpt2);
    instance.dispose();
    adapter.dispose();
    expect(tf.memory().numTensors).toBe(start);

    const bad = freshDir('memory-bad');
    const tensors = fixtureTensors();
    tensors['base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight'] = { shape: [16, 3], data: random(1, 48) };
    await writeFixture(bad, fixtureConfig(), tensors);
    await expectError(readPeftAdapter(bad, llama), CheckpointError);
    expect(tf.memory().numTensors).toBe(start);
  });
});
