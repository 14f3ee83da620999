/**
 * RoutedRuntime: serving one frozen base with many named targets — PEFT LoRA adapters and routed models —
 * chosen per call. Concurrent calls are batched (batcher.ts), calls with different selections share forward
 * passes (mixed-hooks.ts), targets live under a memory budget with LRU eviction and transparent reload
 * (registry.ts), can be hot-swapped while requests run, and single LoRA targets can be merged for speed.
 *
 *   const runtime = RoutedRuntime.create({ base, routers: builtinRouters() });
 *   await runtime.load('sql', { kind: 'peft', dir: 'adapters/sql' });
 *   await runtime.load('moe', { kind: 'routed', dir: 'models/moe' });
 *   const { logits, shape } = await runtime.forward([[1, 5, 9]], { select: { adapter: 'sql' } });
 *   runtime.generate$([1, 5], { select: { routed: 'moe' }, maxNewTokens: 20 }).subscribe(e => ...);
 *   for await (const e of runtime.generateIterable([1, 5], { select: 'base', maxNewTokens: 20 })) ...
 *
 * Every call resolves its selection when it starts (leasing the target versions it uses), so a missing or
 * unloaded target fails the call at once with an error naming it and listing the loaded targets — it is
 * never served by the base. Results are plain data.
 *
 * Classification: `classify` needs a head registered with `load(name, source, { head })` (weight [D][C] on
 * the final hidden state of each row's last token, optional bias [C]); it uses the selected target's head
 * (`{ adapter }` / `{ routed }`) or the one named by `head`, and fails with "no classification head"
 * otherwise.
 *
 * Shape letters: B rows, T tokens, V vocabulary, D width, C classes.
 */
import { lastValueFrom, Observable } from 'rxjs';
import { filter } from 'rxjs/operators';
import { z } from 'zod';
import { SamplingOptions, seededRandom } from '../base/sampling.js';
import type { Transformer } from '../base/transformer.js';
import type { AdapterInstance } from '../adapters/instance.js';
import type { CompositionNode } from '../compose/spec.js';
import { parseConfig } from '../config/parse.js';
import { ConfigError, RoutedPeftError, ShapeError } from '../errors.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import type { AdaptedModel } from '../model/adapted-model.js';
import { checkCallRows } from './call-rows.js';
import { toAsyncIterable } from './async-iterable.js';
import { Batcher, type ExecutionPlan, type GenerateRequest, type GenerationEnd, type Isolation, type PassOutput } from './batcher.js';
import { compositionHasPrefix, compositionHooks, presentPoints } from '../model/composition-hooks.js';
import { staticLoraTerms } from '../model/lora-terms.js';
import { selectionLabel, staticComposition } from '../model/selection.js';
import { TargetRegistry, type ClassificationHead, type Lease } from './registry.js';
import {
  HeadSpec,
  Selection,
  type BatchEvent,
  type CallOptions,
  type Classification,
  type ClassifyOptions,
  type ForwardResult,
  type GenerationEvent,
  type GenerationSummary,
  type LoadOptions,
  type RuntimeGenerateOptions,
  type RuntimeStats,
  type ScoreResult,
  type TargetInfo,
  type TargetSource,
} from './types.js';

/** RoutedRuntime.create's settings (a RuntimePool passes the same to each worker's runtime). */
export const RuntimeSettings = z
  .object({
    batching: z
      .object({
        windowMs: z.number().min(0).default(2),
        maxBatchSize: z.number().int().min(1).default(16),
      })
      .strict()
      .default({ windowMs: 2, maxBatchSize: 16 }),
    memoryBudgetBytes: z.number().positive().optional(),
    memoryQueue: z
      .object({ maxWaiting: z.number().int().min(0).optional(), timeoutMs: z.number().min(0).optional() })
      .strict()
      .optional(),
    batchCoupledRouters: z.array(z.string()).optional(),
  })
  .strict();

