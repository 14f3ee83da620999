/**
 * AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019, "Decoupled Weight Decay
 * Regularization"), written over tf ops because tfjs 4.22 has Adam but no AdamW. Per parameter p with
 * gradient g, its own step count t, learning rate lr and weight decay wd:
 *   m ← β1·m + (1−β1)·g            v ← β2·v + (1−β2)·g²
 *   m̂ = m / (1−β1ᵗ)                v̂ = v / (1−β2ᵗ)
 *   p ← p − lr·(m̂/(√v̂ + ε) + wd·p)  computed as  p·(1 − lr·wd) − lr·m̂/(√v̂ + ε)  (as PyTorch's AdamW does),
 * so with a zero gradient p shrinks by exactly the factor (1 − lr·wd).
 *
 * ε defaults to 1e-8 (the paper's and PyTorch's value), not tfjs Adam's 1e-7: adapter gradients are often
 * tiny (LoRA A while B is near zero, rarely used router rows), and a larger ε silently damps exactly those
 * updates; 1e-8 is still far above float32's smallest normal, so √v̂ + ε never underflows to zero.
 *
 * A parameter with no gradient in a step (not connected to the loss, e.g. an expert no row selected) is
 * left alone entirely — no decay, no momentum — and its step count does not advance (PyTorch semantics).
 * Every update runs in tf.tidy; moments are non-trainable variables freed by dispose(). Parameters with the
 * same lr, weight decay and step count are updated as one concatenated vector (see applyGradients).
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { parseConfig } from '../config/parse.js';
import { CheckpointError, ConfigError, formatShape } from '../errors.js';

export const adamWFields = {
  beta1: z.number().min(0).lt(1).default(0.9),
  beta2: z.number().min(0).lt(1).default(0.999),
  epsilon: z.number().positive().default(1e-8),
};
export const AdamWConfig = z.object(adamWFields).strict().readonly();
export type AdamWConfig = z.infer<typeof AdamWConfig>;

/** Host copy of one state tensor. */
export interface HostStateTensor {
  readonly shape: readonly number[];
  readonly values: Float32Array;
}

/**
 * Optimizer state for checkpoints: `<name>/m` and `<name>/v` per parameter, the number of applyGradients
 * calls (`step`), and each parameter's own update count (`paramSteps`; defaults to `step` when absent).
 */
export interface AdamWState {
  readonly step: number;
  readonly tensors: Map<string, HostStateTensor>;
  readonly paramSteps?: Map<string, number>;
}

interface Slot {
  readonly param: tf.Variable;
  readonly m: tf.Variable;
  readonly v: tf.Variable;
  weightDecay: number;
  steps: number;
}

interface Pending {
  readonly slot: Slot;
  readonly grad: tf.Tensor;
}

/**
 * The most elements updated as one vector: bounds the update's temporary memory (≈ a dozen float32 vectors
 * of this length, 48 MiB) while keeping the kernel count per step small.
 */
export const FUSED_CHUNK_ELEMENTS = 1 << 20;

/** Consecutive runs of entries with at most FUSED_CHUNK_ELEMENTS elements each (a larger entry alone). */
function chunksOf(entries: readonly Pending[]): Pending[][] {
  const chunks: Pending[][] = [];
  let current: Pending[] = [];
  let size = 0;
  for (const entry of entries) {
    const n = entry.slot.param.size;
    if (current.length > 0 && size + n > FUSED_CHUNK_ELEMENTS) {
      chunks.push(current);
      current = [];
      size = 0;
    }
    current.push(entry);
    size += n;
  }
  if (current.length > 0) chunks.push(current);
  return chunks;
}

let created = 0;

export class AdamW {
  readonly config: AdamWConfig;
  private readonly slots = new Map<string, Slot>();
  private stepCount = 0;
  private disposed = false;

  /**
   * `params`: the variables to train by stable name; `weightDecay`: one λ for all, or per name (missing
   * names get 0).
   */
  constructor(params: ReadonlyMap<string, tf.Variable>, weightDecay: number | ReadonlyMap<string, number> = 0, config: unknown = {}) {
    this.config = parseConfig(AdamWConfig, config, 'optimizer');
    for (const [name, param] of params) {
      const wd = typeof weightDecay === 'number' ? weightDecay : (weightDecay.get(name) ?? 0);
      created += 1;
      const m = tf.tidy(() => tf.variable(tf.zerosLike(param), false, `adamw/${name}/m#${created}`));
      const v = tf.tidy(() => tf.variable(tf.zerosLike(param), false, `adamw/${name}/v#${created}`));
      this.slots.set(name, { param, m, v, weightDecay: wd, steps: 0 });
    }
  }

