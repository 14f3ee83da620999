// The host SVD and QR the analysis stands on: matrices built from random orthogonal factors and chosen
// singular values give those singular values back, the factors reconstruct the matrix, and the low-rank SVD
// of B·A equals the dense SVD of the product.
import { fc } from '@fast-check/vitest';
import { describe, expect, test } from 'vitest';
import { type HostMatrix, at, householderQr, hostMatrix, lowRankSvd, multiply, svd, transpose } from '../../src/analysis/linear-algebra.js';
import { seededRandom } from '../../src/base/sampling.js';

/** A [rows, cols] matrix of N(0, 1) entries from a seeded generator (Box–Muller). */
function gaussian(rows: number, cols: number, seed: number): HostMatrix {
  const random = seededRandom(seed);
  const values = Array.from({ length: rows * cols }, () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random()));
  return hostMatrix(rows, cols, values);
}

function maxAbsDiff(a: HostMatrix, b: HostMatrix): number {
  let max = 0;
  for (let i = 0; i < a.data.length; i++) max = Math.max(max, Math.abs((a.data[i] as number) - (b.data[i] as number)));
  return max;
}

function identityGap(q: HostMatrix): number {
  const gram = multiply(transpose(q), q); // [k, k]
  let max = 0;
  for (let i = 0; i < gram.rows; i++) for (let j = 0; j < gram.cols; j++) max = Math.max(max, Math.abs(at(gram, i, j) - (i === j ? 1 : 0)));
  return max;
}

/** U [m, k]·diag(s)·Vᵀ [k, n] with U, V the Q factors of Gaussian matrices. */
function withSingularValues(m: number, n: number, s: readonly number[], seed: number): HostMatrix {
  const k = s.length;
  const u = householderQr(gaussian(m, k, seed)).q; // [m, k]
  const v = householderQr(gaussian(n, k, seed + 1)).q; // [n, k]
  const us = hostMatrix(
    m,
    k,
    Array.from(u.data, (x, i) => x * (s[i % k] as number)),
  ); // [m, k]
  return multiply(us, transpose(v)); // [m, n]
}

const shapes = fc.record({
  m: fc.integer({ min: 1, max: 12 }),
  n: fc.integer({ min: 1, max: 12 }),
  seed: fc.integer({ min: 1, max: 1_000_000 }),
});

describe('householderQr', () => {
  test('Q has orthonormal columns, R is upper triangular and Q·R = X, also for a matrix with zero columns', () => {
    fc.assert(
      fc.property(shapes, ({ m, n, seed }) => {
        const rows = Math.max(m, n);
        const x = gaussian(rows, n, seed);
        for (let i = 0; i < rows; i++) x.data[i * n] = 0; // a zero first column (a LoRA B at its zero init)
        const { q, r } = householderQr(x);
        for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) expect(at(r, i, j)).toBe(0);
        expect(identityGap(q)).toBeLessThan(1e-12);
        expect(maxAbsDiff(multiply(q, r), x)).toBeLessThan(1e-12);
      }),
      { numRuns: 40 },
    );
  });
});

describe('svd', () => {
  test('gives back the singular values of U·diag(s)·Vᵀ, and U·S·Vᵀ reconstructs the matrix', () => {
    fc.assert(
      fc.property(
        shapes.chain(({ m, n, seed }) =>
          fc.record({
            m: fc.constant(m),
            n: fc.constant(n),
            seed: fc.constant(seed),
            s: fc.array(fc.double({ min: 0.01, max: 100, noNaN: true }), { minLength: Math.min(m, n), maxLength: Math.min(m, n) }),
          }),
        ),
        ({ m, n, seed, s }) => {
          const expected = [...s].sort((a, b) => b - a);
          const matrix = withSingularValues(m, n, expected, seed);
          const got = svd(matrix);
          expect(got.s.length).toBe(Math.min(m, n));
          got.s.forEach((value, i) => expect(Math.abs(value - (expected[i] as number))).toBeLessThan(1e-9 * (expected[0] as number)));
          expect(identityGap(got.u)).toBeLessThan(1e-9);
          expect(identityGap(got.v)).toBeLessThan(1e-9);
          const us = hostMatrix(
            got.u.rows,
            got.u.cols,
            Array.from(got.u.data, (x, i) => x * (got.s[i % got.u.cols] as number)),
          );
          expect(maxAbsDiff(multiply(us, transpose(got.v)), matrix)).toBeLessThan(1e-9 * (expected[0] as number));
        },
      ),
      { numRuns: 40 },
    );
  });

  test('a matrix of rank 2 has exactly two non-zero singular values', () => {
    const got = svd(withSingularValues(7, 5, [3, 2], 11));
    expect(Array.from(got.s.subarray(0, 2)).map((x) => Number(x.toFixed(9)))).toEqual([3, 2]);
    expect(got.s.length).toBe(5);
  });
});

describe('lowRankSvd', () => {
  test('the singular values and output subspace of scale·B·A equal those of the dense product', () => {
    fc.assert(
      fc.property(
        fc.record({
          m: fc.integer({ min: 1, max: 16 }),
          n: fc.integer({ min: 1, max: 16 }),
          r: fc.integer({ min: 1, max: 6 }),
          seed: fc.integer({ min: 1, max: 1e6 }),
        }),
        fc.double({ min: -4, max: 4, noNaN: true }).filter((s) => Math.abs(s) > 1e-3),
        ({ m, n, r, seed }, scale) => {
          const b = gaussian(m, r, seed); // [m, r]
          const a = gaussian(r, n, seed + 7); // [r, n]
          const dense = multiply(b, a); // [m, n]
          for (let i = 0; i < dense.data.length; i++) dense.data[i] = (dense.data[i] as number) * scale;
          const full = svd(dense);
          const low = lowRankSvd(b, a, scale);
          const k = Math.min(r, m, n);
          const top = full.s[0] as number;
          for (let i = 0; i < k; i++) expect(Math.abs((low.s[i] as number) - (full.s[i] as number))).toBeLessThan(1e-9 * top);
          // Same range: projecting the dense product onto span(U_low) loses nothing.
          const live = Array.from(low.s).filter((x) => x > 1e-9 * top).length;
          const basis = hostMatrix(m, live);
          for (let i = 0; i < m; i++) for (let j = 0; j < live; j++) basis.data[i * live + j] = at(low.u, i, j);
          const projected = multiply(basis, multiply(transpose(basis), dense)); // [m, n]
          expect(maxAbsDiff(projected, dense)).toBeLessThan(1e-9 * Math.max(1, top));
        },
      ),
      { numRuns: 40 },
    );
  });
});
