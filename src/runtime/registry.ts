/**
 * The runtime's named targets (PEFT adapters and routed models) under an optional memory budget.
 *
 * Versions and leases. Each load, swap or reload of a target creates a new immutable *version* (its
 * weights). A request leases the versions it uses when it starts and releases them when its pass ends, so
 * a swap never changes the weights of a running request: the old version is retired and disposed only when
 * its last lease is released. New requests lease the new version.
 *
 * Budget. A target's bytes are its variables' bytes (plus its merged weights while merged). Live bytes —
 * current versions plus retired versions still leased, plus room reserved for reloads in flight — are kept ≤
 * the budget: making room evicts the least recently used targets that no request holds (their weights are
 * disposed, their source kept) and an evicted target is reloaded from its source on its next request.
 *
 * Queueing. When room cannot be made because every other target is in use, the request (or load, swap or
 * reload) waits in a FIFO queue, as serving systems such as S-LoRA do, and proceeds as soon as finished
 * requests make a target evictable. The queue is bounded (`maxWaiting`, default 1024) and a wait has a
 * deadline (`timeoutMs`, default 30 s); either limit is a MemoryBudgetError naming the target. A target larger
 * than the whole budget can never fit and is an error at once. Instance targets cannot be reloaded and so are
 * never evicted. A target's bytes are known only once it is read, so a first load (or a swap) may hold more
 * than the budget while it reads and waits; a reload reserves its last known size before reading.
 */
import type * as tf from '@tensorflow/tfjs';
import { LoraModule } from '../adapters/lora/layer.js';
import { mergeLora } from '../adapters/lora/merge.js';
import type { Transformer } from '../base/transformer.js';
import type { AdapterInstance } from '../adapters/instance.js';
import { ConfigError, RoutedPeftError } from '../errors.js';
import { readPeftAdapter } from '../io/peft-adapter.js';
import { loadRoutedModel } from '../io/routed-model-dir.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import type { AdaptedModel } from '../model/adapted-model.js';
import type { RuntimeStats, TargetInfo, TargetSource, TargetStats } from './types.js';

/** A classification head on the host: logits = h·W + b. */
export interface ClassificationHead {
  readonly dim: number; // D
  readonly classes: number; // C
  readonly weight: Float32Array; // [D, C]
  readonly bias: Float32Array; // [C]
}

export type TargetContent = { readonly kind: 'adapter'; readonly instance: AdapterInstance } | { readonly kind: 'routed'; readonly model: AdaptedModel };

function variableBytes(variables: readonly tf.Variable[]): number {
  return variables.reduce((sum, v) => sum + v.size * (v.dtype === 'bool' ? 1 : 4), 0);
}

interface MergedView {
  readonly model: Transformer;
  readonly bytes: number;
}

/** One immutable set of weights of a target. */
export class TargetVersion {
  refs = 0;
  retired = false;
  /** Just (re)loaded for waiting requests and not leased yet: not evictable until its first lease. */
  fresh = false;
  private merged: MergedView | undefined;
  /** Unmerged views still possibly in use by running requests; freed when refs drops to 0. */
  private readonly staleViews: MergedView[] = [];
  private disposed = false;

  constructor(
    readonly id: number,
    readonly name: string,
    readonly content: TargetContent,
    readonly bytes: number,
  ) {}

  get mergedModel(): Transformer | undefined {
    return this.merged?.model;
  }

  get totalBytes(): number {
    return this.bytes + (this.merged?.bytes ?? 0) + this.staleViews.reduce((s, v) => s + v.bytes, 0);
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  setMerged(view: MergedView): void {
    this.merged = view;
  }

  dropMerged(): void {
    if (this.merged === undefined) return;
    this.staleViews.push(this.merged);
    this.merged = undefined;
    this.collect();
  }

  /** Frees what no request can still use. */
  collect(): void {
    if (this.refs > 0) return;
    for (const view of this.staleViews.splice(0)) view.model.dispose();
    if (this.retired) this.dispose();
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const view of this.staleViews.splice(0)) view.model.dispose();
    this.merged?.model.dispose();
    this.merged = undefined;
    if (this.content.kind === 'adapter') this.content.instance.dispose();
    else this.content.model.dispose();
  }
}

