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
 *
 * With host moments (the constructor's `moments`), m and v live in two flat Float32Arrays the caller gives
 * — shared memory in data-parallel training, where every replica updates its own range of them (applyFlat,
 * adamw-flat.ts) — instead of in tensors.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { parseConfig } from '../config/parse.js';
import { CheckpointError, ConfigError, formatShape } from '../errors.js';
import { readHostTensors } from '../formats/host-tensors.js';
import { applyFlatUpdate, type FlatUpdateBuffers, type FlatUpdatePlan } from './adamw-flat.js';
import { assignFlat, readFlatInto, readNamedInto } from './flat-tensors.js';

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

/** The moments as two flat vectors [P], in the order of the constructor's params (host moments). */
export interface FlatMoments {
  readonly m: Float32Array;
  readonly v: Float32Array;
}

/**
 * Runs a flat update: `applyFlatUpdate(plan, 0, n, buffers)` by default; data-parallel training runs
 * ranges of it on every replica at once.
 */
export type FlatUpdateRunner = (plan: FlatUpdatePlan, buffers: FlatUpdateBuffers) => void;

interface Slot {
  readonly param: tf.Variable;
  /** Device moments (undefined with host moments). */
  readonly m: tf.Variable | undefined;
  readonly v: tf.Variable | undefined;
  /** Where the parameter's moments start in the host moments (and its values in a flat vector). */
  readonly offset: number;
  weightDecay: number;
  steps: number;
}

/** A slot of an optimizer with device moments. */
interface DeviceSlot extends Slot {
  readonly m: tf.Variable;
  readonly v: tf.Variable;
}

interface Pending {
  readonly slot: DeviceSlot;
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
  private readonly host: FlatMoments | undefined;
  /** P, the parameters' total element count. */
  private readonly total: number;
  private stepCount = 0;
  private disposed = false;

  /**
   * `params`: the variables to train by stable name; `weightDecay`: one λ for all, or per name (missing
   * names get 0); `moments`: host moments, two vectors of the params' total size, zeroed here.
   */
  constructor(params: ReadonlyMap<string, tf.Variable>, weightDecay: number | ReadonlyMap<string, number> = 0, config: unknown = {}, moments?: FlatMoments) {
    this.config = parseConfig(AdamWConfig, config, 'optimizer');
    let offset = 0;
    for (const param of params.values()) offset += param.size;
    this.total = offset;
    if (moments !== undefined && (moments.m.length !== offset || moments.v.length !== offset || moments.m.buffer === moments.v.buffer)) {
      throw new ConfigError(`AdamW host moments must be two separate vectors of ${offset} values (got ${moments.m.length} and ${moments.v.length})`);
    }
    this.host = moments;
    moments?.m.fill(0);
    moments?.v.fill(0);
    offset = 0;
    for (const [name, param] of params) {
      const wd = typeof weightDecay === 'number' ? weightDecay : (weightDecay.get(name) ?? 0);
      created += 1;
      const m = moments === undefined ? tf.tidy(() => tf.variable(tf.zerosLike(param), false, `adamw/${name}/m#${created}`)) : undefined;
      const v = moments === undefined ? tf.tidy(() => tf.variable(tf.zerosLike(param), false, `adamw/${name}/v#${created}`)) : undefined;
      this.slots.set(name, { param, m, v, offset, weightDecay: wd, steps: 0 });
      offset += param.size;
    }
  }

  /** Whether the moments are host vectors (applyFlat) rather than tensors. */
  get hostMoments(): boolean {
    return this.host !== undefined;
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
    for (const [name, grad] of grads) {
      const slot = this.slot(name);
      learningRate(lrs, name);
      if (!shapesEqual(grad.shape, slot.param.shape)) {
        throw new ConfigError(`AdamW: gradient ${formatShape(grad.shape)} does not match parameter ${formatShape(slot.param.shape)}`, { path: name });
      }
    }
    if (this.host !== undefined) {
      this.applyGradientsOnHost(grads, lrs);
      return;
    }
    const groups = new Map<string, { readonly lr: number; readonly weightDecay: number; readonly t: number; readonly entries: Pending[] }>();
    for (const [name, grad] of grads) {
      const slot = this.slot(name) as DeviceSlot;
      const lr = learningRate(lrs, name);
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

  /** applyGradients with host moments: the gradients and values read into flat vectors, updated, assigned back. */
  private applyGradientsOnHost(grads: ReadonlyMap<string, tf.Tensor>, lrs: ReadonlyMap<string, number>): void {
    const names = this.names;
    const slots = [...this.slots.values()];
    const flatGrads = new Float32Array(this.total); // [P]
    const present = new Uint8Array(names.length);
    readNamedInto(
      names,
      slots.map((s) => s.param.size),
      grads,
      flatGrads,
      present,
    );
    const params = readFlatInto(
      slots.map((s) => s.param),
      new Float32Array(this.total),
    ); // [P]
    this.applyFlat(flatGrads, present, lrs, 1, params);
    assignFlat(
      slots.map((s) => s.param),
      params,
      present,
    );
  }

  /**
   * One update over flat vectors in the params' order (host moments only): `grads` [P] read (times
   * `gradScale`), `params` [P] the parameters' current values, updated in place — the caller assigns them to
   * its variables. Variables with present[i] = 0 are untouched and their step counts stay. `run` executes the
   * plan (default: all of it on this thread). Learning rates are checked before anything changes.
   */
  applyFlat(
    grads: Float32Array,
    present: Uint8Array,
    lrs: ReadonlyMap<string, number>,
    gradScale: number,
    params: Float32Array,
    run: FlatUpdateRunner = (plan, buffers) => applyFlatUpdate(plan, 0, plan.active.length, buffers),
  ): void {
    this.checkAlive();
    const host = this.host;
    if (host === undefined) throw new Error('AdamW.applyFlat needs host moments (construct the optimizer with moments)');
    if (grads.length !== this.total || params.length !== this.total || present.length !== this.slots.size) {
      throw new Error(
        `AdamW.applyFlat: vectors of ${grads.length} and ${params.length} values and ${present.length} flags for ${this.total} values in ${this.slots.size} variables`,
      );
    }
    const slots = [...this.slots.entries()];
    const n = slots.length;
    const { beta1, beta2, epsilon } = this.config;
    const plan: FlatUpdatePlan = {
      offsets: new Float64Array(n + 1),
      active: new Uint8Array(present),
      lr: new Float64Array(n),
      decay: new Float64Array(n),
      correction1: new Float64Array(n),
      correction2: new Float64Array(n),
      beta1,
      beta2,
      epsilon,
      gradScale,
    };
    slots.forEach(([name, slot], i) => {
      plan.offsets[i] = slot.offset;
      if (present[i] !== 1) return;
      const lr = learningRate(lrs, name);
      const t = slot.steps + 1;
      plan.lr[i] = lr;
      plan.decay[i] = 1 - lr * slot.weightDecay;
      plan.correction1[i] = 1 - beta1 ** t;
      plan.correction2[i] = 1 - beta2 ** t;
    });
    plan.offsets[n] = this.total;
    run(plan, { grads, params, m: host.m, v: host.v });
    slots.forEach(([, slot], i) => {
      if (present[i] === 1) slot.steps += 1;
    });
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
    if (this.host !== undefined) return { ...this.counts(), tensors: this.hostCopies() };
    const { step, tensors, paramSteps } = this.stateTensors();
    const host = new Map<string, HostStateTensor>();
    for (const [key, t] of tensors) host.set(key, { shape: [...t.shape], values: Float32Array.from(t.dataSync() as Float32Array) });
    return { step, tensors: host, paramSteps };
  }

  /** Copies of the moments (`<name>/m`, `<name>/v`), read asynchronously where they are tensors (checkpoints). */
  async readMoments(): Promise<Map<string, HostStateTensor>> {
    this.checkAlive();
    return this.host !== undefined ? this.hostCopies() : readHostTensors(this.stateTensors().tensors);
  }

  /** The number of applyGradients calls and each parameter's own update count. */
  counts(): { readonly step: number; readonly paramSteps: Map<string, number> } {
    this.checkAlive();
    return { step: this.stepCount, paramSteps: new Map([...this.slots].map(([name, slot]) => [name, slot.steps])) };
  }

  private hostCopies(): Map<string, HostStateTensor> {
    const host = this.host as FlatMoments;
    const copies = new Map<string, HostStateTensor>();
    for (const [name, slot] of this.slots) {
      const range = (flat: Float32Array): Float32Array => flat.slice(slot.offset, slot.offset + slot.param.size);
      copies.set(`${name}/m`, { shape: [...slot.param.shape], values: range(host.m) });
      copies.set(`${name}/v`, { shape: [...slot.param.shape], values: range(host.v) });
    }
    return copies;
  }

  /**
   * The moments as the optimizer holds them (`<name>/m`, `<name>/v`: read them, do not keep or dispose them)
   * and the step counts. Device moments only (with host moments use getState or readMoments).
   */
  stateTensors(): { readonly step: number; readonly tensors: Map<string, tf.Tensor>; readonly paramSteps: Map<string, number> } {
    this.checkAlive();
    if (this.host !== undefined) throw new Error('AdamW.stateTensors: this optimizer holds host moments; read them with readMoments()');
    const tensors = new Map<string, tf.Tensor>();
    for (const [name, slot] of this.slots as Map<string, DeviceSlot>) {
      tensors.set(`${name}/m`, slot.m);
      tensors.set(`${name}/v`, slot.v);
    }
    return { ...this.counts(), tensors };
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
      if (this.host !== undefined) {
        this.host.m.set(m.values, slot.offset);
        this.host.v.set(v.values, slot.offset);
      } else {
        const device = slot as DeviceSlot;
        tf.tidy(() => {
          device.m.assign(tf.tensor(m.values, slot.param.shape, 'float32'));
          device.v.assign(tf.tensor(v.values, slot.param.shape, 'float32'));
        });
      }
      slot.steps = state.paramSteps?.get(name) ?? state.step;
    }
    this.stepCount = state.step;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const slot of this.slots.values()) {
      slot.m?.dispose();
      slot.v?.dispose();
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

/** The learning rate `lrs` gives `name`, refused by name unless finite and ≥ 0. */
function learningRate(lrs: ReadonlyMap<string, number>, name: string): number {
  const lr = lrs.get(name);
  if (lr === undefined || !Number.isFinite(lr) || lr < 0) {
    throw new ConfigError(`AdamW: no valid learning rate for ${JSON.stringify(name)} (got ${lr})`, {
      path: name,
      hint: 'Pass a finite lr ≥ 0 for every gradient',
    });
  }
  return lr;
}

function shapesEqual(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}
