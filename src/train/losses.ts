/**
 * Training losses.
 *
 * Causal LM: position t predicts token t+1, so logits[:, :-1] are scored against ids[:, 1:]. A target
 * position t counts when lossMask[t] = 1 and both t and t−1 are real tokens (mask), so prompts (lossMask 0)
 * and padding never contribute, and neither does a prediction made from a padding position. The loss is the
 * mean cross-entropy over counted targets (NaN when there are none: the trainer skips such batches).
 *
 * Sequence classification: a trainable linear head [D, C] (+ bias [C]) over the mask-weighted mean of the
 * final hidden states (forward `output: 'hidden'`), softmax cross-entropy against integer labels.
 *
 * Only ops with gradients on every backend: logSoftmax, a one-hot built as int32 then cast (tf.oneHot with
 * dtype float32 is wrong on wasm), multiply and sum — no sparse ops.
 *
 * Shape letters: B batch, T tokens, V vocabulary, D width, C classes.
 */
import * as tf from '@tensorflow/tfjs';
import { oneHotFloat } from '../base/one-hot.js';
import { ConfigError, ShapeError, formatShape } from '../errors.js';
import { trainableVariable } from '../variables.js';

type Rows = readonly (readonly number[])[];

/** Per-target weights [B][T−1]: lossMask at the target, and both the target and its source are real tokens. */
export function lmTargetWeights(mask: Rows | undefined, lossMask: Rows): number[][] {
  return lossMask.map((row, b) =>
    row.slice(1).map((l, i) => {
      const real = mask === undefined ? 1 : (mask[b]?.[i + 1] ?? 0) * (mask[b]?.[i] ?? 0);
      return l === 1 && real === 1 ? 1 : 0;
    }),
  );
}

/** Number of counted targets of a causal-LM batch. */
export function countLmTargets(mask: Rows | undefined, lossMask: Rows): number {
  return lmTargetWeights(mask, lossMask).reduce((s, row) => s + row.reduce((a, w) => a + w, 0), 0);
}

export interface LmLossInput {
  readonly ids: Rows;
  readonly mask?: Rows | undefined;
  readonly lossMask: Rows;
}

/** Mean next-token cross-entropy over counted targets. logits [B, T, V] → []. Call inside a tidy. */
export function causalLmLoss(logits: tf.Tensor, input: LmLossInput): tf.Scalar {
  const [batch, tokens, vocab] = logits.shape as [number, number, number];
  checkRows('ids', input.ids, batch, tokens);
  checkRows('lossMask', input.lossMask, batch, tokens);
  if (input.mask !== undefined) checkRows('mask', input.mask, batch, tokens);
  const weights = lmTargetWeights(input.mask, input.lossMask);
  const targetIds = input.ids.map((row) => row.slice(1));
  const predicting = tf.slice(logits, [0, 0, 0], [batch, tokens - 1, vocab]); // [B, T−1, V]
  const logProbs = tf.logSoftmax(predicting); // [B, T−1, V]
  const targets = oneHotFloat(tf.tensor2d(targetIds, [batch, tokens - 1], 'int32'), vocab); // [B, T−1, V]
  const nll = tf.neg(tf.sum(tf.mul(targets, logProbs), -1)); // [B, T−1]
  const w = tf.tensor2d(weights, [batch, tokens - 1], 'float32'); // [B, T−1]
  return tf.div(tf.sum(tf.mul(nll, w)), tf.sum(w)); // []  Σ w·nll / Σ w
}

/** Mean softmax cross-entropy of class logits [B, C] against labels [B]. Call inside a tidy. */
export function classificationLoss(logits: tf.Tensor2D, labels: readonly number[]): tf.Scalar {
  const [batch, classes] = logits.shape;
  if (labels.length !== batch) throw new ShapeError(`labels has ${labels.length} entries but the batch has ${batch} rows`, { path: 'labels' });
  for (const [i, label] of labels.entries()) {
    if (!Number.isInteger(label) || label < 0 || label >= classes) {
      throw new ShapeError(`label ${label} is not a class in [0, ${classes})`, { path: `labels[${i}]`, hint: 'Labels are integer class indices' });
    }
  }
  const logProbs = tf.logSoftmax(logits); // [B, C]
  const targets = oneHotFloat(tf.tensor1d([...labels], 'int32'), classes); // [B, C]
  return tf.div(tf.neg(tf.sum(tf.mul(targets, logProbs))), batch); // []
}

let heads = 0;

/** A trainable linear classifier over mean-pooled hidden states: W [D, C] ~ N(0, 0.02²) (seeded), b [C] = 0. */
/** Most weights a classification head may hold (2^28: 1 GiB of float32). */
export const MAX_HEAD_ELEMENTS = 2 ** 28;

export class ClassificationHead {
  readonly weight: tf.Variable<tf.Rank.R2>; // [D, C]
  readonly bias: tf.Variable<tf.Rank.R1>; // [C]

  constructor(
    readonly dim: number,
    readonly classes: number,
    seed = 0,
  ) {
    // Before allocating: a label table from a hostile dataset must not become a 10⁹-row head.
    if (!Number.isSafeInteger(dim * classes) || dim * classes > MAX_HEAD_ELEMENTS) {
      throw new ConfigError(
        `a classification head of ${classes} classes on width ${dim} would hold ${dim * classes} weights, more than the limit of ${MAX_HEAD_ELEMENTS}`,
        {
          path: 'objective.classes',
          hint: 'Use fewer distinct labels',
        },
      );
    }
    heads += 1;
    this.weight = trainableVariable(`head${heads}/weight`, () => tf.randomNormal<tf.Rank.R2>([dim, classes], 0, 0.02, 'float32', seed)); // [D, C]
    this.bias = trainableVariable(`head${heads}/bias`, () => tf.zeros<tf.Rank.R1>([classes])); // [C]
  }

  /** Class logits from final hidden states [B, T, D] pooled over real tokens (mask [B][T]) → [B, C]. */
  logits(hidden: tf.Tensor, mask: Rows): tf.Tensor2D {
    const [batch, tokens, dim] = hidden.shape as [number, number, number];
    if (hidden.rank !== 3 || dim !== this.dim) throw new ShapeError(`classification head expects hidden [B, T, ${this.dim}], got ${formatShape(hidden.shape)}`);
    checkRows('mask', mask, batch, tokens);
    return tf.tidy(() => {
      const m = tf.tensor2d(
        mask.map((r) => [...r]),
        [batch, tokens],
        'float32',
      ); // [B, T]
      const summed = tf.sum(tf.mul(hidden, tf.expandDims(m, 2)), 1); // [B, D]
      const pooled = tf.div(summed, tf.maximum(tf.sum(m, 1, true), 1)); // [B, D]
      return tf.add(tf.matMul(pooled as tf.Tensor2D, this.weight), this.bias); // [B, C]
    });
  }

  /** Stable names for the optimizer and checkpoints. */
  namedVariables(): Map<string, tf.Variable> {
    return new Map<string, tf.Variable>([
      ['head/weight', this.weight],
      ['head/bias', this.bias],
    ]);
  }

  variables(): tf.Variable[] {
    return [this.weight, this.bias];
  }

  dispose(): void {
    this.weight.dispose();
    this.bias.dispose();
  }
}

function checkRows(what: string, rows: Rows, batch: number, tokens: number): void {
  if (rows.length !== batch || rows.some((r) => r.length !== tokens)) {
    throw new ShapeError(`${what} must be [${batch}][${tokens}] like the logits`, { path: what, hint: 'ids, mask and lossMask must all have the batch shape' });
  }
}
