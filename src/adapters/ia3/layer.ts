/**
 * One (IA)³ scaling vector at one site (Liu et al. 2022). At a site output, Δ = y·(l − 1) with l [O]; at a
 * site input, Δ = x·(l − 1) with l [I]. So y + Δ = y·l (or x·l): the paper's rescaling, written as a delta.
 * l starts at exactly one, so l − 1 = 0 exactly and a fresh module's delta is exactly zero.
 *
 * Shape letters: N token rows (B·T), I site input width, O site output width, W the scaled width (I or O).
 */
import * as tf from '@tensorflow/tfjs';
import type { DeltaModule, ModuleContext, ModulePlacement } from '../adapter.js';
import type { SiteName } from '../../base/sites.js';
import { trainableVariable } from '../../variables.js';

export class Ia3Module implements DeltaModule {
  readonly kind = 'ia3';
  readonly role = 'delta';
  readonly adapter: string;
  readonly layer: number;
  readonly point: ModulePlacement['point'];
  /** l, the learned scale: [W] (W = O at a site output, I at a site input). */
  readonly scale: tf.Variable<tf.Rank.R1>;

  constructor(placement: ModulePlacement) {
    const point = placement.point;
    if (point.kind !== 'site-output' && point.kind !== 'site-input') throw new Error(`(IA)³ cannot attach at ${point.kind}`);
    this.adapter = placement.adapter;
    this.layer = placement.layer;
    this.point = point;
    const width = point.kind === 'site-input' ? placement.inFeatures : placement.outFeatures; // W
    const name = `${placement.adapter}/layers.${placement.layer}.${point.site}${point.kind === 'site-input' ? ':input' : ''}/ia3_l`;
    this.scale = trainableVariable(name, () => tf.ones<tf.Rank.R1>([width])); // [W]
  }

  get site(): SiteName {
    if (this.point.kind !== 'site-output' && this.point.kind !== 'site-input') throw new Error('(IA)³ attaches to sites only');
    return this.point.site;
  }

  /** Site output: x [N, I], y [N, O] → y·(l − 1) [N, O]. Site input: x = y [N, I] → x·(l − 1) [N, I]. */
  delta(x: tf.Tensor2D, y: tf.Tensor2D, _context: ModuleContext): tf.Tensor2D {
    const scaled = this.point.kind === 'site-input' ? x : y; // [N, W]
    return tf.mul(scaled, tf.sub(this.scale, 1)); // [N, W]
  }

  variables(): readonly tf.Variable[] {
    return [this.scale];
  }

  dispose(): void {
    this.scale.dispose();
  }
}