/** Frees a version that never became current; a model instance stays with its caller. */
function discard(version: TargetVersion, source: TargetSource): void {
  if (source.kind !== 'instance') {
    version.dispose();
    return;
  }
  version.dropMerged();
}

export interface Lease {
  readonly version: TargetVersion;
  /** Idempotent. */
  release(): void;
}

interface Entry {
  readonly name: string;
  /** Bytes of the last version (what a reload reserves before reading). */
  knownBytes: number;
  source: TargetSource;
  head: ClassificationHead | undefined;
  current: TargetVersion | undefined;
  lastUsed: number;
  wantMerged: boolean;
  loading: Promise<TargetVersion | undefined> | undefined;
}

export interface TargetRegistryOptions {
  readonly routers?: RouterRegistry | undefined;
  readonly budgetBytes?: number | undefined;
  /** Waiting for room under the budget: at most `maxWaiting` waiters (default 1024), each for `timeoutMs` (default 30,000). */
  readonly queue?: { readonly maxWaiting?: number | undefined; readonly timeoutMs?: number | undefined } | undefined;
}

/** The memory budget cannot hold a target now (queue full, or the wait timed out) or ever (larger than the budget). */
export class MemoryBudgetError extends RoutedPeftError {}

export const DEFAULT_QUEUE = { maxWaiting: 1024, timeoutMs: 30_000 } as const;

interface Waiter {
  readonly name: string;
  readonly needed: () => number;
  readonly except: Entry | undefined;
  readonly resolve: (bytes: number) => void;
  readonly reject: (error: unknown) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

export class TargetRegistry {
  private readonly entries = new Map<string, Entry>();
  /** Names being loaded for the first time. */
  private readonly loadingNames = new Set<string>();
  /** Swapped-out or unloaded versions still leased. */
  private readonly retiredInUse = new Set<TargetVersion>();
  private clock = 0;
  private nextId = 1;
  private loads = 0;
  private swaps = 0;
  private evictions = 0;
  private reloads = 0;
  /** Bytes reserved for reloads in flight (counted against the budget). */
  private reserved = 0;
  private readonly waiters: Waiter[] = [];
  private queuedTotal = 0;
  private queueTimeouts = 0;

  constructor(
    private readonly base: Transformer,
    private readonly options: TargetRegistryOptions = {},
  ) {}

  names(): string[] {
    return [...this.entries.keys()];
  }

  head(name: string): ClassificationHead | undefined {
    return this.entries.get(name)?.head;
  }

  async load(name: string, source: TargetSource, head: ClassificationHead | undefined): Promise<TargetInfo> {
    if (this.entries.has(name) || this.loadingNames.has(name)) {
      throw new ConfigError(`a target named ${JSON.stringify(name)} is already loaded`, {
        path: 'name',
        hint: 'Use swap(name, source) to replace it, or unload it first',
      });
    }
    this.loadingNames.add(name);
    try {
      const { version, warnings } = await this.materialize(name, source);
      try {
        const bytes = await this.reserve(() => version.totalBytes, undefined, name);
        this.reserved -= bytes;
      } catch (error) {
        discard(version, source);
        throw error;
      }
      this.entries.set(name, {
        name,
        knownBytes: version.totalBytes,
        source,
        head,
        current: version,
        lastUsed: ++this.clock,
        wantMerged: false,
        loading: undefined,
      });
      this.loads++;
      return { name, kind: version.content.kind, bytes: version.totalBytes, warnings, rowsCoupled: false };
    } finally {
      this.loadingNames.delete(name);
    }
  }

