/**
 * The AsyncIterable twin of an Observable (ARCHITECTURE.md, "Events are plain data"): `for await` users get the same values.
 * Subscribes on the first next(); values are queued until read; breaking out of the loop (return())
 * unsubscribes, which cancels whatever the subscription started.
 */
import type { Observable, Subscription } from 'rxjs';

export function toAsyncIterable<T>(source: Observable<T>): AsyncIterable<T> {
  return {
    [Symbol.asyncIterator](): AsyncIterator<T> {
      const queue: T[] = [];
      let waiting: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
      let finished = false;
      let failure: { error: unknown } | undefined;
      let subscription: Subscription | undefined;
      const settle = (): void => {
        if (waiting === undefined) return;
        const { resolve, reject } = waiting;
        if (queue.length > 0) {
          waiting = undefined;
          resolve({ value: queue.shift() as T, done: false });
        } else if (failure !== undefined) {
          waiting = undefined;
          const { error } = failure;
          failure = undefined; // reported once; later calls see the end
          reject(error);
        } else if (finished) {
          waiting = undefined;
          resolve({ value: undefined, done: true });
        }
      };
      const start = (): void => {
        if (subscription !== undefined || finished) return;
        subscription = source.subscribe({
          next: (value) => {
            queue.push(value);
            settle();
          },
          error: (error: unknown) => {
            failure = { error };
            finished = true;
            settle();
          },
          complete: () => {
            finished = true;
            settle();
          },
        });
      };
      return {
        next: () =>
          new Promise<IteratorResult<T>>((resolve, reject) => {
            waiting = { resolve, reject };
            start();
            settle();
          }),
        return: () => {
          finished = true;
          queue.length = 0;
          subscription?.unsubscribe();
          return Promise.resolve({ value: undefined, done: true });
        },
      };
    },
  };
}
