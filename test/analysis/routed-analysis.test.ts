// The analysis of a routed model with known weights: a LoRA expert's reported singular values are those of its
// dense scale·B·A, a rank-1 ΔW has effective rank 1, two experts with the same weights overlap 1, AdaLoRA's
// ΔW is P·Λ·Q with its scale, (IA)³ is measured by l − 1, bottleneck and prefix modules are listed by name, and
// nothing leaks.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { AdaloraModule } from '../../src/adapters/adalora/index.js';
import { Ia3Module } from '../../src/adapters/ia3/index.js';
import { LoraModule } from '../../src/adapters/lora/index.js';
import { type HostMatrix, hostMatrix, multiply, svd } from '../../src/analysis/linear-algebra.js';
import { AnalysisReport, type DeltaWeightMeasure, type RoutedAnalysis } from '../../src/analysis/report.js';
import { analyzeRoutedModel } from '../../src/analysis/routed-analysis.js';
import type { Transformer } from '../../src/base/transformer.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { tinyLlama } from '../helpers/tiny-models.js';

const sites = ['attn.q', 'attn.v'];
const spec = {
  seed: 3,
  adapters: [
    { kind: 'lora', name: 'e0', r: 4, alpha: 8, init: 'random', targets: { sites } },
    { kind: 'lora', name: 'e1', r: 4, alpha: 8, init: 'random', targets: { sites } },
    { kind: 'adalora', name: 'ada', initR: 3, targetR: 2, alpha: 6, init: 'random', targets: { sites } },
    { kind: 'ia3', name: 'scales', targets: { sites: ['attn.k'] }, feedforwardSites: [] },
    { kind: 'bottleneck', name: 'bn', bottleneckDim: 4 },
    { kind: 'prefix', name: 'pf', prefixLength: 2 },
  ],
  composition: { kind: 'parallel', children: [{ kind: 'route', experts: ['e0', 'e1', 'ada'], router: { kind: 'soft' } }, 'scales', 'bn', 'pf'] },
};

function lora(model: AdaptedModel, adapter: string, layer: number, site: string): LoraModule {
  const module = model.adapters.get(adapter)?.modules.get(`${layer}|${site}`);
  if (!(module instanceof LoraModule)) throw new Error(`no LoRA ${adapter} at ${layer}|${site}`);
  return module;
}

function deltaAt(analysis: RoutedAnalysis, adapter: string, layer: number, site: string): DeltaWeightMeasure {
  const measure = analysis.sites.find((s) => s.layer === layer && s.site === site)?.modules.find((m) => m.adapter === adapter);
  if (measure?.measure !== 'delta-w') throw new Error(`no ΔW measure for ${adapter} at ${layer}|${site}`);
  return measure;
}

function host(t: tf.Tensor2D): HostMatrix {
  return hostMatrix(t.shape[0], t.shape[1], t.dataSync());
}

/** Singular values of the dense scale·B·A, by the full SVD. */
function denseSpectrum(b: HostMatrix, a: HostMatrix, scale: number): number[] {
  const product = multiply(b, a); // [O, r]·[r, I] → [O, I]
  for (let k = 0; k < product.data.length; k++) product.data[k] = (product.data[k] as number) * scale;
  return Array.from(svd(product).s);
}