  /** Replaces a target's weights; running requests keep the old version until they finish. */
  async swap(name: string, source: TargetSource, head: ClassificationHead | undefined): Promise<TargetInfo> {
    this.entryOf(name, 'name');
    const { version, warnings } = await this.materialize(name, source);
    const entry = this.entries.get(name);
    if (entry === undefined) {
      discard(version, source);
      throw this.missing(name, 'name');
    }
    let reservedBytes = 0;
    try {
      if (entry.wantMerged && version.content.kind !== 'adapter') entry.wantMerged = false;
      if (entry.wantMerged) this.applyMerge(version);
      // The current version is freed by the swap when no request holds it, so its bytes count as room.
      const needed = (): number => {
        const old = entry.current;
        return Math.max(0, version.totalBytes - (old !== undefined && old.refs === 0 ? old.totalBytes : 0));
      };
      reservedBytes = await this.reserve(needed, entry, name);
      if (this.entries.get(name) !== entry) throw this.missing(name, 'name');
    } catch (error) {
      this.reserved -= reservedBytes;
      discard(version, source);
      this.pump();
      throw error;
    }
    this.reserved -= reservedBytes;
    const old = entry.current;
    entry.current = version;
    entry.source = source;
    if (head !== undefined) entry.head = head;
    entry.lastUsed = ++this.clock;
    entry.knownBytes = version.totalBytes;
    if (old !== undefined) this.retire(old);
    this.swaps++;
    this.pump();
    return { name, kind: version.content.kind, bytes: version.totalBytes, warnings, rowsCoupled: false };
  }

  /** Removes a target; requests using it finish with its weights, which are freed afterwards. */
  unload(name: string): void {
    const entry = this.entryOf(name, 'name');
    this.entries.delete(name);
    if (entry.current !== undefined) this.retire(entry.current);
    entry.current = undefined;
    this.pump();
  }

  /** Leases the current version of a target, reloading it from its source if it was evicted. */
  async acquire(name: string, path: string): Promise<Lease> {
    for (;;) {
      const entry = this.entryOf(name, path);
      const version = entry.current ?? (await this.reload(entry));
      if (version === undefined || version.isDisposed || this.entries.get(name) !== entry || entry.current !== version) continue;
      version.refs++;
      version.fresh = false;
      entry.lastUsed = ++this.clock;
      let released = false;
      return {
        version,
        release: () => {
          if (released) return;
          released = true;
          version.refs--;
          if (version.refs === 0) {
            version.collect();
            if (version.isDisposed) this.retiredInUse.delete(version);
            // A target became evictable (or its old version was freed): waiting requests may fit now.
            this.pump();
          }
        },
      };
    }
  }

  /** Requests selecting exactly this (PEFT LoRA) target run on the base with the adapter merged into its weights. */
  merge(name: string): void {
    const entry = this.entryOf(name, 'name');
    if (entry.source.kind !== 'peft') {
      throw new ConfigError(
        `target ${JSON.stringify(name)} is a ${entry.source.kind === 'routed' ? 'routed model' : 'model instance'}; only a single PEFT LoRA adapter target can be merged`,
        {
          path: 'name',
          hint: 'Merge one of the loaded PEFT adapters instead',
        },
      );
    }
    entry.wantMerged = true;
    const version = entry.current;
    if (version === undefined || version.mergedModel !== undefined) return; // merged when it is reloaded
    this.makeRoom(this.mergedBytes(version), entry, name);
    this.applyMerge(version);
  }

  unmerge(name: string): void {
    const entry = this.entryOf(name, 'name');
    entry.wantMerged = false;
    entry.current?.dropMerged();
  }

  /** The current version's content of a target (undefined while it is evicted or not loaded). */
  currentContent(name: string): TargetContent | undefined {
    return this.entries.get(name)?.current?.content;
  }

  isMerged(name: string): boolean {
    return this.entries.get(name)?.wantMerged ?? false;
  }

  residentBytes(): number {
    let total = 0;
    for (const entry of this.entries.values()) total += entry.current?.totalBytes ?? 0;
    for (const version of this.retiredInUse) total += version.totalBytes;
    return total;
  }

  /** Requests, loads and swaps waiting for room under the budget. */
  queued(): number {
    return this.waiters.length;
  }

