/**
 * One bottleneck adapter at one sub-block output (Houlsby et al. 2019; Pfeiffer et al. 2020):
 * Δ(h) = dropout(up(act(down(h)))), with down: D → r and up: r → D, both with a bias. Weights are stored in
 * the [out, in] layout of torch.nn.Linear so they map one-to-one onto AdapterHub / PEFT checkpoints.
 *
 * Shape letters: N token rows (B·T), D model width, r bottleneck width.
 */
import * as tf from '@tensorflow/tfjs';
import type { DeltaModule, ModuleContext, ModulePlacement } from '../adapter.js';
import type { BlockName } from '../../base/sites.js';
import { trainableVariable } from '../../variables.js';

export type BottleneckActivation = 'relu' | 'gelu' | 'silu' | 'tanh';

export interface BottleneckShape {
  /** r */
  readonly width: number;
  readonly activation: BottleneckActivation;
  readonly dropout: number;
  readonly init: 'zero-up' | 'random';
}

/** The adapter's non-linearity: x [N, r] → [N, r]. */
export function activate(x: tf.Tensor2D, activation: BottleneckActivation): tf.Tensor2D {
  switch (activation) {
    case 'relu':
      return tf.relu(x); // [N, r]
    case 'gelu':
      // Exact GELU (Hendrycks & Gimpel 2016): x·Φ(x) = ½·x·(1 + erf(x/√2)), as torch's nn.GELU().
      return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)); // [N, r]
    case 'silu':
      return tf.mul(x, tf.sigmoid(x)); // [N, r]  SiLU / swish (Elfwing et al. 2018)
    case 'tanh':
      return tf.tanh(x); // [N, r]
  }
}

export class BottleneckModule implements DeltaModule {
  readonly kind = 'bottleneck';
  readonly role = 'delta';
  readonly adapter: string;
  readonly layer: number;
  readonly point: ModulePlacement['point'];
  readonly width: number;
  readonly activation: BottleneckActivation;
  readonly dropout: number;
  readonly downWeight: tf.Variable<tf.Rank.R2>; // [r, D]
  readonly downBias: tf.Variable<tf.Rank.R1>; // [r]
  readonly upWeight: tf.Variable<tf.Rank.R2>; // [D, r]
  readonly upBias: tf.Variable<tf.Rank.R1>; // [D]

  constructor(placement: ModulePlacement, shape: BottleneckShape) {
    if (placement.point.kind !== 'block-output') throw new Error(`a bottleneck adapter cannot attach at ${placement.point.kind}`);
    if (placement.inFeatures !== placement.outFeatures) {
      throw new Error(`a bottleneck adapter needs equal in/out widths at a block output, got ${placement.inFeatures} and ${placement.outFeatures}`);
    }
    this.adapter = placement.adapter;
    this.layer = placement.layer;
    this.point = placement.point;
    this.width = shape.width;
    this.activation = shape.activation;
    this.dropout = shape.dropout;
    const dim = placement.inFeatures;
    const r = shape.width;
    const seed = placement.seed;
    const name = `${placement.adapter}/layers.${placement.layer}.${this.block}/bottleneck`;
    // Kaiming-uniform bounds 1/√fan_in, as torch.nn.Linear initialises its weight.
    const downBound = 1 / Math.sqrt(dim);
    const upBound = 1 / Math.sqrt(r);
    this.downWeight = trainableVariable(`${name}_down.weight`, () => tf.randomUniform<tf.Rank.R2>([r, dim], -downBound, downBound, 'float32', seed)); // [r, D]
    this.downBias = trainableVariable(`${name}_down.bias`, () => tf.zeros<tf.Rank.R1>([r])); // [r]
    this.upWeight = trainableVariable(`${name}_up.weight`, () =>
      shape.init === 'zero-up' ? tf.zeros<tf.Rank.R2>([dim, r]) : tf.randomUniform<tf.Rank.R2>([dim, r], -upBound, upBound, 'float32', seed + 1),
    ); // [D, r]
    this.upBias = trainableVariable(`${name}_up.bias`, () => tf.zeros<tf.Rank.R1>([dim])); // [D]
  }

  get block(): BlockName {
    if (this.point.kind !== 'block-output') throw new Error('bottleneck adapters attach to block outputs only');
    return this.point.block;
  }

  /** x = y = h, the sub-block output [N, D] → Δ [N, D]. */
  delta(x: tf.Tensor2D, _y: tf.Tensor2D, context: ModuleContext): tf.Tensor2D {
    const down = tf.add<tf.Tensor2D>(tf.matMul(x, this.downWeight, false, true), this.downBias); // [N, r]
    const hidden = activate(down, this.activation); // [N, r]
    const up = tf.add<tf.Tensor2D>(tf.matMul(hidden, this.upWeight, false, true), this.upBias); // [N, D]
    return context.training && this.dropout > 0 ? (tf.dropout(up, this.dropout) as tf.Tensor2D) : up; // [N, D]
  }

  variables(): readonly tf.Variable[] {
    return [this.downWeight, this.downBias, this.upWeight, this.upBias];
  }

  dispose(): void {
    for (const variable of this.variables()) variable.dispose();
  }
}
