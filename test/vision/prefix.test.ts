// The language model's prefix seam: embedding vectors before the ids take the first positions (RoPE or learned
// positions continue across prefix and text), generation with a prefix gives the same tokens with and without
// the KV cache, a row with a masked prefix computes what it computes without one, and bad prefixes are refused.
import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { generate } from '../../src/base/generate.js';
import type { Transformer } from '../../src/base/transformer.js';
import { ShapeError } from '../../src/errors.js';
import { expectClose, expectNoLeak } from '../helpers/tensor-asserts.js';
import { tinyGpt2, tinyLlama } from '../helpers/tiny-models.js';

const embedRows = (model: Transformer, rows: number[][]): tf.Tensor3D =>
  tf.tidy(
    () =>
      tf.reshape(tf.gather(model.weights.tokenEmbedding, tf.tensor1d(rows.flat(), 'int32')), [
        rows.length,
        rows[0]?.length ?? 0,
        model.config.dim,
      ]) as tf.Tensor3D,
  );

describe.each([
  ['llama', () => tinyLlama()],
  ['gpt2', () => tinyGpt2()],
])('%s', (_, build) => {
  test('a prefix of token embeddings computes what those tokens compute as ids: the same logits for the text after them', () => {
    const model = build();
    try {
      const head = [
        [3, 9, 4],
        [7, 1, 5],
      ];
      const text = [
        [2, 8, 6, 11],
        [4, 4, 10, 3],
      ];
      expectNoLeak(() => {
        const prefix = embedRows(model, head);
        const withPrefix = model.forward({ ids: text, prefix: { embeddings: prefix } }); // [B, 4, V]
        const whole = model.forward({ ids: head.map((h, b) => [...h, ...(text[b] as number[])]) }); // [B, 7, V]
        expect(withPrefix.shape).toEqual([2, 4, model.config.vocabSize]);
        const tail = tf.slice(whole, [0, 3, 0], [2, 4, model.config.vocabSize]);
        expectClose(withPrefix, tail, { atol: 1e-5 });
        tf.dispose([prefix, withPrefix, whole, tail]);
      });
    } finally {
      model.dispose();
    }
  });

  test('generation with a prefix: the KV cache gives the tokens of full recomputation, and frees everything', () => {
    const model = build();
    try {
      const prefix = embedRows(model, [
        [5, 6],
        [9, 2],
      ]);
      expectNoLeak(() => {
        const options = { maxNewTokens: 5, temperature: 0, eosId: null, prefix: { embeddings: prefix } };
        const cached = generate(model, [[1, 3, 4], [2]], options);
        const recomputed = generate(model, [[1, 3, 4], [2]], { ...options, noCache: true });
        expect(cached).toEqual(recomputed);
        expect(cached.map((r) => r.length)).toEqual([8, 6]);
      });
      prefix.dispose();
    } finally {
      model.dispose();
    }
  });

  test('a row whose prefix is masked out computes what it computes with no prefix', () => {
    const model = build();
    try {
      const prefix = embedRows(model, [
        [5, 6],
        [9, 2],
      ]);
      const ids = [
        [1, 3, 4],
        [2, 7, 8],
      ];
      const masked = model.forward({
        ids,
        prefix: {
          embeddings: prefix,
          mask: [
            [1, 1],
            [0, 0],
          ],
        },
      }); // [2, 3, V]
      const plain = model.forward({ ids: [ids[1] as number[]] }); // [1, 3, V]
      expectClose(tf.slice(masked, [1, 0, 0], [1, 3, model.config.vocabSize]), plain, { atol: 1e-5 });
      tf.dispose([prefix, masked, plain]);
    } finally {
      model.dispose();
    }
  });
});

test('a prefix of the wrong width, rows or length is a ShapeError naming prefix.embeddings', () => {
  const model = tinyLlama({ maxSeqLen: 8 });
  try {
    const wide = tf.zeros([1, 2, model.config.dim + 1]) as tf.Tensor3D;
    const rows = tf.zeros([2, 2, model.config.dim]) as tf.Tensor3D;
    const long = tf.zeros([1, 6, model.config.dim]) as tf.Tensor3D;
    expect(() => model.forward({ ids: [[1, 2]], prefix: { embeddings: wide } })).toThrow(ShapeError);
    expect(() => model.forward({ ids: [[1, 2]], prefix: { embeddings: rows } })).toThrow(/prefix\.embeddings/);
    expect(() => model.forward({ ids: [[1, 2, 3]], prefix: { embeddings: long } })).toThrow(/9 positions, beyond the model's maximum of 8/);
    expect(() => model.forward({ ids: [[1, 2]], prefix: { embeddings: tf.zeros([1, 2, model.config.dim]) as tf.Tensor3D, mask: [[1, 2]] } })).toThrow(
      /prefix mask/,
    );
    tf.dispose([wide, rows, long]);
  } finally {
    model.dispose();
  }
});