  stats(): RuntimeStats {
    const targets: TargetStats[] = [...this.entries.values()].map((e) => ({
      name: e.name,
      kind: e.current?.content.kind ?? (e.source.kind === 'peft' ? 'adapter' : 'routed'),
      source: e.source.kind,
      resident: e.current !== undefined,
      bytes: e.current?.totalBytes ?? 0,
      inUse: e.current?.refs ?? 0,
      merged: e.current?.mergedModel !== undefined,
    }));
    return {
      targets,
      residentBytes: this.residentBytes(),
      budgetBytes: this.options.budgetBytes,
      loads: this.loads,
      swaps: this.swaps,
      evictions: this.evictions,
      reloads: this.reloads,
      retiredInUse: this.retiredInUse.size,
      queued: this.waiters.length,
      queuedTotal: this.queuedTotal,
      queueTimeouts: this.queueTimeouts,
    };
  }

  /** Retires every target: unused weights are freed now, leased ones when their requests finish. */
  dispose(): void {
    for (const entry of this.entries.values()) {
      if (entry.current !== undefined) this.retire(entry.current);
      entry.current = undefined;
    }
    this.entries.clear();
    for (const waiter of this.waiters.splice(0)) {
      if (waiter.timer !== undefined) clearTimeout(waiter.timer);
      waiter.reject(new RoutedPeftError('the runtime was disposed while the request waited for memory', { hint: 'Create a new RoutedRuntime' }));
    }
  }

  private entryOf(name: string, path: string): Entry {
    const entry = this.entries.get(name);
    if (entry === undefined) throw this.missing(name, path);
    return entry;
  }

  missing(name: string, path: string): RoutedPeftError {
    const loaded = this.names();
    return new RoutedPeftError(`no target named ${JSON.stringify(name)} is loaded`, {
      path,
      hint: `Loaded targets: ${loaded.length === 0 ? '(none)' : loaded.join(', ')}. Load it first with runtime.load(${JSON.stringify(name)}, source)`,
    });
  }

  private retire(version: TargetVersion): void {
    version.retired = true;
    if (version.refs === 0) version.dispose();
    else this.retiredInUse.add(version);
  }

  private reload(entry: Entry): Promise<TargetVersion | undefined> {
    entry.loading ??= (async () => {
      const source = entry.source;
      // Reserve the last known size before reading, so reloads waiting for room hold no weights.
      let reservedBytes = 0;
      try {
        reservedBytes = await this.reserve(() => entry.knownBytes, entry, entry.name);
        const { version } = await this.materialize(entry.name, source);
        if (this.entries.get(entry.name) !== entry || entry.current !== undefined || entry.source !== source) {
          version.dispose(); // unloaded, swapped or reloaded meanwhile: the caller looks again
          return undefined;
        }
        try {
          if (entry.wantMerged) this.applyMerge(version);
          // Usually the size reserved; if it grew (the source changed on disk), wait for the difference too.
          const held = reservedBytes;
          if (version.totalBytes > held) {
            const more = await this.reserve(() => version.totalBytes - held, entry, entry.name);
            reservedBytes = held + more;
          }
          if (this.entries.get(entry.name) !== entry || entry.current !== undefined) {
            version.dispose();
            return undefined;
          }
        } catch (error) {
          version.dispose();
          throw error;
        }
        // The reservation becomes the resident version, in one synchronous step.
        this.reserved -= reservedBytes;
        reservedBytes = 0;
        version.fresh = true;
        entry.current = version;
        entry.knownBytes = version.totalBytes;
        this.reloads++;
        return version;
      } finally {
        this.reserved -= reservedBytes;
        entry.loading = undefined;
        this.pump();
      }
    })();
    return entry.loading;
  }

