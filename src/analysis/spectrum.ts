/**
 * Measures of a singular-value spectrum and of how two subspaces overlap.
 *
 *   effective rank   exp(H(p)) with p_i = σ_i / Σ_j σ_j and H the Shannon entropy in nats (Roy & Vetterli,
 *                    "The effective rank: a measure of effective dimensionality", EUSIPCO 2007): 1 for a
 *                    rank-1 matrix, n when n singular values are equal, between for everything else; 0 for
 *                    the zero matrix (no direction at all).
 *   numerical rank   how many σ_i exceed RANK_TOLERANCE · σ_1.
 *   overlap          of two subspaces with orthonormal bases U₁ [O, r₁], U₂ [O, r₂], compared on their top
 *                    r = min(r₁, r₂) directions: the mean of cos² θ_i over the r principal angles θ_i. The
 *                    cosines are the singular values of U₁ᵀU₂ (Björck & Golub 1973), so the mean is
 *                    ‖U₁ᵀU₂‖²_F / r: 1 when the subspaces are the same, 0 when they are orthogonal. Two
 *                    independent uniformly random r-dimensional subspaces of R^O overlap r / O on average
 *                    (E[‖U₁ᵀU₂‖²_F] = r² / O), the chance level to read a measured overlap against.
 *
 * Shape letters: O the output width, r a subspace's dimension.
 */
import { type HostMatrix, leadingColumns, multiply, svd, transpose } from './linear-algebra.js';

/** σ_i ≤ RANK_TOLERANCE · σ_1 counts as zero for the numerical rank (and for the directions compared by overlap). */
export const RANK_TOLERANCE = 1e-6;

export function effectiveRank(singularValues: ArrayLike<number>): number {
  let total = 0;
  for (let i = 0; i < singularValues.length; i++) total += singularValues[i] as number;
  if (!(total > 0)) return 0;
  let entropy = 0;
  for (let i = 0; i < singularValues.length; i++) {
    const p = (singularValues[i] as number) / total;
    if (p > 0) entropy -= p * Math.log(p);
  }
  return Math.exp(entropy);
}

export function numericalRank(singularValues: ArrayLike<number>): number {
  const largest = singularValues.length === 0 ? 0 : (singularValues[0] as number);
  if (!(largest > 0)) return 0;
  let count = 0;
  for (let i = 0; i < singularValues.length; i++) if ((singularValues[i] as number) > RANK_TOLERANCE * largest) count++;
  return count;
}

/** ‖M‖_F = √(Σ σ_i²). */
export function frobeniusFromSpectrum(singularValues: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < singularValues.length; i++) sum += (singularValues[i] as number) ** 2;
  return Math.sqrt(sum);
}

export interface SubspaceOverlap {
  /** r: the directions compared (the smaller of the two numerical ranks). */
  readonly rank: number;
  /** cos θ_i of the principal angles, descending. */
  readonly cosines: number[];
  /** mean cos² θ_i, in [0, 1]; null when either subspace is empty (a zero ΔW). */
  readonly meanSquaredCosine: number | null;
}

/**
 * Overlap of span(first[:, :rank₁]) and span(second[:, :rank₂]) on their top r = min(rank₁, rank₂) columns;
 * `first` [O, ≥rank₁] and `second` [O, ≥rank₂] have orthonormal columns, most important first.
 */
export function subspaceOverlap(first: HostMatrix, firstRank: number, second: HostMatrix, secondRank: number): SubspaceOverlap {
  if (first.rows !== second.rows) throw new Error(`subspaceOverlap: bases of ${first.rows} and ${second.rows} rows`);
  const r = Math.min(firstRank, secondRank);
  if (r === 0) return { rank: 0, cosines: [], meanSquaredCosine: null };
  const cross = multiply(transpose(leadingColumns(first, r)), leadingColumns(second, r)); // [r, O]·[O, r] → [r, r]
  // Rounding can push a cosine a hair above 1; an angle's cosine never is.
  const cosines = Array.from(svd(cross).s, (c) => Math.min(1, c));
  const meanSquaredCosine = cosines.reduce((sum, c) => sum + c * c, 0) / r;
  return { rank: r, cosines, meanSquaredCosine };
}
