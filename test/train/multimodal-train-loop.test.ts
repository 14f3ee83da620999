// trainFromDataset and evaluateDataset on a MultimodalModel (demo model + demo vision encoder): dataset rows'
// images reach the forward (a row's image changes its loss), the frozen language model and vision encoder are
// byte-identical after training while the trainable parts change, nothing leaks; an AdaptedModel refuses
// image rows by name, and multimodal training checkpoints are refused by name.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { loadBaseModel } from '../../src/base/checkpoints/load-model.js';
import type { Transformer } from '../../src/base/transformer.js';
import { listWeightTensors } from '../../src/base/weights.js';
import { demoModelDir } from '../../src/demo/run-demo.js';
import { demoVisionDir } from '../../src/demo/run-multimodal-demo.js';
import { DatasetError } from '../../src/train/dataset-errors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { MultimodalModel } from '../../src/model/multimodal-model.js';
import { loadTokenizer } from '../../src/tokenizers/load-tokenizer.js';
import type { Tokenizer } from '../../src/tokenizers/tokenizer.js';
import { parseJsonlDataset } from '../../src/train/dataset.js';
import { evaluateDataset } from '../../src/train/evaluate.js';
import { trainFromDataset } from '../../src/train/train-loop.js';
import { type VisionEncoder, listVisionTensors } from '../../src/vision/encoder.js';
import { loadVisionEncoder } from '../../src/vision/load-encoder.js';

const routers = builtinRouters();
const lora = (name: string, sites: string[]) => ({ kind: 'lora', name, r: 2, alpha: 4, targets: { sites } });
const spec = {
  seed: 2,
  adapters: [lora('a', ['attn.q', 'attn.v']), lora('b', ['attn.q', 'attn.v']), lora('eye', ['vision.attn.q'])],
  composition: { kind: 'route', experts: ['a', 'b'], router: { kind: 'top-k', k: 1 }, granularity: 'token', placement: 'layer', modalityFeature: true },
};
const lines = [
  { prompt: 'count?', completion: '3', image: { kind: 'shapes', shape: 'circle', colour: 'red', count: 3, seed: 1 } },
  { prompt: 'colour?', completion: 'blue', image: { kind: 'digit', digit: 4, colour: 'blue', seed: 2 } },
  { prompt: 'digit?', completion: '7', image: { kind: 'digit', digit: 7, colour: 'green', seed: 3 } },
  { prompt: 'abc', completion: 'd' },
];
const dataset = parseJsonlDataset(lines.map((l) => JSON.stringify(l)).join('\n'), 'images.jsonl');
const bytesOf = (tensors: readonly tf.Tensor[]): Buffer[] => tensors.map((t) => Buffer.from((t.dataSync() as Float32Array).slice().buffer));

describe('the training loop and evaluation with images', () => {
  let base: Transformer;
  let encoder: VisionEncoder;
  let tokenizer: Tokenizer;
  beforeAll(async () => {
    base = (await loadBaseModel(demoModelDir())).model;
    encoder = await loadVisionEncoder(demoVisionDir());
    tokenizer = await loadTokenizer(demoModelDir());
  });
  afterAll(() => {
    encoder.dispose();
    base.dispose();
  });

  test('images reach the forward; training changes only the trainable parts; no tensor leaks', async () => {
    const start = tf.memory().numTensors;
    const model = MultimodalModel.create(base, encoder, spec, { routers });
    const languageBefore = bytesOf(listWeightTensors(base.weights));
    const encoderBefore = bytesOf(listVisionTensors(encoder.weights));
    const before = new Map([...model.namedVariables()].map(([n, v]) => [n, bytesOf([v])[0] as Buffer]));
    const first = await evaluateDataset({ model, tokenizer, dataset, batchSize: 4, maxNewTokens: 1 });
    // The same rows without their images score differently: the images are read, not dropped.
    const textOnly = parseJsonlDataset(lines.map(({ image: _, ...l }) => JSON.stringify(l)).join('\n'), 'text.jsonl');
    const withoutImages = await evaluateDataset({ model, tokenizer, dataset: textOnly, batchSize: 4, maxNewTokens: 0 });
    expect(withoutImages.loss).not.toBeCloseTo(first.loss as number, 4);

    const result = await trainFromDataset({ model, tokenizer, dataset, steps: 3, batchSize: 2, maxLength: 16, trainer: { optimizer: { lr: 1e-2 } } });
    expect(result.summary.appliedSteps).toBe(3);
    expect(bytesOf(listWeightTensors(base.weights))).toEqual(languageBefore);
    expect(bytesOf(listVisionTensors(encoder.weights))).toEqual(encoderBefore);
    const changed = (prefix: string): boolean =>
      [...model.namedVariables()].some(([n, v]) => n.startsWith(prefix) && !(bytesOf([v])[0] as Buffer).equals(before.get(n) as Buffer));
    for (const prefix of ['projector/', 'vision/eye/', 'a/', 'route0/']) expect(changed(prefix), prefix).toBe(true);
    const after = await evaluateDataset({ model, tokenizer, dataset, batchSize: 4, maxNewTokens: 1 });
    expect(after.loss).not.toBe(first.loss);
    model.dispose();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('an AdaptedModel refuses image rows by name, in training and in evaluation', async () => {
    const model = AdaptedModel.create(base, { adapters: [lora('a', ['attn.q'])] });
    await expect(trainFromDataset({ model, tokenizer, dataset, steps: 1, batchSize: 2, maxLength: 16 })).rejects.toThrow(DatasetError);
    await expect(evaluateDataset({ model, tokenizer, dataset, batchSize: 2 })).rejects.toThrow(
      /images\.jsonl: line 1 carries an "image", but the model has no vision encoder/,
    );
    model.dispose();
  });

  test('multimodal training checkpoints are refused by name', async () => {
    const model = MultimodalModel.create(base, encoder, spec, { routers });
    await expect(trainFromDataset({ model, tokenizer, dataset, steps: 1, batchSize: 2, maxLength: 16, checkpointDir: '/nonexistent' })).rejects.toThrow(
      /checkpointDir: training checkpoints of a multimodal model are not implemented/,
    );
    model.dispose();
  });
});