export interface RoutedRuntimeOptions {
  readonly base: Transformer;
  /** Router kinds for routed targets (builtinRouters() from 'routed-peft/routers'). */
  readonly routers?: RouterRegistry | undefined;
  /** Enables string prompts and token text in generation events. */
  readonly tokenizer?: Tokenizer | undefined;
  readonly batching?: { readonly windowMs?: number | undefined; readonly maxBatchSize?: number | undefined } | undefined;
  /** Upper bound on the bytes of resident targets' weights; least recently used idle targets are evicted. */
  readonly memoryBudgetBytes?: number | undefined;
  /**
   * Requests that need room while every target is in use wait (FIFO) instead of failing: at most `maxWaiting`
   * (default 1024) for `timeoutMs` each (default 30,000); beyond either, a MemoryBudgetError.
   */
  readonly memoryQueue?: { readonly maxWaiting?: number | undefined; readonly timeoutMs?: number | undefined } | undefined;
  /** Router kinds whose requests run one per pass (default: the kinds whose descriptor says `couplesRows`). */
  readonly batchCoupledRouters?: readonly string[] | undefined;
}

const GenerateSettings = z
  .object({
    maxNewTokens: z.number().int().min(0),
    eosId: z.number().int().min(0).nullable().optional(),
  })
  .loose();

/** The selections a runtime serves: its targets are named, so `'spec'` and `{ composition }` are refused. */
type TargetSelection = Exclude<Selection, 'spec' | { readonly composition: unknown }>;

function parseTargetSelection(value: unknown): TargetSelection {
  const select = parseConfig(Selection, value, 'select');
  if (select === 'spec' || (typeof select === 'object' && 'composition' in select)) {
    throw new ConfigError(
      `a RoutedRuntime serves named targets; select ${select === 'spec' ? "'spec'" : '{ composition }'} names an AdaptedModel's own adapters`,
      {
        path: 'select',
        hint: "Use 'base', { adapter }, { combine, adapters, weights? } or { routed }",
      },
    );
  }
  return select as TargetSelection;
}

export class RoutedRuntime {
  private readonly registry: TargetRegistry;
  private readonly batcher: Batcher;
  private readonly batchCoupled: ReadonlySet<string> | undefined;
  private closed = false;

  /** One event per pass the batcher runs (plain data). */
  readonly batches$: Observable<BatchEvent>;

  private constructor(
    readonly base: Transformer,
    private readonly routers: RouterRegistry | undefined,
    readonly tokenizer: Tokenizer | undefined,
    settings: z.infer<typeof RuntimeSettings>,
  ) {
    this.registry = new TargetRegistry(base, { routers, budgetBytes: settings.memoryBudgetBytes, queue: settings.memoryQueue });
    this.batcher = new Batcher(settings.batching);
    this.batches$ = this.batcher.batches$;
    this.batchCoupled = settings.batchCoupledRouters === undefined ? undefined : new Set(settings.batchCoupledRouters);
  }

  static create(options: RoutedRuntimeOptions): RoutedRuntime {
    const { base, routers, tokenizer, ...rest } = options;
    const settings = parseConfig(RuntimeSettings, rest, 'runtime options');
    if (tokenizer !== undefined && tokenizer.vocabSize > base.config.vocabSize) {
      throw new ConfigError(`the tokenizer has ${tokenizer.vocabSize} ids but the model's vocabulary has ${base.config.vocabSize}`, {
        path: 'tokenizer',
        hint: 'Use the tokenizer the model was trained with',
      });
    }
    return new RoutedRuntime(base, routers, tokenizer, settings);
  }

  // ---------------------------------------------------------------------------------------------------
  // Targets

  /** Registers a named target (a PEFT LoRA adapter directory, a routed-model directory, or a model instance). */
  async load(name: string, source: TargetSource, options: LoadOptions = {}): Promise<TargetInfo> {
    this.assertOpen();
    const head = this.parseHead(options.head);
    return this.withCoupling(await this.registry.load(parseConfig(z.string().min(1), name, 'name'), source, head));
  }

  /** Hot swap: requests already running keep the old weights; requests started afterwards get the new ones. */
  async swap(name: string, source: TargetSource, options: LoadOptions = {}): Promise<TargetInfo> {
    this.assertOpen();
    return this.withCoupling(await this.registry.swap(name, source, this.parseHead(options.head)));
  }

