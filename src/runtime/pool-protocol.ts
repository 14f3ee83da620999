/**
 * The messages between a RuntimePool (pool.ts) and its workers (pool-worker.ts), and how errors cross the
 * thread boundary: a worker sends the error's class name, message, path and hint, and the pool throws the
 * same typed error (a RoutedPeftError subclass where it is one), so a caller cannot tell a pooled runtime's
 * refusal from a single runtime's.
 */
import type { ModelConfig } from '../base/config.js';
import { errorFromData, errorToData, LIBRARY_ERRORS, type SentError } from '../errors.js';

export type { SentError } from '../errors.js';
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

export type FromWorker =
  | { readonly type: 'ready'; readonly config: ModelConfig; readonly tokenizerVocab: number | undefined }
  | { readonly type: 'failed'; readonly error: SentError }
  | { readonly type: 'result'; readonly id: number; readonly value: unknown }
  | { readonly type: 'error'; readonly id: number; readonly error: SentError }
  | { readonly type: 'event'; readonly id: number; readonly event: unknown }
  /** One pass the worker's batcher ran (its runtime's batches$). */
  | { readonly type: 'batch'; readonly event: unknown };

/** An error as plain data (errors.ts). */
export const sendError = errorToData;

const TYPED = { ...LIBRARY_ERRORS, MemoryBudgetError };

/** The error a worker sent, as the same class with the same message, path and hint. */
export function reviveError(sent: SentError): Error {
  return errorFromData(sent, TYPED);
}