  /**
   * Makes room for `needed()` bytes and reserves them: resolves to the bytes added to `reserved`, which the
   * caller subtracts once they are resident or the attempt failed. Waits in the FIFO queue while every other target is in
   * use; MemoryBudgetError when the queue is full, the wait times out, or the target is larger than the budget.
   */
  private reserve(needed: () => number, except: Entry | undefined, name: string): Promise<number> {
    const budget = this.options.budgetBytes;
    if (budget === undefined) return Promise.resolve(0);
    const bytes = needed();
    if (bytes > budget) {
      return Promise.reject(
        new MemoryBudgetError(`target ${JSON.stringify(name)} needs ${bytes} bytes, more than the whole memory budget of ${budget} bytes`, {
          path: 'memoryBudgetBytes',
          hint: 'Raise memoryBudgetBytes, or load a smaller adapter',
        }),
      );
    }
    if (this.waiters.length === 0 && this.tryMakeRoom(bytes, except)) {
      this.reserved += bytes;
      return Promise.resolve(bytes);
    }
    const maxWaiting = this.options.queue?.maxWaiting ?? DEFAULT_QUEUE.maxWaiting;
    if (this.waiters.length >= maxWaiting) {
      return Promise.reject(
        new MemoryBudgetError(
          `the memory budget of ${budget} bytes cannot hold target ${JSON.stringify(name)} now and ${this.waiters.length} requests already wait for room`,
          {
            path: 'memoryBudgetBytes',
            hint: 'Retry later, raise memoryBudgetBytes, or raise the queue limit (memoryQueue.maxWaiting)',
          },
        ),
      );
    }
    this.queuedTotal++;
    const timeoutMs = this.options.queue?.timeoutMs ?? DEFAULT_QUEUE.timeoutMs;
    return new Promise<number>((resolve, reject) => {
      const waiter: Waiter = { name, needed, except, resolve, reject, timer: undefined };
      waiter.timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i < 0) return;
        this.waiters.splice(i, 1);
        this.queueTimeouts++;
        const busy = [...this.entries.values()].filter((e) => e.current !== undefined && e !== except).map((e) => e.name);
        reject(
          new MemoryBudgetError(
            `the memory budget of ${budget} bytes could not hold target ${JSON.stringify(name)} (${needed()} bytes) within ${timeoutMs} ms: ${this.residentBytes()} bytes are held by targets in use or not evictable (${busy.join(', ') || 'old versions of running requests'})`,
            { path: 'memoryBudgetBytes', hint: 'Retry when running requests finish, unload a target, or raise memoryBudgetBytes (or memoryQueue.timeoutMs)' },
          ),
        );
        this.pump();
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  /** Serves waiting reservations in order while room can be made for the first one. */
  private pump(): void {
    const budget = this.options.budgetBytes;
    if (budget === undefined) return;
    for (;;) {
      const waiter = this.waiters[0];
      if (waiter === undefined) return;
      const bytes = waiter.needed();
      if (bytes > budget) {
        this.waiters.shift();
        if (waiter.timer !== undefined) clearTimeout(waiter.timer);
        waiter.reject(
          new MemoryBudgetError(`target ${JSON.stringify(waiter.name)} needs ${bytes} bytes, more than the whole memory budget of ${budget} bytes`, {
            path: 'memoryBudgetBytes',
          }),
        );
        continue;
      }
      if (!this.tryMakeRoom(bytes, waiter.except)) return;
      this.waiters.shift();
      if (waiter.timer !== undefined) clearTimeout(waiter.timer);
      this.reserved += bytes;
      waiter.resolve(bytes);
    }
  }

  /** Evicts least recently used idle targets so that `needed` more bytes fit; false (evicting nothing) when they cannot. */
  private tryMakeRoom(needed: number, except: Entry | undefined): boolean {
    const budget = this.options.budgetBytes;
    if (budget === undefined) return true;
    const deficit = this.residentBytes() + this.reserved + needed - budget;
    if (deficit <= 0) return true;
    const idle = [...this.entries.values()]
      .filter((e) => e !== except && e.current !== undefined && e.current.refs === 0 && !e.current.fresh && e.source.kind !== 'instance')
      .sort((a, b) => a.lastUsed - b.lastUsed);
    let freeable = 0;
    for (const e of idle) freeable += (e.current as TargetVersion).totalBytes;
    if (freeable < deficit) return false;
    let freed = 0;
    for (const victim of idle) {
      if (freed >= deficit) break;
      const version = victim.current as TargetVersion;
      freed += version.totalBytes;
      victim.current = undefined;
      version.retired = true;
      version.dispose();
      this.evictions++;
    }
    return true;
  }

  /** Evicts least recently used idle targets until `needed` more bytes fit the budget, now (merge() cannot wait). */
  private makeRoom(needed: number, except: Entry | undefined, name: string): void {
    const budget = this.options.budgetBytes;
    if (budget === undefined) return;
    if (needed > budget) {
      throw new MemoryBudgetError(`target ${JSON.stringify(name)} needs ${needed} bytes, more than the whole memory budget of ${budget} bytes`, {
        path: 'memoryBudgetBytes',
        hint: 'Raise memoryBudgetBytes, or load a smaller adapter',
      });
    }
    if (this.tryMakeRoom(needed, except)) return;
    const busy = [...this.entries.values()].filter((e) => e.current !== undefined && e !== except).map((e) => e.name);
    throw new MemoryBudgetError(
      `the memory budget of ${budget} bytes cannot hold target ${JSON.stringify(name)} (${needed} bytes): ${this.residentBytes()} bytes are held by targets in use or not evictable (${busy.join(', ') || 'old versions of running requests'})`,
      { path: 'memoryBudgetBytes', hint: 'Retry when running requests finish, unload a target, or raise memoryBudgetBytes' },
    );
  }

  private async materialize(name: string, source: TargetSource): Promise<{ version: TargetVersion; warnings: string[] }> {
    switch (source.kind) {
      case 'peft': {
        const { instance, warnings } = await readPeftAdapter(source.dir, this.base, { name });
        const bytes = variableBytes([...instance.modules.values()].flatMap((m) => [...m.variables()]));
        return { version: new TargetVersion(this.nextId++, name, { kind: 'adapter', instance }, bytes), warnings };
      }
      case 'routed': {
        const { model, warnings } = await loadRoutedModel(source.dir, this.base, this.options.routers === undefined ? {} : { routers: this.options.routers });
        return { version: new TargetVersion(this.nextId++, name, { kind: 'routed', model }, variableBytes(model.variables())), warnings };
      }
      case 'instance': {
        const model = source.model;
        if (model.base !== this.base) {
          throw new ConfigError(`model instance for target ${JSON.stringify(name)} was built on a different base model`, {
            path: 'source.model',
            hint: "Create it with AdaptedModel.create(runtimeBase, spec) on the runtime's base",
          });
        }
        const holder = [...this.entries.values()].find((e) => e.current?.content.kind === 'routed' && e.current.content.model === model);
        if (holder !== undefined) {
          throw new ConfigError(`this model instance is already loaded as target ${JSON.stringify(holder.name)}`, {
            path: 'source.model',
            hint: 'The runtime owns loaded instances; create a separate AdaptedModel for each target',
          });
        }
        return { version: new TargetVersion(this.nextId++, name, { kind: 'routed', model }, variableBytes(model.variables())), warnings: [] };
      }
    }
  }

  /** Bytes of the merged weights: one copy of every base weight the adapter targets. */
  private mergedBytes(version: TargetVersion): number {
    if (version.content.kind !== 'adapter') return 0;
    const sites = new Map<string, number>();
    for (const module of version.content.instance.modules.values()) {
      if (!(module instanceof LoraModule)) continue;
      const weight = this.base.weights.layers[module.layer]?.sites[module.site]?.weight;
      if (weight !== undefined) sites.set(`${module.layer}|${module.site}`, weight.size * 4);
    }
    return [...sites.values()].reduce((a, b) => a + b, 0);
  }

  private applyMerge(version: TargetVersion): void {
    if (version.content.kind !== 'adapter' || version.mergedModel !== undefined) return;
    const bytes = this.mergedBytes(version);
    version.setMerged({ model: mergeLora(this.base, [{ instance: version.content.instance }]), bytes });
  }
}
