// Per-forward routing state lives in a RoutingPass that every forward releases, whether it succeeded or threw:
// the Transformer calls `release` in both cases, and after it the model's hooks hold no decision of that
// forward (a group call outside a forward changes nothing). A forward that fails mid-way leaves no tensors and
// does not disturb the next forward's decisions.
import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import type { ForwardHooks } from '../../src/base/hooks.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { expectClose } from '../helpers/tensor-asserts.js';
import { tinyLlama } from '../helpers/tiny-models.js';

function routedModel() {
  const base = tinyLlama();
  const adapters = ['e0', 'e1', 'e2'].map((name) => ({ kind: 'lora', name, r: 2, init: 'random', targets: { sites: 'all-linear' } }));
  const model = AdaptedModel.create(
    base,
    { seed: 3, adapters, composition: { kind: 'route', experts: ['e0', 'e1', 'e2'], router: { kind: 'top-k', k: 2 } } },
    { routers: builtinRouters() },
  );
  return { base, model };
}

describe('routing passes', () => {
  test('release runs after every forward, succeeded or thrown', () => {
    const { base, model } = routedModel();
    const hooks = model.hooks() as ForwardHooks;
    let released = 0;
    let failAt: number | undefined;
    const watched: ForwardHooks = {
      ...hooks,
      groupOutputs: (layer, group, xs, ys) => {
        if (layer === failAt) throw new Error('boom');
        return hooks.groupOutputs?.(layer, group, xs, ys) ?? ys;
      },
      release: () => {
        released++;
        hooks.release?.();
      },
    };
    base.forward({ ids: [[1, 2, 3]], hooks: watched }).dispose();
    expect(released).toBe(1);
    failAt = 1;
    const before = tf.memory().numTensors;
    expect(() => base.forward({ ids: [[1, 2, 3]], hooks: watched })).toThrow('boom');
    expect(released).toBe(2);
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
    base.dispose();
  });

  test('after a forward the hooks hold nothing of it: a group call outside a forward adapts nothing', () => {
    const { base, model } = routedModel();
    const hooks = model.hooks() as ForwardHooks;
    base.forward({ ids: [[1, 2, 3]], hooks }).dispose();
    const group = base.groups[0];
    if (group === undefined) throw new Error('no group');
    tf.tidy(() => {
      const x = tf.ones<tf.Rank.R2>([3, base.config.dim]);
      const ys = group.sites.map((site) => tf.zeros<tf.Rank.R2>([3, base.weights.layers[0]?.sites[site]?.weight.shape[1] ?? 0]));
      const out = hooks.groupOutputs?.(
        0,
        group,
        group.sites.map(() => x),
        ys,
      );
      expect(out).toBe(ys); // untouched: no pass, no decisions
    });
    model.dispose();
    base.dispose();
  });

  test('a forward that threw mid-way does not change the next forward', () => {
    const { base, model } = routedModel();
    const ids = [[1, 2, 3, 4]];
    const expected = model.forward({ ids });
    const hooks = model.hooks() as ForwardHooks;
    const failing: ForwardHooks = {
      ...hooks,
      blockOutput: (layer, block, h) => {
        if (layer === 1) throw new Error('boom');
        return hooks.blockOutput?.(layer, block, h) ?? h;
      },
    };
    expect(() => base.forward({ ids, hooks: failing })).toThrow('boom');
    const again = base.forward({ ids, hooks });
    expectClose(again, expected, { rtol: 0, atol: 0 });
    tf.dispose([expected, again]);
    model.dispose();
    base.dispose();
  });
});
