/**
 * Messages between a DataParallelGroup (data-parallel.ts) and its replica workers (data-parallel-worker.ts).
 *
 * A step's request goes to a worker by postMessage; the worker answers on its own MessagePort and then bumps
 * a shared counter, so the main thread can wait for the answer synchronously (Atomics.wait, then
 * receiveMessageOnPort) inside a synchronous Trainer.step.
 */
import type { MessagePort } from 'node:worker_threads';
import type { ModelConfig } from '../base/config.js';
import type { AdaptedModelSpec } from '../compose/model-spec.js';
import type { SentError } from '../errors.js';
import type { FlatUpdatePlan } from './adamw-flat.js';
import type { TrainBatch } from './trainer.js';

/** A tensor as plain data (structured-cloned to the worker). */
export interface SentTensor {
  readonly sentTensor: true;
  readonly shape: readonly number[];
  readonly values: Float32Array;
}

/** The base's weights tree with every tensor replaced by a SentTensor. */
export type SentWeights = unknown;

export interface ReplicaInit {
  readonly type: 'init';
  readonly config: ModelConfig;
  readonly baseWeights: SentWeights;
  readonly spec: AdaptedModelSpec;
  /** Module URL whose `builtinRouters()` gives the router registry. */
  readonly routersModule: string;
  /** The trainer's parsed config (objective, seed: the replica's gradients are the trainer's own). */
  readonly trainer: Readonly<Record<string, unknown>>;
  /** The trained variables' stable names, in the trainer's order: the replica must have the same. */
  readonly names: readonly string[];
  /** Where the worker answers shards (receiveMessageOnPort on the main side). */
  readonly answers: MessagePort;
  /** Int32Array [2] over a SharedArrayBuffer: [0] counts answers sent, [1] the times the weights were taken. */
  readonly signal: SharedArrayBuffer;
  /** Float32Array [P]: the trained variables' values (the main thread writes, every worker reads). */
  readonly weights: SharedArrayBuffer;
  /** Float32Array [P]: this worker's shard gradients (zeros where a variable got none). */
  readonly grads: SharedArrayBuffer;
  /** Uint8Array [variables]: 1 where this worker's shard gave the variable a gradient. */
  readonly present: SharedArrayBuffer;
  /** Float32Array [P] each: the optimizer's moments (every replica updates its range of them). */
  readonly m: SharedArrayBuffer;
  readonly v: SharedArrayBuffer;
}

export interface ShardRequest {
  readonly type: 'shard';
  readonly id: number;
  readonly batch: TrainBatch;
  /** The shared weights changed since the last request: assign them before computing. */
  readonly weightsChanged: boolean;
}

/** Take the shared weights now (sent right after an optimizer update). */
export interface WeightsNotice {
  readonly type: 'weights';
}

/** Apply an optimizer update to variables [first, last) of the shared weights and moments. */
export interface UpdateRequest {
  readonly type: 'update';
  readonly plan: FlatUpdatePlan;
  readonly first: number;
  readonly last: number;
  /** Float32Array [P]: the gradients the update reads. */
  readonly grads: SharedArrayBuffer;
}

export type ToReplica = ReplicaInit | ShardRequest | WeightsNotice | UpdateRequest;

export interface ShardAnswer {
  readonly type: 'shard';
  readonly id: number;
  readonly targets: number;
  readonly loss: number;
  readonly task: number;
  readonly aux: number;
}

export type FromReplica =
  | { readonly type: 'ready' }
  | { readonly type: 'failed'; readonly error: SentError }
  | ShardAnswer
  | { readonly type: 'shard-error'; readonly id: number; readonly error: SentError }
  | { readonly type: 'updated' }
  | { readonly type: 'update-error'; readonly error: SentError };