  /** The registry's answer with `rowsCoupled` from the target's routers (unknown while evicted: coupled). */
  private withCoupling(info: TargetInfo): TargetInfo {
    if (info.kind !== 'routed') return info;
    const content = this.registry.currentContent(info.name);
    const rowsCoupled = content?.kind !== 'routed' || this.routedTraits(content.model).isolation === 'request';
    return { ...info, rowsCoupled };
  }

  /** Removes a target (running requests finish with it). */
  unload(name: string): void {
    this.registry.unload(name);
  }

  /**
   * Requests selecting exactly `{ adapter: name }` run on a view of the base with the LoRA merged into its
   * weights (no adapter work per step). Merged requests share passes only with each other.
   */
  merge(name: string): void {
    this.assertOpen();
    this.registry.merge(name);
  }

  unmerge(name: string): void {
    this.registry.unmerge(name);
  }

  targets(): string[] {
    return this.registry.names();
  }

  stats(): RuntimeStats {
    return this.registry.stats();
  }

  // ---------------------------------------------------------------------------------------------------
  // Calls

  /** Logits [B, T, V] for rows of token ids (rows may differ in length: they are left-padded). */
  async forward(ids: readonly (readonly number[])[], options: CallOptions): Promise<ForwardResult> {
    this.checkRows(ids, 'ids');
    const output = await this.submitForward('logits', ids, options);
    return { logits: output.data, shape: output.shape, ...(output.trace === undefined ? {} : { trace: output.trace }) };
  }

  /** Log-likelihood of `continuation` after `prompt`: Σ log p(token | everything before it). */
  async score(prompt: readonly number[] | string, continuation: readonly number[] | string, options: CallOptions): Promise<ScoreResult> {
    const context = this.toIds(prompt, 'prompt', true);
    const target = this.toIds(continuation, 'continuation', false);
    if (target.length === 0) throw new ShapeError('the continuation to score is empty', { path: 'continuation' });
    const row = [...context, ...target];
    this.checkRows([row], 'prompt + continuation');
    const output = await this.submitForward('logits', [row], options);
    const vocab = output.shape[2];
    const tokenLogProbs = target.map((token, j) => {
      const at = context.length - 1 + j; // logits at position p predict token p + 1
      const logits = output.data.subarray(at * vocab, (at + 1) * vocab);
      let max = -Infinity;
      for (const v of logits) max = Math.max(max, v);
      let sum = 0;
      for (const v of logits) sum += Math.exp(v - max);
      return (logits[token] as number) - max - Math.log(sum);
    });
    return {
      logLikelihood: tokenLogProbs.reduce((s, v) => s + v, 0),
      tokenLogProbs,
      ...(output.trace === undefined ? {} : { trace: output.trace }),
    };
  }

  /** Classifies each row by a registered head on its last token's final hidden state. */
  async classify(ids: readonly (readonly number[])[], options: ClassifyOptions): Promise<Classification[]> {
    this.checkRows(ids, 'ids');
    const select = parseTargetSelection(options.select);
    const headName =
      options.head ?? (select !== 'base' && 'adapter' in select ? select.adapter : select !== 'base' && 'routed' in select ? select.routed : undefined);
    const head = headName === undefined ? undefined : this.registry.head(headName);
    if (head === undefined) {
      throw new RoutedPeftError(
        headName === undefined
          ? `no classification head: selection ${selectionLabel(select)} names no target with a head`
          : `no classification head registered for target ${JSON.stringify(headName)}`,
        {
          path: options.head === undefined ? 'select' : 'head',
          hint: 'Register one with load(name, source, { head: { weight: [D][C], bias?: [C] } }) and pass head: name',
        },
      );
    }
    const output = await this.submitForward('hidden', ids, options);
    const [, tokens, dim] = output.shape;
    return ids.map((_, b) => {
      const hidden = output.data.subarray((b * tokens + tokens - 1) * dim, (b * tokens + tokens) * dim); // [D]  the row's last token
      const logits = Array.from(head.bias); // [C]
      for (let d = 0; d < dim; d++) {
        const h = hidden[d] as number;
        for (let c = 0; c < head.classes; c++) logits[c] = (logits[c] as number) + h * (head.weight[d * head.classes + c] as number);
      }
      const max = Math.max(...logits);
      const exps = logits.map((l) => Math.exp(l - max));
      const total = exps.reduce((s, e) => s + e, 0);
      const probabilities = exps.map((e) => e / total);
      return { logits, probabilities, label: logits.indexOf(max) };
    });
  }

