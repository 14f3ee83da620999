// Evaluation metrics from plain data: perplexity, exact match, accuracy, per-task breakdown, routing purity
// and normalised mutual information, expert load from traces, base retention.
import { fc } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { seededRandom } from '../../src/base/sampling.js';
import { ShapeError } from '../../src/errors.js';
import type { RoutingTraceEntry } from '../../src/routing/trace.js';
import { accuracy, baseRetention, exactMatch, expertLoad, mutualInformation, perplexity, routingPurity, taskBreakdown } from '../../src/train/metrics.js';

const FC_PARAMS = { seed: 20240611, numRuns: 60 } as const;

describe('language-modelling and classification metrics', () => {
  it('perplexity = exp(loss)', () => {
    expect(perplexity(0)).toBe(1);
    expect(perplexity(Math.log(512))).toBeCloseTo(512, 9);
    fc.assert(
      fc.property(fc.double({ min: 0, max: 20, noNaN: true }), (loss) => Math.abs(perplexity(loss) - Math.exp(loss)) <= 1e-12 * Math.exp(loss)),
      FC_PARAMS,
    );
  });

  it('exactMatch trims and compares exactly', () => {
    expect(exactMatch('  4\n', '4')).toBe(true);
    expect(exactMatch('4.', '4')).toBe(false);
    expect(exactMatch('Paris', 'paris')).toBe(false);
  });

  it('accuracy counts equal positions and checks lengths', () => {
    expect(accuracy([1, 2, 3, 4], [1, 0, 3, 0])).toBe(0.5);
    expect(accuracy([], [])).toBe(0);
    expect(() => accuracy([1], [1, 2])).toThrow(ShapeError);
  });

  it('taskBreakdown gives token-weighted loss, accuracy and count per task', () => {
    const rows = taskBreakdown([
      { task: 1, loss: 2, correct: true, tokens: 1 },
      { task: 0, loss: 1, correct: false, tokens: 3 },
      { task: 1, loss: 4, correct: false, tokens: 3 },
      { task: 0, loss: 3, correct: true, tokens: 1 },
      { task: 0, loss: 9, correct: 1, tokens: 0 },
    ]);
    expect(rows).toEqual([
      { task: 0, loss: (1 * 3 + 3 * 1) / 4, accuracy: 2 / 3, count: 3, tokens: 4 },
      { task: 1, loss: (2 + 4 * 3) / 4, accuracy: 0.5, count: 2, tokens: 4 },
    ]);
    expect(taskBreakdown([{ task: 'x', loss: 2, correct: false, tokens: 0 }])).toEqual([{ task: 'x', loss: 2, accuracy: 0, count: 1, tokens: 0 }]);
  });
});

describe('routing purity and mutual information', () => {
  it('is 1 and 1 for a perfect task → expert mapping', () => {
    const assignments = Array.from({ length: 300 }, (_, i) => ({ task: i % 3, expert: `e${(i % 3) * 2}` }));
    const r = routingPurity(assignments);
    expect(r.purity).toBe(1);
    expect(r.mutualInformation).toBeCloseTo(1, 12);
    expect(r.mutualInformationNats).toBeCloseTo(Math.log(3), 12);
    expect(r.perTask).toEqual([
      { task: 0, count: 100, topExpert: 'e0', purity: 1 },
      { task: 1, count: 100, topExpert: 'e2', purity: 1 },
      { task: 2, count: 100, topExpert: 'e4', purity: 1 },
    ]);
    // Two tasks sharing an expert still map deterministically: purity 1, NMI 1 (normalised by min entropy).
    const shared = routingPurity(Array.from({ length: 400 }, (_, i) => ({ task: i % 4, expert: i % 4 < 2 ? 'a' : 'b' })));
    expect(shared.purity).toBe(1);
    expect(shared.mutualInformation).toBeCloseTo(1, 12);
  });

  it('is about 1/E and about 0 for uniform random routing (large sample)', () => {
    const random = seededRandom(7);
    const experts = ['a', 'b', 'c', 'd'];
    const assignments = Array.from({ length: 40_000 }, () => ({ task: Math.floor(random() * 4), expert: experts[Math.floor(random() * 4)] as string }));
    const r = routingPurity(assignments);
    expect(r.purity).toBeGreaterThan(0.25);
    expect(r.purity).toBeLessThan(0.27);
    expect(r.mutualInformation).toBeGreaterThanOrEqual(0);
    expect(r.mutualInformation).toBeLessThan(0.005);
  });

  it('weights purity by task count', () => {
    const r = routingPurity([
      ...Array.from({ length: 30 }, () => ({ task: 0, expert: 'a' })),
      ...Array.from({ length: 5 }, () => ({ task: 1, expert: 'a' })),
      ...Array.from({ length: 5 }, () => ({ task: 1, expert: 'b' })),
    ]);
    expect(r.perTask.map((t) => t.purity)).toEqual([1, 0.5]);
    expect(r.purity).toBeCloseTo((30 * 1 + 10 * 0.5) / 40, 12);
  });

  it('is 0 when either side has no entropy, and for no data', () => {
    expect(routingPurity(Array.from({ length: 10 }, (_, i) => ({ task: i % 2, expert: 'only' }))).mutualInformation).toBe(0);
    expect(routingPurity(Array.from({ length: 10 }, (_, i) => ({ task: 0, expert: `e${i % 3}` }))).mutualInformation).toBe(0);
    expect(routingPurity([])).toEqual({ purity: 0, mutualInformation: 0, mutualInformationNats: 0, perTask: [] });
  });

  it('property: mutual information is symmetric, within [0, min H], and NMI within [0, 1]', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 4 }), fc.constantFrom('a', 'b', 'c')), { minLength: 1, maxLength: 80 }), (pairs) => {
        const forward = mutualInformation(pairs);
        const backward = mutualInformation(pairs.map(([x, y]) => [y, x] as const));
        expect(backward.mutualInformation).toBeCloseTo(forward.mutualInformation, 12);
        expect(backward.normalized).toBeCloseTo(forward.normalized, 12);
        expect(backward.entropyX).toBeCloseTo(forward.entropyY, 12);
        expect(forward.mutualInformation).toBeGreaterThanOrEqual(0);
        expect(forward.mutualInformation).toBeLessThanOrEqual(Math.min(forward.entropyX, forward.entropyY) + 1e-12);
        expect(forward.normalized).toBeGreaterThanOrEqual(0);
        expect(forward.normalized).toBeLessThanOrEqual(1);
      }),
      FC_PARAMS,
    );
  });
});

