/**
 * Host linear algebra for the analysis (tfjs has no SVD): dense matrices in float64, Householder QR and the
 * one-sided Jacobi SVD (Hestenes 1958; Demmel & Veselić 1992 show it is accurate to high relative precision),
 * and the SVD of a low-rank product B·A from the r×r core (Golub & Van Loan, "Matrix Computations", §5.4 and
 * §8.6). The sizes here are an adapter's: d_out × d_in up to a few thousand, rank up to a few hundred.
 *
 * Shape letters: m rows, n columns, k = min(m, n), r the rank of a factored product B [m, r] · A [r, n].
 */

/** A dense row-major matrix of float64 values: entry (i, j) is data[i·cols + j]. */
export interface HostMatrix {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float64Array;
}

/** A thin SVD M = U·diag(s)·Vᵀ: U [m, k] and V [n, k] with orthonormal columns, s descending and ≥ 0. */
export interface ThinSvd {
  readonly u: HostMatrix; // [m, k]
  readonly s: Float64Array; // [k]
  readonly v: HostMatrix; // [n, k]
}

/** Jacobi sweeps before giving up; convergence is quadratic, so well under 20 sweeps in practice. */
const MAX_SWEEPS = 60;
/** Two columns count as orthogonal when |aᵀb| ≤ EPS·‖a‖·‖b‖. */
const EPS = 1e-15;

export function hostMatrix(rows: number, cols: number, values?: ArrayLike<number>): HostMatrix {
  const data = new Float64Array(rows * cols);
  if (values !== undefined) {
    if (values.length !== rows * cols) throw new Error(`hostMatrix: ${values.length} values for a ${rows}×${cols} matrix`);
    for (let i = 0; i < data.length; i++) data[i] = values[i] as number;
  }
  return { rows, cols, data };
}

export function at(m: HostMatrix, i: number, j: number): number {
  return m.data[i * m.cols + j] as number;
}

export function transpose(m: HostMatrix): HostMatrix {
  const out = hostMatrix(m.cols, m.rows); // [n, m]
  for (let i = 0; i < m.rows; i++) for (let j = 0; j < m.cols; j++) out.data[j * m.rows + i] = m.data[i * m.cols + j] as number;
  return out;
}

/** a [m, p] · b [p, n] → [m, n]. */
export function multiply(a: HostMatrix, b: HostMatrix): HostMatrix {
  if (a.cols !== b.rows) throw new Error(`multiply: ${a.rows}×${a.cols} · ${b.rows}×${b.cols}`);
  const out = hostMatrix(a.rows, b.cols); // [m, n]
  for (let i = 0; i < a.rows; i++) {
    for (let p = 0; p < a.cols; p++) {
      const x = a.data[i * a.cols + p] as number;
      if (x === 0) continue;
      const row = p * b.cols;
      const target = i * b.cols;
      for (let j = 0; j < b.cols; j++) out.data[target + j] = (out.data[target + j] as number) + x * (b.data[row + j] as number);
    }
  }
  return out;
}

/** The first `count` columns of m [rows, cols] → [rows, count]. */
export function leadingColumns(m: HostMatrix, count: number): HostMatrix {
  const out = hostMatrix(m.rows, count); // [rows, count]
  for (let i = 0; i < m.rows; i++) for (let j = 0; j < count; j++) out.data[i * count + j] = m.data[i * m.cols + j] as number;
  return out;
}

/**
 * Thin Householder QR of x [m, n] with m ≥ n: x = Q·R, Q [m, n] with orthonormal columns, R [n, n] upper
 * triangular. Rank-deficient input (zero columns, e.g. a LoRA B at its zero init) still gives an orthonormal Q.
 */
export function householderQr(x: HostMatrix): { readonly q: HostMatrix; readonly r: HostMatrix } {
  const { rows: m, cols: n } = x;
  if (m < n) throw new Error(`householderQr needs rows ≥ columns, got ${m}×${n}`);
  const work = hostMatrix(m, n, x.data); // [m, n], becomes R in its top n rows
  const reflectors: Float64Array[] = []; // n unit vectors [m] (zero where the column needed no reflection)
  for (let j = 0; j < n; j++) {
    const v = new Float64Array(m); // [m]
    let norm = 0;
    for (let i = j; i < m; i++) norm += (work.data[i * n + j] as number) ** 2;
    norm = Math.sqrt(norm);
    if (norm > 0) {
      const head = work.data[j * n + j] as number;
      const alpha = head >= 0 ? -norm : norm;
      for (let i = j; i < m; i++) v[i] = work.data[i * n + j] as number;
      v[j] = head - alpha;
      let vNorm = 0;
      for (let i = j; i < m; i++) vNorm += (v[i] as number) ** 2;
      vNorm = Math.sqrt(vNorm);
      if (vNorm > 0) {
        for (let i = j; i < m; i++) v[i] = (v[i] as number) / vNorm;
        // work ← (I − 2vvᵀ)·work on rows j.., columns j..
        for (let c = j; c < n; c++) {
          let dot = 0;
          for (let i = j; i < m; i++) dot += (v[i] as number) * (work.data[i * n + c] as number);
          for (let i = j; i < m; i++) work.data[i * n + c] = (work.data[i * n + c] as number) - 2 * (v[i] as number) * dot;
        }
      }
    }
    reflectors.push(v);
  }
  const r = hostMatrix(n, n); // [n, n]
  for (let i = 0; i < n; i++) for (let j = i; j < n; j++) r.data[i * n + j] = work.data[i * n + j] as number;
  // Q = H_0 · H_1 ⋯ H_{n−1} · I[:, :n], applied right to left.
  const q = hostMatrix(m, n); // [m, n]
  for (let j = 0; j < n; j++) q.data[j * n + j] = 1;
  for (let j = n - 1; j >= 0; j--) {
    const v = reflectors[j] as Float64Array;
    for (let c = 0; c < n; c++) {
      let dot = 0;
      for (let i = j; i < m; i++) dot += (v[i] as number) * (q.data[i * n + c] as number);
      if (dot === 0) continue;
      for (let i = j; i < m; i++) q.data[i * n + c] = (q.data[i * n + c] as number) - 2 * (v[i] as number) * dot;
    }
  }
  return { q, r };
}