  /**
   * Streams a generation: one `token` event per new token, then one `end` event (the summary), then
   * completion. Cold: each subscription starts its own generation; unsubscribing (or aborting `signal`)
   * stops it at the next step and frees its cache once its batch has no running member left.
   */
  generate$(prompt: readonly number[] | string, options: RuntimeGenerateOptions): Observable<GenerationEvent> {
    return new Observable<GenerationEvent>((subscriber) => {
      let unsubscribed = false;
      const cancelled = (): boolean => unsubscribed || options.signal?.aborted === true || this.closed;
      const start = async (): Promise<void> => {
        const ids = this.toIds(prompt, 'prompt', true);
        const settings = parseConfig(GenerateSettings, options, 'generate options');
        const sampling = parseConfig(
          SamplingOptions,
          { temperature: options.temperature, topK: options.topK, topP: options.topP, seed: options.seed },
          'sampling options',
        );
        this.checkRows([ids], 'prompt');
        const longest = ids.length + Math.max(settings.maxNewTokens - 1, 0);
        if (longest > this.base.config.maxSeqLen) {
          throw new ShapeError(
            `prompt of ${ids.length} tokens plus ${settings.maxNewTokens} new tokens exceeds the model's maximum of ${this.base.config.maxSeqLen}`,
            {
              path: 'maxNewTokens',
              hint: `Ask for at most ${this.base.config.maxSeqLen - ids.length + 1} new tokens`,
            },
          );
        }
        const eosId = settings.eosId === undefined ? this.base.config.eosId : (settings.eosId ?? undefined);
        const tokenizer = this.tokenizer;
        let decoded = '';
        const tokens: number[] = [];
        const end = (result: GenerationEnd): void => {
          const text = tokenizer?.decode(result.tokens);
          const summary: GenerationSummary = {
            kind: 'end',
            reason: result.reason,
            tokens: result.tokens,
            promptTokens: ids.length,
            ...(text === undefined ? {} : { text }),
            ...(result.trace === undefined ? {} : { trace: result.trace }),
          };
          subscriber.next(summary);
          subscriber.complete();
        };
        if (settings.maxNewTokens === 0 || cancelled()) {
          end({ reason: settings.maxNewTokens === 0 ? 'length' : 'cancelled', tokens: [], trace: options.trace === true ? [] : undefined });
          return;
        }
        const plan = await this.plan(options, [ids]);
        if (cancelled()) {
          plan.release();
          end({ reason: 'cancelled', tokens: [], trace: options.trace === true ? [] : undefined });
          return;
        }
        const request: GenerateRequest = {
          kind: 'generate',
          plan,
          rows: [ids],
          taskIds: options.taskIds,
          trace: options.trace === true,
          maxNewTokens: settings.maxNewTokens,
          sampling,
          random: seededRandom(sampling.seed ?? Math.floor(Math.random() * 2 ** 31)),
          eosId,
          isCancelled: cancelled,
          onToken: (index, token) => {
            tokens.push(token);
            let text: string | undefined;
            if (tokenizer !== undefined) {
              const full = tokenizer.decode(tokens);
              text = full.startsWith(decoded) ? full.slice(decoded.length) : full;
              decoded = full;
            }
            subscriber.next({ kind: 'token', index, token, ...(text === undefined ? {} : { text }) });
          },
          onEnd: end,
          onError: (error) => subscriber.error(error),
        };
        this.batcher.submit(request);
      };
      start().catch((error: unknown) => subscriber.error(error));
      return () => {
        unsubscribed = true;
      };
    });
  }

