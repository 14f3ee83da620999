// Many adapters resident on one base: add, replace and remove them at run time, choose per call.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { Transformer } from '../../src/base/transformer.js';
import { createAdapter } from '../../src/adapters/instance.js';
import { AdapterSpec } from '../../src/adapters/registry.js';
import { ConfigError } from '../../src/errors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const lora = (name: string) => ({ kind: 'lora' as const, name, r: 2, init: 'random' as const, targets: { sites: ['attn.q', 'attn.v'] } });

function logits(model: AdaptedModel, select: Parameters<AdaptedModel['forward']>[0]['select']): Float32Array {
  const out = model.forward({ ids: [[1, 2, 3]], select });
  const values = out.dataSync() as Float32Array;
  out.dispose();
  return values;
}

describe('resident adapters', () => {
  let base: Transformer;
  beforeAll(() => {
    base = tinyLlama();
  });
  afterAll(() => base.dispose());

  test('adapters added at run time are selectable per call, and the base is never reloaded', () => {
    const model = AdaptedModel.create(base, { adapters: [lora('a')] });
    const before = logits(model, 'base');
    model.addAdapter(lora('b'));
    model.addAdapter(lora('c'));
    expect([...model.adapters.keys()]).toEqual(['a', 'b', 'c']);
    expect(logits(model, { adapter: 'b' })).not.toEqual(logits(model, { adapter: 'c' }));
    expect(logits(model, { combine: 'parallel', adapters: ['a', 'c'] })).not.toEqual(logits(model, { adapter: 'a' }));
    expect(logits(model, 'base')).toEqual(before);
    expect(model.base).toBe(base);
    model.dispose();
  });

  test('replace swaps weights in place (routes included); remove frees the adapter; errors name what is resident', () => {
    const start = tf.memory().numTensors;
    const model = AdaptedModel.create(base, { adapters: [lora('a')] });
    model.addAdapter(lora('b'));
    const oldB = logits(model, { adapter: 'b' });
    const replacement = createAdapter(AdapterSpec.parse(lora('b')), base.config, 99, 'replacement');
    model.replaceAdapter(replacement);
    expect(logits(model, { adapter: 'b' })).not.toEqual(oldB);
    expect(() => model.addAdapter(lora('b'))).toThrow(/already resident/);
    expect(() => model.removeAdapter('a')).toThrow(/part of the model's spec/);
    model.removeAdapter('b');
    expect(() => logits(model, { adapter: 'b' })).toThrow(ConfigError);
    expect(() => logits(model, { adapter: 'b' })).toThrow(/Known adapters: a/);
    expect(() => model.removeAdapter('zzz')).toThrow(/Resident: a/);
    model.dispose();
    expect(tf.memory().numTensors).toBe(start);
  });

  test('a replacement attaching at different points is refused', () => {
    const model = AdaptedModel.create(base, { adapters: [lora('a')] });
    const other = createAdapter(AdapterSpec.parse({ kind: 'lora', name: 'a', targets: { sites: ['mlp.up'] } }), base.config, 1, 'other');
    expect(() => model.replaceAdapter(other)).toThrow(/attaches at different points/);
    other.dispose();
    model.dispose();
  });
});
