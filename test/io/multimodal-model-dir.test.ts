// The multimodal model directory: save → load gives the same logits with and without images (projector, vision
// adapter, language experts and routers all restored); another vision encoder (other shape or other weights),
// another base, a text-only routed directory and an edited manifest are refused by name; nothing leaks.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { CheckpointError } from '../../src/errors.js';
import { MULTIMODAL_MANIFEST_FILE, loadMultimodalModel, saveMultimodalModel } from '../../src/io/multimodal-model-dir.js';
import { saveRoutedModel } from '../../src/io/routed-model-dir.js';
import { MultimodalModel } from '../../src/model/multimodal-model.js';
import { renderImageSpec } from '../../src/vision/image-spec.js';
import { buildVisionEncoder } from '../../src/vision/load-encoder.js';
import { mapSource } from '../../src/formats/host-tensors.js';
import { tinyLlama } from '../helpers/tiny-models.js';
import { TINY_VISION, tinyVisionEncoder, tinyVitTensors } from '../helpers/tiny-vision.js';

const routers = builtinRouters();
const lora = (name: string, sites: string[]) => ({ kind: 'lora', name, r: 2, alpha: 4, init: 'random', targets: { sites } });
const spec = {
  seed: 5,
  adapters: [lora('a', ['attn.q', 'attn.v']), lora('b', ['attn.q', 'attn.v']), lora('eye', ['vision.attn.q', 'vision.mlp.*'])],
  composition: { kind: 'route', experts: ['a', 'b'], router: { kind: 'top-k', k: 1 }, granularity: 'token', placement: 'layer', modalityFeature: true },
  projector: { hidden: 12 },
};
const images = [renderImageSpec({ kind: 'shapes', shape: 'circle', colour: 'blue', count: 2, seed: 3 }), undefined];
const ids = [
  [1, 5, 6, 7],
  [1, 8, 9, 4],
];

/** Every trainable variable set to seeded noise, so a load that skipped any of them would show. */
function randomise(model: MultimodalModel): void {
  let seed = 40;
  for (const v of model.variables()) tf.tidy(() => v.assign(tf.randomNormal(v.shape, 0, 0.3, 'float32', seed++)));
}

function logits(model: MultimodalModel, withImages: boolean): Float32Array {
  const out = model.forward({ ids, ...(withImages ? { images } : {}) }); // [B, T, V]
  const values = (out.dataSync() as Float32Array).slice();
  out.dispose();
  return values;
}

describe('multimodal model directory', () => {
  const base = tinyLlama({ nLayers: 2 });
  const encoder = tinyVisionEncoder();
  let root: string;
  let dir: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'routed-peft-mm-dir-'));
    dir = join(root, 'model');
    const model = MultimodalModel.create(base, encoder, spec, { routers });
    randomise(model);
    await saveMultimodalModel(dir, model, { basePath: 'tiny-llama', visionPath: 'tiny-vit', tasks: ['count'] });
    model.dispose();
  });
  afterAll(async () => {
    encoder.dispose();
    base.dispose();
    await rm(root, { recursive: true, force: true });
  });

  test('save → load: the same logits with and without images, every variable restored, no leaks', async () => {
    const model = MultimodalModel.create(base, encoder, spec, { routers });
    randomise(model);
    await saveMultimodalModel(join(root, 'again'), model);
    const expected = [logits(model, true), logits(model, false)];
    const start = tf.memory().numTensors;
    const { model: loaded, manifest } = await loadMultimodalModel(join(root, 'again'), base, encoder, { routers });
    expect(manifest.format).toBe('routed-peft-multimodal');
    const saved = model.namedVariables();
    const names = [...loaded.namedVariables().keys()];
    expect(names).toEqual([...saved.keys()]);
    expect(names.some((n) => n.startsWith('projector/')) && names.some((n) => n.startsWith('vision/eye/')) && names.some((n) => n.startsWith('route0/'))).toBe(
      true,
    );
    expect(logits(loaded, true)).toEqual(expected[0]);
    expect(logits(loaded, false)).toEqual(expected[1]);
    loaded.dispose();
    expect(tf.memory().numTensors).toBe(start);
    model.dispose();
  });

  test('the manifest records both bases and the task names; language/ is a routed-model directory', async () => {
    const manifest = JSON.parse(await readFile(join(dir, MULTIMODAL_MANIFEST_FILE), 'utf8')) as Record<string, Record<string, unknown>>;
    expect(manifest['base']?.['path']).toBe('tiny-llama');
    expect(manifest['vision']?.['path']).toBe('tiny-vit');
    expect(manifest['vision']?.['sha256']).toMatch(/^[0-9a-f]{64}$/);
    expect(manifest['tasks']).toEqual(['count']);
    const language = JSON.parse(await readFile(join(dir, 'language', 'routed-peft.json'), 'utf8')) as { format: string };
    expect(language.format).toBe('routed-peft');
  });

  test('a vision encoder with other weights (same shape) is refused by name; nothing leaks', async () => {
    const other = tinyVisionEncoder(8);
    const start = tf.memory().numTensors;
    await expect(loadMultimodalModel(dir, base, other, { routers })).rejects.toThrow(/weights .* are not the ones the multimodal model was trained with/);
    expect(tf.memory().numTensors).toBe(start);
    other.dispose();
  });

  test('a vision encoder of another architecture is refused, naming the field', async () => {
    const tensors = tinyVitTensors(7);
    const config = { ...TINY_VISION, normEps: 1e-5 };
    const other = buildVisionEncoder(config, mapSource('tiny-vit-eps', tensors));
    await expect(loadMultimodalModel(dir, base, other, { routers })).rejects.toThrow(/normEps 0\.000001.*this encoder has 0\.00001/);
    other.dispose();
  });

  test('another language base is refused with a CheckpointError', async () => {
    const other = tinyLlama({ nLayers: 1 });
    await expect(loadMultimodalModel(dir, other, encoder, { routers })).rejects.toThrow(CheckpointError);
    await expect(loadMultimodalModel(dir, other, encoder, { routers })).rejects.toThrow(/nLayers 2.*this base has 1/);
    other.dispose();
  });

  test('a text-only routed-model directory is refused by name, saying what it is', async () => {
    const model = MultimodalModel.create(base, encoder, spec, { routers });
    await saveRoutedModel(join(root, 'text'), model.language);
    model.dispose();
    await expect(loadMultimodalModel(join(root, 'text'), base, encoder, { routers })).rejects.toThrow(
      /no routed-peft-multimodal\.json.*text-only routed model/,
    );
  });

  test('an unknown manifest field and a path out of the directory are refused', async () => {
    const manifestPath = join(dir, MULTIMODAL_MANIFEST_FILE);
    const original = await readFile(manifestPath, 'utf8');
    const manifest = JSON.parse(original) as Record<string, unknown>;
    try {
      await writeFile(manifestPath, JSON.stringify({ ...manifest, cache: 'vision-features.bin' }));
      await expect(loadMultimodalModel(dir, base, encoder, { routers })).rejects.toThrow(/cache/);
      await writeFile(manifestPath, JSON.stringify({ ...manifest, variables: '../elsewhere.safetensors' }));
      await expect(loadMultimodalModel(dir, base, encoder, { routers })).rejects.toThrow(/leads outside the directory/);
    } finally {
      await writeFile(manifestPath, original);
    }
  });
});
