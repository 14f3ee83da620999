// Effective rank (Roy & Vetterli 2007) and subspace overlap on cases checkable by hand.
import { describe, expect, test } from 'vitest';
import { hostMatrix } from '../../src/analysis/linear-algebra.js';
import { effectiveRank, frobeniusFromSpectrum, numericalRank, subspaceOverlap } from '../../src/analysis/spectrum.js';

describe('effectiveRank', () => {
  test('is 1 for one non-zero singular value, n for n equal ones, 0 for the zero matrix', () => {
    expect(effectiveRank([5, 0, 0, 0])).toBe(1);
    expect(effectiveRank([2, 2, 2])).toBeCloseTo(3, 12);
    expect(effectiveRank([0, 0])).toBe(0);
  });

  test('is exp of the entropy of σ / Σσ', () => {
    // p = [0.75, 0.25]: H = −(0.75 ln 0.75 + 0.25 ln 0.25).
    const h = -(0.75 * Math.log(0.75) + 0.25 * Math.log(0.25));
    expect(effectiveRank([3, 1])).toBeCloseTo(Math.exp(h), 12);
  });
});

test('numerical rank counts σ above the tolerance, and ‖M‖_F = √Σσ²', () => {
  expect(numericalRank([4, 1e-3, 1e-9, 0])).toBe(2);
  expect(numericalRank([0, 0])).toBe(0);
  expect(frobeniusFromSpectrum([3, 4])).toBe(5);
});

describe('subspaceOverlap', () => {
  // Bases in R⁴ (columns): span(e1, e2) against span(e1, cos θ·e2 + sin θ·e3).
  const theta = Math.PI / 3;
  const e12 = hostMatrix(4, 2, [1, 0, 0, 1, 0, 0, 0, 0]);
  const tilted = hostMatrix(4, 2, [1, 0, 0, Math.cos(theta), 0, Math.sin(theta), 0, 0]);
  const e34 = hostMatrix(4, 2, [0, 0, 0, 0, 1, 0, 0, 1]);

  test('principal angles 0 and θ give cosines [1, cos θ] and mean (1 + cos² θ) / 2', () => {
    const got = subspaceOverlap(e12, 2, tilted, 2);
    expect(got.rank).toBe(2);
    expect(got.cosines[0]).toBeCloseTo(1, 12);
    expect(got.cosines[1]).toBeCloseTo(Math.cos(theta), 12);
    expect(got.meanSquaredCosine).toBeCloseTo((1 + Math.cos(theta) ** 2) / 2, 12);
  });

  test('is 1 for the same subspace, 0 for orthogonal ones, null when one is empty', () => {
    expect(subspaceOverlap(e12, 2, e12, 2).meanSquaredCosine).toBeCloseTo(1, 12);
    expect(subspaceOverlap(e12, 2, e34, 2).meanSquaredCosine).toBe(0);
    expect(subspaceOverlap(e12, 2, e34, 0).meanSquaredCosine).toBeNull();
  });

  test('compares the top r = min(r₁, r₂) directions', () => {
    // e1 alone against span(e1, e2): the one direction compared is shared.
    expect(subspaceOverlap(e12, 1, tilted, 2)).toMatchObject({ rank: 1, meanSquaredCosine: 1 });
  });
});
