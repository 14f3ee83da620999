// Update sizes follow the configured group LRs: Adam's first step is lr · m̂/(√v̂ + ε) = lr · g/(|g| + ε) ≈
// lr · sign(g), so with no weight decay, no clipping and a flat schedule every element of every variable
// moves by its group's LR (router / expert, times layer decay) — checked on a routed model after one step.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import type { Transformer } from '../../src/base/transformer.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { Trainer } from '../../src/train/trainer.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const lora = (name: string) => ({ kind: 'lora', name, r: 2, alpha: 4, init: 'random', targets: { sites: ['attn.q', 'mlp.down'] } });
const batch = {
  ids: [
    [1, 5, 9, 3, 7, 2],
    [1, 6, 10, 12, 14, 3],
  ],
  mask: [
    [1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1],
  ],
  lossMask: [
    [0, 1, 1, 1, 1, 1],
    [0, 1, 1, 1, 1, 1],
  ],
};

describe('parameter groups in a training step', () => {
  let base: Transformer;
  beforeAll(() => {
    base = tinyLlama({ nLayers: 3 });
  });
  afterAll(() => base.dispose());

  test('|Δp| ≈ the group LR (router vs expert, with layer decay) within 1e-3 relative', () => {
    const model = AdaptedModel.create(
      base,
      { seed: 4, adapters: [lora('a'), lora('b')], composition: { kind: 'route', experts: ['a', 'b'], router: { kind: 'top-k', k: 2 }, placement: 'layer' } },
      { routers: builtinRouters() },
    );
    const lr = 1e-2;
    const routerLr = 4e-2;
    const layerDecay = 0.5;
    // ε = 1e-12 so that elements with small gradients (a few router entries have |g| ~ 1e-6) also move by
    // lr·g/(|g| + ε) ≈ lr; with the default 1e-8 those few move ~0.3% less.
    const trainer = new Trainer(model, { optimizer: { lr, routerLr, layerDecay, epsilon: 1e-12 }, maxGradNorm: 0 });
    const named = trainer.namedVariables();
    const before = new Map([...named].map(([n, v]) => [n, Float32Array.from(v.dataSync() as Float32Array)]));
    const report = trainer.step(batch);
    expect(report.applied).toBe(true);

    const seen = { router: new Set<number>(), expert: new Set<number>() };
    let checked = 0;
    for (const [name, v] of named) {
      const group = trainer.groups.get(name);
      if (group === undefined) throw new Error(`no group for ${name}`);
      const expected = (group.group === 'router' ? routerLr : lr) * layerDecay ** (3 - 1 - (group.layer ?? 2));
      expect(group.lr).toBeCloseTo(expected, 12);
      seen[group.group].add(group.layer ?? -1);
      const after = v.dataSync();
      const old = before.get(name) as Float32Array;
      const ratios = Array.from(after, (x, i) => Math.abs(x - (old[i] as number)) / expected);
      for (const ratio of ratios) expect(Math.abs(ratio - 1)).toBeLessThan(1e-3);
      checked += ratios.length;
    }
    expect([...seen.router].sort()).toEqual([0, 1, 2]);
    expect([...seen.expert].sort()).toEqual([0, 1, 2]);
    expect(checked).toBeGreaterThan(100);
    trainer.dispose();
    model.dispose();
  });
});
