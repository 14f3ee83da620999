// Parameter groups: router vs expert classification by name, layers parsed from names, layer-wise LR decay.
// (That update sizes follow these LRs in a real training step is tested in trainer-groups.test.ts.)
import { describe, expect, test } from 'vitest';
import { isRouterVariable, paramGroups, variableLayer } from '../../src/train/param-groups.js';

const names = [
  'lora/0|attn.q/0',
  'lora/0|attn.q/1',
  'lora/3|mlp.down:input/0',
  'route0/2/0',
  'route0/1|attn.q/0',
  'route1/model/0',
  'router-x/1|attn.k/0',
  'head/weight',
];

describe('paramGroups', () => {
  test('classifies routers by the route<i>/ prefix only and parses layers', () => {
    expect(names.map(isRouterVariable)).toEqual([false, false, false, true, true, true, false, false]);
    expect(names.map(variableLayer)).toEqual([0, 0, 3, 2, 1, undefined, 1, undefined]);
  });

  test('group LRs and weight decays, routerLr defaulting to lr', () => {
    const groups = paramGroups(names, 4, { lr: 1e-3, routerLr: 5e-3, weightDecay: 0.01, routerWeightDecay: 0.2 });
    expect(groups.get('lora/0|attn.q/0')).toMatchObject({ group: 'expert', lr: 1e-3, weightDecay: 0.01 });
    expect(groups.get('route0/2/0')).toMatchObject({ group: 'router', lr: 5e-3, weightDecay: 0.2 });
    expect(groups.get('head/weight')).toMatchObject({ group: 'expert', lr: 1e-3, layer: undefined });
    const defaults = paramGroups(names, 4, { lr: 3e-4 });
    expect(defaults.get('route1/model/0')).toMatchObject({ group: 'router', lr: 3e-4, weightDecay: 0 });
    expect(defaults.get('lora/0|attn.q/0')?.weightDecay).toBe(0);
  });

  test('layer decay: lr · decay^(L−1−l); top layer and layer-less variables unscaled', () => {
    const groups = paramGroups(names, 4, { lr: 1e-2, routerLr: 2e-2, layerDecay: 0.5 });
    expect(groups.get('lora/3|mlp.down:input/0')?.lr).toBeCloseTo(1e-2, 15);
    expect(groups.get('lora/0|attn.q/0')?.lr).toBeCloseTo(1e-2 * 0.125, 15);
    expect(groups.get('lora/0|attn.q/0')?.lrScale).toBe(0.125);
    expect(groups.get('route0/2/0')?.lr).toBeCloseTo(2e-2 * 0.5, 15);
    expect(groups.get('route0/1|attn.q/0')?.lr).toBeCloseTo(2e-2 * 0.25, 15);
    expect(groups.get('route1/model/0')?.lr).toBeCloseTo(2e-2, 15);
    expect(groups.get('head/weight')?.lr).toBeCloseTo(1e-2, 15);
  });

  test('rejects invalid values with the path', () => {
    expect(() => paramGroups(names, 2, { layerDecay: 0 })).toThrow(/optimizer.layerDecay/);
    expect(() => paramGroups(names, 2, { lr: -1 })).toThrow(/optimizer.lr/);
  });
});
