// MultimodalModel: training leaves the language model and the vision encoder byte-identical while the projector,
// the vision adapter and the language experts learn; routers see each token's modality and traces record it;
// vision sites are refused by name when they do not exist or are mixed with language sites; the encoder
// directory round-trips through its loader and refuses tensors it would not read; nothing leaks.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { listWeightTensors } from '../../src/base/weights.js';
import { CheckpointError, ConfigError } from '../../src/errors.js';
import { mapSource } from '../../src/formats/host-tensors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { MultimodalModel } from '../../src/model/multimodal-model.js';
import type { RoutingTraceEntry } from '../../src/routing/trace.js';
import { Trainer } from '../../src/train/trainer.js';
import { visionConfigFromHf } from '../../src/vision/encoder-config.js';
import { listVisionTensors } from '../../src/vision/encoder.js';
import { renderImageSpec } from '../../src/vision/image-spec.js';
import { buildVisionEncoder, loadVisionEncoder, saveVisionEncoder } from '../../src/vision/load-encoder.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { tinyLlama } from '../helpers/tiny-models.js';
import { TINY_VISION, tinyVisionEncoder, tinyVitTensors } from '../helpers/tiny-vision.js';

const routers = builtinRouters();
const lora = (name: string, sites: string[]) => ({ kind: 'lora', name, r: 2, alpha: 4, init: 'random', targets: { sites } });
const spec = {
  seed: 3,
  adapters: [lora('a', ['attn.q', 'attn.v']), lora('b', ['attn.q', 'attn.v']), lora('eye', ['vision.attn.q', 'vision.mlp.*'])],
  composition: { kind: 'route', experts: ['a', 'b'], router: { kind: 'top-k', k: 1 }, granularity: 'token', placement: 'layer', modalityFeature: true },
};
const images = [renderImageSpec({ kind: 'digit', digit: 3, colour: 'red', seed: 1 }), undefined];
const batch = {
  ids: [
    [1, 5, 6, 7],
    [1, 8, 9, 4],
  ],
  mask: [
    [1, 1, 1, 1],
    [1, 1, 1, 1],
  ],
  lossMask: [
    [0, 0, 1, 1],
    [0, 0, 1, 1],
  ],
  images,
};
const bytesOf = (tensors: readonly tf.Tensor[]): Buffer[] => tensors.map((t) => Buffer.from((t.dataSync() as Float32Array).slice().buffer));

describe('training a multimodal model', () => {
  test('the frozen parts stay byte-identical; projector, vision adapter, experts and routers all change; no tensor leaks', () => {
    const base = tinyLlama({ nLayers: 2 });
    const encoder = tinyVisionEncoder();
    const start = tf.memory().numTensors;
    const model = MultimodalModel.create(base, encoder, spec, { routers });
    const languageBefore = bytesOf(listWeightTensors(base.weights));
    const encoderBefore = bytesOf(listVisionTensors(encoder.weights));
    const named = model.namedVariables();
    expect([...named.keys()].some((n) => n.startsWith('projector/'))).toBe(true);
    expect([...named.keys()].some((n) => n.startsWith('vision/eye/'))).toBe(true);
    const initial = new Map([...named].map(([n, v]) => [n, bytesOf([v])[0] as Buffer]));
    const trainer = new Trainer(model, { optimizer: { lr: 1e-2 }, schedule: { warmupSteps: 0, totalSteps: 3 } });
    for (let step = 0; step < 3; step++) expect(trainer.step(batch).skipped).toBe(false);
    trainer.dispose();
    expect(bytesOf(listWeightTensors(base.weights))).toEqual(languageBefore);
    expect(bytesOf(listVisionTensors(encoder.weights))).toEqual(encoderBefore);
    const changed = (prefix: string) =>
      [...named].filter(([n]) => n.startsWith(prefix)).some(([n, v]) => !(bytesOf([v])[0] as Buffer).equals(initial.get(n) as Buffer));
    for (const prefix of ['projector/W1', 'projector/W2', 'vision/eye/', 'a/', 'b/', 'route0/']) expect(changed(prefix), prefix).toBe(true);
    model.dispose();
    expect(tf.memory().numTensors).toBe(start);
    encoder.dispose();
    base.dispose();
  });

  test('routers read the modality: traces mark image and text tokens, and generation with an image frees everything', () => {
    const base = tinyLlama({ nLayers: 2 });
    const encoder = tinyVisionEncoder();
    const model = MultimodalModel.create(base, encoder, spec, { routers });
    // A first call builds the routes' LoRA banks (kept for later calls); the second must free all it makes.
    model.generate([[1, 5]], { maxNewTokens: 1, images: [images[0]] });
    const start = tf.memory().numTensors;
    const trace: RoutingTraceEntry[] = [];
    const out = model.generate(
      [
        [1, 5],
        [1, 6, 7],
      ],
      { maxNewTokens: 3, temperature: 0, eosId: null, images, routing: { trace } },
    );
    expect(out.map((r) => r.length)).toEqual([5, 6]);
    expect(tf.memory().numTensors).toBe(start);
    const imageEntries = trace.filter((e) => e.modality === 'image');
    // Row 0 has an image of 4 tokens, routed at each of the 2 layers; row 1 has none.
    expect(imageEntries.length).toBe(2 * 4);
    expect(new Set(imageEntries.map((e) => e.batch))).toEqual(new Set([0]));
    expect(imageEntries.map((e) => e.token).sort()).toEqual([0, 0, 1, 1, 2, 2, 3, 3]);
    expect(trace.filter((e) => e.modality === 'text').length).toBeGreaterThan(0);
    // The modality feature changes the decision input: the router's gate has D + 2 rows.
    const gate = model.routes[0]?.routerList()[0]?.variables()[0];
    expect(gate?.shape[0]).toBe(base.config.dim + 2);
    model.dispose();
    encoder.dispose();
    base.dispose();
  });

  test('a sequence route pools the image with a routing mask written for the ids alone', () => {
    const base = tinyLlama({ nLayers: 1 });
    const encoder = tinyVisionEncoder();
    const sequenceSpec = { ...spec, composition: { ...spec.composition, granularity: 'sequence', placement: 'model' } };
    const model = MultimodalModel.create(base, encoder, sequenceSpec, { routers });
    const trainer = new Trainer(model, { optimizer: { lr: 1e-2 }, schedule: { warmupSteps: 0, totalSteps: 1 } });
    const routingMask = batch.lossMask.map((row) => row.map((l) => 1 - l));
    expect(trainer.step({ ...batch, routingMask }).skipped).toBe(false);
    trainer.dispose();
    model.dispose();
    encoder.dispose();
    base.dispose();
  });

  test('rows without images compute exactly what the language model computes on its own', () => {
    const base = tinyLlama({ nLayers: 2 });
    const encoder = tinyVisionEncoder();
    const model = MultimodalModel.create(base, encoder, { seed: 1, adapters: [lora('a', ['attn.q'])] }, { routers });
    const plain = model.language.forward({ ids: batch.ids });
    const noImages = model.forward({ ids: batch.ids, images: [undefined, undefined] });
    expectClose(noImages, plain, { atol: 0 });
    tf.dispose([plain, noImages]);
    model.dispose();
    encoder.dispose();
    base.dispose();
  });
});

