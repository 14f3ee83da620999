/**
 * Retention data in training: rows of base-domain text mixed into a task batch, scored against the frozen
 * base's own next-token distribution instead of the text (distillation, Hinton et al. 2015; used against
 * forgetting as in Learning without Forgetting, Li & Hoiem 2016):
 *
 *   KL(p_base ‖ p_model) = Σ_v p_base(v) · (log p_base(v) − log p_model(v)),  averaged over the rows' targets,
 *
 * where p_base comes from the SAME model with adapters off (`select: 'base'`, no copy of any weight) on the
 * same rows, computed before the gradient tape so that no gradient can reach it. The term is 0 exactly where
 * the adapted model equals the base, so it asks the routes to apply nothing on base-domain text and leaves
 * the task loss alone everywhere else.
 *
 * Mixing: the task rows come first, then the retention rows; both are right-padded to one width (padding at
 * the end of a row changes nothing before it: attention is causal). Retention rows have no loss-mask
 * targets of the task loss, their routers pool every real token (what serving sees of a document), and
 * `routing.retentionRows` marks them for the routes' retention terms (routing/retention-losses.ts).
 *
 * Shape letters: B rows (task + retention), Bt task rows, Br retention rows, T tokens, V vocabulary.
 */
import * as tf from '@tensorflow/tfjs';
import { ShapeError } from '../errors.js';
import { lmTargetWeights } from './losses.js';

type Rows = readonly (readonly number[])[];

/** Base-domain rows of a training batch (e.g. makeBatches over `{"text"}` lines). */
export interface RetentionRows {
  /** [Br, Tr] token ids, padding anywhere mask is 0. */
  readonly ids: Rows;
  /** [Br, Tr] 1 on real tokens. */
  readonly mask: Rows;
  /** [Br, Tr] 1 on the positions scored (default: every real token after the first, as for text). */
  readonly lossMask?: Rows;
}

/** A task batch with its retention rows appended (all [B, T] plain arrays). */
export interface MixedRows {
  readonly ids: number[][];
  readonly mask: number[][];
  /** The task targets only (0 on every retention row). */
  readonly lossMask: number[][];
  readonly routingMask: number[][];
  /** [B] 1 on retention rows. */
  readonly retentionRows: number[];
  /** Rows before the first retention row (Bt). */
  readonly taskRows: number;
  /** [Br][T − 1] target weights of the retention rows (losses.ts lmTargetWeights). */
  readonly retentionWeights: number[][];
  /** Counted retention targets (Σ retentionWeights). */
  readonly retentionTargets: number;
}

function checkRows(what: string, rows: Rows, like: Rows): void {
  if (rows.length !== like.length || rows.some((r, i) => r.length !== like[i]?.length)) {
    throw new ShapeError(`${what} must have the shape of retention.ids`, { path: what, hint: 'Give ids, mask and lossMask of one shape per retention row' });
  }
}

/** Appends retention rows to a task batch; `routingMask` of the task rows defaults to their mask. */
export function mixRetentionRows(
  task: { readonly ids: Rows; readonly mask: Rows; readonly lossMask: Rows; readonly routingMask?: Rows | undefined },
  retention: RetentionRows,
): MixedRows {
  checkRows('retention.mask', retention.mask, retention.ids);
  if (retention.lossMask !== undefined) checkRows('retention.lossMask', retention.lossMask, retention.ids);
  if (retention.ids.length === 0) throw new ShapeError('retention holds no rows', { path: 'retention.ids', hint: 'Omit retention, or give it rows' });
  const width = Math.max(...task.ids.map((r) => r.length), ...retention.ids.map((r) => r.length));
  const pad = (row: readonly number[], fill = 0): number[] => [...row, ...Array.from({ length: width - row.length }, () => fill)];
  const retentionLoss = retention.lossMask ?? retention.mask;
  const retentionMask = retention.mask.map((r) => pad(r));
  const retentionWeights = lmTargetWeights(
    retentionMask,
    retentionLoss.map((r) => pad(r)),
  );
  return {
    ids: [...task.ids.map((r) => pad(r)), ...retention.ids.map((r) => pad(r))],
    mask: [...task.mask.map((r) => pad(r)), ...retentionMask],
    lossMask: [...task.lossMask.map((r) => pad(r)), ...retention.ids.map(() => pad([]))],
    routingMask: [...(task.routingMask ?? task.mask).map((r) => pad(r)), ...retentionMask],
    retentionRows: [...task.ids.map(() => 0), ...retention.ids.map(() => 1)],
    taskRows: task.ids.length,
    retentionWeights,
    retentionTargets: retentionWeights.reduce((s, row) => s + row.reduce((a, w) => a + w, 0), 0),
  };
}

/** log p_base of the retention rows [Br, T − 1, V], from the model with adapters off (call outside any tape; caller disposes). */
export function baseLogProbs(forwardBase: (ids: number[][], mask: number[][]) => tf.Tensor, mixed: MixedRows): tf.Tensor3D {
  return tf.tidy(() => {
    const ids = mixed.ids.slice(mixed.taskRows);
    const mask = mixed.mask.slice(mixed.taskRows);
    const logits = forwardBase(ids, mask); // [Br, T, V]
    const [rows, tokens, vocab] = logits.shape as [number, number, number];
    return tf.logSoftmax(tf.slice(logits, [0, 0, 0], [rows, tokens - 1, vocab])) as tf.Tensor3D; // [Br, T−1, V]
  });
}

/**
 * Mean KL(p_base ‖ p_model) over the retention rows' targets, from the mixed forward's logits [B, T, V] and
 * the base's log-probabilities [Br, T − 1, V]. Call inside a tidy (inside the tape: differentiable in the
 * model's logits only).
 */
export function retentionKl(logits: tf.Tensor, base: tf.Tensor3D, mixed: MixedRows): tf.Scalar {
  const [rows, tokens, vocab] = logits.shape as [number, number, number];
  const retentionRows = rows - mixed.taskRows;
  const predicting = tf.slice(logits, [mixed.taskRows, 0, 0], [retentionRows, tokens - 1, vocab]); // [Br, T−1, V]
  const logModel = tf.logSoftmax(predicting); // [Br, T−1, V]
  const pBase = tf.exp(base); // [Br, T−1, V]
  const kl = tf.sum(tf.mul(pBase, tf.sub(base, logModel)), -1); // [Br, T−1]
  const w = tf.tensor2d(mixed.retentionWeights, [retentionRows, tokens - 1], 'float32'); // [Br, T−1]
  return tf.div(tf.sum(tf.mul(kl, w)), tf.maximum(tf.sum(w), 1)); // []
}
