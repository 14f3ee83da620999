/**
 * The three fine-tuning setups the demo compares, at one trainable-parameter budget:
 *
 *   shared   one LoRA adapter of rank E·r on every targeted site (no routing, no task ids)
 *   routed   E LoRA experts of rank r, mixed per sequence by a learned router that reads the pooled input
 *            of each layer (it never sees the task id)
 *   oracle   one LoRA of rank r per task, selected by the true task id (a `task` router: the upper bound
 *            of hard routing, given information the other two never get)
 *   retained the routed setup plus a null expert, trained with base-domain (pretraining-style) rows mixed
 *            into every batch: KL to the frozen base on those rows, and the route's nullRouting term
 *            teaching the router to send them to the null expert (it costs one router column)
 *
 * The budget is the routed setup's (experts + routers, from parameterReport()). The shared adapter starts at
 * rank E·r (the experts' total) and the oracle at E adapters of rank r; each then gets one extra rank on
 * some (layer, site) pairs — through `rankPattern`, with `alphaPattern` keeping alpha / r fixed — chosen
 * greedily, largest first, until it is as close to the budget as whole ranks allow without exceeding it.
 * The oracle's extra ranks go to every task's adapter alike, so no task is favoured.
 */
import type { SiteName } from '../base/sites.js';
import { siteShape } from '../base/site-shape.js';
import type { Transformer } from '../base/transformer.js';
import type { RouterRegistry } from '../routing/router-registry.js';
import { AdaptedModel } from '../model/adapted-model.js';
import { NULL_EXPERT } from '../routing/trace.js';

export type SetupName = 'shared' | 'routed' | 'oracle' | 'retained';
export const SETUP_NAMES: readonly SetupName[] = ['shared', 'routed', 'oracle', 'retained'];

export interface DemoSetup {
  readonly name: SetupName;
  /** One line for reports. */
  readonly description: string;
  /** The AdaptedModel spec (plain JSON). */
  readonly spec: Record<string, unknown>;
  /** Whether training and serving pass the true task ids (the oracle only). */
  readonly usesTaskIds: boolean;
  /** Trainable parameters of the spec (adapters + routers), measured with parameterReport(). */
  readonly trainableParams: number;
  /** Whether training mixes base-domain rows into every batch (the retained setup). */
  readonly retention: boolean;
  /** The route's choices, in order (routed setups), for routing statistics. */
  readonly choices?: readonly string[];
}

export interface SetupOptions {
  /** Task names, in task-id order; E = their number (one expert per task). */
  readonly tasks: readonly string[];
  /** r: rank of each expert (and of each oracle adapter). */
  readonly rank: number;
  /** Sites every adapter targets, in every layer. */
  readonly sites: readonly SiteName[];
  /**
   * lora_alpha of every module, whatever its rank (PEFT's convention: alpha is not scaled with r). The LoRA
   * scale alpha / r then shrinks as the rank grows, which keeps how fast a module's output moves per
   * optimizer step about the same for a rank-4 expert and a rank-16 shared adapter.
   */
  readonly alpha: number;
  /** The routed setup's router (a gated kind: top-k, soft, switch, ...). */
  readonly router: Readonly<Record<string, unknown>>;
  /** Whether the routed setup routes each token or each whole sequence (pooled). */
  readonly granularity: 'token' | 'sequence';
  /** Where the routed setup's routers sit (`layer`: one per layer). */
  readonly placement: 'layer' | 'model';
  /** Where the routed setup's routers read (model placement only). */
  readonly readLayer: number;
  /** Aux-loss weights of the routed setup (see compose/spec.ts AuxLossWeights). */
  readonly aux: { readonly balance: number; readonly zLoss: number; readonly importance: number; readonly entropy: number };
  /**
   * Multiplies the experts' alpha (so their LoRA scale): with E experts and soft gates that sum to 1, a
   * factor of E makes the routed model at uniform gates compute exactly a shared LoRA of rank E·r.
   */
  readonly expertScale: number;
  /** Seeds every module's and router's init (the same for all setups). */
  readonly seed: number;
  /** The routed setup's routers also read each token's modality (text / image; the multimodal demo). */
  readonly modalityFeature?: boolean;
  /** Weight of the retained setup's null-expert routing term on base-domain rows (RouteNode.retention.nullRouting). */
  readonly nullRouting: number;
  /**
   * Softmax temperature of the retained setup's router (the routed setup's router config otherwise). Below
   * 1 it scales the logits up, so the router reaches confident null decisions within the demo's steps.
   */
  readonly retainedTemperature?: number;
}

function lora(name: string, rank: number, options: SetupOptions, extra: ReadonlyMap<string, number> = new Map(), scale = 1): Record<string, unknown> {
  const rankPattern = Object.fromEntries([...extra].map(([key, more]) => [key, rank + more]));
  return {
    kind: 'lora',
    name,
    r: rank,
    alpha: options.alpha * scale,
    targets: { sites: [...options.sites], layers: 'all' },
    ...(extra.size === 0 ? {} : { rankPattern }),
  };
}

/** Expert adapter names of the routed setup: e0, e1, ... */
export function expertNames(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `e${i}`);
}

/** Adapter names of the oracle: one per task (`task-reverse`, ...). */
export function oracleNames(tasks: readonly string[]): string[] {
  return tasks.map((t) => `task-${t}`);
}

