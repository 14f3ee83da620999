/**
 * A frozen base model with adapters (and routers) attached. It never changes the base: every forward
 * computes the base output at each point and adds the composition's delta through hooks. `select: 'base'`
 * runs the bare base, bit for bit.
 *
 * Many adapters may be resident at once; each call chooses what to apply (`select`, model/selection.ts): the
 * spec's composition (`'spec'`, the default), the bare base, one adapter, a static combination, or any
 * composition of resident adapters (routes must be ones the spec defines, since routers are trained with their
 * experts). How the call routes is one `routing` object (routing/routing-pass.ts RoutingOptions).
 */
import type * as tf from '@tensorflow/tfjs';
import { Subject, type Observable } from 'rxjs';
import type { z } from 'zod';
import { AdapterSpec } from '../adapters/registry.js';
import { collectSteps, generate, generateSteps, generateStepsAsync, type GenerateOptions } from '../base/generate.js';
import type { ForwardContext, ForwardHooks } from '../base/hooks.js';
import type { ForwardOptions, Transformer } from '../base/transformer.js';
import { parseConfig } from '../config/parse.js';
import { ConfigError } from '../errors.js';
import { compositionHooks } from './composition-hooks.js';
import { type AdaptedModelSpec, checkComposition, checkSpecAgainstModel, effectiveComposition, parseAdaptedModelSpec } from '../compose/model-spec.js';
import { AdapterInstance, createAdapter } from '../adapters/instance.js';
import { type CompositionNode, type RouteNode, routesIn } from '../compose/spec.js';
import { RouterSet } from '../routing/router-set.js';
import { ROUTING_OPTION_KEYS, type RoutingOptions } from '../routing/routing-pass.js';
import { Selection, type SelectionInput, staticComposition } from './selection.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import { DeferredTraceReads, type RoutingTraceEntry } from '../routing/trace.js';

export interface AdaptedCallOptions {
  /** What to apply (selection.ts); default 'spec', the model's own composition. */
  readonly select?: SelectionInput | undefined;
  /** How the call routes (task ids, trace, auxiliary losses, strategy, routing mask, fusion), passed whole. */
  readonly routing?: RoutingOptions | undefined;
}

/** An adapter spec as users write it (defaults may be omitted). */
export type AdapterSpecInput = z.input<typeof AdapterSpec>;

export type AdaptedForwardOptions = Omit<ForwardOptions, 'hooks'> & AdaptedCallOptions;
export type AdaptedGenerateOptions = Omit<GenerateOptions, 'hooks'> & AdaptedCallOptions;

export interface AdapterParameterReport {
  readonly name: string;
  readonly kind: string;
  readonly modules: number;
  readonly trainable: number;
  readonly bytes: number;
}

export interface ParameterReport {
  readonly adapters: readonly AdapterParameterReport[];
  readonly routers: readonly { readonly route: number; readonly kind: string; readonly routers: number; readonly trainable: number; readonly bytes: number }[];
  readonly trainable: number;
  readonly frozen: number;
  /** trainable / (trainable + frozen) */
  readonly trainableFraction: number;
  readonly trainableBytes: number;
  readonly frozenBytes: number;
}

export interface AdaptedModelOptions {
  /** Router kinds available to routes (see routers/index.ts: builtinRouters()). Required when the spec routes. */
  readonly routers?: RouterRegistry;
}

/** One forward's routing decisions, as emitted on `AdaptedModel.traces$`. */
export interface RoutingTraceEvent {
  /** Tokens already cached before this forward (0 for a prefill or a plain forward). */
  readonly pastLength: number;
  readonly entries: readonly RoutingTraceEntry[];
}

export class AdaptedModel {
  private readonly traceSubject = new Subject<RoutingTraceEvent>();
  /**
   * Routing decisions of every forward (generation steps included) while someone subscribes: plain data,
   * emitted after each forward. Tracing costs a host read per routed point, so it runs only when observed.
   */
  readonly traces$: Observable<RoutingTraceEvent> = this.traceSubject.asObservable();
  private readonly adapterMap = new Map<string, AdapterInstance>();
  private readonly routeMap = new Map<RouteNode, RouterSet>();
  /** Routes by their JSON, so a per-call composition can name a spec route by value. */
  private readonly routesByJson = new Map<string, RouteNode>();
  private disposed = false;

