/**
 * The gating function's own WebGPU kernel for inference top-k (the fused group path's decision): per row,
 * scores → the k largest (ties: lower index first, as tf.topk) → softmax over the chosen → × the row mask,
 * in one WGSL pass instead of TopK's sort passes, a softmax and a mask product. It writes the ids or the
 * weights (a tfjs program has one output), so a decision costs two dispatches, each reading E scores per row.
 * The reference is gating.ts `topKSlots` (tfjs ops), which every other case (training, probability weighting,
 * capacity) still uses.
 *
 * Shape letters: R rows, E choices, K slots.
 */
import * as tf from '@tensorflow/tfjs';
import { activeWebGpuBackend, type WebGpuProgram } from '../webgpu-program.js';

const WORKGROUP = 64;
/** Most choices the kernel keeps per thread (its `taken` flags); more go to the reference. */
export const MAX_GATING_CHOICES = 256;

/**
 * WGSL that picks the k largest of `score(e)` over e < E (ties: the lower index, as tf.topk) into the local
 * arrays `ids[K]` and `vals[K]`, and sets `total` = Σ exp(vals[slot] − vals[0]) for the softmax over them.
 */
export function topKSelectWgsl(E: number, K: number, score: (e: string) => string): string {
  return `
        var taken : array<bool, ${E}>;
        var ids : array<i32, ${K}>;
        var vals : array<f32, ${K}>;
        for (var slot = 0; slot < ${K}; slot = slot + 1) {
          var best = -1;
          var bestValue = 0.0;
          for (var e = 0; e < ${E}; e = e + 1) {
            let v = ${score('e')};
            if (!taken[e] && (best < 0 || v > bestValue)) { best = e; bestValue = v; }
          }
          taken[best] = true;
          ids[slot] = best;
          vals[slot] = bestValue;
        }
        var total = 0.0;
        for (var slot = 0; slot < ${K}; slot = slot + 1) { total = total + exp(vals[slot] - vals[0]); }`;
}

function topKProgram(rows: number, choices: number, k: number, masked: boolean, emit: 'ids' | 'weights'): WebGpuProgram {
  const E = choices;
  const K = k;
  return {
    outputShape: [rows, K],
    shaderKey: `routedTopK_${E}_${K}_${masked}_${emit}`,
    dispatchLayout: { x: [0, 1] },
    dispatch: [Math.ceil(rows / WORKGROUP), 1, 1],
    variableNames: masked ? ['Scores', 'Mask'] : ['Scores'],
    workgroupSize: [WORKGROUP, 1, 1],
    size: true,
    getUserCode: () =>
      `
      fn main(index : i32) {
        let r = index;
        if (r * ${K} >= uniforms.size) { return; }
${topKSelectWgsl(E, K, (e) => `f32(Scores[r * ${E} + ${e}])`) /* f32(): a cast int32 tensor keeps its i32 buffer */}
        let rowMask = ${masked ? 'f32(Mask[r])' : '1.0'};
        for (var slot = 0; slot < ${K}; slot = slot + 1) {
          ${emit === 'ids' ? 'setOutputAtIndexI32(r * K_ + slot, ids[slot]);' : 'setOutputAtIndex(r * K_ + slot, exp(vals[slot] - vals[0]) / total * rowMask);'}
        }
      }
    `.replaceAll('K_', `${K}`),
  };
}

/** Inference top-k slots of `scores` [R, E] with softmax over the chosen and the row mask [R]; undefined hands back to the reference. */
export function webgpuTopKSlots(scores: tf.Tensor2D, mask: tf.Tensor1D | undefined, k: number): { expertIds: tf.Tensor2D; weights: tf.Tensor2D } | undefined {
  const [rows, choices] = scores.shape;
  if (rows === 0 || choices > MAX_GATING_CHOICES || k < 1 || k > choices || scores.dtype !== 'float32') return undefined;
  if (Math.ceil(rows / WORKGROUP) > 65535) return undefined;
  const backend = activeWebGpuBackend();
  if (backend === undefined) return undefined;
  const inputs: tf.TensorInfo[] = mask === undefined ? [scores] : [scores, mask.dtype === 'float32' ? mask : tf.cast(mask, 'float32')];
  const run = (emit: 'ids' | 'weights', dtype: tf.DataType) =>
    tf.engine().makeTensorFromTensorInfo(backend.runWebGPUProgram(topKProgram(rows, choices, k, mask !== undefined, emit), inputs, dtype)) as tf.Tensor2D;
  return { expertIds: run('ids', 'int32'), weights: run('weights', 'float32') }; // [R, K] each
}
