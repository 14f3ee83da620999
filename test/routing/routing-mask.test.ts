// routingMask: sequence-level routers pool only the marked tokens. Training on prompt + completion in one
// forward with the prompt marked must route exactly as serving does (prompt prefill, then the completion on
// the KV cache), for every placement; without the mask the answer leaks into the decision. makeBatches
// marks the prompt of prompt/completion rows.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import type { Transformer } from '../../src/base/transformer.js';
import { ShapeError } from '../../src/errors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { makeBatches, type TokenizedExample } from '../../src/train/batches.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const routers = builtinRouters();
const expert = (name: string) => ({ kind: 'lora', name, r: 2, alpha: 4, init: 'random', targets: { sites: ['attn.q', 'attn.v', 'mlp.down'] } });

// Two rows: prompts left-padded to 4, completions right-padded to 3.
const prompt = [
  [0, 5, 9, 2],
  [3, 7, 1, 8],
];
const promptMask = [
  [0, 1, 1, 1],
  [1, 1, 1, 1],
];
const completion = [
  [6, 4, 0],
  [2, 9, 11],
];
const completionMask = [
  [1, 1, 0],
  [1, 1, 1],
];
const ids = prompt.map((row, b) => [...row, ...(completion[b] as number[])]);
const mask = promptMask.map((row, b) => [...row, ...(completionMask[b] as number[])]);
const routingMask = promptMask.map((row) => [...row, 0, 0, 0]);

function values(t: tf.Tensor): number[] {
  const out = [...t.dataSync()];
  t.dispose();
  return out;
}

/** Logits at the real completion positions only, [rows][positions][V] flattened. */
function completionLogits(logits: number[], vocab: number, width: number, offset: number): number[] {
  const out: number[] = [];
  completionMask.forEach((row, b) =>
    row.forEach((m, t) => {
      if (m === 1) out.push(...logits.slice((b * width + offset + t) * vocab, (b * width + offset + t + 1) * vocab));
    }),
  );
  return out;
}

describe('routingMask', () => {
  let base: Transformer;
  beforeAll(() => {
    base = tinyLlama();
  });
  afterAll(() => base.dispose());

  for (const placement of ['site', 'layer', 'model'] as const) {
    test(`one forward with the prompt marked = prompt prefill then completion on the cache (${placement} routers)`, () => {
      const spec = {
        seed: 5,
        adapters: [0, 1, 2].map((i) => expert(`e${i}`)),
        composition: { kind: 'route', experts: ['e0', 'e1', 'e2'], router: { kind: 'top-k', k: 2 }, granularity: 'sequence', placement },
      };
      const model = AdaptedModel.create(base, spec, { routers });
      const vocab = base.config.vocabSize;
      model.forward({ ids, mask }).dispose(); // builds the fused LoRA matrices the model keeps between inference forwards
      const start = tf.memory().numTensors;

      const cache = base.newCache(2);
      model.forward({ ids: prompt, mask: promptMask, cache }).dispose();
      const served = completionLogits(values(model.forward({ ids: completion, mask: completionMask, cache })), vocab, 3, 0);
      cache.dispose();

      const marked = completionLogits(values(model.forward({ ids, mask, routing: { routingMask } })), vocab, 7, 4);
      const unmarked = completionLogits(values(model.forward({ ids, mask })), vocab, 7, 4);
      expect(tf.memory().numTensors).toBe(start);

      expect(marked).toHaveLength(served.length);
      marked.forEach((v, i) => expect(v).toBeCloseTo(served[i] as number, 4));
      // Without the mask the completion tokens are pooled into the decision: it routes differently.
      expect(Math.max(...unmarked.map((v, i) => Math.abs(v - (served[i] as number))))).toBeGreaterThan(1e-3);
      model.dispose();
    });
  }

  test('the same decisions in the trace: one per sequence, equal to the prefill decision', () => {
    const spec = {
      seed: 2,
      adapters: [0, 1, 2, 3].map((i) => expert(`e${i}`)),
      composition: { kind: 'route', experts: ['e0', 'e1', 'e2', 'e3'], router: { kind: 'soft' }, granularity: 'sequence', placement: 'model' },
    };
    const model = AdaptedModel.create(base, spec, { routers });
    const prefill: NonNullable<Parameters<AdaptedModel['forward']>[0]['routing']>['trace'] = [];
    const cache = base.newCache(2);
    model.forward({ ids: prompt, mask: promptMask, cache, routing: { trace: prefill } }).dispose();
    cache.dispose();
    const whole: NonNullable<typeof prefill> = [];
    model.forward({ ids, mask, routing: { routingMask, trace: whole } }).dispose();
    const firstOf = (entries: NonNullable<typeof prefill>, b: number) => entries.find((e) => e.batch === b && e.token === 0);
    for (const b of [0, 1]) {
      const a = firstOf(prefill ?? [], b);
      const w = firstOf(whole, b);
      expect(w?.experts).toEqual(a?.experts);
      w?.weights.forEach((x, k) => expect(x).toBeCloseTo(a?.weights[k] ?? NaN, 5));
    }
    model.dispose();
  });

  test('a routing mask of the wrong shape is a ShapeError naming both shapes, and changes nothing', () => {
    const spec = {
      adapters: [expert('e0'), expert('e1')],
      composition: { kind: 'route', experts: ['e0', 'e1'], router: { kind: 'top-k', k: 1 }, granularity: 'sequence' },
    };
    const model = AdaptedModel.create(base, spec, { routers });
    const start = tf.memory().numTensors;
    expect(() => model.forward({ ids, mask, routing: { routingMask: [[1, 1, 1]] } })).toThrow(ShapeError);
    expect(() =>
      model.forward({
        ids,
        mask,
        routing: {
          routingMask: [
            [1, 1, 1],
            [1, 1, 1],
          ],
        },
      }),
    ).toThrow(/routingMask must be \[2, 7\].*2 rows of lengths 3/);
    expect(tf.memory().numTensors).toBe(start);
    model.dispose();
  });
});

describe('makeBatches marks what routers may read', () => {
  test('prompt/completion rows: their prompt (BOS included); text rows: every real token; padding: never', () => {
    const examples: TokenizedExample[] = [
      { ids: [1, 5, 6, 7, 8], lossMask: [0, 0, 0, 1, 1], promptLength: 3 },
      { ids: [1, 9, 4], lossMask: [0, 1, 1] },
    ];
    const [batch] = makeBatches(examples, { batchSize: 2, shuffle: false, padSide: 'left', padId: 0 });
    expect(batch?.routingMask).toEqual([
      [1, 1, 1, 0, 0],
      [0, 0, 1, 1, 1],
    ]);
    const [plain] = makeBatches([examples[1] as TokenizedExample], { batchSize: 1, shuffle: false });
    expect(plain?.routingMask).toBeUndefined();
  });
});
