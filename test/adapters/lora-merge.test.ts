// Merging LoRA into a view of the base (src/adapters/lora/merge.ts): merged = unmerged up to float32
// round-off, unmerging (disposing the view) restores the base exactly, rsLoRA's α/√r scale, per-site ranks
// from rankPattern, and the errors for what cannot be merged.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { ModuleContext } from '../../src/adapters/adapter.js';
import { LoraModule, loraScale } from '../../src/adapters/lora/layer.js';
import { mergeLora } from '../../src/adapters/lora/merge.js';
import { generate } from '../../src/base/generate.js';
import { FAMILY_SITES, type SiteName } from '../../src/base/sites.js';
import { siteShape } from '../../src/base/site-shape.js';
import type { Transformer } from '../../src/base/transformer.js';
import { listWeightTensors } from '../../src/base/weights.js';
import type { AdapterInstance } from '../../src/adapters/instance.js';
import { ConfigError, ShapeError } from '../../src/errors.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { expectClose, expectNoLeak } from '../helpers/tensor-asserts.js';
import { tinyGpt2, tinyLlama } from '../helpers/tiny-models.js';

const ids = [
  [1, 5, 9, 3, 7, 2],
  [0, 0, 0, 4, 2, 8],
  [0, 6, 6, 1, 3, 5],
];
const mask = [
  [1, 1, 1, 1, 1, 1],
  [0, 0, 0, 1, 1, 1],
  [0, 1, 1, 1, 1, 1],
];

const lora = (name: string, extra: Record<string, unknown> = {}) => ({
  kind: 'lora',
  name,
  r: 4,
  alpha: 8,
  init: 'random',
  targets: { sites: 'all-linear' },
  ...extra,
});

function logits(run: () => tf.Tensor): Float32Array {
  const out = run();
  const values = out.dataSync() as Float32Array;
  out.dispose();
  return values;
}

/** ‖a − b‖₂ / ‖b‖₂ on the host, in double precision. */
function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < b.length; i++) {
    diff += ((a[i] as number) - (b[i] as number)) ** 2;
    norm += (b[i] as number) ** 2;
  }
  return Math.sqrt(diff / norm);
}

function adapter(model: AdaptedModel, name: string): AdapterInstance {
  const found = model.adapters.get(name);
  if (found === undefined) throw new Error(`no adapter ${name}`);
  return found;
}