describe('refusals', () => {
  const base = tinyLlama({ nLayers: 1 });
  const encoder = tinyVisionEncoder();
  afterAll(() => {
    encoder.dispose();
    base.dispose();
  });

  test('an unknown vision site is refused by name, listing the encoder sites', () => {
    expect(() => MultimodalModel.create(base, encoder, { adapters: [lora('a', ['attn.q']), lora('eye', ['vision.attn.x'])] })).toThrow(
      /"vision\.attn\.x" matches no site of the vision encoder.*spec\.adapters\[1\]\.targets\.sites\[0\].*vision\.attn\.q/,
    );
  });

  test('an adapter mixing vision and language sites is refused', () => {
    expect(() => MultimodalModel.create(base, encoder, { adapters: [lora('a', ['attn.q', 'vision.attn.q'])] })).toThrow(ConfigError);
  });

  test('a vision adapter in the composition is refused', () => {
    expect(() =>
      MultimodalModel.create(base, encoder, {
        adapters: [lora('a', ['attn.q']), lora('eye', ['vision.attn.q'])],
        composition: { kind: 'parallel', children: ['a', 'eye'] },
      }),
    ).toThrow(/vision adapter "eye" appears in the composition/);
  });

  test('an AdaptedModel given images refuses them instead of ignoring them', () => {
    const model = AdaptedModel.create(base, { adapters: [lora('a', ['attn.q'])] });
    expect(() => model.forward({ ids: [[1, 2]], images } as never)).toThrow(/no vision encoder/);
    model.dispose();
  });
});

describe('vision encoder directories', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  test('save then load gives the same encoder output', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vit-'));
    dirs.push(dir);
    const encoder = tinyVisionEncoder();
    await saveVisionEncoder(dir, encoder);
    const loaded = await loadVisionEncoder(dir);
    const image = [renderImageSpec({ kind: 'shapes', shape: 'triangle', colour: 'yellow', count: 2, seed: 4 })];
    const a = encoder.forward(image);
    const b = loaded.forward(image);
    expect(a.shape).toEqual([1, 4, TINY_VISION.dim]);
    expectClose(a, b, { atol: 0 });
    tf.dispose([a, b]);
    loaded.dispose();
    encoder.dispose();
  });

  test('a tensor the encoder would not read (a pooler) is refused by name', () => {
    const tensors = tinyVitTensors(7, { 'pooler.dense.weight': { shape: [8, 8], values: new Float32Array(64) } });
    expect(() => buildVisionEncoder(TINY_VISION, mapSource('vit-with-pooler', tensors))).toThrow(CheckpointError);
    expect(() => buildVisionEncoder(TINY_VISION, mapSource('vit-with-pooler', tensors))).toThrow(/pooler\.dense\.weight/);
  });

  test('config fields the encoder does not implement are refused by name', () => {
    const config = { model_type: 'vit', image_size: 24, patch_size: 12, hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 16 };
    expect(() => visionConfigFromHf({ ...config, hidden_act: 'relu' }, 'config.json')).toThrow(/hidden_act = "relu"/);
    expect(() => visionConfigFromHf({ ...config, num_channels: 1 }, 'config.json')).toThrow(/num_channels = 1/);
    expect(() => visionConfigFromHf({ ...config, model_type: 'clip_vision_model' }, 'config.json')).toThrow(/unsupported vision model_type/);
    expect(() => visionConfigFromHf({ ...config, patch_size: 7 }, 'config.json')).toThrow(/patch/);
  });
});