  /** The AsyncIterable twin of generate$ (breaking out of the loop cancels the generation). */
  generateIterable(prompt: readonly number[] | string, options: RuntimeGenerateOptions): AsyncIterable<GenerationEvent> {
    return toAsyncIterable(this.generate$(prompt, options));
  }

  /** Runs a generation to its end and returns the summary. */
  generate(prompt: readonly number[] | string, options: RuntimeGenerateOptions): Promise<GenerationSummary> {
    return lastValueFrom(this.generate$(prompt, options).pipe(filter((e): e is GenerationSummary => e.kind === 'end')));
  }

  /** Resolves when no request is waiting or running. */
  idle(): Promise<void> {
    return this.batcher.idle();
  }

  /**
   * Stops accepting calls, cancels running generations (at their next step) and disposes every target;
   * weights still used by running passes are freed when those passes end (await idle() for that).
   */
  dispose(): void {
    if (this.closed) return;
    this.closed = true;
    this.batcher.close();
    this.registry.dispose();
  }

  // ---------------------------------------------------------------------------------------------------
  // Internals

  private assertOpen(): void {
    if (this.closed) throw new RoutedPeftError('the runtime was disposed', { hint: 'Create a new RoutedRuntime' });
  }

  private async submitForward(kind: 'logits' | 'hidden', rows: readonly (readonly number[])[], options: CallOptions): Promise<PassOutput> {
    const plan = await this.plan(options, rows);
    return new Promise<PassOutput>((resolve, reject) => {
      this.batcher.submit({ kind, plan, rows: rows.map((r) => [...r]), taskIds: options.taskIds, trace: options.trace === true, resolve, reject });
    });
  }

  /** Validates a call's selection and task ids, and leases what it uses. */
  private async plan(options: CallOptions, rows: readonly (readonly number[])[]): Promise<ExecutionPlan> {
    this.assertOpen();
    const select = parseTargetSelection(options.select);
    const taskIds = options.taskIds;
    if (taskIds !== undefined && (taskIds.length !== rows.length || taskIds.some((t) => !Number.isInteger(t) || t < 0))) {
      throw new ShapeError(`taskIds must hold one non-negative integer per row (${rows.length}), got ${JSON.stringify(taskIds)}`, { path: 'taskIds' });
    }
    const plan = await this.resolve(select);
    try {
      if (plan.needsTaskIds && taskIds === undefined) {
        throw new ConfigError(`selection ${plan.label} routes by task id, so the call needs taskIds`, {
          path: 'taskIds',
          hint: 'Pass taskIds: one task id per row',
        });
      }
    } catch (error) {
      plan.release();
      throw error;
    }
    return plan;
  }

  private async acquireAll(names: readonly string[], path: string): Promise<Lease[]> {
    const leases: Lease[] = [];
    try {
      for (const [i, name] of names.entries()) leases.push(await this.registry.acquire(name, names.length === 1 ? path : `${path}[${i}]`));
    } catch (error) {
      for (const lease of leases) lease.release();
      throw error;
    }
    return leases;
  }

