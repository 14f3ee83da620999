/**
 * AdaLoRA's importance scores (Zhang et al. 2023, §3.2, eqs. 8–10; PEFT's RankAllocator.update_ipt and
 * mask_to_budget). For every entry w of P, Λ and Q, after each optimizer step:
 *
 *   I(w)  = |w · ∂L/∂w|                          sensitivity
 *   Ī(w) ← β1·Ī(w) + (1 − β1)·I(w)                smoothed sensitivity
 *   Ū(w) ← β2·Ū(w) + (1 − β2)·|I(w) − Ī(w)|       uncertainty (with the Ī just updated)
 *   s(w)  = Ī(w) · Ū(w)
 *
 * and the score of triplet i is  S_i = s(λ_i) + mean_j s(P_ji) + mean_j s(Q_ij).
 *
 * The state lives on the device (two tensors per variable, kept between steps); only the scores [r] of every
 * module are read back, once per allocation.
 *
 * Shape letters: O out width, I in width, r the module's rank, M modules, Σr their ranks together.
 */
import * as tf from '@tensorflow/tfjs';
import { readSync } from '../../backend-capabilities.js';
import type { AdaloraModule } from './layer.js';

/** Ī and Ū of one variable. */
interface Moments {
  smooth: tf.Tensor; // Ī, the variable's shape
  uncertainty: tf.Tensor; // Ū, the variable's shape
}

export class ImportanceScores {
  private readonly state = new Map<tf.Variable, Moments>();

  constructor(
    readonly modules: readonly AdaloraModule[],
    readonly beta1: number,
    readonly beta2: number,
  ) {}

  /** One EMA step from the gradients just applied; a variable without a gradient counts as ∂L/∂w = 0. */
  update(gradOf: (variable: tf.Variable) => tf.Tensor | undefined): void {
    const { beta1, beta2 } = this;
    for (const module of this.modules) {
      for (const variable of module.variables()) {
        const previous = this.state.get(variable);
        const next = tf.tidy(() => {
          const grad = gradOf(variable);
          const sensitivity = grad === undefined ? tf.zerosLike(variable) : tf.abs(tf.mul(variable, grad)); // I, [...w]
          const smooth = previous === undefined ? tf.mul(sensitivity, 1 - beta1) : tf.add(tf.mul(previous.smooth, beta1), tf.mul(sensitivity, 1 - beta1)); // Ī
          const deviation = tf.mul(tf.abs(tf.sub(sensitivity, smooth)), 1 - beta2); // (1 − β2)·|I − Ī|
          const uncertainty = previous === undefined ? deviation : tf.add(tf.mul(previous.uncertainty, beta2), deviation); // Ū
          return { smooth, uncertainty };
        });
        if (previous !== undefined) tf.dispose([previous.smooth, previous.uncertainty]);
        this.state.set(variable, next);
      }
    }
  }

  /** S per module ([r] each, on the host); all zero before the first update. */
  scores(): Float32Array[] {
    if (this.modules.length === 0) return [];
    const values = tf.tidy(() => {
      const perModule = this.modules.map((m) => {
        const score = (v: tf.Variable): tf.Tensor => {
          const s = this.state.get(v);
          return s === undefined ? tf.zerosLike(v) : tf.mul(s.smooth, s.uncertainty); // s(w), [...w]
        };
        const p = tf.mean(score(m.p), 0); // [O, r] → [r]
        const q = tf.mean(score(m.q), 1); // [r, I] → [r]
        return tf.addN([score(m.lambda), p, q]); // [r]
      });
      return perModule.length === 1 ? (perModule[0] as tf.Tensor) : tf.concat(perModule); // [Σr]
    });
    const host = Float32Array.from(readSync(values, "AdaLoRA's rank allocation", 'Train on wasm or cpu'));
    values.dispose();
    const out: Float32Array[] = [];
    let offset = 0;
    for (const m of this.modules) {
      out.push(host.slice(offset, offset + m.rank));
      offset += m.rank;
    }
    return out;
  }

  dispose(): void {
    for (const s of this.state.values()) tf.dispose([s.smooth, s.uncertainty]);
    this.state.clear();
  }
}
