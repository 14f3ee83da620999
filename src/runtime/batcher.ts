/**
 * Request batching. Requests arriving within a short window (`windowMs`, at most `maxBatchSize` of them) are
 * collected by an rxjs pipeline and split into passes; each pass is one forward (or one generation loop)
 * over all its requests' rows. Requests with different selections share a pass through mixed hooks
 * (mixed-hooks.ts), so every row gets exactly its own selection.
 *
 * What shares a pass:
 *  - the same kind of pass: full logits (forward, score), final hidden states (classify), or generation;
 *  - the same base weights (a merged adapter runs on its own merged view of the base, so only requests for
 *    that merged adapter share its passes);
 *  - selections with prefix adapters run only with requests of the same selection (prefix slots are added
 *    to every row of a pass); selections routed by a batch-coupled router (capacity shared by all rows:
 *    switch, expert-choice) run one request per pass, since other rows would change their routing;
 *  - one routed model appears in a pass as one group (its routers keep per-forward state), so requests for
 *    it with and without task ids go to different passes.
 *
 * Rows of different lengths are padded on the left (masked; positions ignore padding), which leaves each
 * row's values as they are alone up to float round-off.
 *
 * Generation: a pass formed at prefill decodes together, with one KV cache, until all its members finish;
 * requests arriving meanwhile form the next pass, which runs interleaved with it step by step (every step
 * yields to the event loop). A finished or cancelled member's row stays in the batch, fed padding (mask 0,
 * so it does not grow) until the pass ends; its selection's weights stay leased until then. Cancellation
 * takes effect at the next step; a pass whose members are all finished frees its cache at once.
 *
 * Shape letters: B rows of a pass, W its width (longest row), C channels (V logits or D hidden), V vocabulary.
 */
import { Observable, Subject, type OperatorFunction, type Subscription } from 'rxjs';
import type { ForwardHooks } from '../base/hooks.js';
import { padLeft } from '../base/generate.js';
import { sampleToken, type SamplingOptions } from '../base/sampling.js';
import type { Transformer } from '../base/transformer.js';
import { RoutedPeftError } from '../errors.js';
import type { RoutingTraceEntry } from '../routing/trace.js';
import type { LoraTerms } from '../model/lora-terms.js';
import { passHooks, type HookGroup } from './mixed-hooks.js';
import type { BatchEvent, FinishReason } from './types.js';

/** How a selection may share passes. */
export type Isolation = 'shared' | 'selection' | 'request';

/** A resolved selection: which base to run and the hooks that apply the selection. Holds its weights' leases. */
export interface ExecutionPlan {
  /** Equal keys: the same selection over the same weight versions. */
  readonly key: string;
  /** Human-readable selection, for batch events. */
  readonly label: string;
  readonly model: Transformer;
  readonly isolation: Isolation;
  /** Hooks for one group of rows in one pass (called once per pass; undefined: the bare base). */
  hooks(options: { readonly taskIds: readonly number[] | undefined; readonly trace: RoutingTraceEntry[] | undefined }): ForwardHooks | undefined;
  /** moduleKeys of the points where the hooks may change a value (undefined: any): mixed passes skip the rest. */
  readonly points?: ReadonlySet<string> | undefined;
  /** The selection as LoRA terms, when it is exactly that: mixed passes give such groups one choice of a LoRA bank (mixed-hooks.ts). */
  readonly lora?: LoraTerms | undefined;
  /** Releases the leases (idempotent). */
  release(): void;
}

interface RequestBase {
  readonly plan: ExecutionPlan;
  readonly rows: readonly (readonly number[])[];
  readonly taskIds: readonly number[] | undefined;
  readonly trace: boolean;
}

/** One pass's values for one request: [rows, T, C] with T its longest row (left-padded, padding zero). */
export interface PassOutput {
  readonly data: Float32Array;
  readonly shape: readonly [number, number, number];
  readonly trace: RoutingTraceEntry[] | undefined;
}

export interface ForwardRequest extends RequestBase {
  readonly kind: 'logits' | 'hidden';
  resolve(output: PassOutput): void;
  reject(error: unknown): void;
}

export interface GenerationEnd {
  readonly reason: FinishReason;
  readonly tokens: number[];
  readonly trace: RoutingTraceEntry[] | undefined;
}

