// The one selection vocabulary (src/model/selection.ts) on AdaptedModel: every form selects what it says
// ({ adapter } = the adapter's composition, { combine } = the same static tree, 'base' = the bare base bit for
// bit, 'spec' = the default), what an AdaptedModel cannot serve is refused by name, and options of the former
// vocabulary are refused instead of silently ignored.
import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, test } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const base = tinyLlama();
const lora = (name: string) => ({ kind: 'lora', name, r: 2, init: 'random', targets: { sites: ['attn.q', 'mlp.down'] } });
const model = AdaptedModel.create(base, { seed: 7, adapters: [lora('a'), lora('b')], composition: { kind: 'parallel', children: ['a', 'b'] } });
const ids = [[1, 2, 3, 4, 5]];

function logits(options: Parameters<AdaptedModel['forward']>[0]): Float32Array {
  const out = model.forward(options);
  const values = out.dataSync() as Float32Array;
  out.dispose();
  return values;
}

afterAll(() => {
  model.dispose();
  base.dispose();
});

describe('selections on an AdaptedModel', () => {
  test("'base' is the bare base bit for bit, 'spec' (and no select) the model's composition", () => {
    const bare = base.forward({ ids });
    expect(Array.from(logits({ ids, select: 'base' }))).toEqual(Array.from(bare.dataSync()));
    bare.dispose();
    expect(Array.from(logits({ ids, select: 'spec' }))).toEqual(Array.from(logits({ ids })));
    expect(Array.from(logits({ ids }))).toEqual(Array.from(logits({ ids, select: { composition: { kind: 'parallel', children: ['a', 'b'] } } })));
  });

  test('{ adapter } and { combine } equal the composition trees they name', () => {
    expect(Array.from(logits({ ids, select: { adapter: 'a' } }))).toEqual(Array.from(logits({ ids, select: { composition: 'a' } })));
    const averaged = logits({ ids, select: { composition: { kind: 'average', children: ['a', 'b'], weights: [0.7, -0.2] } } });
    expect(Array.from(logits({ ids, select: { combine: 'average', adapters: ['a', 'b'], weights: [0.7, -0.2] } }))).toEqual(Array.from(averaged));
    // parallel with weights is a weighted sum: the same as average with those weights
    expectClose(logits({ ids, select: { combine: 'parallel', adapters: ['a', 'b'], weights: [0.7, -0.2] } }), averaged, { rtol: 0, atol: 0 });
    expect(Array.from(logits({ ids, select: { combine: 'stack', adapters: ['a', 'b'] } }))).toEqual(
      Array.from(logits({ ids, select: { composition: { kind: 'stack', children: ['a', 'b'] } } })),
    );
  });

  test('what an AdaptedModel cannot serve is refused by name', () => {
    expect(() => model.forward({ ids, select: { routed: 'moe' } })).toThrow(ConfigError);
    expect(() => model.forward({ ids, select: { routed: 'moe' } })).toThrow(/no routed targets.*select\.routed/s);
    expect(() => model.forward({ ids, select: { adapter: 'missing' } })).toThrow(/missing/);
    expect(() => model.forward({ ids, select: { combine: 'stack', adapters: ['a', 'b'], weights: [1, 1] } })).toThrow(/stack takes no weights/);
    expect(() => model.forward({ ids, select: 'none' as never })).toThrow(ConfigError);
  });

  test('options of the former vocabulary are refused, never ignored', () => {
    const start = tf.memory().numTensors;
    for (const loose of [
      { use: 'none' },
      { trace: [] },
      { taskIds: [0] },
      { fusion: false },
      { strategy: 'grouped' },
      { routingMask: [[1]] },
      { auxLosses: [] },
    ]) {
      expect(() => model.forward({ ids, ...(loose as object) } as Parameters<AdaptedModel['forward']>[0]), JSON.stringify(loose)).toThrow(ConfigError);
      expect(() => model.generate(ids, { maxNewTokens: 1, ...(loose as object) } as Parameters<AdaptedModel['generate']>[1]), JSON.stringify(loose)).toThrow(
        ConfigError,
      );
    }
    expect(() => model.forward({ ids, ...({ trace: [] } as object) } as Parameters<AdaptedModel['forward']>[0])).toThrow(/routing: \{ trace \}/);
    expect(tf.memory().numTensors).toBe(start);
  });
});
