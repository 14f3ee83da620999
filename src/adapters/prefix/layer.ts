/**
 * One layer's prefix (Li & Liang 2021): P key and value slots [1, P, Hk, Dh] that the attention of the layer
 * concatenates ahead of its cached and new keys/values. Keys are not rotated by RoPE.
 *
 * Plain prefixes are two variables. Reparameterised prefixes (the paper's §4.3) are an MLP's output:
 *   e [P, E] → tanh(e·W1ᵀ + b1) [P, E] → ·W2ᵀ + b2 [P, 2·Hk·Dh] → keys | values.
 * `collapse()` replaces the MLP by plain variables holding what it currently produces.
 *
 * Shape letters: P prefix slots, E reparameterisation width, Hk key/value heads, Dh head width,
 * C = Hk·Dh (one slot's key or value, flattened).
 */
import * as tf from '@tensorflow/tfjs';
import type { ModuleContext, ModulePlacement, PrefixModule } from '../adapter.js';
import { headDim } from '../../base/config.js';
import type { AttentionPrefix } from '../../base/hooks.js';
import { trainableVariable } from '../../variables.js';

export interface PrefixShape {
  /** P */
  readonly length: number;
  readonly reparameterize: boolean;
  /** E (used when reparameterize) */
  readonly hiddenDim: number;
}

/** Standard deviation of plain prefixes at initialisation. */
export const PREFIX_INIT_STD = 0.02;

interface PlainSource {
  readonly kind: 'plain';
  readonly keys: tf.Variable<tf.Rank.R4>; // [1, P, Hk, Dh]
  readonly values: tf.Variable<tf.Rank.R4>; // [1, P, Hk, Dh]
}

interface MlpSource {
  readonly kind: 'mlp';
  readonly embedding: tf.Variable<tf.Rank.R2>; // [P, E]
  readonly w1: tf.Variable<tf.Rank.R2>; // [E, E]
  readonly b1: tf.Variable<tf.Rank.R1>; // [E]
  readonly w2: tf.Variable<tf.Rank.R2>; // [2·C, E]
  readonly b2: tf.Variable<tf.Rank.R1>; // [2·C]
}

const trainable = trainableVariable;

export class PrefixTuningModule implements PrefixModule {
  readonly kind = 'prefix';
  readonly role = 'prefix';
  readonly adapter: string;
  readonly layer: number;
  readonly point: ModulePlacement['point'];
  /** P */
  readonly length: number;
  /** Hk */
  readonly kvHeads: number;
  /** Dh */
  readonly headDim: number;
  private readonly name: string;
  private source: PlainSource | MlpSource;

  constructor(placement: ModulePlacement, shape: PrefixShape) {
    if (placement.point.kind !== 'attention-prefix') throw new Error(`a prefix cannot attach at ${placement.point.kind}`);
    this.adapter = placement.adapter;
    this.layer = placement.layer;
    this.point = placement.point;
    this.length = shape.length;
    this.kvHeads = placement.model.nKvHeads;
    this.headDim = headDim(placement.model);
    this.name = `${placement.adapter}/layers.${placement.layer}/prefix`;
    const p = shape.length;
    const slot = this.kvHeads * this.headDim; // C
    const seed = placement.seed;
    if (!shape.reparameterize) {
      const slots: [number, number, number, number] = [1, p, this.kvHeads, this.headDim];
      this.source = {
        kind: 'plain',
        keys: trainable(`${this.name}_keys`, () => tf.randomNormal<tf.Rank.R4>(slots, 0, PREFIX_INIT_STD, 'float32', seed)), // [1, P, Hk, Dh]
        values: trainable(`${this.name}_values`, () => tf.randomNormal<tf.Rank.R4>(slots, 0, PREFIX_INIT_STD, 'float32', seed + 1)), // [1, P, Hk, Dh]
      };
      return;
    }
    // torch defaults, as PEFT's PrefixEncoder gets them: Embedding ~ N(0, 1); Linear weight and bias ~ U(±1/√fan_in).
    const e = shape.hiddenDim;
    const bound = 1 / Math.sqrt(e);
    this.source = {
      kind: 'mlp',
      embedding: trainable(`${this.name}_embedding`, () => tf.randomNormal<tf.Rank.R2>([p, e], 0, 1, 'float32', seed)), // [P, E]
      w1: trainable(`${this.name}_mlp.0.weight`, () => tf.randomUniform<tf.Rank.R2>([e, e], -bound, bound, 'float32', seed + 1)), // [E, E]
      b1: trainable(`${this.name}_mlp.0.bias`, () => tf.randomUniform<tf.Rank.R1>([e], -bound, bound, 'float32', seed + 2)), // [E]
      w2: trainable(`${this.name}_mlp.2.weight`, () => tf.randomUniform<tf.Rank.R2>([2 * slot, e], -bound, bound, 'float32', seed + 3)), // [2·C, E]
      b2: trainable(`${this.name}_mlp.2.bias`, () => tf.randomUniform<tf.Rank.R1>([2 * slot], -bound, bound, 'float32', seed + 4)), // [2·C]
    };
  }

  /** True while the prefixes come from the reparameterisation MLP (before collapse()). */
  get reparameterized(): boolean {
    return this.source.kind === 'mlp';
  }

  /** Key/value slots [1, P, Hk, Dh]. Runs inside the forward's tidy (plain prefixes are the variables themselves). */
  prefix(_context?: ModuleContext): AttentionPrefix {
    const source = this.source;
    if (source.kind === 'plain') return { keys: source.keys, values: source.values };
    const { length: p, kvHeads: hk, headDim: dh } = this;
    const slot = hk * dh; // C
    const hidden = tf.tanh(tf.add(tf.matMul(source.embedding, source.w1, false, true), source.b1)); // [P, E]
    const both = tf.add<tf.Tensor2D>(tf.matMul(hidden, source.w2, false, true), source.b2); // [P, 2·C]
    const keys = tf.reshape<tf.Rank.R4>(tf.slice(both, [0, 0], [p, slot]), [1, p, hk, dh]); // [1, P, Hk, Dh]
    const values = tf.reshape<tf.Rank.R4>(tf.slice(both, [0, slot], [p, slot]), [1, p, hk, dh]); // [1, P, Hk, Dh]
    return { keys, values };
  }

  /**
   * Replaces the reparameterisation MLP by plain key/value variables holding its current output (the
   * prefixes, and so the model's output, do not change). A no-op for plain prefixes.
   */
  collapse(): void {
    const source = this.source;
    if (source.kind === 'plain') return;
    const keys = trainableVariable(`${this.name}_keys`, () => this.prefix().keys); // [1, P, Hk, Dh]
    const values = trainableVariable(`${this.name}_values`, () => this.prefix().values); // [1, P, Hk, Dh]
    this.source = { kind: 'plain', keys, values };
    for (const variable of [source.embedding, source.w1, source.b1, source.w2, source.b2]) variable.dispose();
  }

  /** Plain: [keys, values]; reparameterised: [embedding, W1, b1, W2, b2]. */
  variables(): readonly tf.Variable[] {
    const source = this.source;
    return source.kind === 'plain' ? [source.keys, source.values] : [source.embedding, source.w1, source.b1, source.w2, source.b2];
  }

  dispose(): void {
    for (const variable of this.variables()) variable.dispose();
  }
}