function baseBytes(base: Transformer): Buffer[] {
  return listWeightTensors(base.weights).map((t) => {
    const data = t.dataSync();
    return Buffer.from(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  });
}

function siteWeight(model: Transformer, layer: number, site: SiteName): tf.Tensor2D {
  const weight = model.weights.layers[layer]?.sites[site]?.weight;
  if (weight === undefined) throw new Error(`no weight at layer ${layer} site ${site}`);
  return weight;
}

describe.each([
  ['llama', tinyLlama],
  ['gpt2', tinyGpt2],
] as const)('LoRA merge on tiny %s', (_family, make) => {
  let base: Transformer;
  let model: AdaptedModel;
  const names = ['a', 'b', 'c'];
  const weights = [1, 0.5, -0.75];
  beforeAll(() => {
    base = make();
    model = AdaptedModel.create(base, {
      seed: 7,
      adapters: [lora('a'), lora('b', { r: 2, alpha: 4, rslora: true }), lora('c', { r: 3, alpha: 3, targets: { sites: ['attn.q', 'mlp.*'], layers: [1] } })],
    });
  });
  afterAll(() => {
    model.dispose();
    base.dispose();
  });

  test('merged and unmerged outputs agree (random LoRAs on all-linear, weighted): relative error < 1e-5', () => {
    const unmerged = logits(() => model.forward({ ids, mask, select: { combine: 'average', adapters: names, weights } }));
    const view = mergeLora(
      base,
      names.map((name, i) => ({ instance: adapter(model, name), weight: weights[i] as number })),
    );
    const merged = logits(() => view.forward({ ids, mask }));
    view.dispose();
    expect(relativeError(merged, unmerged)).toBeLessThan(1e-5);
    expectClose(merged, unmerged, { rtol: 1e-4, atol: 1e-5, label: 'merged vs unmerged' });
    // Not vacuous: the adapters move the output well beyond that tolerance.
    expect(
      relativeError(
        logits(() => base.forward({ ids, mask })),
        unmerged,
      ),
    ).toBeGreaterThan(1e-2);
  });

  test('weight defaults to 1: merging all adapters equals the default (parallel) composition; generation agrees', () => {
    const unmerged = logits(() => model.forward({ ids, mask }));
    const view = mergeLora(
      base,
      names.map((name) => ({ instance: adapter(model, name) })),
    );
    expect(
      relativeError(
        logits(() => view.forward({ ids, mask })),
        unmerged,
      ),
    ).toBeLessThan(1e-5);
    const prompts = [
      [1, 5, 9],
      [4, 2],
    ];
    const options = { maxNewTokens: 4, temperature: 0, eosId: null } as const;
    expect(generate(view, prompts, options)).toEqual(model.generate(prompts, options));
    view.dispose();
  });

  test('unmerge = dispose the view: base weights byte-identical, base output unchanged, only merged weights freed', () => {
    const before = baseBytes(base);
    const baseOut = logits(() => base.forward({ ids, mask }));
    const start = tf.memory().numTensors;
    const view = mergeLora(base, [{ instance: adapter(model, 'c'), weight: 2 }]);
    // c targets q, up, down (and gate on llama) of layer 1 only: those are new tensors, everything else is shared.
    const merged: tf.Tensor[] = [];
    base.weights.layers.forEach((layer, l) => {
      for (const site of Object.keys(layer.sites) as SiteName[]) {
        const own = siteWeight(base, l, site);
        const viewed = siteWeight(view, l, site);
        const targeted = l === 1 && (site === 'attn.q' || site.startsWith('mlp.'));
        expect(viewed === own, `layer ${l} ${site} shared`).toBe(!targeted);
        if (targeted) merged.push(viewed);
      }
    });
    expect(view.weights.tokenEmbedding).toBe(base.weights.tokenEmbedding);
    expect(tf.memory().numTensors).toBe(start + merged.length);
    logits(() => view.forward({ ids, mask }));
    view.dispose();
    expect(tf.memory().numTensors).toBe(start);
    expect(merged.every((t) => t.isDisposed)).toBe(true);
    expect(listWeightTensors(base.weights).some((t) => t.isDisposed)).toBe(false);
    baseBytes(base).forEach((bytes, i) => expect(bytes.equals(before[i] as Buffer), `base tensor ${i}`).toBe(true));
    const after = logits(() => base.forward({ ids, mask }));
    expect(Buffer.from(after.buffer).equals(Buffer.from(baseOut.buffer))).toBe(true);
  });

  test('merging a non-LoRA adapter is a ConfigError naming the adapter and its kind, and allocates nothing', () => {
    const others = AdaptedModel.create(base, {
      adapters: [
        { kind: 'bottleneck', name: 'bn' },
        { kind: 'ia3', name: 'scales' },
        { kind: 'prefix', name: 'pre', prefixLength: 2 },
      ],
    });
    for (const [name, kind] of [
      ['bn', 'bottleneck'],
      ['scales', 'ia3'],
      ['pre', 'prefix'],
    ] as const) {
      expectNoLeak(() => {
        const call = (): Transformer => mergeLora(base, [{ instance: adapter(model, 'a') }, { instance: adapter(others, name) }]);
        expect(call).toThrow(ConfigError);
        expect(call).toThrow(new RegExp(`adapter "${name}" is a ${kind} adapter; only LoRA adapters can be merged.*adapters\\[1\\]`));
      });
    }
    others.dispose();
    expect(() => mergeLora(base, [{ instance: adapter(model, 'a'), weight: Number.NaN }])).toThrow(/merge weight NaN of adapter "a" is not a finite number/);
  });
});

describe('rsLoRA, rank patterns and model mismatches (tiny llama)', () => {
  let base: Transformer;
  beforeAll(() => {
    base = tinyLlama();
  });
  afterAll(() => base.dispose());

  test('rsLoRA r=4, alpha=8 has scale 8/√4 = 4, and ΔW = 4·B·A, Δy = 4·B·A·x at a site (host computation)', () => {
    const model = AdaptedModel.create(base, { seed: 11, adapters: [lora('rs', { r: 4, alpha: 8, rslora: true, targets: { sites: ['attn.v'] } })] });
    const module = adapter(model, 'rs').module(1, { kind: 'site-output', site: 'attn.v' });
    if (!(module instanceof LoraModule)) throw new Error('expected a LoRA module at layer 1 attn.v');
    expect(module.scale).toBe(4);
    expect(loraScale(8, 4, false)).toBe(2); // plain LoRA would be α/r = 2
    const [out, inp] = siteShape(base.config, 'attn.v'); // [O, I] = [8, 16]
    const a = module.a.arraySync(); // [r][I]
    const b = module.b.arraySync(); // [O][r]
    // Host ΔW[o][i] = 4 · Σ_k B[o][k]·A[k][i]
    const deltaW = Array.from({ length: out }, (_, o) =>
      Array.from({ length: inp }, (_, i) => 4 * a.reduce((s, row, k) => s + (b[o]?.[k] as number) * (row[i] as number), 0)),
    );
    const view = mergeLora(base, [{ instance: adapter(model, 'rs') }]);
    // Sites store W transposed ([I, O]), so the merged difference is (4·B·A)ᵀ.
    const mergedDelta = tf.tidy(() => tf.transpose(tf.sub(siteWeight(view, 1, 'attn.v'), siteWeight(base, 1, 'attn.v'))).arraySync() as number[][]);
    expectClose(mergedDelta.flat(), deltaW.flat(), { rtol: 1e-5, atol: 1e-6, label: 'W_merged − W vs 4·B·A' });
    view.dispose();
    // Δy = 4·B·A·x for rows x [N, I], from the module itself.
    const rows = 5;
    const x = tf.randomNormal<tf.Rank.R2>([rows, inp], 0, 1, 'float32', 3); // [N, I]
    const y = tf.zeros<tf.Rank.R2>([rows, out]); // [N, O]
    const forwardMask = tf.ones<tf.Rank.R2>([1, rows]);
    const context: ModuleContext = {
      training: false,
      forward: { batch: 1, tokens: rows, ids: [[1, 1, 1, 1, 1]], mask: forwardMask, pastLength: 0, cache: undefined, training: false },
    };
    const delta = module.delta(x, y, context); // [N, O]
    const xs = x.arraySync();
    const expected = xs.map((row) => deltaW.map((wRow) => wRow.reduce((s, w, i) => s + w * (row[i] as number), 0)));
    expectClose(delta.dataSync(), expected.flat(), { rtol: 1e-5, atol: 1e-6, label: 'Δy vs 4·B·A·x' });
    tf.dispose([x, y, forwardMask, delta]);
    model.dispose();
  });

  test('rankPattern / alphaPattern give each site its own rank (A [r, I], B [O, r]) and scale; the merge keeps the base weight shape', () => {
    const spec = lora('ranked', {
      r: 2,
      alpha: 8,
      rankPattern: { 'attn.*': 4, 'layers.1.attn.q': 6, 'mlp.down': 3 },
      alphaPattern: { 'mlp.down': 6 },
    });
    const model = AdaptedModel.create(base, { seed: 13, adapters: [spec] });
    const instance = adapter(model, 'ranked');
    for (const layer of [0, 1]) {
      for (const site of FAMILY_SITES.llama) {
        const rank = layer === 1 && site === 'attn.q' ? 6 : site.startsWith('attn.') ? 4 : site === 'mlp.down' ? 3 : 2;
        const alpha = site === 'mlp.down' ? 6 : 8;
        const module = instance.module(layer, { kind: 'site-output', site });
        if (!(module instanceof LoraModule)) throw new Error(`expected a LoRA module at layer ${layer} ${site}`);
        const [out, inp] = siteShape(base.config, site);
        expect([module.rank, module.a.shape, module.b.shape, module.scale], `layer ${layer} ${site}`).toEqual([rank, [rank, inp], [out, rank], alpha / rank]);
      }
    }
    const view = mergeLora(base, [{ instance }]);
    base.weights.layers.forEach((layer, l) => {
      for (const site of Object.keys(layer.sites) as SiteName[]) expect(siteWeight(view, l, site).shape).toEqual(siteWeight(base, l, site).shape);
    });
    const unmerged = logits(() => model.forward({ ids, mask }));
    expect(
      relativeError(
        logits(() => view.forward({ ids, mask })),
        unmerged,
      ),
    ).toBeLessThan(1e-5);
    view.dispose();
    model.dispose();
  });

  test('an adapter built for another model is a ShapeError before anything is allocated', () => {
    const gpt2 = tinyGpt2();
    const wide = tinyLlama({ dim: 32 });
    const llamaModel = AdaptedModel.create(base, { adapters: [lora('gated', { targets: { sites: ['mlp.gate'] } })] });
    const wideModel = AdaptedModel.create(wide, { adapters: [lora('wide', { targets: { sites: ['attn.q'] } })] });
    expectNoLeak(() => {
      expect(() => mergeLora(gpt2, [{ instance: adapter(llamaModel, 'gated') }])).toThrow(ShapeError);
      expect(() => mergeLora(gpt2, [{ instance: adapter(llamaModel, 'gated') }])).toThrow(/site mlp.gate, which this gpt2 model does not have/);
      expect(() => mergeLora(base, [{ instance: adapter(wideModel, 'wide') }])).toThrow(/has ΔW \[32, 32\] but the base weight is \[16, 16\]/);
    });
    llamaModel.dispose();
    wideModel.dispose();
    wide.dispose();
    gpt2.dispose();
  });
});
