/**
 * One LoRA module at one site. Shape letters: N token rows, I in width, O out width, r rank.
 */
import * as tf from '@tensorflow/tfjs';
import type { DeltaModule, ModuleContext, ModulePlacement } from '../adapter.js';
import { type LoraWeights, singleLoraDelta } from './bank.js';
import type { SiteName } from '../../base/sites.js';
import { trainableVariable } from '../../variables.js';

export interface LoraShape {
  readonly rank: number;
  readonly alpha: number;
  readonly rslora: boolean;
  readonly dropout: number;
  readonly init: 'zero-b' | 'random';
}

export function loraScale(alpha: number, rank: number, rslora: boolean): number {
  return rslora ? alpha / Math.sqrt(rank) : alpha / rank;
}

export class LoraModule implements DeltaModule, LoraWeights {
  readonly kind = 'lora';
  readonly role = 'delta';
  readonly adapter: string;
  readonly layer: number;
  readonly point: ModulePlacement['point'];
  readonly rank: number;
  readonly scale: number;
  readonly dropout: number;
  readonly a: tf.Variable<tf.Rank.R2>; // [r, I]
  readonly b: tf.Variable<tf.Rank.R2>; // [O, r]

  constructor(placement: ModulePlacement, shape: LoraShape) {
    this.adapter = placement.adapter;
    this.layer = placement.layer;
    this.point = placement.point;
    this.rank = shape.rank;
    this.dropout = shape.dropout;
    this.scale = loraScale(shape.alpha, shape.rank, shape.rslora);
    const { inFeatures, outFeatures, seed } = placement;
    const name = `${placement.adapter}/layers.${placement.layer}.${this.site}/lora`;
    // A: Kaiming-uniform bound 1/√I, as PEFT's kaiming_uniform_(a=√5) gives for a [r, I] weight.
    const bound = 1 / Math.sqrt(inFeatures);
    this.a = trainableVariable(`${name}_A`, () => tf.randomUniform<tf.Rank.R2>([shape.rank, inFeatures], -bound, bound, 'float32', seed)); // [r, I]
    this.b = trainableVariable(`${name}_B`, () =>
      shape.init === 'zero-b'
        ? tf.zeros<tf.Rank.R2>([outFeatures, shape.rank])
        : tf.randomUniform<tf.Rank.R2>([outFeatures, shape.rank], -bound, bound, 'float32', seed + 1),
    ); // [O, r]
  }

  get site(): SiteName {
    if (this.point.kind !== 'site-output') throw new Error('LoRA attaches to site outputs only');
    return this.point.site;
  }

  delta(x: tf.Tensor2D, _y: tf.Tensor2D, context: ModuleContext): tf.Tensor2D {
    return singleLoraDelta(this, x, context); // [N, O]
  }

  variables(): readonly tf.Variable[] {
    return [this.a, this.b];
  }

  dispose(): void {
    this.a.dispose();
    this.b.dispose();
  }
}