  private constructor(
    readonly base: Transformer,
    readonly spec: AdaptedModelSpec,
    readonly composition: CompositionNode,
  ) {}

  /** Validates a spec (plain object) and builds every module and router. */
  static create(base: Transformer, spec: unknown, options: AdaptedModelOptions = {}): AdaptedModel {
    const parsed = parseAdaptedModelSpec(spec);
    checkSpecAgainstModel(parsed, base.config);
    const composition = effectiveComposition(parsed);
    const model = new AdaptedModel(base, parsed, composition);
    try {
      parsed.adapters.forEach((adapter, i) => model.adapterMap.set(adapter.name, createAdapter(adapter, base.config, parsed.seed, `spec.adapters[${i}]`)));
      const routes = routesIn(composition);
      if (routes.length > 0 && options.routers === undefined) {
        throw new ConfigError('the composition routes but no router registry was given', {
          path: 'composition',
          hint: "Pass { routers: builtinRouters() } (import { builtinRouters } from 'routed-peft/routers')",
        });
      }
      routes.forEach((route, i) => {
        model.routeMap.set(route, new RouterSet(route, i, model.adapterMap, base.config, options.routers as RouterRegistry, parsed.seed));
        model.routesByJson.set(JSON.stringify(route), route);
      });
    } catch (error) {
      model.dispose();
      throw error;
    }
    return model;
  }

  get adapters(): ReadonlyMap<string, AdapterInstance> {
    return this.adapterMap;
  }

  get routes(): readonly RouterSet[] {
    return [...this.routeMap.values()];
  }

  /** Runs the model with the selected adapters. The returned tensor belongs to the caller. */
  forward(options: AdaptedForwardOptions): tf.Tensor {
    refuseLooseOptions(options);
    const { select, routing, ...forward } = options;
    const hooks = this.hooks({ select, routing });
    return this.base.forward(hooks === undefined ? forward : { ...forward, hooks });
  }

  /** Generates with the selected adapters (see base/generate.ts). */
  generate(prompts: readonly (readonly number[])[], options: AdaptedGenerateOptions): number[][] {
    refuseLooseOptions(options);
    const { select, routing, ...rest } = options;
    const hooks = this.hooks({ select, routing });
    return generate(this.base, prompts, hooks === undefined ? rest : { ...rest, hooks });
  }

  /** Step-by-step generation (each yield: one new token per row, −1 once a row stopped). */
  generateSteps(prompts: readonly (readonly number[])[], options: AdaptedGenerateOptions): Generator<number[], void, undefined> {
    refuseLooseOptions(options);
    const { select, routing, ...rest } = options;
    const hooks = this.hooks({ select, routing });
    return generateSteps(this.base, prompts, hooks === undefined ? rest : { ...rest, hooks });
  }

  /**
   * `generate` with asynchronous reads: works on every backend (webgpu included). A routing trace is read
   * after each step with `await data()` too (routing.traceReads), so it fills as on wasm.
   */
  generateAsync(prompts: readonly (readonly number[])[], options: AdaptedGenerateOptions): Promise<number[][]> {
    return collectSteps(prompts, this.generateStepsAsync(prompts, options));
  }

  /** `generateSteps` with asynchronous reads: works on every backend (webgpu included); traces as generateAsync. */
  async *generateStepsAsync(prompts: readonly (readonly number[])[], options: AdaptedGenerateOptions): AsyncGenerator<number[], void, undefined> {
    refuseLooseOptions(options);
    const { select, routing, ...rest } = options;
    const traceReads = routing?.trace !== undefined && routing.traceReads === undefined ? new DeferredTraceReads() : undefined;
    const hooks = this.hooks({ select, routing: traceReads === undefined ? routing : { ...routing, traceReads } });
    try {
      for await (const step of generateStepsAsync(this.base, prompts, hooks === undefined ? rest : { ...rest, hooks })) {
        await traceReads?.flush(); // this step's trace entries, before the caller sees the step
        yield step;
      }
    } finally {
      traceReads?.dispose();
    }
  }

