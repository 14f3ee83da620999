/**
 * The LoRA bank's own WebGPU kernel for routed top-k slots (Punica's SGMV / S-LoRA's BGMV, in WGSL): for every
 * row only its k chosen experts are touched — shrink x·A_eᵀ over the expert's own rank columns, then expand
 * ·B_eᵀ, both gathered by expert id. There is no E-wide product: the reference (bank.ts, tfjs ops) multiplies
 * x by every expert's A and zeroes the unchosen columns, this kernel never reads them.
 *
 *   one dispatch per site g, one workgroup per row n:
 *     t[k, j] = w[n,g,k] · factor(e) · Σ_i x[n, i] · A_catᵀ[i, g·Σr + start(e) + j]     e = ids[n,g,k], j < rank(e)
 *     (workgroup memory; barrier)
 *     Δ_g[n, o] = Σ_k Σ_{j < rank(e)} t[k, j] · B_gᵀ[start(e) + j, o]
 *
 * An expert's rank columns (start, rank) and factor (weight · scale) are constants of the bank's layout, so
 * they are written into the shader (exact float bits) and each layout compiles once; ranks may differ per
 * expert, and the null expert (no columns) or a zero weight contributes nothing.
 *
 * Dense gates [N, E] (mixed-adapter batches: membership, 1 on the row's own adapter; S-LoRA's MBGMV) take a
 * variant: each row reads its E gates and shrinks/expands only the columns of choices it gates non-zero,
 * with each site's own layout (no uniform layout needed).
 *
 * The kernel hands the call back (undefined) to the reference for anything else: 'ones' and host slots, a
 * choice whose columns are not one run with one factor, more rows than one dispatch dimension, or more
 * columns than workgroup memory holds. Inference only: training always uses the reference ops (gradients).
 * Inputs are read through f32()/i32(): tfjs-backend-webgpu's cast int32 → float32 keeps the int32 buffer
 * (only the tensor's dtype changes), so a "float32" gate tensor may arrive as array<i32>.
 *
 * Shape letters: N rows, I input width, O_g site g's output width, G sites, E choices, K slots per row,
 * Σr a site's total rank, R the largest expert rank.
 */
import * as tf from '@tensorflow/tfjs';
import { activeWebGpuBackend, type WebGpuBackendLike, type WebGpuProgram } from '../../webgpu-program.js';

/** What the kernel reads of a LoraBank (structural: bank.ts imports this file, not the other way round). */
export interface MixBank {
  readonly uniformLayout: boolean;
  readonly choices: number;
  readonly siteCount: number;
  readonly totalRanks: readonly number[];
  spreadOf(g: number): ArrayLike<number> | undefined;
}
/** What the kernel reads of the bank's operands. */
export interface MixOperands {
  readonly sites: readonly { readonly aT: tf.Tensor2D; readonly bT: tf.Tensor2D }[];
  readonly aCat: tf.Tensor2D | undefined;
}
/** The bank's gates; device top-k slots and dense (e.g. membership) gates are taken. */
export type MixGates =
  | { readonly kind: 'slots'; readonly ids: tf.Tensor2D; readonly weights: tf.Tensor2D }
  | { readonly kind: 'dense'; readonly gates: tf.Tensor2D | readonly tf.Tensor2D[] }
  | { readonly kind: 'ones' | 'host-slots' };

/** Threads per workgroup. */
const WORKGROUP = 64;
/** Most slot columns (K·R) one workgroup holds in memory (16 KiB of f32). */
export const MAX_SLOT_COLUMNS = 4096;
/** Most rows one dispatch covers (WebGPU's minimum maxComputeWorkgroupsPerDimension). */
const MAX_ROWS = 65535;

/** One choice's rank columns at every site: [start, start + rank) with one factor; rank 0 for a choice with none. */
export interface ChoiceRun {
  readonly start: number;
  readonly rank: number;
  readonly factor: number;
}

/**
 * Per choice its single run of equal non-zero spread, from the spread [E, Σr] on the host; undefined when a
 * choice has more than one run (then the kernel does not apply).
 */
export function choiceRuns(spread: ArrayLike<number>, choices: number, totalRank: number): ChoiceRun[] | undefined {
  const runs: ChoiceRun[] = [];
  for (let e = 0; e < choices; e++) {
    let run: ChoiceRun | undefined;
    for (let c = 0; c < totalRank; c++) {
      const v = spread[e * totalRank + c] as number;
      if (v === 0) continue;
      if (run === undefined) {
        let end = c;
        while (end < totalRank && spread[e * totalRank + end] === v) end++;
        run = { start: c, rank: end - c, factor: v };
        c = end - 1;
      } else return undefined; // a second run
    }
    runs.push(run ?? { start: 0, rank: 0, factor: 0 });
  }
  return runs;
}

