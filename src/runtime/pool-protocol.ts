/**
 * The messages between a RuntimePool (pool.ts) and its workers (pool-worker.ts), and how errors cross the
 * thread boundary: a worker sends the error's class name, message, path and hint, and the pool throws the
 * same typed error (a RoutedPeftError subclass where it is one), so a caller cannot tell a pooled runtime's
 * refusal from a single runtime's.
 */
import type { ModelConfig } from '../base/config.js';
import {
  BackendError,
  CheckpointError,
  ConfigError,
  ImageError,
  NonFiniteError,
  OutputError,
  RoutedPeftError,
  SafetensorsError,
  ShapeError,
  SyncReadError,
  TokenizerError,
  UsageError,
} from '../errors.js';
import { MemoryBudgetError } from './registry.js';

/** What a worker loads: the same base (and tokenizer) in every worker. */
export interface PoolBaseSource {
  /** A llama2.c .bin checkpoint or a Hugging Face model directory. */
  readonly model: string;
  readonly tokenizer?: string | undefined;
  readonly allowNonFinite?: boolean | undefined;
}

/** The runtime methods a worker serves, by name. */
export type PoolMethod =
  | 'load'
  | 'swap'
  | 'unload'
  | 'merge'
  | 'unmerge'
  | 'targets'
  | 'stats'
  | 'forward'
  | 'score'
  | 'classify'
  | 'generate'
  | 'idle'
  | 'dispose';

export type ToWorker =
  | {
      readonly type: 'init';
      readonly base: PoolBaseSource;
      /** RoutedRuntime.create's settings (batching, memory budget and queue, batch-coupled routers). */
      readonly runtime: Readonly<Record<string, unknown>>;
      readonly threads: number;
      /** Module URL whose `builtinRouters()` gives the router registry. */
      readonly routersModule: string;
    }
  | { readonly type: 'call'; readonly id: number; readonly method: PoolMethod; readonly args: readonly unknown[] }
  | { readonly type: 'stream'; readonly id: number; readonly prompt: readonly number[] | string; readonly options: Readonly<Record<string, unknown>> }
  | { readonly type: 'cancel'; readonly id: number };

export interface SentError {
  readonly name: string;
  readonly message: string;
  readonly path?: string | undefined;
  readonly hint?: string | undefined;
}

export type FromWorker =
  | { readonly type: 'ready'; readonly config: ModelConfig; readonly tokenizerVocab: number | undefined }
  | { readonly type: 'failed'; readonly error: SentError }
  | { readonly type: 'result'; readonly id: number; readonly value: unknown }
  | { readonly type: 'error'; readonly id: number; readonly error: SentError }
  | { readonly type: 'event'; readonly id: number; readonly event: unknown }
  /** One pass the worker's batcher ran (its runtime's batches$). */
  | { readonly type: 'batch'; readonly event: unknown };

/** An error as plain data. */
export function sendError(error: unknown): SentError {
  if (error instanceof RoutedPeftError) return { name: error.name, message: error.message, path: error.path, hint: error.hint };
  if (error instanceof Error) return { name: error.name, message: error.message };
  return { name: 'Error', message: String(error) };
}

const TYPED: Readonly<Record<string, new (message: string) => RoutedPeftError>> = {
  RoutedPeftError,
  ConfigError,
  CheckpointError,
  SafetensorsError,
  ShapeError,
  BackendError,
  SyncReadError,
  TokenizerError,
  ImageError,
  UsageError,
  NonFiniteError,
  OutputError,
  MemoryBudgetError,
};

/** The error a worker sent, as the same class with the same message, path and hint. */
export function reviveError(sent: SentError): Error {
  const Typed = TYPED[sent.name];
  if (Typed === undefined) {
    const error = new Error(sent.message);
    if (sent.name !== 'Error') error.name = sent.name;
    return error;
  }
  const error = new Typed('');
  // The message already carries the path and hint (RoutedPeftError appended them in the worker).
  Object.assign(error, { message: sent.message, path: sent.path, hint: sent.hint });
  return error;
}