  /** Number of applyGradients calls so far. */
  get step(): number {
    return this.stepCount;
  }

  get names(): string[] {
    return [...this.slots.keys()];
  }

  /** Changes a parameter's weight decay (e.g. a new group config). */
  setWeightDecay(name: string, weightDecay: number): void {
    this.slot(name).weightDecay = weightDecay;
  }

  /**
   * One update. `grads` by parameter name (the caller keeps ownership); `lrs` gives each named gradient's
   * learning rate (required for every gradient given). Parameters without a gradient are untouched. Every
   * gradient is checked before any parameter changes, so a refused call changes nothing.
   *
   * Parameters that share a learning rate, weight decay and step count are updated together: their
   * flattened gradients, moments and values are concatenated (in chunks of at most FUSED_CHUNK_ELEMENTS)
   * and each formula runs once per chunk, not once per parameter — a few dozen kernels a step instead of
   * ≈ 15 per parameter (a routed model has hundreds). Every element goes through the same operations with
   * the same constants either way, so the results are the same bits as one update per parameter.
   */
  applyGradients(grads: ReadonlyMap<string, tf.Tensor>, lrs: ReadonlyMap<string, number>): void {
    this.checkAlive();
    const groups = new Map<string, { readonly lr: number; readonly weightDecay: number; readonly t: number; readonly entries: Pending[] }>();
    for (const [name, grad] of grads) {
      const slot = this.slot(name);
      const lr = lrs.get(name);
      if (lr === undefined || !Number.isFinite(lr) || lr < 0) {
        throw new ConfigError(`AdamW: no valid learning rate for ${JSON.stringify(name)} (got ${lr})`, {
          path: name,
          hint: 'Pass a finite lr ≥ 0 for every gradient',
        });
      }
      if (!shapesEqual(grad.shape, slot.param.shape)) {
        throw new ConfigError(`AdamW: gradient ${formatShape(grad.shape)} does not match parameter ${formatShape(slot.param.shape)}`, { path: name });
      }
      const t = slot.steps + 1;
      const key = `${lr}|${slot.weightDecay}|${t}`;
      const group = groups.get(key) ?? { lr, weightDecay: slot.weightDecay, t, entries: [] };
      group.entries.push({ slot, grad });
      groups.set(key, group);
    }
    for (const { lr, weightDecay, t, entries } of groups.values()) {
      for (const chunk of chunksOf(entries)) this.update(chunk, lr, weightDecay, t);
    }
    for (const group of groups.values()) for (const { slot } of group.entries) slot.steps = group.t;
    this.stepCount += 1;
  }

  /** One AdamW update of parameters sharing lr, weight decay and step count t, as one flat vector. */
  private update(entries: readonly Pending[], lr: number, weightDecay: number, t: number): void {
    const { beta1, beta2, epsilon } = this.config;
    const correction1 = 1 - beta1 ** t;
    const correction2 = 1 - beta2 ** t;
    const decay = 1 - lr * weightDecay;
    const single = entries.length === 1 ? entries[0] : undefined;
    tf.tidy(() => {
      const joined = (part: (entry: Pending) => tf.Tensor): tf.Tensor =>
        single !== undefined ? part(single) : tf.concat(entries.map((entry) => tf.reshape(part(entry), [-1]))); // [Σ|p|] (or [...p] alone)
      const grad = joined((entry) => entry.grad); // [Σ|p|]
      const param = joined((entry) => entry.slot.param); // [Σ|p|]
      const m = tf.add(
        tf.mul(
          joined((entry) => entry.slot.m),
          beta1,
        ),
        tf.mul(grad, 1 - beta1),
      ); // [Σ|p|]
      const v = tf.add(
        tf.mul(
          joined((entry) => entry.slot.v),
          beta2,
        ),
        tf.mul(tf.square(grad), 1 - beta2),
      ); // [Σ|p|]
      const mHat = tf.div(m, correction1); // [Σ|p|]
      const vHat = tf.div(v, correction2); // [Σ|p|]
      const direction = tf.div(mHat, tf.add(tf.sqrt(vHat), epsilon)); // [Σ|p|]  m̂/(√v̂ + ε)
      const decayed = weightDecay === 0 ? param : tf.mul(param, decay); // [Σ|p|]  p·(1 − lr·wd)
      const updated = tf.sub(decayed, tf.mul(direction, lr)); // [Σ|p|]
      if (single !== undefined) {
        single.slot.m.assign(m);
        single.slot.v.assign(v);
        single.slot.param.assign(updated);
        return;
      }
      const sizes = entries.map((entry) => entry.slot.param.size);
      const pieces = (flat: tf.Tensor): tf.Tensor[] => tf.split(flat, sizes); // |p| each
      const [ms, vs, ps] = [pieces(m), pieces(v), pieces(updated)];
      entries.forEach(({ slot }, i) => {
        slot.m.assign(tf.reshape(ms[i] as tf.Tensor, slot.param.shape)); // [...p]
        slot.v.assign(tf.reshape(vs[i] as tf.Tensor, slot.param.shape)); // [...p]
        slot.param.assign(tf.reshape(ps[i] as tf.Tensor, slot.param.shape)); // [...p]
      });
    });
  }

