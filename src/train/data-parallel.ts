/**
 * Data-parallel training on every CPU core: R replicas of the model — the caller's own on the main thread and
 * R − 1 worker threads, each on one wasm thread with a copy of the base and of the trained variables — split
 * each training batch by rows. Every replica computes its shard's loss and gradients at the same time; the
 * main thread waits for the workers' answers, combines the gradients weighted by each shard's counted targets,
 * Σ nₛ·∇Lₛ / Σ nₛ, and the Trainer clips them. The optimizer update runs on every replica at once, each on
 * its own range of the variables: the values, the gradients and AdamW's moments lie in shared memory
 * (adamw-flat.ts). Then every replica takes the new values, so all differentiate the same weights.
 *
 *   const group = await DataParallelGroup.start(model, trainerConfig, { replicas: 2 });
 *   const trainer = new Trainer(model, trainerConfig, { dataParallel: group });
 *   …trainer.step(batch)…
 *   await group.close();
 *
 * What a step computes: exactly what gradient accumulation over the same shards computes (trainer.ts: the
 * token losses are exact over the whole batch; per-forward terms — router aux losses, capacity limits — are
 * per shard, weighted by targets). A spec without such terms gets the one-replica step's result up to float
 * round-off.
 *
 * Why replicas and not only threads inside kernels: tfjs-wasm's pool (wasm-threads.ts) splits the large
 * matmuls, but a training step also runs thousands of small kernels, equal-shape elementwise ops, transposes
 * and batched attention products on the calling thread; replicas run all of that in parallel too.
 *
 * Memory: every worker holds its own copy of the base (R replicas ≈ R × the base's bytes).
 *
 * Shape letters: P the trained parameters' total count.
 */
import * as tf from '@tensorflow/tfjs';
import { MessageChannel, type MessagePort, receiveMessageOnPort, Worker } from 'node:worker_threads';
import { ConfigError, errorFromData, LIBRARY_ERRORS, RoutedPeftError, type SentError } from '../errors.js';
import type { AdaptedModel } from '../model/adapted-model.js';
import { applyFlatUpdate, splitVariables } from './adamw-flat.js';
import type { AdamW, FlatMoments } from './adamw.js';
import type { FromReplica, SentTensor, ShardAnswer, ToReplica } from './data-parallel-protocol.js';
import { TrainingError } from './errors.js';
import { assignFlat, readFlatInto, sameItems } from './flat-tensors.js';
import type { GradientReplicas, RemoteShard, TrainBatch } from './trainer.js';

/** Where this file's sibling modules are: the TypeScript sources (tests, tsx) or the built JavaScript. */
const FROM_SOURCE = import.meta.url.endsWith('.ts');
const WORKER_URL = new URL(FROM_SOURCE ? './data-parallel-worker-source.mjs' : './data-parallel-worker.js', import.meta.url);
const DEFAULT_ROUTERS = new URL(FROM_SOURCE ? '../../routers/index.ts' : '../../routers/index.js', import.meta.url).href;
/** How long a step waits for a worker's shard before it gives up (a worker that died cannot answer). */
export const SHARD_TIMEOUT_MS = 30 * 60 * 1000;
/** At most this many replicas (threads) in one group. */
export const MAX_REPLICAS = 64;

export interface DataParallelOptions {
  /** Replicas, the main thread's included (≥ 2). */
  readonly replicas: number;
  /** Module (URL or path) whose `builtinRouters()` the workers use (default: the package's routers). */
  readonly routersModule?: string | undefined;
}

/** Atomics.waitAsync (Node 16+), which TypeScript's es2022 lib does not declare. */
interface AtomicsWaitAsync {
  waitAsync(array: Int32Array, index: number, value: number, timeoutMs: number): { async: false; value: string } | { async: true; value: Promise<string> };
}

class ReplicaWorker {
  /** [0]: answers the worker sent; [1]: times it took the shared weights. */
  readonly signal: Int32Array;
  private answered = 0;
  /** Times it was asked to take the shared weights. */
  asked = 0;
  private failure: Error | undefined;

  readonly grads: Float32Array; // [P]
  readonly present: Uint8Array; // [variables]
  /** The variables' dataIds when this worker last took their values (the same ids: it is current). */
  assigned: readonly object[] = [];

  constructor(
    readonly index: number,
    readonly thread: Worker,
    readonly answers: MessagePort,
    signal: SharedArrayBuffer,
    grads: SharedArrayBuffer,
    present: SharedArrayBuffer,
  ) {
    this.signal = new Int32Array(signal);
    this.grads = new Float32Array(grads);
    this.present = new Uint8Array(present);
    thread.on('error', (error) => {
      this.failure ??= error;
    });
    thread.on('exit', (code) => {
      this.failure ??= new RoutedPeftError(`data-parallel worker ${index} exited (code ${code})`);
    });
  }