  /** Every trainable variable: adapters in spec order, then routers. */
  variables(): tf.Variable[] {
    return [...this.namedVariables().values()];
  }

  /** Trainable variables by stable names: `<adapter>/<layer>|<point>/<i>` and `route<i>/<router>/<j>`. */
  namedVariables(): Map<string, tf.Variable> {
    const named = new Map<string, tf.Variable>();
    for (const adapter of this.adapterMap.values()) {
      for (const [key, module] of adapter.modules) module.variables().forEach((v, i) => named.set(`${adapter.name}/${key}/${i}`, v));
    }
    for (const route of this.routeMap.values()) for (const [name, v] of route.namedVariables()) named.set(name, v);
    return named;
  }

  parameterReport(): ParameterReport {
    const adapters = [...this.adapterMap.values()].map((a) => {
      const trainable = a.parameterCount();
      return { name: a.name, kind: a.spec.kind, modules: a.modules.size, trainable, bytes: trainable * 4 };
    });
    const routers = [...this.routeMap.values()].map((r) => {
      const trainable = r.parameterCount();
      return { route: r.index, kind: r.node.router.kind, routers: r.routerList().length, trainable, bytes: trainable * 4 };
    });
    const trainable = [...adapters, ...routers].reduce((s, a) => s + a.trainable, 0);
    const frozen = this.base.parameterCount;
    return {
      adapters,
      routers,
      trainable,
      frozen,
      trainableFraction: trainable / (trainable + frozen),
      trainableBytes: trainable * 4,
      frozenBytes: frozen * 4,
    };
  }

  /** Adds an adapter (not part of the spec's composition; select it per call with `select: { adapter }`). */
  addAdapter(spec: AdapterSpecInput | AdapterInstance): AdapterInstance {
    const instance =
      spec instanceof AdapterInstance ? spec : createAdapter(parseConfig(AdapterSpec, spec, 'adapter'), this.base.config, this.spec.seed, 'adapter');
    if (this.adapterMap.has(instance.name)) {
      if (instance !== spec) instance.dispose();
      throw new ConfigError(`an adapter named ${JSON.stringify(instance.name)} is already resident`, { hint: 'Remove it first, or use replaceAdapter' });
    }
    this.adapterMap.set(instance.name, instance);
    return instance;
  }

  /** Replaces a resident adapter by another with the same name and the same points (e.g. newly trained weights). */
  replaceAdapter(instance: AdapterInstance): void {
    const old = this.adapterMap.get(instance.name);
    if (old === undefined)
      throw new ConfigError(`no resident adapter named ${JSON.stringify(instance.name)}`, { hint: `Resident: ${[...this.adapterMap.keys()].join(', ')}` });
    const same = old.modules.size === instance.modules.size && [...old.modules.keys()].every((k) => instance.modules.has(k));
    if (!same)
      throw new ConfigError(`replacement for ${JSON.stringify(instance.name)} attaches at different points`, {
        hint: 'Remove the old adapter and add the new one instead',
      });
    this.adapterMap.set(instance.name, instance);
    for (const route of this.routeMap.values()) route.replaceExpert(instance);
    old.dispose();
  }

  /** Removes and disposes an adapter that the spec's composition does not use. */
  removeAdapter(name: string): void {
    const adapter = this.adapterMap.get(name);
    if (adapter === undefined)
      throw new ConfigError(`no resident adapter named ${JSON.stringify(name)}`, { hint: `Resident: ${[...this.adapterMap.keys()].join(', ')}` });
    if (this.spec.adapters.some((a) => a.name === name)) {
      throw new ConfigError(`adapter ${JSON.stringify(name)} is part of the model's spec and cannot be removed`, {
        hint: 'Build a new model from a spec without it',
      });
    }
    this.adapterMap.delete(name);
    adapter.dispose();
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.traceSubject.complete();
    for (const route of this.routeMap.values()) route.dispose();
    for (const adapter of this.adapterMap.values()) adapter.dispose();
    this.routeMap.clear();
    this.adapterMap.clear();
  }