/** One-sided Jacobi SVD of a [m, n] with m ≥ n, on its columns. */
function jacobiTall(a: HostMatrix): ThinSvd {
  const { rows: m, cols: n } = a;
  const columns: Float64Array[] = []; // n columns [m], orthogonalised in place
  const vColumns: Float64Array[] = []; // n columns [n] of V
  for (let j = 0; j < n; j++) {
    const col = new Float64Array(m);
    for (let i = 0; i < m; i++) col[i] = a.data[i * n + j] as number;
    columns.push(col);
    const e = new Float64Array(n);
    e[j] = 1;
    vColumns.push(e);
  }
  for (let sweep = 0; sweep < MAX_SWEEPS; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const cp = columns[p] as Float64Array;
        const cq = columns[q] as Float64Array;
        let alpha = 0;
        let beta = 0;
        let gamma = 0;
        for (let i = 0; i < m; i++) {
          const x = cp[i] as number;
          const y = cq[i] as number;
          alpha += x * x;
          beta += y * y;
          gamma += x * y;
        }
        if (gamma === 0 || Math.abs(gamma) <= EPS * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        // The rotation that zeroes the (p, q) entry of the 2×2 Gram matrix [[α, γ], [γ, β]].
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < m; i++) {
          const x = cp[i] as number;
          const y = cq[i] as number;
          cp[i] = c * x - s * y;
          cq[i] = s * x + c * y;
        }
        const vp = vColumns[p] as Float64Array;
        const vq = vColumns[q] as Float64Array;
        for (let i = 0; i < n; i++) {
          const x = vp[i] as number;
          const y = vq[i] as number;
          vp[i] = c * x - s * y;
          vq[i] = s * x + c * y;
        }
      }
    }
    if (!rotated) break;
  }
  const norms = columns.map((col) => Math.sqrt(col.reduce((sum, x) => sum + x * x, 0)));
  const order = norms.map((_, j) => j).sort((x, y) => (norms[y] as number) - (norms[x] as number));
  const u = hostMatrix(m, n); // [m, n]
  const v = hostMatrix(n, n); // [n, n]
  const s = new Float64Array(n); // [n]
  order.forEach((j, k) => {
    const sigma = norms[j] as number;
    s[k] = sigma;
    const col = columns[j] as Float64Array;
    const vCol = vColumns[j] as Float64Array;
    for (let i = 0; i < n; i++) v.data[i * n + k] = vCol[i] as number;
    // A zero singular value leaves its left vector zero: it spans nothing of the range.
    if (sigma > 0) for (let i = 0; i < m; i++) u.data[i * n + k] = (col[i] as number) / sigma;
  });
  return { u, s, v };
}

/**
 * Thin SVD of any m [rows, cols]: U [rows, k], s [k] descending, V [cols, k], k = min(rows, cols). Left
 * vectors of zero singular values are zero (they span nothing of the range).
 */
export function svd(m: HostMatrix): ThinSvd {
  if (m.rows >= m.cols) return jacobiTall(m);
  const t = jacobiTall(transpose(m)); // Mᵀ = V·S·Uᵀ
  return { u: t.v, s: t.s, v: t.u };
}

/**
 * Thin SVD of the product b [m, r] · a [r, n] (times `scale`) without forming it: with b = Q_b·R_b and
 * aᵀ = Q_a·R_a, the product is Q_b·(scale·R_b·R_aᵀ)·Q_aᵀ, so the SVD of the r×r core C = U_c·S·V_cᵀ gives
 * U = Q_b·U_c, V = Q_a·V_c and the same singular values, exactly. Falls back to the dense SVD when r exceeds
 * m or n (the factors are then no smaller than the product).
 */
export function lowRankSvd(b: HostMatrix, a: HostMatrix, scale: number): ThinSvd {
  const r = b.cols;
  if (a.rows !== r) throw new Error(`lowRankSvd: B is ${b.rows}×${b.cols} but A is ${a.rows}×${a.cols}`);
  if (r > b.rows || r > a.cols) {
    const dense = multiply(b, a); // [m, n]
    for (let i = 0; i < dense.data.length; i++) dense.data[i] = (dense.data[i] as number) * scale;
    return svd(dense);
  }
  const qb = householderQr(b); // Q_b [m, r], R_b [r, r]
  const qa = householderQr(transpose(a)); // Q_a [n, r], R_a [r, r]
  const core = multiply(qb.r, transpose(qa.r)); // [r, r]
  for (let i = 0; i < core.data.length; i++) core.data[i] = (core.data[i] as number) * scale;
  const c = svd(core); // U_c [r, r], s [r], V_c [r, r]
  return { u: multiply(qb.q, c.u), s: c.s, v: multiply(qa.q, c.v) }; // U [m, r], V [n, r]
}