const runsOfBank = new WeakMap<MixBank, ChoiceRun[] | null>();

/** The bank's runs, computed once per bank (the layout never changes; only the weights do). */
export function bankRuns(bank: MixBank): ChoiceRun[] | undefined {
  let runs = runsOfBank.get(bank);
  if (runs === undefined) {
    const spread = bank.spreadOf(0);
    runs = spread === undefined ? null : (choiceRuns(spread, bank.choices, bank.totalRanks[0] as number) ?? null);
    runsOfBank.set(bank, runs);
  }
  return runs ?? undefined;
}

const siteRunsOfBank = new WeakMap<MixBank, (ChoiceRun[] | null)[]>();

/** Site g's own runs (dense gates need no uniform layout), computed once per bank and site. */
function siteRuns(bank: MixBank, g: number): ChoiceRun[] | undefined {
  let all = siteRunsOfBank.get(bank);
  if (all === undefined) {
    all = Array.from({ length: bank.siteCount }, (_, site) => {
      const spread = bank.spreadOf(site);
      return spread === undefined ? null : (choiceRuns(spread, bank.choices, bank.totalRanks[site] as number) ?? null);
    });
    siteRunsOfBank.set(bank, all);
  }
  return all[g] ?? undefined;
}

/** Exact f32 literal for WGSL. */
export function wgslF32(value: number): string {
  const bits = new Uint32Array(new Float32Array([value]).buffer)[0] as number;
  return `bitcast<f32>(${bits}u)`;
}

/** The choices' rank runs as WGSL constants RUN_START, RUN_RANK, RUN_FACTOR (exact float bits). */
export function runTablesWgsl(runs: readonly ChoiceRun[]): string {
  const E = runs.length;
  const starts = runs.map((r) => `${r.start}`).join(', ');
  const ranks = runs.map((r) => `${r.rank}`).join(', ');
  const factors = runs.map((r) => wgslF32(r.factor)).join(', ');
  return `
      var<private> RUN_START : array<i32, ${E}> = array<i32, ${E}>(${starts});
      var<private> RUN_RANK : array<i32, ${E}> = array<i32, ${E}>(${ranks});
      var<private> RUN_FACTOR : array<f32, ${E}> = array<f32, ${E}>(${factors});`;
}

/** A shader-key part that names a layout exactly (starts, ranks, factors). */
export function runsKey(runs: readonly ChoiceRun[]): string {
  return `${runs.map((r) => r.start).join(',')}_${runs.map((r) => r.rank).join(',')}_${runs.map((r) => r.factor).join(',')}`;
}

/**
 * WGSL for row `n` of the routed mix, after `expert[K]` (chosen choice per slot, −1: none) is set: shrink the
 * chosen experts' own rank columns of A_cat into `shrunk[K·R]` (scaled by `weightOf(slot)` · factor), a
 * barrier, then expand by the same columns of B_gᵀ ('BT') and `emit(o, acc)` each output. The caller
 * declares RUN_* (runTablesWgsl), `expert` and `shrunk` (workgroup arrays), and `n`, `lane`, `rows`.
 */
export function shrinkExpandWgsl(p: {
  readonly inputWidth: number;
  readonly outputWidth: number;
  /** Columns of A_cat: G·Σr. */
  readonly aWidth: number;
  /** This site's first column in A_cat: g·Σr. */
  readonly columnOffset: number;
  readonly k: number;
  readonly maxRank: number;
  readonly weightOf: (slot: string) => string;
  readonly emit: (o: string, acc: string) => string;
}): string {
  const { inputWidth: I, outputWidth: O, k: K, maxRank: R } = p;
  return `
        for (var idx = lane; idx < ${K * R}; idx = idx + ${WORKGROUP}) {
          let slot = idx / ${R};
          let j = idx - slot * ${R};
          let e = expert[slot];
          var value = 0.0;
          if (e >= 0 && j < RUN_RANK[e]) {
            let column = ${p.columnOffset} + RUN_START[e] + j;
            var acc = 0.0;
            for (var i = 0; i < ${I}; i = i + 1) {
              acc = acc + f32(X[n * ${I} + i]) * f32(ACat[i * ${p.aWidth} + column]);
            }
            value = acc * (${p.weightOf('slot')} * RUN_FACTOR[e]);
          }
          shrunk[idx] = value;
        }
        workgroupBarrier();
        for (var o = lane; o < ${O} && n < rows; o = o + ${WORKGROUP}) {
          var acc = 0.0;
          for (var slot = 0; slot < ${K}; slot = slot + 1) {
            let e = expert[slot];
            if (e < 0) { continue; }
            let start = RUN_START[e];
            for (var j = 0; j < RUN_RANK[e]; j = j + 1) {
              acc = acc + shrunk[slot * ${R} + j] * f32(BT[(start + j) * ${O} + o]);
            }
          }
          ${p.emit('o', 'acc')}
        }`;
}