describe('expertLoad', () => {
  const entry = (layer: number, site: string, experts: string[], weights: number[], dropped = false): RoutingTraceEntry => ({
    layer,
    site,
    route: 0,
    batch: 0,
    token: 0,
    experts,
    weights,
    dropped,
    modality: 'text',
  });

  it('histograms selections with weight > 0 per layer and site, with dropped rate and load entropy', () => {
    const trace = [
      entry(0, 'attn.q', ['a', 'b'], [0.6, 0.4]),
      entry(0, 'attn.q', ['a'], [1]),
      entry(0, 'attn.q', [], [], true),
      entry(0, 'attn.q', ['b', 'c'], [0.5, 0]),
      entry(1, 'attn.q', ['c'], [1]),
      entry(0, 'mlp.down', ['a', 'b'], [0.5, 0.5]),
    ];
    const load = expertLoad(trace);
    expect(load.map((l) => [l.layer, l.site])).toEqual([
      [0, 'attn.q'],
      [0, 'mlp.down'],
      [1, 'attn.q'],
    ]);
    const first = load[0];
    expect(first?.tokens).toBe(4);
    expect(first?.experts).toEqual(['a', 'b']); // c had weight 0
    expect(first?.counts).toEqual([2, 2]);
    expect(first?.fractions).toEqual([0.5, 0.5]);
    expect(first?.droppedRate).toBe(0.25);
    expect(first?.loadEntropy).toBeCloseTo(Math.log(2), 12);
    expect(first?.normalizedLoadEntropy).toBeCloseTo(1, 12);
    expect(load[2]?.normalizedLoadEntropy).toBe(1); // one expert seen
  });

  it('lists every named expert (zeros included) when given the expert names', () => {
    const [l] = expertLoad([entry(0, 'layer', ['a'], [1]), entry(0, 'layer', ['a'], [1])], { experts: ['a', 'b', 'null'] });
    expect(l?.experts).toEqual(['a', 'b', 'null']);
    expect(l?.counts).toEqual([2, 0, 0]);
    expect(l?.loadEntropy).toBe(0);
    expect(l?.normalizedLoadEntropy).toBe(0);
  });
});

describe('baseRetention', () => {
  it('reports delta = routed − base (0 = retained), the ratio and the perplexity ratio', () => {
    expect(baseRetention(2.5, 2)).toEqual({ routedLoss: 2.5, baseLoss: 2, delta: 0.5, ratio: 1.25, perplexityRatio: Math.exp(0.5) });
    const same = baseRetention(3, 3);
    expect(same.delta).toBe(0);
    expect(same.ratio).toBe(1);
    expect(same.perplexityRatio).toBe(1);
    expect(baseRetention(0, 0).ratio).toBe(1);
    expect(baseRetention(1, 0).ratio).toBe(Infinity);
  });
});