  send(message: ToReplica): void {
    if (this.failure !== undefined) throw this.failure;
    this.thread.postMessage(message);
  }

  /** Blocks until the worker's next answer (the main thread may wait: Node allows Atomics.wait there). */
  receive(): FromReplica {
    const deadline = Date.now() + SHARD_TIMEOUT_MS;
    while (Atomics.load(this.signal, 0) === this.answered) {
      if (this.failure !== undefined) throw this.failure;
      const left = deadline - Date.now();
      if (left <= 0) throw new TrainingError(`data-parallel worker ${this.index} did not answer within ${SHARD_TIMEOUT_MS / 60_000} min`);
      Atomics.wait(this.signal, 0, this.answered, Math.min(left, 1000));
    }
    this.answered++;
    const received = receiveMessageOnPort(this.answers);
    if (received === undefined) throw new TrainingError(`data-parallel worker ${this.index} signalled an answer that did not arrive`);
    return received.message as FromReplica;
  }

  /** Blocks until the worker took every weights it was asked to take (the shared buffer may then change). */
  waitTaken(): void {
    const deadline = Date.now() + SHARD_TIMEOUT_MS;
    for (let taken = Atomics.load(this.signal, 1); taken < this.asked; taken = Atomics.load(this.signal, 1)) {
      if (this.failure !== undefined) throw this.failure;
      if (Date.now() > deadline) throw new TrainingError(`data-parallel worker ${this.index} did not take the weights within ${SHARD_TIMEOUT_MS / 60_000} min`);
      Atomics.wait(this.signal, 1, taken, 1000);
    }
  }

  /** Waits for the first answer asynchronously (start-up, when the main thread should not block). */
  async receiveAsync(): Promise<FromReplica> {
    while (Atomics.load(this.signal, 0) === this.answered) {
      if (this.failure !== undefined) throw this.failure;
      const waited = (Atomics as unknown as AtomicsWaitAsync).waitAsync(this.signal, 0, this.answered, 1000);
      if (waited.async) await waited.value;
    }
    return this.receive();
  }
}

export class DataParallelGroup implements GradientReplicas {
  /** Stable names of the trained variables, in the order of every flat vector exchanged. */
  readonly names: readonly string[];
  /** Element count of each variable, in `names` order. */
  readonly sizes: readonly number[];
  /** The trainer's AdamW moments [P] each, in shared memory: every replica updates its range of them. */
  readonly moments: FlatMoments;
  /** [P] shared: the trainer combines the shards' gradients here (update reads it on every replica). */
  readonly combined: Float32Array;
  private readonly workers: readonly ReplicaWorker[];
  /** [P] shared with every worker: the values each takes after an update or before a shard. */
  private readonly weights: Float32Array;
  /** The variables' dataIds whose values `weights` holds (the same ids: it is current). */
  private written: readonly object[] = [];
  private nextId = 0;
  private closed = false;

  private constructor(workers: readonly ReplicaWorker[], names: readonly string[], sizes: readonly number[], shared: SharedVectors) {
    this.workers = workers;
    this.weights = new Float32Array(shared.weights);
    this.combined = new Float32Array(shared.combined);
    this.moments = { m: new Float32Array(shared.m), v: new Float32Array(shared.v) };
    this.names = names;
    this.sizes = sizes;
  }

  /** Replicas, the main thread's included. */
  get replicas(): number {
    return this.workers.length + 1;
  }