describe('analyzeRoutedModel', () => {
  let base: Transformer;
  let model: AdaptedModel;
  let analysis: RoutedAnalysis;
  let tensorsBefore: number;
  beforeAll(async () => {
    base = tinyLlama();
    model = AdaptedModel.create(base, spec, { routers: builtinRouters() });
    // e1 copies e0 at layer 0 (same subspace); e0's B at layer 1 q keeps one column (rank 1).
    for (const site of sites) {
      const source = lora(model, 'e0', 0, site);
      const copy = lora(model, 'e1', 0, site);
      copy.a.assign(source.a);
      copy.b.assign(source.b);
    }
    const rankOne = lora(model, 'e0', 1, 'attn.q');
    tf.tidy(() => rankOne.b.assign(tf.mul(rankOne.b, tf.tensor2d([[1, 0, 0, 0]])))); // [O, r] ⊙ [1, r]
    const ia3 = model.adapters.get('scales')?.modules.get('0|attn.k');
    if (!(ia3 instanceof Ia3Module)) throw new Error('no (IA)³ module');
    const width = ia3.scale.shape[0];
    tf.tidy(() => ia3.scale.assign(tf.tensor1d(Array.from({ length: width }, (_, i) => (i === 0 ? 1.5 : 1))))); // [W]
    tensorsBefore = tf.memory().numTensors;
    analysis = await analyzeRoutedModel(model, 'in-memory');
  });
  afterAll(() => {
    model.dispose();
    base.dispose();
  });

  test('creates no tensors, and the report matches its schema', () => {
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    expect(AnalysisReport.parse({ format: 'routed-peft-analysis', version: 1, routed: analysis }).routed).toEqual(analysis);
  });

  test("a LoRA expert's singular values are those of its dense scale·B·A", () => {
    for (const layer of [0, 1]) {
      for (const site of sites) {
        const module = lora(model, 'e0', layer, site);
        const measured = deltaAt(analysis, 'e0', layer, site);
        const dense = denseSpectrum(host(module.b), host(module.a), module.scale);
        expect(measured.shape).toEqual([module.b.shape[0], module.a.shape[1]]);
        expect(measured.scale).toBe(2);
        expect(measured.singularValues).toHaveLength(4);
        measured.singularValues.forEach((s, i) => expect(Math.abs(s - (dense[i] as number))).toBeLessThan(1e-9 * (dense[0] as number)));
        expect(measured.frobenius).toBeCloseTo(Math.sqrt(dense.reduce((sum, s) => sum + s * s, 0)), 9);
      }
    }
  });

  test('a rank-1 ΔW has effective rank 1 and numerical rank 1', () => {
    const measured = deltaAt(analysis, 'e0', 1, 'attn.q');
    expect(measured.numericalRank).toBe(1);
    expect(measured.effectiveRank).toBeCloseTo(1, 9);
    expect(deltaAt(analysis, 'e0', 0, 'attn.q').effectiveRank).toBeGreaterThan(1.5);
  });

  test('AdaLoRA is measured as scale·P·diag(Λ)·Q', () => {
    const module = model.adapters.get('ada')?.modules.get('0|attn.v');
    if (!(module instanceof AdaloraModule)) throw new Error('no AdaLoRA module');
    const [o, r] = module.p.shape;
    const lambda = module.lambda.dataSync(); // [r]
    const pl = hostMatrix(
      o,
      r,
      Array.from(module.p.dataSync(), (x, k) => x * (lambda[k % r] as number)),
    ); // P·diag(Λ) [O, r], in float64
    const dense = denseSpectrum(pl, hostMatrix(r, module.q.shape[1], module.q.dataSync()), module.scale);
    const measured = deltaAt(analysis, 'ada', 0, 'attn.v');
    expect(measured).toMatchObject({ kind: 'adalora', rank: 3, scale: 2 });
    measured.singularValues.forEach((s, i) => expect(Math.abs(s - (dense[i] as number))).toBeLessThan(1e-9 * (dense[0] as number)));
  });

  test('two experts with the same weights overlap 1; different random ones less', () => {
    const at = (layer: number, site: string) => analysis.sites.find((s) => s.layer === layer && s.site === site)?.overlap[0];
    const layer0 = at(0, 'attn.q');
    expect(layer0?.experts).toEqual(['e0', 'e1', 'ada']);
    const same = layer0?.pairs.find((p) => p.first === 'e0' && p.second === 'e1');
    expect(same?.rank).toBe(4);
    expect(same?.overlap).toBeCloseTo(1, 9);
    const layer1 = at(1, 'attn.v')?.pairs.find((p) => p.first === 'e0' && p.second === 'e1');
    expect(layer1?.overlap).toBeLessThan(0.99);
    expect(layer1?.overlap).toBeGreaterThan(0);
    const pairs = layer0?.pairs ?? [];
    expect(layer0?.mean).toBeCloseTo(pairs.reduce((s, p) => s + (p.overlap ?? 0), 0) / pairs.length, 12);
  });

  test('(IA)³ is measured by l − 1; bottleneck and prefix modules are listed by name, not skipped', () => {
    const ia3 = analysis.sites.find((s) => s.layer === 0 && s.site === 'attn.k')?.modules[0];
    expect(ia3).toMatchObject({ adapter: 'scales', kind: 'ia3', measure: 'scale-vector', maxDeviation: 0.5 });
    expect(ia3?.measure === 'scale-vector' ? ia3.deviationNorm : -1).toBeCloseTo(0.5, 6);
    const listed = new Set(analysis.notAnalysed.map((n) => `${n.adapter}:${n.kind}`));
    expect(listed).toEqual(new Set(['bn:bottleneck', 'pf:prefix']));
    // One entry per module: bottleneck on both blocks of both layers (pfeiffer: mlp only), prefix once per layer.
    const bnModules = model.adapters.get('bn')?.modules.size ?? 0;
    const pfModules = model.adapters.get('pf')?.modules.size ?? 0;
    expect(analysis.notAnalysed).toHaveLength(bnModules + pfModules);
    expect(analysis.adapters.map((a) => a.name)).toEqual(['e0', 'e1', 'ada', 'scales', 'bn', 'pf']);
  });
});

test('a module holding NaN is reported as not analysed, by name, instead of a meaningless spectrum', async () => {
  const base = tinyLlama();
  const model = AdaptedModel.create(base, { adapters: [{ kind: 'lora', name: 'broken', r: 2, init: 'random', targets: { sites: ['attn.q'] } }] });
  try {
    const module = lora(model, 'broken', 0, 'attn.q');
    tf.tidy(() => module.b.assign(tf.fill(module.b.shape, Number.NaN) as tf.Tensor2D));
    const analysis = await analyzeRoutedModel(model, 'in-memory');
    expect(analysis.notAnalysed).toEqual([
      { adapter: 'broken', kind: 'lora', layer: 0, site: 'attn.q', reason: 'its weights hold NaN or ±Infinity, so it has no spectrum' },
    ]);
    expect(analysis.sites.find((s) => s.layer === 1)?.modules[0]?.measure).toBe('delta-w');
  } finally {
    model.dispose();
    base.dispose();
  }
});
