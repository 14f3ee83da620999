/**
 * One WebGPU dispatch per routed site at inference: the site's router, its gating and its LoRA experts, added
 * to the frozen output, in a single WGSL pass. Per row n (one workgroup per row):
 *
 *   s[e]    = Σ_i x[n, i] · W[i, e] / τ                  the linear router's scores, E lanes in parallel
 *   ids, v  = the k largest s (ties: lower index first)   one lane; then w = softmax(v) · mask[n]
 *   t[k, j] = w_k · factor(e_k) · Σ_i x[n, i] · A_catᵀ[i, g·Σr + start(e_k) + j]      j < rank(e_k)
 *   out[n, o] = y[n, o] + Σ_k Σ_j t[k, j] · B_gᵀ[start(e_k) + j, o]
 *
 * It is the composition of what the fused group path does with separate dispatches — the router matmul,
 * gating.ts `topKSlots` (inference), the LoRA bank's routed mix (lora/webgpu-mix.ts) and the add — and those
 * ops are its reference (test/webgpu/routed-site-kernel.test.ts). A routed site group then costs one dispatch
 * per site: q/k/v three, down one.
 *
 * Undefined hands the call back (to the separate dispatches) for anything it does not cover: another backend,
 * a bank without one rank layout or whose choices are not one run of rank columns each, more choices, slot
 * columns or rows than the kernel holds. Inference only (no gradient); traces take the other path, which
 * reads the gates back.
 *
 * Shape letters: N rows, I input width, O site output width, E choices, K slots, G the bank's sites, Σr one
 * site's total rank, R the largest expert rank.
 */
import * as tf from '@tensorflow/tfjs';
import type { LoraBank } from '../adapters/lora/bank.js';
import { bankRuns, type ChoiceRun, MAX_SLOT_COLUMNS, runsKey, runTablesWgsl, shrinkExpandWgsl, wgslF32 } from '../adapters/lora/webgpu-mix.js';
import { activeWebGpuBackend, type WebGpuProgram } from '../webgpu-program.js';
import { MAX_GATING_CHOICES, topKSelectWgsl } from './webgpu-gating.js';
import type { LinearTopK } from './router.js';

const WORKGROUP = 64;
/** Most rows one dispatch covers (WebGPU's minimum maxComputeWorkgroupsPerDimension). */
const MAX_ROWS = 65535;

interface SiteProgram {
  readonly rows: number;
  readonly inputWidth: number;
  readonly outputWidth: number;
  readonly sites: number;
  readonly site: number;
  readonly totalRank: number;
  readonly k: number;
  readonly temperature: number;
  readonly masked: boolean;
  readonly runs: readonly ChoiceRun[];
}