/** The routed-LoRA program of one site: one workgroup per row, output [N, O]. */
function routedLoraProgram(p: {
  rows: number;
  inputWidth: number;
  outputWidth: number;
  sites: number;
  site: number;
  totalRank: number;
  k: number;
  runs: readonly ChoiceRun[];
}): WebGpuProgram {
  const { inputWidth: I, outputWidth: O, sites: G, site: g, totalRank: SR, k: K, runs } = p;
  const R = Math.max(1, ...runs.map((r) => r.rank));
  const E = runs.length;
  return {
    outputShape: [p.rows, O],
    shaderKey: `routedLora_${I}_${O}_${G}_${g}_${SR}_${K}_${runsKey(runs)}`,
    dispatchLayout: { x: [0], y: [1] }, // not flat: main() reads workgroupId / localId itself
    dispatch: [p.rows, 1, 1],
    variableNames: ['X', 'ACat', 'Ids', 'W', 'BT'],
    workgroupSize: [WORKGROUP, 1, 1],
    getUserCode: () => `${runTablesWgsl(runs)}
      var<workgroup> shrunk : array<f32, ${K * R}>;
      var<workgroup> expert : array<i32, ${K}>;

      fn main() {
        let n = i32(workgroupId.x);
        let rows = uniforms.outShape[0]; // (reading it keeps the uniforms binding in the pipeline layout)
        let lane = i32(localId.x);
        let slotRow = (n * ${G} + ${g}) * ${K};
        if (lane < ${K}) {
          let e = i32(Ids[slotRow + lane]);
          let w = f32(W[slotRow + lane]);
          expert[lane] = select(-1, e, w != 0.0 && e >= 0 && e < ${E});
        }
        workgroupBarrier();
        // Shrink only the chosen experts' own rank columns, then expand the same columns of B.${shrinkExpandWgsl({
          inputWidth: I,
          outputWidth: O,
          aWidth: G * SR,
          columnOffset: g * SR,
          k: K,
          maxRank: R,
          weightOf: (slot) => `f32(W[slotRow + ${slot}])`,
          emit: (o, acc) => `setOutputAtIndex(n * ${O} + ${o}, ${acc});`,
        })}
      }
    `,
  };
}

/** Most rank columns of a site the dense variant holds in workgroup memory. */
export const MAX_DENSE_COLUMNS = 4096;
/** Most choices the dense variant reads per row. */
export const MAX_DENSE_CHOICES = 256;

/**
 * The dense-gate (membership, BGMV) variant for one site: each row reads its E gates and touches only the
 * choices whose gate is non-zero — in a mixed-adapter batch, the row's own adapter. Output [N, O].
 */
function denseLoraProgram(p: { rows: number; inputWidth: number; outputWidth: number; totalRank: number; runs: readonly ChoiceRun[] }): WebGpuProgram {
  const { inputWidth: I, outputWidth: O, totalRank: SR, runs } = p;
  const E = runs.length;
  const owner = new Array<number>(SR).fill(-1);
  runs.forEach((r, e) => {
    for (let j = 0; j < r.rank; j++) owner[r.start + j] = e;
  });
  return {
    outputShape: [p.rows, O],
    shaderKey: `denseLora_${I}_${O}_${SR}_${runsKey(runs)}`,
    dispatchLayout: { x: [0], y: [1] },
    dispatch: [p.rows, 1, 1],
    variableNames: ['X', 'AT', 'Gates', 'BT'],
    workgroupSize: [WORKGROUP, 1, 1],
    getUserCode: () => `${runTablesWgsl(runs)}
      var<private> OWNER : array<i32, ${SR}> = array<i32, ${SR}>(${owner.join(', ')});
      var<workgroup> shrunk : array<f32, ${SR}>;
      var<workgroup> gate : array<f32, ${E}>;

      fn main() {
        let n = i32(workgroupId.x);
        let rows = uniforms.outShape[0]; // (reading it keeps the uniforms binding in the pipeline layout)
        let lane = i32(localId.x);
        for (var e = lane; e < ${E}; e = e + ${WORKGROUP}) { gate[e] = f32(Gates[n * ${E} + e]); }
        workgroupBarrier();
        // Shrink: only the columns of choices this row gates (its own adapter in a mixed batch).
        for (var c = lane; c < ${SR}; c = c + ${WORKGROUP}) {
          let e = OWNER[c];
          var value = 0.0;
          if (e >= 0 && gate[e] != 0.0) {
            var acc = 0.0;
            for (var i = 0; i < ${I}; i = i + 1) {
              acc = acc + f32(X[n * ${I} + i]) * f32(AT[i * ${SR} + c]);
            }
            value = acc * (gate[e] * RUN_FACTOR[e]);
          }
          shrunk[c] = value;
        }
        workgroupBarrier();
        // Expand: the same columns of B, choice by choice.
        for (var o = lane; o < ${O} && n < rows; o = o + ${WORKGROUP}) {
          var acc = 0.0;
          for (var e = 0; e < ${E}; e = e + 1) {
            if (gate[e] == 0.0) { continue; }
            let start = RUN_START[e];
            for (var j = 0; j < RUN_RANK[e]; j = j + 1) {
              acc = acc + shrunk[start + j] * f32(BT[(start + j) * ${O} + o]);
            }
          }
          setOutputAtIndex(n * ${O} + o, acc);
        }
      }
    `,
  };
}