  /** Resolves a per-call selection to a validated composition, or undefined for the bare base. */
  resolveSelection(select: SelectionInput | undefined): CompositionNode | undefined {
    if (select === undefined || select === 'spec') return this.composition;
    if (select === 'base') return undefined;
    const parsed = parseConfig(Selection, select, 'select');
    if (parsed === 'base') return undefined;
    if (parsed === 'spec') return this.composition;
    if ('routed' in parsed) {
      throw new ConfigError(`an AdaptedModel has no routed targets (select.routed = ${JSON.stringify(parsed.routed)})`, {
        path: 'select.routed',
        hint: "Use 'spec' for this model's own routed composition; { routed } names a routed model loaded into a RoutedRuntime",
      });
    }
    const node = 'composition' in parsed ? parsed.composition : staticComposition(parsed);
    const path = 'composition' in parsed ? 'select.composition' : 'adapter' in parsed ? 'select.adapter' : 'select.adapters';
    checkComposition(node, [...this.adapterMap.keys()], path);
    return this.bindRoutes(node);
  }

  /** Hooks that apply the selection to base forwards; undefined when nothing applies (the bare base). */
  hooks(options: AdaptedCallOptions = {}): ForwardHooks | undefined {
    if (this.disposed) throw new Error('AdaptedModel used after dispose()');
    refuseLooseOptions(options);
    const root = this.resolveSelection(options.select);
    if (root === undefined) return undefined;
    const routed = routesIn(root).length > 0;
    /** Where this forward's entries go, and where they start, when traces$ is observed. */
    let streamed: { readonly sink: RoutingTraceEntry[]; readonly start: number } | undefined;
    let pastLength = 0;
    return compositionHooks(root, this.adapterMap, {
      routes: this.routeMap,
      optionsFor: (forward: ForwardContext) => {
        pastLength = forward.pastLength;
        const sink = options.routing?.trace ?? (routed && this.traceSubject.observed ? [] : undefined);
        streamed = sink !== undefined && this.traceSubject.observed ? { sink, start: sink.length } : undefined;
        return { ...options.routing, trace: sink };
      },
      end: () => {
        const done = streamed;
        streamed = undefined;
        if (done === undefined) return;
        const past = pastLength;
        const emit = () => this.traceSubject.next({ pastLength: past, entries: done.sink.slice(done.start) });
        // Deferred trace reads fill the sink when flushed: emit after them, in the same flush.
        const deferred = options.routing?.traceReads;
        if (deferred === undefined) emit();
        else deferred.add([], emit);
      },
    });
  }

  /** Replaces route nodes of a per-call composition by the spec's equal route nodes (which own the routers). */
  private bindRoutes(node: CompositionNode): CompositionNode {
    if (node.kind === 'adapter') return node;
    if (node.kind === 'route') {
      const bound = this.routesByJson.get(JSON.stringify(node));
      if (bound === undefined) {
        throw new ConfigError('a per-call composition may only use routes the model spec defines', {
          path: 'select.composition',
          hint: "Use 'spec' for the spec's routed composition, or a static composition (stack, parallel, average)",
        });
      }
      return bound;
    }
    return { ...node, children: node.children.map((c) => this.bindRoutes(c)) };
  }
}

/** Options of the former vocabulary, refused by name so that a call never silently ignores them. */
const LOOSE_ROUTING_OPTIONS: ReadonlySet<string> = new Set(ROUTING_OPTION_KEYS);

function refuseLooseOptions(options: object): void {
  if ('images' in options) {
    throw new ConfigError('an AdaptedModel has no vision encoder, so it cannot read images', {
      path: 'images',
      hint: 'Build a MultimodalModel (a vision encoder, a projector and this spec) to pass images',
    });
  }
  if ('use' in options) {
    throw new ConfigError("the call option 'use' is now 'select'", {
      path: 'use',
      hint: "Write select: 'spec' | 'base' | { adapter } | { combine, adapters, weights? } | { composition } (model/selection.ts)",
    });
  }
  for (const key of Object.keys(options)) {
    if (LOOSE_ROUTING_OPTIONS.has(key)) {
      throw new ConfigError(`the call option '${key}' belongs in routing`, { path: key, hint: `Pass it as routing: { ${key} } (RoutingOptions)` });
    }
  }
}
