/**
 * Admission control: at most `maxConcurrency` generation requests run on the runtime at once, at most
 * `maxQueue` more wait (first come, first served); a request beyond that is refused at once with 429 and a
 * Retry-After estimated from recent request durations. A waiting request whose client goes away leaves the
 * queue without ever running.
 */
import { ServerError } from './errors.js';

export interface AdmissionOptions {
  readonly maxConcurrency: number;
  readonly maxQueue: number;
}

interface Waiter {
  readonly admit: () => void;
}

/** Frees the slot (idempotent). */
export type Release = () => void;

export class Admission {
  private active = 0;
  private readonly waiting: Waiter[] = [];
  /** Exponentially weighted mean of request durations, in seconds. */
  private meanSeconds = 1;

  constructor(private readonly options: AdmissionOptions) {}

  get running(): number {
    return this.active;
  }

  get queued(): number {
    return this.waiting.length;
  }

  get limits(): AdmissionOptions {
    return this.options;
  }

  /** Waits for a slot; rejects with 429 when the queue is full, or with the signal's reason when aborted while waiting. */
  async acquire(signal: AbortSignal): Promise<Release> {
    if (signal.aborted) throw signal.reason;
    if (this.active < this.options.maxConcurrency && this.waiting.length === 0) return this.grant();
    if (this.waiting.length >= this.options.maxQueue) {
      const retryAfter = this.retryAfterSeconds();
      throw new ServerError(
        `the server is at capacity: ${this.active} requests running and ${this.waiting.length} waiting (--max-concurrency ${this.options.maxConcurrency}, --max-queue ${this.options.maxQueue})`,
        {
          status: 429,
          type: 'rate_limit_error',
          code: 'queue_full',
          hint: `Retry after ${retryAfter} s, or add replicas`,
          headers: { 'retry-after': String(retryAfter) },
        },
      );
    }
    return new Promise<Release>((resolve, reject) => {
      const waiter: Waiter = {
        admit: () => {
          signal.removeEventListener('abort', onAbort);
          resolve(this.grant());
        },
      };
      const onAbort = (): void => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  /** Records how long a finished request held its slot (for Retry-After). */
  observe(seconds: number): void {
    this.meanSeconds = 0.8 * this.meanSeconds + 0.2 * seconds;
  }

  /** Seconds until a queued request would likely start: the queue ahead divided by the slots, times the mean duration. */
  retryAfterSeconds(): number {
    const ahead = this.waiting.length + 1;
    return Math.min(60, Math.max(1, Math.ceil((this.meanSeconds * ahead) / this.options.maxConcurrency)));
  }

  private grant(): Release {
    this.active++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.active--;
      const next = this.waiting.shift();
      next?.admit();
    };
  }
}