function routedSpec(options: SetupOptions): Record<string, unknown> {
  const names = expertNames(options.tasks.length);
  return {
    seed: options.seed,
    adapters: names.map((n) => lora(n, options.rank, options, new Map(), options.expertScale)),
    composition: {
      kind: 'route',
      experts: names,
      router: { ...options.router },
      granularity: options.granularity,
      placement: options.placement,
      ...(options.placement === 'model' ? { readLayer: options.readLayer } : {}),
      ...(options.modalityFeature === true ? { modalityFeature: true } : {}),
      aux: { ...options.aux },
    },
  };
}

function retainedSpec(options: SetupOptions): Record<string, unknown> {
  const routed = routedSpec(options);
  const temperature = options.retainedTemperature === undefined ? {} : { temperature: options.retainedTemperature };
  return {
    ...routed,
    composition: {
      ...(routed['composition'] as Record<string, unknown>),
      router: { ...options.router, ...temperature },
      nullExpert: true,
      retention: { nullRouting: options.nullRouting },
    },
  };
}

function sharedSpec(options: SetupOptions, extra: ReadonlyMap<string, number>): Record<string, unknown> {
  return { seed: options.seed, adapters: [lora('shared', options.rank * options.tasks.length, options, extra)] };
}

function oracleSpec(options: SetupOptions, extra: ReadonlyMap<string, number>): Record<string, unknown> {
  const names = oracleNames(options.tasks);
  return {
    seed: options.seed,
    adapters: names.map((n) => lora(n, options.rank, options, extra)),
    // Task i → adapter i. The task router has no variables; its aux losses are constants, so weight 0.
    composition: {
      kind: 'route',
      experts: names,
      router: { kind: 'task' },
      granularity: 'sequence',
      placement: 'model',
      aux: { balance: 0, zLoss: 0, importance: 0, entropy: 0 },
    },
  };
}

/** Trainable parameters of a spec, measured by building it on the base (then freed). */
export function measureTrainable(base: Transformer, spec: unknown, routers: RouterRegistry): number {
  const model = AdaptedModel.create(base, spec, { routers });
  try {
    return model.parameterReport().trainable;
  } finally {
    model.dispose();
  }
}

/**
 * Extra ranks, `layers.<l>.<site>` → how many, whose cost (copies · r-cost of the site) sums as close to
 * `deficit` as possible from below (greedy, largest cost first, each pair at most once).
 */
export function padRanks(base: Transformer, sites: readonly SiteName[], deficit: number, copies: number): Map<string, number> {
  const candidates: { key: string; cost: number }[] = [];
  for (let layer = 0; layer < base.config.nLayers; layer++) {
    for (const site of sites) {
      const [out, inputs] = siteShape(base.config, site);
      candidates.push({ key: `layers.${layer}.${site}`, cost: copies * (out + inputs) });
    }
  }
  candidates.sort((a, b) => b.cost - a.cost || (a.key < b.key ? -1 : 1));
  const extra = new Map<string, number>();
  let remaining = deficit;
  for (const { key, cost } of candidates) {
    if (cost <= remaining) {
      extra.set(key, 1);
      remaining -= cost;
    }
  }
  return extra;
}

/** The three setups with matched budgets (the routed setup's budget is the reference). */
export function buildSetups(base: Transformer, routers: RouterRegistry, options: SetupOptions): DemoSetup[] {
  const experts = options.tasks.length;
  const routed = routedSpec(options);
  const budget = measureTrainable(base, routed, routers);

  const sharedPlain = sharedSpec(options, new Map());
  const sharedExtra = padRanks(base, options.sites, budget - measureTrainable(base, sharedPlain, routers), 1);
  const shared = sharedSpec(options, sharedExtra);

  const oraclePlain = oracleSpec(options, new Map());
  const oracleExtra = padRanks(base, options.sites, budget - measureTrainable(base, oraclePlain, routers), experts);
  const oracle = oracleSpec(options, oracleExtra);

  const r = options.rank;
  const retained = retainedSpec(options);
  const names = expertNames(experts);
  return [
    {
      name: 'shared',
      description: `one LoRA, rank ${experts * r}${sharedExtra.size > 0 ? ` (+1 on ${sharedExtra.size} layer·sites to match the budget)` : ''}`,
      spec: shared,
      usesTaskIds: false,
      trainableParams: measureTrainable(base, shared, routers),
      retention: false,
    },
    {
      name: 'routed',
      description: `${experts} LoRA experts of rank ${r}, ${String(options.router['kind'])} router per ${options.placement === 'layer' ? 'layer' : 'model'}, per sequence`,
      spec: routed,
      usesTaskIds: false,
      trainableParams: budget,
      retention: false,
      choices: names,
    },
    {
      name: 'oracle',
      description: `one LoRA of rank ${r} per task, chosen by the true task id${oracleExtra.size > 0 ? ` (+1 rank on ${oracleExtra.size} layer·sites each)` : ''}`,
      spec: oracle,
      usesTaskIds: true,
      trainableParams: measureTrainable(base, oracle, routers),
      retention: false,
    },
    {
      name: 'retained',
      description: `the routed setup plus a null expert, trained with pretraining-style rows in every batch (KL to the base; null-expert routing ${options.nullRouting}${options.retainedTemperature === undefined ? '' : `; router temperature ${options.retainedTemperature}`})`,
      spec: retained,
      usesTaskIds: false,
      trainableParams: measureTrainable(base, retained, routers),
      retention: true,
      choices: [...names, NULL_EXPERT],
    },
  ];
}