  /**
   * Starts `replicas − 1` workers, each with a copy of `model`'s base and spec and the trainer's config, and
   * waits until every one is ready. `trainerConfig` must be the config the Trainer gets (the head and the
   * objective must match); the Trainer checks the variable names.
   */
  static async start(model: AdaptedModel, trainerConfig: unknown, options: DataParallelOptions): Promise<DataParallelGroup> {
    const replicas = options.replicas;
    if (!Number.isInteger(replicas) || replicas < 2 || replicas > MAX_REPLICAS) {
      throw new ConfigError(`data-parallel replicas ${String(replicas)} is not a whole number in [2, ${MAX_REPLICAS}]`, {
        hint: 'Give 2 or more replicas (one per core), or train without a data-parallel group',
      });
    }
    const { Trainer } = await import('./trainer.js');
    // A probe Trainer gives the names and sizes a Trainer over this model differentiates (the head's included).
    const probe = new Trainer(model, trainerConfig);
    const names = [...probe.namedVariables().keys()];
    const sizes = [...probe.namedVariables().values()].map((v) => v.size);
    probe.dispose();
    const total = sizes.reduce((s, n) => s + n, 0); // P
    const shared: SharedVectors = {
      weights: new SharedArrayBuffer(total * 4),
      combined: new SharedArrayBuffer(total * 4),
      m: new SharedArrayBuffer(total * 4),
      v: new SharedArrayBuffer(total * 4),
    };
    const baseWeights = sendTree(model.base.weights); // structured-cloned into each worker
    const started: ReplicaWorker[] = [];
    try {
      for (let i = 1; i < replicas; i++) {
        const channel = new MessageChannel();
        const signal = new SharedArrayBuffer(8); // two Int32 counters (ReplicaWorker.signal)
        const grads = new SharedArrayBuffer(total * 4);
        const present = new SharedArrayBuffer(sizes.length);
        const thread = new Worker(WORKER_URL, { execArgv: [] }); // ref'd while it starts: the wait below keeps no loop alive
        const worker = new ReplicaWorker(i, thread, channel.port1, signal, grads, present);
        started.push(worker);
        const init: ToReplica = {
          type: 'init',
          config: model.base.config,
          baseWeights,
          spec: model.spec,
          routersModule: options.routersModule ?? DEFAULT_ROUTERS,
          trainer: trainerConfig as Readonly<Record<string, unknown>>,
          names,
          answers: channel.port2,
          signal,
          weights: shared.weights,
          grads,
          present,
          m: shared.m,
          v: shared.v,
        };
        thread.postMessage(init, [channel.port2]);
      }
      for (const worker of started) {
        const answer = await worker.receiveAsync();
        if (answer.type === 'failed') throw revive(answer.error, `data-parallel worker ${worker.index} could not start`);
        if (answer.type !== 'ready') throw new TrainingError(`data-parallel worker ${worker.index} answered '${answer.type}' while starting`);
      }
      for (const worker of started) worker.thread.unref(); // an idle group does not keep the process alive
    } catch (error) {
      await Promise.all(started.map((w) => w.thread.terminate()));
      throw error;
    }
    return new DataParallelGroup(started, names, sizes, shared);
  }

  /**
   * Sends shards 1… of a step to the workers (shard 0 is the caller's), with the trained variables' values
   * when they changed since the last send. `named` are the trainer's variables (same names, same order).
   */
  dispatch(shards: readonly TrainBatch[], named: ReadonlyMap<string, tf.Variable>): number[] {
    this.checkOpen();
    const variables = this.checkVariables(named);
    const ids = variables.map((v) => v.dataId as object);
    let written = false;
    const sent: number[] = [];
    shards.forEach((batch, i) => {
      const worker = this.workers[i];
      if (worker === undefined) throw new Error(`no data-parallel worker for shard ${i + 1}`);
      if (batch.ids.length === 0) return; // fewer rows than replicas: this one sits the step out
      const stale = isStale(worker, ids);
      if (stale && !written) {
        this.writeWeights(variables);
        written = true;
      }
      worker.send({ type: 'shard', id: this.nextId++, batch, weightsChanged: stale });
      if (stale) this.asked(worker, ids);
      sent.push(i);
    });
    return sent;
  }

  /**
   * One AdamW update on every replica at once: the plan's variables cut into one range per replica by
   * element count, this thread's range computed while the workers compute theirs, all in shared memory
   * (`grads` must be shared: `combined`, or another SharedArrayBuffer's vector). Then this thread's
   * variables with a gradient take their new values and every worker is told to take them, so each does while
   * this thread finishes the step.
   */
  update(
    optimizer: AdamW,
    grads: Float32Array,
    present: Uint8Array,
    lrs: ReadonlyMap<string, number>,
    gradScale: number,
    named: ReadonlyMap<string, tf.Variable>,
  ): void {
    this.checkOpen();
    if (!(grads.buffer instanceof SharedArrayBuffer)) throw new Error('DataParallelGroup.update reads gradients in shared memory');
    const variables = this.checkVariables(named);
    this.writeWeights(variables); // the update starts from the variables' current values
    let started = false;
    try {
      optimizer.applyFlat(grads, present, lrs, gradScale, this.weights, (plan, buffers) => {
        started = true;
        const [own, ...ranges] = splitVariables(plan.offsets, this.replicas) as [[number, number], ...[number, number][]];
        const asked: ReplicaWorker[] = [];
        ranges.forEach(([first, last], i) => {
          if (first === last) return;
          const worker = this.workers[i] as ReplicaWorker;
          worker.send({ type: 'update', plan, first, last, grads: grads.buffer as SharedArrayBuffer });
          asked.push(worker);
        });
        let failure: Error | undefined;
        try {
          applyFlatUpdate(plan, own[0], own[1], buffers);
        } catch (error) {
          failure = error as Error;
        }
        for (const worker of asked) {
          try {
            const answer = worker.receive();
            if (answer.type === 'update-error') failure ??= revive(answer.error, `data-parallel worker ${worker.index}`);
            else if (answer.type !== 'updated') failure ??= new TrainingError(`data-parallel worker ${worker.index} answered '${answer.type}' to an update`);
          } catch (error) {
            failure ??= error as Error;
          }
        }
        if (failure !== undefined) throw failure;
      });
    } catch (error) {
      if (!started) throw error; // refused before anything changed
      this.written = []; // the shared values may be half updated: the next dispatch writes the variables again
      for (const w of this.workers) w.assigned = [];
      throw new TrainingError(`a data-parallel optimizer update failed part-way: ${(error as Error).message}`, {
        hint: "The optimizer's moments may be half updated: resume from the last checkpoint",
      });
    }
    assignFlat(variables, this.weights, present);
    const ids = variables.map((v) => v.dataId as object);
    this.written = ids;
    for (const worker of this.workers) {
      worker.send({ type: 'weights' });
      this.asked(worker, ids);
    }
  }

