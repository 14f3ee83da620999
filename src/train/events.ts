/**
 * Training events as plain data (numbers and copied arrays, never tensors), and an AsyncIterable twin of
 * an rxjs Observable for `for await` users (rxjs has no built-in one).
 */
import type { Observable } from 'rxjs';

/** What one Trainer.step() call did. Loss figures are token-weighted means over the optimizer step's micro-batches so far. */
export interface StepReport {
  /** Optimizer steps attempted so far (applied + skipped), counting this one when it completed. */
  readonly step: number;
  /** Objective value: taskLoss + auxLoss + retentionWeight · retentionLoss (after any test hook). */
  readonly loss: number;
  readonly taskLoss: number;
  /** Router auxiliary losses, each already weighted (retention terms of the routes included), plus controller terms (AdaLoRA's orthogonality regulariser). */
  readonly auxLoss: number;
  /** Mean KL(p_base ‖ p_model) on the retention rows (train/retention.ts); null without retention rows. */
  readonly retentionLoss: number | null;
  /** Peak LR × schedule of the top layer of each group at this step. */
  readonly lr: { readonly expert: number; readonly router: number };
  /** Global gradient norm before clipping; null while still accumulating micro-batches. */
  readonly gradNorm: number | null;
  /** This call ended an optimizer step whose update was skipped (non-finite loss or gradient, no targets). */
  readonly skipped: boolean;
  /** This call ended an optimizer step and its update was applied. */
  readonly applied: boolean;
  /** Micro-batches in the current optimizer step so far (1..gradAccumulation). */
  readonly microBatch: number;
  readonly skippedTotal: number;
  /** Real (mask 1) tokens in this call's batch. */
  readonly tokens: number;
  /** Counted loss targets (LM target tokens, or labelled rows) in this call's batch. */
  readonly targets: number;
  /** Wall time of this call. */
  readonly ms: number;
}

export interface TrainSummary {
  readonly steps: number;
  readonly appliedSteps: number;
  readonly skippedTotal: number;
  readonly firstLoss: number | null;
  readonly lastLoss: number | null;
  readonly tokens: number;
  readonly ms: number;
}

export type TrainEvent =
  | ({ readonly type: 'step' } & StepReport)
  | { readonly type: 'skipped'; readonly step: number; readonly reason: string }
  | { readonly type: 'done'; readonly summary: TrainSummary };

export interface BufferedIterable<T> extends AsyncIterableIterator<T> {
  /** Items dropped because the buffer was full (oldest first). */
  readonly dropped: number;
}

/**
 * Subscribes to `source` now and yields its items in order. The producer (a synchronous training loop) is
 * never blocked: at most `capacity` unread items are kept and the oldest are dropped beyond that (counted
 * in `dropped`). The iterator ends when the source completes, throws the source's error after the buffered
 * items, and unsubscribes on `return()` (a `break` out of `for await`).
 */
export function bufferedIterable<T>(source: Observable<T>, capacity = 1024): BufferedIterable<T> {
  if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`bufferedIterable: capacity must be an integer ≥ 1, got ${capacity}`);
  const buffer: T[] = [];
  let waiting: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
  let finished = false;
  let failure: { error: unknown } | undefined;
  let dropped = 0;

  const subscription = source.subscribe({
    next: (item) => {
      if (waiting !== undefined) {
        const w = waiting;
        waiting = undefined;
        w.resolve({ value: item, done: false });
        return;
      }
      buffer.push(item);
      if (buffer.length > capacity) {
        buffer.shift();
        dropped += 1;
      }
    },
    error: (error: unknown) => {
      failure = { error };
      if (waiting !== undefined) {
        const w = waiting;
        waiting = undefined;
        w.reject(error);
        failure = undefined;
        finished = true;
      }
    },
    complete: () => {
      finished = true;
      if (waiting !== undefined) {
        const w = waiting;
        waiting = undefined;
        w.resolve({ value: undefined, done: true });
      }
    },
  });

  const iterator: BufferedIterable<T> = {
    get dropped() {
      return dropped;
    },
    next(): Promise<IteratorResult<T>> {
      if (buffer.length > 0) return Promise.resolve({ value: buffer.shift() as T, done: false });
      if (failure !== undefined) {
        const { error } = failure;
        failure = undefined;
        finished = true;
        return Promise.reject(error);
      }
      if (finished) return Promise.resolve({ value: undefined, done: true });
      return new Promise((resolve, reject) => {
        waiting = { resolve, reject };
      });
    },
    return(): Promise<IteratorResult<T>> {
      subscription.unsubscribe();
      finished = true;
      buffer.length = 0;
      failure = undefined;
      if (waiting !== undefined) {
        const w = waiting;
        waiting = undefined;
        w.resolve({ value: undefined, done: true });
      }
      return Promise.resolve({ value: undefined, done: true });
    },
    [Symbol.asyncIterator]() {
      return iterator;
    },
  };
  return iterator;
}
