/**
 * One replica of a DataParallelGroup (data-parallel.ts), on its own thread and one wasm thread: a copy of the
 * base (its weights as sent), the same adapted-model spec and a Trainer with the same config, used only for
 * its gradients. For each shard it takes the trained variables' values it was sent, computes the shard's loss
 * and gradients, and answers with them flat, in the group's name order.
 */
import * as tf from '@tensorflow/tfjs';
import { type MessagePort, parentPort } from 'node:worker_threads';
import { selectBackend } from '../backend.js';
import type { TransformerWeights } from '../base/weights.js';
import { Transformer } from '../base/transformer.js';
import { AdaptedModel } from '../model/adapted-model.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import { errorToData } from '../errors.js';
import { applyFlatUpdate } from './adamw-flat.js';
import type { FromReplica, ReplicaInit, SentTensor, ShardRequest, ToReplica, UpdateRequest } from './data-parallel-protocol.js';
import { TrainingError } from './errors.js';
import { assignFlat, readNamedInto, sameItems } from './flat-tensors.js';
import { Trainer } from './trainer.js';

const parent = parentPort;
if (parent === null) throw new Error('data-parallel-worker.ts runs as a worker thread of a DataParallelGroup');

interface Replica {
  readonly trainer: Trainer;
  readonly variables: readonly tf.Variable[];
  /** The trained variables' stable names and sizes, in the group's order. */
  readonly names: readonly string[];
  readonly sizes: readonly number[];
  readonly weights: Float32Array; // [P] shared, written by the main thread
  readonly grads: Float32Array; // [P] shared, this worker's answer
  readonly present: Uint8Array; // [variables] shared
  readonly m: Float32Array; // [P] shared optimizer moments
  readonly v: Float32Array; // [P]
}

let replica: Replica | undefined;
let answers: MessagePort | undefined;
let signal: Int32Array | undefined;

/** Answers on the group's port, then bumps the shared counter the main thread waits on. */
function answer(message: FromReplica): void {
  if (answers === undefined || signal === undefined) return;
  answers.postMessage(message);
  Atomics.add(signal, 0, 1);
  Atomics.notify(signal, 0);
}

function reviveTree(node: unknown): unknown {
  if (node !== null && typeof node === 'object' && (node as Partial<SentTensor>).sentTensor === true) {
    const sent = node as SentTensor;
    return tf.tensor(sent.values, [...sent.shape], 'float32');
  }
  if (Array.isArray(node)) return node.map(reviveTree);
  if (node !== null && typeof node === 'object') return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, reviveTree(v)]));
  return node;
}

async function init(message: ReplicaInit): Promise<void> {
  answers = message.answers;
  signal = new Int32Array(message.signal);
  try {
    await selectBackend({ preference: 'wasm', threads: 1 });
    const routers = ((await import(message.routersModule)) as { builtinRouters(): RouterRegistry }).builtinRouters();
    const base = new Transformer(message.config, reviveTree(message.baseWeights) as TransformerWeights);
    const model = AdaptedModel.create(base, message.spec, { routers });
    const trainer = new Trainer(model, message.trainer);
    const named = trainer.namedVariables();
    const names = [...named.keys()];
    if (!sameItems(names, message.names)) {
      throw new TrainingError(`the replica's trained variables (${names.length}) are not the main model's (${message.names.length})`, {
        hint: 'The model must be rebuildable from its spec with the routers module the group names',
      });
    }
    const variables = [...named.values()];
    const total = variables.reduce((s, v) => s + v.size, 0); // P
    const weights = new Float32Array(message.weights);
    if (weights.length !== total) throw new TrainingError(`the replica's ${total} trained parameters are not the main model's ${weights.length}`);
    replica = {
      trainer,
      variables,
      names,
      sizes: variables.map((v) => v.size),
      weights,
      grads: new Float32Array(message.grads),
      present: new Uint8Array(message.present),
      m: new Float32Array(message.m),
      v: new Float32Array(message.v),
    };
    answer({ type: 'ready' });
  } catch (error) {
    answer({ type: 'failed', error: errorToData(error) });
  }
}

/** Why the last weights notice could not be taken (the next shard reports it). */
let weightsFailure: unknown;

/** Assigns the shared weights, then counts it (the main thread may overwrite them once counted). */
function takeWeights(): void {
  try {
    if (replica === undefined) throw new TrainingError('data-parallel weights reached a worker that did not start');
    const { variables, weights } = replica;
    assignFlat(variables, weights);
  } finally {
    if (signal !== undefined) {
      Atomics.add(signal, 1, 1);
      Atomics.notify(signal, 1);
    }
  }
}

function shard(message: ShardRequest): void {
  try {
    if (replica === undefined) throw new TrainingError('a data-parallel shard reached a worker that did not start');
    const { trainer, names, sizes, grads, present } = replica;
    if (weightsFailure !== undefined) {
      const failure = weightsFailure;
      weightsFailure = undefined;
      throw failure;
    }
    if (message.weightsChanged) takeWeights();
    const result = trainer.shardGradients(message.batch);
    try {
      readNamedInto(names, sizes, result.grads, grads, present);
    } finally {
      tf.dispose([...result.grads.values()]);
    }
    answer({ type: 'shard', id: message.id, targets: result.targets, loss: result.loss, task: result.task, aux: result.aux });
  } catch (error) {
    answer({ type: 'shard-error', id: message.id, error: errorToData(error) });
  }
}

/** This replica's range of an optimizer update, in shared memory. */
function update(message: UpdateRequest): void {
  try {
    if (replica === undefined) throw new TrainingError('a data-parallel update reached a worker that did not start');
    const { weights, m, v } = replica;
    applyFlatUpdate(message.plan, message.first, message.last, { grads: new Float32Array(message.grads), params: weights, m, v });
    answer({ type: 'updated' });
  } catch (error) {
    answer({ type: 'update-error', error: errorToData(error) });
  }
}

// The group stops a worker by terminating its thread, which frees everything it holds.
parent.on('message', (message: ToReplica) => {
  if (message.type === 'init') void init(message);
  else if (message.type === 'weights') {
    try {
      takeWeights();
    } catch (error) {
      weightsFailure = error;
    }
  } else if (message.type === 'update') update(message);
  else shard(message);
});