  /**
   * Writes the variables into the shared buffer, unless it holds their values already, once no worker is
   * still to read the previous ones.
   */
  private writeWeights(variables: readonly tf.Variable[]): void {
    const ids = variables.map((v) => v.dataId as object);
    for (const worker of this.workers) worker.waitTaken();
    if (sameItems(ids, this.written)) return;
    readFlatInto(variables, this.weights);
    this.written = ids;
  }

  private asked(worker: ReplicaWorker, ids: readonly object[]): void {
    worker.asked++;
    worker.assigned = ids;
  }

  /** Waits for the answers of the shards `dispatch` sent (the workers it returned); throws the first worker error. */
  collect(sent: readonly number[]): RemoteShard[] {
    const answers: RemoteShard[] = [];
    let failure: Error | undefined;
    for (const i of sent) {
      const worker = this.workers[i] as ReplicaWorker;
      let answer: FromReplica;
      try {
        answer = worker.receive();
      } catch (error) {
        failure ??= error as Error;
        continue;
      }
      if (answer.type === 'shard') answers.push(fromAnswer(answer, worker));
      else if (answer.type === 'shard-error') failure ??= revive(answer.error, `data-parallel worker ${worker.index}`);
      else failure ??= new TrainingError(`data-parallel worker ${worker.index} answered '${answer.type}' to a shard`);
    }
    if (failure !== undefined) {
      for (const w of this.workers) w.assigned = []; // a failed step may have left a worker's weights half-assigned
      throw failure;
    }
    return answers;
  }

  /** Stops the workers; the group cannot be used afterwards. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.thread.terminate()));
  }

  private checkOpen(): void {
    if (this.closed) throw new TrainingError('the data-parallel group was closed', { hint: 'Start a new DataParallelGroup' });
  }

  private checkVariables(named: ReadonlyMap<string, tf.Variable>): tf.Variable[] {
    if (!sameItems([...named.keys()], this.names)) {
      throw new TrainingError("the trainer's variables are not the ones this data-parallel group replicates", {
        hint: 'Start the group from the same model and trainer config as the Trainer',
      });
    }
    const variables = [...named.values()];
    variables.forEach((v, i) => {
      if (v.size !== this.sizes[i]) throw new TrainingError(`variable ${this.names[i]} changed size since the data-parallel group started`);
    });
    return variables;
  }
}

/** The group's shared vectors, each [P] float32. */
interface SharedVectors {
  readonly weights: SharedArrayBuffer;
  readonly combined: SharedArrayBuffer;
  readonly m: SharedArrayBuffer;
  readonly v: SharedArrayBuffer;
}

function isStale(worker: ReplicaWorker, ids: readonly object[]): boolean {
  return !sameItems(ids, worker.assigned);
}

function fromAnswer(answer: ShardAnswer, worker: ReplicaWorker): RemoteShard {
  return { targets: answer.targets, loss: answer.loss, task: answer.task, aux: answer.aux, grads: worker.grads, present: worker.present };
}

function revive(sent: SentError, where: string): Error {
  const error = errorFromData(sent, { ...LIBRARY_ERRORS, TrainingError });
  if (!(error instanceof RoutedPeftError)) error.message = `${where}: ${error.message}`;
  return error;
}

/** The base's weights tree with every float32 tensor as plain data; other dtypes are refused by name. */
function sendTree(node: unknown, path = 'weights'): unknown {
  if (node instanceof tf.Tensor) {
    if (node.dtype !== 'float32') throw new ConfigError(`data-parallel training copies float32 base weights; ${path} is ${node.dtype}`);
    return { sentTensor: true, shape: [...node.shape], values: node.dataSync() as Float32Array } satisfies SentTensor;
  }
  if (Array.isArray(node)) return node.map((x, i) => sendTree(x, `${path}[${i}]`));
  if (node !== null && typeof node === 'object') return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, sendTree(v, `${path}.${k}`)]));
  return node;
}
