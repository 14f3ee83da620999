// The real stories260K checkpoint (llama2.c format, GQA) end to end, on wasm and on cpu: greedy decoding
// from BOS reproduces the text documented in ../shared/models/README.md token for token, generation leaks
// no tensors, and KV-cached generation equals full recomputation (greedy and seeded top-k/top-p sampling).
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { selectBackend, type BackendName } from '../../src/backend.js';
import { generate, generateSteps } from '../../src/base/generate.js';
import { loadBaseModel } from '../../src/base/checkpoints/load-model.js';
import type { Transformer } from '../../src/base/transformer.js';
import { loadTokenizer, type Tokenizer } from '../../src/tokenizers/index.js';
import { expectNoLeak } from '../helpers/tensor-asserts.js';
import { SHARED_MODELS_SKIP_NOTE, hasSharedModels, sharedModelsReadmePath, stories260kPath, tok512Path } from '../helpers/tiny-models.js';

const BOS = 1;
const DOCUMENTED =
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. ' +
  'One day, she saw a big, red ball. She wanted to play with it, but it was too high.';

describe.skipIf(!hasSharedModels)(`stories260K.bin + tok512.bin (real checkpoint)${SHARED_MODELS_SKIP_NOTE}`, () => {
  let tokenizer: Tokenizer;
  let originalBackend: string;

  beforeAll(async () => {
    originalBackend = tf.getBackend();
    tokenizer = await loadTokenizer(tok512Path, { vocabSize: 512 });
  });

  afterAll(async () => {
    if (tf.getBackend() !== originalBackend) await tf.setBackend(originalBackend);
  });

  test('the expected text is the one documented in the README', () => {
    const readme = readFileSync(sharedModelsReadmePath, 'utf8').replace(/\s+/g, ' ');
    expect(readme).toContain(DOCUMENTED);
    expect(tokenizer.encode(DOCUMENTED).length).toBeGreaterThanOrEqual(60);
  });

  // The model is loaded separately per backend: tensors created on one backend would otherwise be moved
  // to the other on first use. The describes run one after the other; the file's afterAll restores the backend.
  const backends: readonly BackendName[] = ['wasm', 'cpu'];
  for (const backend of backends) {
    describe(`on the ${backend} backend`, () => {
      let model: Transformer;
      const recompute = backend === 'cpu' ? 16 : 40; // noCache recomputation is quadratic; cpu matmul is slow

      beforeAll(async () => {
        await selectBackend({ preference: backend });
        expect(tf.getBackend()).toBe(backend);
        const loaded = await loadBaseModel(stories260kPath);
        expect(loaded.format).toBe('llama2c');
        model = loaded.model;
      });

      afterAll(() => {
        model?.dispose();
      });

      test('has the documented architecture', () => {
        expect(model.config).toMatchObject({
          family: 'llama',
          dim: 64,
          hiddenDim: 172,
          nLayers: 5,
          nHeads: 8,
          nKvHeads: 4,
          vocabSize: 512,
          maxSeqLen: 512,
          tiedEmbeddings: true,
          bosId: 1,
          eosId: 2,
        });
      });

      test('greedy decoding from BOS reproduces the documented story token for token', () => {
        const [row] = generate(model, [[BOS]], { maxNewTokens: 70, temperature: 0, eosId: null });
        expect(row).toHaveLength(71);
        const expectedIds = [BOS, ...tokenizer.encode(DOCUMENTED)];
        expect(row?.slice(0, expectedIds.length)).toEqual(expectedIds);
        const text = tokenizer.decode(row ?? []);
        expect(text.startsWith(DOCUMENTED), `decoded text was ${JSON.stringify(text)}`).toBe(true);
      });

      test('repeated generate calls (and a consumer that stops early) leave numTensors unchanged', () => {
        expectNoLeak(() => {
          for (let i = 0; i < 3; i++) generate(model, [[BOS]], { maxNewTokens: 8, temperature: 0 });
          generate(model, [[BOS], [BOS, 403, 407]], { maxNewTokens: 5, temperature: 1, seed: 3, noCache: true });
          let steps = 0;
          for (const _ of generateSteps(model, [[BOS]], { maxNewTokens: 20, temperature: 0 })) {
            if (++steps === 4) break; // the generator's finally disposes the KV cache
          }
          expect(steps).toBe(4);
        });
      });

      test('KV-cached greedy generation equals noCache recomputation', () => {
        const prompts = [[BOS], [BOS, ...tokenizer.encode('Lily and Tom went to')]];
        const cached = generate(model, prompts, { maxNewTokens: recompute, temperature: 0, eosId: null });
        const recomputed = generate(model, prompts, { maxNewTokens: recompute, temperature: 0, eosId: null, noCache: true });
        expect(cached).toEqual(recomputed);
      });

      test('KV-cached seeded top-k/top-p sampling equals noCache recomputation, and repeats per seed', () => {
        const prompts = [[BOS, ...tokenizer.encode('The cat')]];
        const options = { maxNewTokens: recompute, temperature: 1, topK: 20, topP: 0.9, seed: 42, eosId: null } as const;
        const cached = generate(model, prompts, options);
        expect(generate(model, prompts, { ...options, noCache: true })).toEqual(cached);
        expect(generate(model, prompts, options)).toEqual(cached);
        const greedy = generate(model, prompts, { maxNewTokens: recompute, temperature: 0, eosId: null });
        expect(cached).not.toEqual(greedy); // the sampler really sampled (so the comparison above means something)
      });
    });
  }
});