/** Dense gates: per site its own runs and A; undefined hands back when any site is not covered. */
function denseMix(
  bank: MixBank,
  operands: MixOperands,
  x: tf.Tensor2D,
  gates: tf.Tensor2D | readonly tf.Tensor2D[],
  backend: WebGpuBackendLike,
): tf.Tensor2D[] | undefined {
  const rows = x.shape[0];
  const plans = operands.sites.map((site, g) => {
    const runs = siteRuns(bank, g);
    const siteGates = Array.isArray(gates) ? (gates as readonly tf.Tensor2D[])[g] : (gates as tf.Tensor2D);
    const totalRank = bank.totalRanks[g] as number;
    if (runs === undefined || siteGates === undefined || totalRank === 0 || totalRank > MAX_DENSE_COLUMNS || bank.choices > MAX_DENSE_CHOICES) return undefined;
    if (siteGates.shape[0] !== rows || siteGates.shape[1] !== bank.choices) return undefined;
    return { site, runs, siteGates, totalRank };
  });
  if (plans.some((plan) => plan === undefined)) return undefined;
  const input = x.dtype === 'float32' ? x : tf.cast(x, 'float32'); // [N, I]
  return plans.map((plan) => {
    const { site, runs, siteGates, totalRank } = plan as NonNullable<(typeof plans)[number]>;
    const program = denseLoraProgram({ rows, inputWidth: x.shape[1], outputWidth: site.bT.shape[1], totalRank, runs });
    const g32 = siteGates.dtype === 'float32' ? siteGates : tf.cast(siteGates, 'float32');
    const info = backend.runWebGPUProgram(program, [input, site.aT, g32, site.bT], 'float32');
    return tf.engine().makeTensorFromTensorInfo(info) as tf.Tensor2D; // [N, O_g]
  });
}

/** Δ_g for every site of a bank over device top-k slots, one dispatch per site; undefined hands back to the reference. */
export function webgpuLoraMix(bank: MixBank, operands: MixOperands, x: tf.Tensor2D, gates: MixGates): tf.Tensor2D[] | undefined {
  const rows = x.shape[0];
  if (rows === 0 || rows > MAX_ROWS) return undefined;
  if (gates.kind === 'dense') {
    const dense = activeWebGpuBackend();
    return dense === undefined ? undefined : denseMix(bank, operands, x, gates.gates, dense);
  }
  if (gates.kind !== 'slots' || !bank.uniformLayout || operands.aCat === undefined) return undefined;
  const k = gates.ids.shape[1];
  const runs = bankRuns(bank);
  if (runs === undefined) return undefined;
  const maxRank = Math.max(1, ...runs.map((r) => r.rank));
  if (k * maxRank > MAX_SLOT_COLUMNS || k > WORKGROUP) return undefined;
  const backend = activeWebGpuBackend();
  if (backend === undefined) return undefined;
  const ids = gates.ids.dtype === 'int32' ? gates.ids : tf.cast(gates.ids, 'int32'); // [N·G, K]
  const weights = gates.weights.dtype === 'float32' ? gates.weights : tf.cast(gates.weights, 'float32'); // [N·G, K]
  const input = x.dtype === 'float32' ? x : tf.cast(x, 'float32'); // [N, I]
  return operands.sites.map((site, g) => {
    const program = routedLoraProgram({
      rows,
      inputWidth: x.shape[1],
      outputWidth: site.bT.shape[1],
      sites: bank.siteCount,
      site: g,
      totalRank: bank.totalRanks[0] as number,
      k,
      runs,
    });
    const info = backend.runWebGPUProgram(program, [input, operands.aCat as tf.Tensor2D, ids, weights, site.bT], 'float32');
    return tf.engine().makeTensorFromTensorInfo(info) as tf.Tensor2D; // [N, O_g], owned by the caller's tidy
  });
}
