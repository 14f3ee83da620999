/**
 * What the HTTP server needs of a runtime: a RoutedRuntime has it as is; a RuntimePool (every core, one
 * runtime per worker thread) gets it from `poolServingRuntime`, which keeps the two answers the server
 * reads synchronously — the served targets and the runtime statistics — as a local copy: targets change
 * only through this object (updated when each load, swap or unload completes), and the statistics (summed
 * over the workers) are refreshed after each of those and every `statsRefreshMs` (default 1 s).
 */
import type { Observable } from 'rxjs';
import type { ModelConfig } from '../base/config.js';
import type { RuntimePool } from '../runtime/pool.js';
import type {
  BatchEvent,
  CallOptions,
  ForwardResult,
  GenerationEvent,
  LoadOptions,
  RuntimeGenerateOptions,
  RuntimeStats,
  TargetInfo,
  TargetSource,
} from '../runtime/types.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';

export interface ServingRuntime {
  readonly base: { readonly config: ModelConfig };
  readonly tokenizer: Tokenizer | undefined;
  readonly batches$: Observable<BatchEvent>;
  generate$(prompt: readonly number[] | string, options: RuntimeGenerateOptions): Observable<GenerationEvent>;
  forward(ids: readonly (readonly number[])[], options: CallOptions): Promise<ForwardResult>;
  targets(): string[];
  stats(): RuntimeStats;
  load(name: string, source: TargetSource, options?: LoadOptions): Promise<TargetInfo>;
  swap(name: string, source: TargetSource, options?: LoadOptions): Promise<TargetInfo>;
  /** Starts unloading (requests running on the target finish first). */
  unload(name: string): void;
}

/** The statistics of all workers as one: counters and bytes summed, the targets as the first worker sees them. */
export function sumStats(perWorker: readonly RuntimeStats[]): RuntimeStats {
  const first = perWorker[0];
  if (first === undefined) throw new Error('sumStats needs at least one worker');
  const sum = (pick: (s: RuntimeStats) => number) => perWorker.reduce((total, s) => total + pick(s), 0);
  return {
    targets: first.targets.map((t) => ({
      ...t,
      resident: perWorker.some((s) => s.targets.find((u) => u.name === t.name)?.resident === true),
      inUse: perWorker.reduce((total, s) => total + (s.targets.find((u) => u.name === t.name)?.inUse ?? 0), 0),
    })),
    residentBytes: sum((s) => s.residentBytes),
    budgetBytes: first.budgetBytes === undefined ? undefined : sum((s) => s.budgetBytes ?? 0),
    loads: sum((s) => s.loads),
    swaps: sum((s) => s.swaps),
    evictions: sum((s) => s.evictions),
    reloads: sum((s) => s.reloads),
    retiredInUse: sum((s) => s.retiredInUse),
    queued: sum((s) => s.queued),
    queuedTotal: sum((s) => s.queuedTotal),
    queueTimeouts: sum((s) => s.queueTimeouts),
  };
}

export interface PoolServing extends ServingRuntime {
  /** Stops the statistics refresh (the pool itself is closed by whoever created it). */
  close(): void;
}

/** A RuntimePool as the server's runtime (see the file comment); `tokenizer` is the main thread's copy. */
export async function poolServingRuntime(
  pool: RuntimePool,
  tokenizer: Tokenizer | undefined,
  options: { readonly statsRefreshMs?: number; readonly onError?: (error: unknown) => void } = {},
): Promise<PoolServing> {
  let names = await pool.targets();
  let stats = sumStats(await pool.stats());
  const refresh = async (): Promise<void> => {
    stats = sumStats(await pool.stats());
  };
  const report = options.onError ?? (() => {});
  const timer = setInterval(() => void refresh().catch(report), options.statsRefreshMs ?? 1000);
  timer.unref();
  const changed = async <T>(work: Promise<T>): Promise<T> => {
    try {
      return await work;
    } finally {
      names = await pool.targets();
      await refresh().catch(report);
    }
  };
  return {
    base: { config: pool.config },
    tokenizer,
    batches$: pool.batches$,
    generate$: (prompt, callOptions) => pool.generate$(prompt, callOptions),
    forward: (ids, callOptions) => pool.forward(ids, callOptions),
    targets: () => [...names],
    stats: () => ({ ...stats, targets: stats.targets.filter((t) => names.includes(t.name)) }),
    load: (name, source, loadOptions) => changed(pool.load(name, source, loadOptions)),
    swap: (name, source, loadOptions) => changed(pool.swap(name, source, loadOptions)),
    unload: (name) => {
      names = names.filter((n) => n !== name);
      void changed(pool.unload(name)).catch(report);
    },
    close: () => clearInterval(timer),
  };
}