export interface GenerateRequest extends RequestBase {
  readonly kind: 'generate';
  readonly maxNewTokens: number;
  readonly sampling: SamplingOptions;
  readonly random: () => number;
  readonly eosId: number | undefined;
  isCancelled(): boolean;
  onToken(index: number, token: number): void;
  onEnd(end: GenerationEnd): void;
  onError(error: unknown): void;
}

export type BatchRequest = ForwardRequest | GenerateRequest;

export interface BatcherOptions {
  readonly windowMs: number;
  readonly maxBatchSize: number;
}

/**
 * Like rxjs bufferTime(windowMs, null, maxSize), but the window opens with the first value and no timer
 * runs while nothing waits (an idle runtime keeps no timer alive).
 */
export function bufferFromFirst<T>(windowMs: number, maxSize: number): OperatorFunction<T, T[]> {
  return (source) =>
    new Observable<T[]>((subscriber) => {
      let buffer: T[] = [];
      let timer: ReturnType<typeof setTimeout> | undefined;
      const flush = (): void => {
        if (timer !== undefined) clearTimeout(timer);
        timer = undefined;
        if (buffer.length === 0) return;
        const batch = buffer;
        buffer = [];
        subscriber.next(batch);
      };
      const subscription = source.subscribe({
        next: (value) => {
          buffer.push(value);
          if (buffer.length >= maxSize) flush();
          else timer ??= setTimeout(flush, windowMs);
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => {
          flush();
          subscriber.complete();
        },
      });
      return () => {
        subscription.unsubscribe();
        if (timer !== undefined) clearTimeout(timer);
      };
    });
}

interface Pass {
  readonly kind: BatchRequest['kind'];
  readonly model: Transformer;
  readonly requests: BatchRequest[];
  /** plan key → group key (selection + whether it has task ids). */
  readonly groupOf: Map<string, string>;
  exclusive: boolean;
}

function groupKey(request: BatchRequest): string {
  return `${request.plan.key}${request.taskIds === undefined ? '' : '#tasks'}`;
}

/** Splits a window's requests into passes (arrival order kept within each pass). */
export function formPasses(requests: readonly BatchRequest[]): Pass[] {
  const passes: Pass[] = [];
  for (const request of requests) {
    const { plan } = request;
    const key = groupKey(request);
    const fits = (pass: Pass): boolean => {
      if (pass.kind !== request.kind || pass.model !== plan.model) return false;
      if (plan.isolation === 'request' || pass.requests.some((r) => r.plan.isolation === 'request')) return false;
      if (plan.isolation === 'selection' || pass.exclusive) return pass.groupOf.size === 1 && pass.groupOf.get(plan.key) === key;
      const existing = pass.groupOf.get(plan.key);
      return existing === undefined || existing === key;
    };
    let pass = passes.find(fits);
    if (pass === undefined) {
      pass = { kind: request.kind, model: plan.model, requests: [], groupOf: new Map(), exclusive: false };
      passes.push(pass);
    }
    pass.requests.push(request);
    pass.groupOf.set(plan.key, key);
    if (plan.isolation !== 'shared') pass.exclusive = true;
  }
  return passes;
}

/** Per-pass hooks plus where each group's trace entries go. */
interface BuiltHooks {
  readonly hooks: ForwardHooks | undefined;
  /** Moves trace entries collected by the last forward to their requests (by request index). */
  drainTraces(into: (RoutingTraceEntry[] | undefined)[]): void;
  dispose(): void;
}

/** Rows of each request in the pass: [start, end). */
function rowRanges(requests: readonly BatchRequest[]): [number, number][] {
  let start = 0;
  return requests.map((r) => {
    const range: [number, number] = [start, start + r.rows.length];
    start += r.rows.length;
    return range;
  });
}

function buildHooks(requests: readonly BatchRequest[], batch: number, nLayers: number): BuiltHooks {
  const ranges = rowRanges(requests);
  const byKey = new Map<string, number[]>(); // group key → request indices
  requests.forEach((r, i) => byKey.set(groupKey(r), [...(byKey.get(groupKey(r)) ?? []), i]));
  const groups: (HookGroup & { trace: RoutingTraceEntry[] | undefined; owners: [number, number][] })[] = [];
  for (const members of byKey.values()) {
    const first = requests[members[0] as number] as BatchRequest;
    const rows: number[] = [];
    /** For each group row: [request index, row within the request]. */
    const owners: [number, number][] = [];
    for (const i of members) {
      const [start, end] = ranges[i] as [number, number];
      for (let row = start; row < end; row++) {
        rows.push(row);
        owners.push([i, row - start]);
      }
    }
    const taskIds = first.taskIds === undefined ? undefined : members.flatMap((i) => [...((requests[i] as BatchRequest).taskIds ?? [])]);
    const trace = members.some((i) => (requests[i] as BatchRequest).trace) ? [] : undefined;
    groups.push({ rows, hooks: first.plan.hooks({ taskIds, trace }), points: first.plan.points, lora: first.plan.lora, trace, owners });
  }
  const built = passHooks(groups, batch, nLayers);
  return {
    hooks: built.hooks,
    drainTraces: (into) => {
      for (const group of groups) {
        for (const entry of group.trace?.splice(0) ?? []) {
          const owner = group.owners[entry.batch];
          if (owner === undefined) continue;
          into[owner[0]]?.push({ ...entry, batch: owner[1] });
        }
      }
    },
    dispose: () => built.dispose(),
  };
}

/** Lets timers, I/O and other passes run between decoding steps (setImmediate in Node, a 0 ms timeout elsewhere). */
const nextTurn = (): Promise<void> => new Promise((resolve) => (typeof setImmediate === 'function' ? setImmediate(resolve) : setTimeout(resolve, 0)));

export class Batcher {
  private readonly incoming = new Subject<BatchRequest>();
  private readonly events = new Subject<BatchEvent>();
  private readonly subscription: Subscription;
  private outstanding = 0;
  private idleWaiters: (() => void)[] = [];
  private closed = false;

  /** One event per pass run (plain data). */
  readonly batches$: Observable<BatchEvent> = this.events.asObservable();

  constructor(options: BatcherOptions) {
    this.subscription = this.incoming.pipe(bufferFromFirst(options.windowMs, options.maxBatchSize)).subscribe((window) => {
      for (const pass of formPasses(window)) void this.run(pass);
    });
  }

  submit(request: BatchRequest): void {
    if (this.closed) {
      request.plan.release();
      if (request.kind === 'generate') request.onEnd({ reason: 'cancelled', tokens: [], trace: request.trace ? [] : undefined });
      else request.reject(new RoutedPeftError('the runtime was disposed before this call ran', { hint: 'Create a new RoutedRuntime' }));
      return;
    }
    this.outstanding++;
    this.incoming.next(request);
  }

  /** Resolves when no request is waiting or running. */
  idle(): Promise<void> {
    if (this.outstanding === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  get pending(): number {
    return this.outstanding;
  }

  /** Runs what waits in the window now, then accepts nothing more. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.incoming.complete(); // flushes the window
    this.subscription.unsubscribe();
    this.events.complete();
  }

  private async run(pass: Pass): Promise<void> {
    try {
      this.events.next({
        kind: pass.kind,
        requests: pass.requests.length,
        rows: pass.requests.reduce((s, r) => s + r.rows.length, 0),
        groups: pass.groupOf.size,
        selections: [...new Set(pass.requests.map((r) => r.plan.label))],
      });
      if (pass.kind === 'generate') await this.runGeneration(pass.model, pass.requests as GenerateRequest[]);
      else await this.runForward(pass.model, pass.kind, pass.requests as ForwardRequest[]);
    } finally {
      for (const request of pass.requests) request.plan.release();
      this.outstanding -= pass.requests.length;
      if (this.outstanding === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
    }
  }

  private async runForward(model: Transformer, kind: 'logits' | 'hidden', requests: readonly ForwardRequest[]): Promise<void> {
    let outputs: PassOutput[];
    try {
      const rows = requests.flatMap((r) => r.rows);
      const { ids, mask } = padLeft(rows);
      const width = ids[0]?.length ?? 0;
      const built = buildHooks(requests, rows.length, model.config.nLayers);
      let data: Float32Array;
      const traces = requests.map((r) => (r.trace ? ([] as RoutingTraceEntry[]) : undefined));
      try {
        const out = model.forward({ ids, mask, output: kind === 'hidden' ? 'hidden' : 'logits', ...(built.hooks === undefined ? {} : { hooks: built.hooks }) }); // [B, W, C]
        try {
          data = (await out.data()) as Float32Array; // async: a GPU backend never stalls here
        } finally {
          out.dispose();
        }
        built.drainTraces(traces);
      } finally {
        built.dispose();
      }
      const channels = kind === 'hidden' ? model.config.dim : model.config.vocabSize;
      const ranges = rowRanges(requests);
      outputs = requests.map((request, i) => {
        const [start] = ranges[i] as [number, number];
        const own = Math.max(...request.rows.map((r) => r.length));
        const values = new Float32Array(request.rows.length * own * channels); // [rows, T, C]
        request.rows.forEach((row, b) => {
          for (let t = own - row.length; t < own; t++) {
            const from = ((start + b) * width + (width - own + t)) * channels;
            values.set(data.subarray(from, from + channels), (b * own + t) * channels);
          }
        });
        return { data: values, shape: [request.rows.length, own, channels] as const, trace: traces[i] };
      });
    } catch (error) {
      for (const request of requests) request.reject(error);
      return;
    }
    requests.forEach((request, i) => request.resolve(outputs[i] as PassOutput));
  }

  private async runGeneration(model: Transformer, all: readonly GenerateRequest[]): Promise<void> {
    const requests = all.filter((r) => {
      if (!r.isCancelled()) return true;
      r.onEnd({ reason: 'cancelled', tokens: [], trace: r.trace ? [] : undefined });
      return false;
    });
    if (requests.length === 0) return;
    const batch = requests.length;
    const vocab = model.config.vocabSize;
    const state = requests.map((r) => ({ tokens: [] as number[], done: false, trace: r.trace ? ([] as RoutingTraceEntry[]) : undefined }));
    const finish = (i: number, reason: FinishReason): void => {
      const s = state[i];
      if (s === undefined || s.done) return;
      s.done = true;
      (requests[i] as GenerateRequest).onEnd({ reason, tokens: [...s.tokens], trace: s.trace });
    };
    let built: BuiltHooks | undefined;
    const cache = model.newCache(batch);
    try {
      built = buildHooks(requests, batch, model.config.nLayers);
      const padded = padLeft(requests.map((r) => r.rows[0] ?? []));
      let ids: number[][] = padded.ids;
      let mask: number[][] = padded.mask;
      for (;;) {
        requests.forEach((r, i) => {
          if (r.isCancelled()) finish(i, 'cancelled');
        });
        if (state.every((s) => s.done)) return;
        const logits = model.forward({ ids, mask, cache, output: 'last-logits', ...(built.hooks === undefined ? {} : { hooks: built.hooks }) }); // [B, V]
        let values: Float32Array;
        try {
          values = (await logits.data()) as Float32Array; // async: a GPU backend never stalls here
        } finally {
          logits.dispose();
        }
        built.drainTraces(state.map((s) => s.trace));
        const nextIds: number[][] = [];
        const nextMask: number[][] = [];
        requests.forEach((r, i) => {
          const s = state[i] as (typeof state)[number];
          if (s.done) {
            nextIds.push([0]);
            nextMask.push([0]); // a finished row no longer grows
            return;
          }
          const token = sampleToken(values.subarray(i * vocab, (i + 1) * vocab), r.sampling, r.random);
          s.tokens.push(token);
          r.onToken(s.tokens.length - 1, token);
          if (token === r.eosId) finish(i, 'eos');
          else if (s.tokens.length >= r.maxNewTokens) finish(i, 'length');
          nextIds.push([token]);
          nextMask.push([s.done ? 0 : 1]);
        });
        if (state.every((s) => s.done)) return;
        ids = nextIds;
        mask = nextMask;
        await nextTurn();
      }
    } catch (error) {
      requests.forEach((r, i) => {
        if (!(state[i] as (typeof state)[number]).done) {
          (state[i] as (typeof state)[number]).done = true;
          r.onError(error);
        }
      });
    } finally {
      cache.dispose();
      built?.dispose();
    }
  }
}
