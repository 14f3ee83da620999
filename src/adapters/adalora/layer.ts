/**
 * One AdaLoRA module at one site: Δy = s · ((dropout(x)·Qᵀ) ⊙ Λ)·Pᵀ, the SVD form of config.ts.
 *
 * Pruning is data, not shape: a pruned triplet has λᵢ = 0 (the budget controller writes the zero), so the
 * module's variables alone say what it computes, and a saved module reloads exactly. `activeRanks()` reads
 * which λᵢ are non-zero; `toLora` (export.ts) drops the others.
 *
 * This module computes its own product instead of going through the LoRA bank (adapters/lora/bank.ts): the
 * bank's per-rank factors (its spread) are host constants baked into cached operands and kernel layouts,
 * while Λ is a trainable vector whose zeros move during training. A trained AdaLoRA exported as a plain
 * LoRA (export.ts) goes through the bank like any LoRA.
 *
 * Shape letters: N token rows, I in width, O out width, r the initial rank.
 */
import * as tf from '@tensorflow/tfjs';
import type { DeltaModule, ModuleContext, ModulePlacement } from '../adapter.js';
import type { SiteName } from '../../base/sites.js';
import { readSync } from '../../backend-capabilities.js';
import { trainableVariable } from '../../variables.js';

export interface AdaloraShape {
  readonly rank: number;
  readonly alpha: number;
  readonly dropout: number;
  readonly init: 'zero-lambda' | 'random';
}

/** PEFT's AdaLoRA initialisation: N(0, 0.02²) for P and Q. */
const INIT_STD = 0.02;

export class AdaloraModule implements DeltaModule {
  readonly kind = 'adalora';
  readonly role = 'delta';
  readonly adapter: string;
  readonly layer: number;
  readonly point: ModulePlacement['point'];
  /** r: the initial rank (the length of Λ); pruning zeroes entries, it never shrinks the tensors. */
  readonly rank: number;
  /** alpha / r (PEFT divides by ranknum, the initial rank). */
  readonly scale: number;
  readonly dropout: number;
  readonly p: tf.Variable<tf.Rank.R2>; // [O, r] left singular vectors
  readonly lambda: tf.Variable<tf.Rank.R1>; // [r] singular values
  readonly q: tf.Variable<tf.Rank.R2>; // [r, I] right singular vectors

  constructor(placement: ModulePlacement, shape: AdaloraShape) {
    this.adapter = placement.adapter;
    this.layer = placement.layer;
    this.point = placement.point;
    this.rank = shape.rank;
    this.dropout = shape.dropout;
    this.scale = shape.alpha / shape.rank;
    const { inFeatures, outFeatures, seed } = placement;
    const name = `${placement.adapter}/layers.${placement.layer}.${this.site}/adalora`;
    this.p = trainableVariable(`${name}_P`, () => tf.randomNormal<tf.Rank.R2>([outFeatures, shape.rank], 0, INIT_STD, 'float32', seed)); // [O, r]
    this.lambda = trainableVariable(`${name}_E`, () =>
      shape.init === 'zero-lambda' ? tf.zeros<tf.Rank.R1>([shape.rank]) : tf.randomNormal<tf.Rank.R1>([shape.rank], 0, 1, 'float32', seed + 2),
    ); // [r]
    this.q = trainableVariable(`${name}_Q`, () => tf.randomNormal<tf.Rank.R2>([shape.rank, inFeatures], 0, INIT_STD, 'float32', seed + 1)); // [r, I]
  }

  get site(): SiteName {
    if (this.point.kind !== 'site-output') throw new Error('AdaLoRA attaches to site outputs only');
    return this.point.site;
  }

  delta(x: tf.Tensor2D, _y: tf.Tensor2D, context: ModuleContext): tf.Tensor2D {
    const input = context.training && this.dropout > 0 ? tf.dropout(x, this.dropout) : x; // [N, I]
    // Transposing the small matrices first keeps both matmuls on tfjs-wasm's fast (untransposed) path.
    const down = tf.matMul(input, tf.transpose(this.q)); // [N, I]·[I, r] → [N, r]
    const weighted = tf.mul<tf.Tensor2D>(down, tf.mul(this.lambda, this.scale)); // [N, r] ⊙ [r] → [N, r]
    return tf.matMul(weighted, tf.transpose(this.p)); // [N, r]·[r, O] → [N, O]
  }

  /** ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F (AdaLoRA's eq. 4): zero when P's columns and Q's rows are orthonormal. */
  orthogonality(): tf.Scalar {
    return tf.tidy(() => {
      const eye = tf.eye(this.rank); // [r, r]
      const pp = tf.sub(tf.matMul(this.p, this.p, true, false), eye); // [r, O]·[O, r] − I → [r, r]
      const qq = tf.sub(tf.matMul(this.q, this.q, false, true), eye); // [r, I]·[I, r] − I → [r, r]
      return tf.add(tf.sum(tf.square(pp)), tf.sum(tf.square(qq))); // []
    });
  }

  /** Which triplets are live (λᵢ ≠ 0), read from Λ: one host read. */
  activeRanks(): boolean[] {
    const values = readSync(this.lambda, "Reading an AdaLoRA module's ranks", 'Read ranks on wasm or cpu');
    return Array.from(values, (v) => v !== 0);
  }

  variables(): readonly tf.Variable[] {
    return [this.p, this.lambda, this.q];
  }

  dispose(): void {
    this.p.dispose();
    this.lambda.dispose();
    this.q.dispose();
  }
}