function routedSiteProgram(p: SiteProgram): WebGpuProgram {
  const { inputWidth: I, outputWidth: O, sites: G, site: g, totalRank: SR, k: K, runs } = p;
  const E = runs.length;
  const R = Math.max(1, ...runs.map((r) => r.rank));
  // The reference divides the scores only when τ ≠ 1 (fused-group.ts), so the kernel does the same.
  const scale = p.temperature === 1 ? '' : ` / ${wgslF32(p.temperature)}`;
  return {
    outputShape: [p.rows, O],
    shaderKey: `routedSite_${I}_${O}_${G}_${g}_${SR}_${K}_${p.temperature}_${p.masked}_${runsKey(runs)}`,
    dispatchLayout: { x: [0], y: [1] }, // not flat: main() reads workgroupId / localId itself
    dispatch: [p.rows, 1, 1],
    variableNames: p.masked ? ['X', 'Gate', 'ACat', 'BT', 'Y', 'Mask'] : ['X', 'Gate', 'ACat', 'BT', 'Y'],
    workgroupSize: [WORKGROUP, 1, 1],
    getUserCode: () => `${runTablesWgsl(runs)}
      var<workgroup> score : array<f32, ${E}>;
      var<workgroup> expert : array<i32, ${K}>;
      var<workgroup> weight : array<f32, ${K}>;
      var<workgroup> shrunk : array<f32, ${K * R}>;

      fn main() {
        let n = i32(workgroupId.x);
        let rows = uniforms.outShape[0]; // (reading it keeps the uniforms binding in the pipeline layout)
        let lane = i32(localId.x);
        // The router: one score per choice, lanes in parallel.
        for (var e = lane; e < ${E}; e = e + ${WORKGROUP}) {
          var acc = 0.0;
          for (var i = 0; i < ${I}; i = i + 1) {
            acc = acc + f32(X[n * ${I} + i]) * f32(Gate[i * ${E} + e]);
          }
          score[e] = acc${scale};
        }
        workgroupBarrier();
        // The gating: top-k (ties to the lower index), softmax over the chosen, the row mask.
        if (lane == 0) {${topKSelectWgsl(E, K, (e) => `score[${e}]`)}
          let rowMask = ${p.masked ? 'f32(Mask[n])' : '1.0'};
          for (var slot = 0; slot < ${K}; slot = slot + 1) {
            let w = exp(vals[slot] - vals[0]) / total * rowMask;
            weight[slot] = w;
            expert[slot] = select(ids[slot], -1, w == 0.0);
          }
        }
        workgroupBarrier();
        // The chosen experts' shrink and expand, added to the frozen output.${shrinkExpandWgsl({
          inputWidth: I,
          outputWidth: O,
          aWidth: G * SR,
          columnOffset: g * SR,
          k: K,
          maxRank: R,
          weightOf: (slot) => `weight[${slot}]`,
          emit: (o, acc) => `setOutputAtIndex(n * ${O} + ${o}, f32(Y[n * ${O} + ${o}]) + ${acc});`,
        })}
      }
    `,
  };
}

/**
 * The outputs y_g + Δ_g of every bank site for x [N, I], each site routed by its own linear top-k gate
 * (`gates[g]`, one k and τ for all); ys [N, O_g] are the frozen outputs in bank order, mask [N] the token
 * mask (undefined: no padding). Undefined hands back to the separate dispatches.
 */
export function webgpuRoutedSiteOutputs(
  gates: readonly LinearTopK[],
  bank: LoraBank,
  x: tf.Tensor2D,
  ys: readonly tf.Tensor2D[],
  mask: tf.Tensor1D | undefined,
): tf.Tensor2D[] | undefined {
  const rows = x.shape[0];
  const backend = activeWebGpuBackend();
  if (backend === undefined || rows === 0 || rows > MAX_ROWS || !bank.uniformLayout || x.dtype !== 'float32') return undefined;
  if (bank.choices > MAX_GATING_CHOICES || gates.length !== bank.siteCount) return undefined;
  const { k, temperature } = gates[0] as LinearTopK;
  const runs = bankRuns(bank);
  if (runs === undefined || k < 1 || k > bank.choices || k > WORKGROUP) return undefined;
  if (k * Math.max(1, ...runs.map((r) => r.rank)) > MAX_SLOT_COLUMNS) return undefined;
  const operands = bank.operands({ training: false });
  if (operands.aCat === undefined || ys.length !== operands.sites.length) return undefined;
  for (const [g, y] of ys.entries()) {
    if (y.dtype !== 'float32' || y.shape[0] !== rows || y.shape[1] !== (operands.sites[g] as { bT: tf.Tensor2D }).bT.shape[1]) return undefined;
  }
  const rowMask = mask === undefined || mask.dtype === 'float32' ? mask : tf.cast(mask, 'float32'); // [N]
  return operands.sites.map((site, g) => {
    const y = ys[g] as tf.Tensor2D; // [N, O_g]
    const program = routedSiteProgram({
      rows,
      inputWidth: x.shape[1],
      outputWidth: site.bT.shape[1],
      sites: bank.siteCount,
      site: g,
      totalRank: bank.totalRanks[0] as number,
      k,
      temperature,
      masked: rowMask !== undefined,
      runs,
    });
    const inputs: tf.TensorInfo[] = [x, (gates[g] as LinearTopK).gate, operands.aCat as tf.Tensor2D, site.bT, y];
    if (rowMask !== undefined) inputs.push(rowMask);
    return tf.engine().makeTensorFromTensorInfo(backend.runWebGPUProgram(program, inputs, 'float32')) as tf.Tensor2D; // [N, O_g]
  });
}
