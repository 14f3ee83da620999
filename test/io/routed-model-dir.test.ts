// The routed-model directory: save → load restores every variable (LoRA experts through PEFT files, other
// kinds and routers natively), the base is checked, and malformed directories are typed errors.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import type { Transformer } from '../../src/base/transformer.js';
import { CheckpointError } from '../../src/errors.js';
import { loadRoutedModel, saveRoutedModel } from '../../src/io/routed-model-dir.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { tinyGpt2, tinyLlama } from '../helpers/tiny-models.js';

const routers = builtinRouters();
const spec = {
  seed: 1,
  adapters: [
    { kind: 'lora', name: 'e0', r: 2, targets: { sites: ['attn.q', 'attn.v'] } },
    { kind: 'lora', name: 'e1', r: 3, rslora: true, targets: { sites: ['attn.q', 'attn.v'] } },
    { kind: 'bottleneck', name: 'b', placement: 'houlsby' },
    { kind: 'ia3', name: 'i' },
  ],
  composition: { kind: 'stack', children: [{ kind: 'route', experts: ['e0', 'e1', 'b'], router: { kind: 'top-k', k: 2 }, nullExpert: true }, 'i'] },
};

function randomise(model: AdaptedModel): void {
  let seed = 100;
  for (const v of model.variables()) tf.tidy(() => v.assign(tf.randomNormal(v.shape, 0, 0.3, 'float32', seed++)));
}

function logits(model: AdaptedModel): Float32Array {
  const out = model.forward({
    ids: [
      [1, 2, 3, 4],
      [5, 6, 7, 8],
    ],
  });
  const values = out.dataSync() as Float32Array;
  out.dispose();
  return values;
}

describe.each([
  ['llama', tinyLlama],
  ['gpt2', tinyGpt2],
] as const)('routed-model directory on tiny %s', (family, make) => {
  let base: Transformer;
  let dir: string;
  beforeAll(async () => {
    base = make();
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-dir-'));
  });
  afterAll(async () => {
    base.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  test('save → load restores every variable and the same outputs; no leaks', async () => {
    const start = tf.memory().numTensors;
    const model = AdaptedModel.create(base, spec, { routers });
    randomise(model);
    const expected = logits(model);
    await saveRoutedModel(join(dir, 'm'), model, { basePath: 'tiny' });
    const manifest = JSON.parse(await readFile(join(dir, 'm', 'routed-peft.json'), 'utf8')) as { adapters: Record<string, { format: string }> };
    // gpt2's fused c_attn cannot hold a PEFT LoRA on q and v only: such experts are saved natively.
    const loraFormat = family === 'llama' ? 'peft' : 'native';
    expect(manifest.adapters).toMatchObject({ e0: { format: loraFormat }, e1: { format: loraFormat }, b: { format: 'native' }, i: { format: 'native' } });
    const { model: loaded } = await loadRoutedModel(join(dir, 'm'), base, { routers });
    expect(logits(loaded)).toEqual(expected);
    const before = [...model.namedVariables()].map(([n, v]) => [n, Array.from(v.dataSync())]);
    const after = [...loaded.namedVariables()].map(([n, v]) => [n, Array.from(v.dataSync())]);
    expect(after).toEqual(before);
    model.dispose();
    loaded.dispose();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('saving over an existing directory replaces it; loading on a different base is refused', async () => {
    const model = AdaptedModel.create(base, spec, { routers });
    await saveRoutedModel(join(dir, 'm2'), model);
    randomise(model);
    await saveRoutedModel(join(dir, 'm2'), model);
    const { model: loaded } = await loadRoutedModel(join(dir, 'm2'), base, { routers });
    expect(logits(loaded)).toEqual(logits(model));
    loaded.dispose();
    model.dispose();
    const other = make({ dim: 24 } as never);
    await expect(loadRoutedModel(join(dir, 'm2'), other, { routers })).rejects.toThrow(/built for a base with dim 16, but this base has 24/);
    other.dispose();
  });

  test('a missing manifest, a tampered router file and a bad manifest are CheckpointErrors', async () => {
    await expect(loadRoutedModel(join(dir, 'nothing'), base, { routers })).rejects.toThrow(CheckpointError);
    const model = AdaptedModel.create(base, spec, { routers });
    await saveRoutedModel(join(dir, 'm3'), model);
    model.dispose();
    await writeFile(join(dir, 'm3', 'routers.safetensors'), Buffer.from('garbage!'));
    await expect(loadRoutedModel(join(dir, 'm3'), base, { routers })).rejects.toThrow(CheckpointError);
    await writeFile(join(dir, 'm3', 'routed-peft.json'), '{"format": "something-else"}');
    await expect(loadRoutedModel(join(dir, 'm3'), base, { routers })).rejects.toThrow(/routed-peft.json/);
  });
});