  private async resolve(select: TargetSelection): Promise<ExecutionPlan & { readonly needsTaskIds: boolean }> {
    const label = selectionLabel(select);
    if (select === 'base') {
      return { key: 'base', label, model: this.base, isolation: 'shared', needsTaskIds: false, hooks: () => undefined, release: () => undefined };
    }
    if ('routed' in select) {
      const [lease] = await this.acquireAll([select.routed], 'select.routed');
      const version = (lease as Lease).version;
      const release = (): void => (lease as Lease).release();
      if (version.content.kind !== 'routed') {
        release();
        throw new ConfigError(`target ${JSON.stringify(select.routed)} is a PEFT adapter, not a routed model`, {
          path: 'select.routed',
          hint: `Select it with { adapter: ${JSON.stringify(select.routed)} }`,
        });
      }
      const model = version.content.model;
      const traits = this.routedTraits(model);
      return {
        key: `routed:${version.id}`,
        label,
        model: this.base,
        ...traits,
        hooks: ({ taskIds, trace }) => model.hooks({ select: 'spec', routing: { taskIds, trace } }),
        points: presentPoints(model.composition, model.adapters),
        release,
      };
    }
    const names = 'adapter' in select ? [select.adapter] : select.adapters;
    const path = 'adapter' in select ? 'select.adapter' : 'select.adapters';
    const leases = await this.acquireAll(names, path);
    const release = (): void => leases.forEach((l) => l.release());
    const instances = new Map(leases.map((l) => [l.version.name, l.version.content]));
    for (const [i, name] of names.entries()) {
      const content = instances.get(name);
      if (content?.kind !== 'adapter') {
        release();
        throw new ConfigError(`target ${JSON.stringify(name)} is a routed model, not a PEFT adapter`, {
          path: names.length === 1 ? path : `${path}[${i}]`,
          hint: `Select it alone with { routed: ${JSON.stringify(name)} }; only PEFT adapter targets combine`,
        });
      }
    }
    const adapters = new Map(leases.map((l) => [l.version.name, (l.version.content as { readonly instance: AdapterInstance }).instance]));
    const versions = leases.map((l) => l.version.id).join(',');
    if ('adapter' in select) {
      const merged = (leases[0] as Lease).version.mergedModel;
      if (merged !== undefined) {
        return {
          key: `merged:${versions}`,
          label: `merged:${select.adapter}`,
          model: merged,
          isolation: 'shared',
          needsTaskIds: false,
          hooks: () => undefined,
          release,
        };
      }
    }
    const root: CompositionNode = staticComposition(select);
    const isolation: Isolation = compositionHasPrefix(root, adapters) ? 'selection' : 'shared';
    return {
      key: `${label}@${versions}`,
      label,
      model: this.base,
      isolation,
      needsTaskIds: false,
      hooks: () => compositionHooks(root, adapters),
      points: presentPoints(root, adapters),
      lora: staticLoraTerms(root, adapters),
      release,
    };
  }

  private routedTraits(model: AdaptedModel): { readonly isolation: Isolation; readonly needsTaskIds: boolean } {
    const kinds = model.routes.map((r) => r.node.router.kind);
    const needsTaskIds = kinds.some((k) => this.routers?.has(k) === true && this.routers.get(k).needsTaskIds === true);
    const couples = (k: string): boolean => this.batchCoupled?.has(k) ?? (this.routers?.has(k) === true && this.routers.get(k).couplesRows === true);
    if (kinds.some(couples)) return { isolation: 'request', needsTaskIds };
    return { isolation: compositionHasPrefix(model.composition, model.adapters) ? 'selection' : 'shared', needsTaskIds };
  }

  private parseHead(spec: HeadSpec | undefined): ClassificationHead | undefined {
    if (spec === undefined) return undefined;
    const head = parseConfig(HeadSpec, spec, 'head');
    const dim = this.base.config.dim;
    const classes = head.weight[0]?.length ?? 0;
    if (head.weight.length !== dim || head.weight.some((row) => row.length !== classes)) {
      throw new ShapeError(`head weight must be [${dim}][C] (the model's width by the classes), got ${head.weight.length} rows`, { path: 'head.weight' });
    }
    if (head.bias !== undefined && head.bias.length !== classes) {
      throw new ShapeError(`head bias has ${head.bias.length} entries but the weight has ${classes} classes`, { path: 'head.bias' });
    }
    return {
      dim,
      classes,
      weight: Float32Array.from(head.weight.flat()),
      bias: head.bias === undefined ? new Float32Array(classes) : Float32Array.from(head.bias),
    };
  }

  private toIds(input: readonly number[] | string, path: string, addBos: boolean): number[] {
    if (typeof input !== 'string') return [...input];
    if (this.tokenizer === undefined) {
      throw new ConfigError(`${path} is text but the runtime has no tokenizer`, { path, hint: 'Pass token ids, or create the runtime with { tokenizer }' });
    }
    return this.tokenizer.encode(input, { addBos: addBos && this.tokenizer.bosId !== undefined });
  }

  private checkRows(rows: readonly (readonly number[])[], path: string): void {
    checkCallRows(rows, this.base.config, path);
  }
}