  /** Host copies of the moments and step counts (plain data, for checkpoints); reads synchronously (wasm, cpu). */
  getState(): AdamWState {
    const { step, tensors, paramSteps } = this.stateTensors();
    const host = new Map<string, HostStateTensor>();
    for (const [key, t] of tensors) host.set(key, { shape: [...t.shape], values: Float32Array.from(t.dataSync() as Float32Array) });
    return { step, tensors: host, paramSteps };
  }

  /**
   * The moments as the optimizer holds them (`<name>/m`, `<name>/v`: read them, do not keep or dispose them)
   * and the step counts; checkpoints copy them with asynchronous reads.
   */
  stateTensors(): { readonly step: number; readonly tensors: Map<string, tf.Tensor>; readonly paramSteps: Map<string, number> } {
    this.checkAlive();
    const tensors = new Map<string, tf.Tensor>();
    const paramSteps = new Map<string, number>();
    for (const [name, slot] of this.slots) {
      tensors.set(`${name}/m`, slot.m);
      tensors.set(`${name}/v`, slot.v);
      paramSteps.set(name, slot.steps);
    }
    return { step: this.stepCount, tensors, paramSteps };
  }

  /** Restores getState() output; every parameter's m and v must be present with its shape. */
  setState(state: AdamWState): void {
    this.checkAlive();
    if (!Number.isInteger(state.step) || state.step < 0)
      throw new CheckpointError(`optimizer step must be an integer ≥ 0, got ${state.step}`, { path: 'optimizer.step' });
    const known = new Set<string>();
    for (const [name, slot] of this.slots) {
      for (const which of ['m', 'v'] as const) {
        const key = `${name}/${which}`;
        known.add(key);
        const entry = state.tensors.get(key);
        if (entry === undefined)
          throw new CheckpointError(`optimizer state has no ${key}`, {
            path: key,
            hint: 'The checkpoint was saved for a different set of trainable variables',
          });
        const expected = slot.param.shape;
        const size = expected.reduce((p, d) => p * d, 1);
        if (!shapesEqual(entry.shape, expected) || entry.values.length !== size) {
          throw new CheckpointError(
            `optimizer state ${key} has shape ${formatShape(entry.shape)} (${entry.values.length} values) but the parameter is ${formatShape(expected)}`,
            {
              path: key,
              hint: 'The checkpoint was saved for a model with different adapter shapes',
            },
          );
        }
      }
    }
    const extra = [...state.tensors.keys()].find((k) => !known.has(k));
    if (extra !== undefined)
      throw new CheckpointError(`optimizer state has ${extra}, which is not a parameter of this optimizer`, {
        path: extra,
        hint: 'The checkpoint was saved for a different set of trainable variables',
      });
    for (const [name, slot] of this.slots) {
      const m = state.tensors.get(`${name}/m`) as HostStateTensor;
      const v = state.tensors.get(`${name}/v`) as HostStateTensor;
      tf.tidy(() => {
        slot.m.assign(tf.tensor(m.values, slot.param.shape, 'float32'));
        slot.v.assign(tf.tensor(v.values, slot.param.shape, 'float32'));
      });
      slot.steps = state.paramSteps?.get(name) ?? state.step;
    }
    this.stepCount = state.step;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const slot of this.slots.values()) {
      slot.m.dispose();
      slot.v.dispose();
    }
    this.slots.clear();
  }

  private slot(name: string): Slot {
    const slot = this.slots.get(name);
    if (slot === undefined)
      throw new ConfigError(`AdamW has no parameter named ${JSON.stringify(name)}`, {
        path: name,
        hint: `Known: ${this.names.slice(0, 8).join(', ')}${this.slots.size > 8 ? ', …' : ''}`,
      });
    return slot;
  }

  private checkAlive(): void {
    if (this.disposed) throw new Error('AdamW used after dispose()');
  }
}

function shapesEqual(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}
