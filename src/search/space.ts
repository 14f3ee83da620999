/**
 * The architecture search space: where to inject (sites × layers) which adapter kind, of which size, with
 * which routing. A candidate is plain data; `candidateSpec` turns it (with a size) into an AdaptedModel spec
 * that `routed-peft train --spec` accepts.
 *
 * Adapter kinds are rows of SEARCH_KINDS: a kind names its injection choices, the spec field its size sets
 * (LoRA rank, AdaLoRA initial rank, bottleneck width, prefix length; none for (IA)³) and how it is routed. Adding a kind to the
 * search is adding one row. Routing choices are ROUTER_CHOICES × expert counts × granularities × placements
 * × shared experts (for kinds that allow one).
 *
 * The size is not drawn: a candidate draws a share of the budget (1, ½, ¼) and budget.ts fits the largest
 * size whose exact trainable count fits that share, so every candidate respects the budget and the trials
 * spread along the parameter axis (what the Pareto front needs).
 */
import { FAMILY_SITES, type ModelFamily, type SiteName } from '../base/sites.js';

/** Where one kind attaches: LoRA / (IA)³ target sites, bottleneck placement, prefix (attention only). */
export interface Injection {
  readonly name: string;
  /** The spec fields of the adapter (besides kind, name, size and targets.layers) for a model family. */
  fields(family: ModelFamily): Readonly<Record<string, unknown>>;
}

export interface SearchKind {
  /** The adapter kind (src/adapters/registry.ts). */
  readonly kind: string;
  readonly injections: readonly Injection[];
  /** The spec field the size sets, or undefined for kinds without a size ((IA)³). */
  readonly sizeField: string | undefined;
  /** Largest size tried on a model with this context (tokens). */
  maxSize(maxSeqLen: number): number;
  /** Fixed spec fields of every adapter of this kind. */
  readonly fixed: Readonly<Record<string, unknown>>;
  /** Spec fields that follow from the size (AdaLoRA's target rank), besides the size field itself. */
  readonly derived?: (size: number) => Readonly<Record<string, unknown>>;
  /** Routes of this kind's experts must route whole sequences (prefix slots are per sequence). */
  readonly sequenceOnly: boolean;
  /** A route of this kind may add a shared expert beside it (kinds whose modules add a ΔW: summing is exact). */
  readonly sharedExpert: boolean;
}

/** Sites of a family, in order, keeping only those in `wanted`. */
function sitesOf(family: ModelFamily, wanted: readonly SiteName[]): SiteName[] {
  return FAMILY_SITES[family].filter((s) => wanted.includes(s));
}

const siteInjection = (name: string, wanted: readonly SiteName[]): Injection => ({
  name,
  fields: (family) => ({ targets: { sites: sitesOf(family, wanted) } }),
});

const ALL_SITES: readonly SiteName[] = ['attn.q', 'attn.k', 'attn.v', 'attn.o', 'mlp.gate', 'mlp.up', 'mlp.down'];

/**
 * LoRA's alpha, whatever its rank (PEFT's convention, and the demo's: the scale alpha / r shrinks as r grows,
 * which keeps the output's speed per optimizer step about the same across ranks).
 */
export const SEARCH_LORA_ALPHA = 16;

/** The adapter kinds the search draws from, one row each. */
export const SEARCH_KINDS: readonly SearchKind[] = [
  {
    kind: 'lora',
    injections: [
      siteInjection('attn.qv', ['attn.q', 'attn.v']),
      siteInjection('attn', ['attn.q', 'attn.k', 'attn.v', 'attn.o']),
      siteInjection('mlp', ['mlp.gate', 'mlp.up', 'mlp.down']),
      siteInjection('all-linear', ALL_SITES),
    ],
    sizeField: 'r',
    maxSize: () => 256,
    fixed: { alpha: SEARCH_LORA_ALPHA },
    sequenceOnly: false,
    sharedExpert: true,
  },
  {
    // AdaLoRA: the size is the initial rank (every module's variables are that big, so that is what the
    // budget counts); training prunes to a target of two thirds of it (the paper's 12 → 8), on the same
    // sites as LoRA.
    kind: 'adalora',
    injections: [
      siteInjection('attn.qv', ['attn.q', 'attn.v']),
      siteInjection('attn', ['attn.q', 'attn.k', 'attn.v', 'attn.o']),
      siteInjection('mlp', ['mlp.gate', 'mlp.up', 'mlp.down']),
      siteInjection('all-linear', ALL_SITES),
    ],
    sizeField: 'initR',
    maxSize: () => 256,
    fixed: { alpha: SEARCH_LORA_ALPHA },
    derived: (size) => ({ targetR: Math.max(1, Math.round((size * 2) / 3)) }),
    sequenceOnly: false,
    sharedExpert: true,
  },
  {
    kind: 'bottleneck',
    injections: [
      { name: 'pfeiffer', fields: () => ({ placement: 'pfeiffer' }) },
      { name: 'houlsby', fields: () => ({ placement: 'houlsby' }) },
    ],
    sizeField: 'bottleneckDim',
    maxSize: () => 1024,
    fixed: {},
    sequenceOnly: false,
    sharedExpert: false,
  },
  {
    kind: 'prefix',
    injections: [{ name: 'attention', fields: () => ({}) }],
    sizeField: 'prefixLength',
    // Prefix slots share the context with the tokens: at most half of it.
    maxSize: (maxSeqLen) => Math.max(1, Math.floor(maxSeqLen / 2)),
    fixed: {},
    sequenceOnly: true,
    sharedExpert: false,
  },
  {
    kind: 'ia3',
    injections: [
      { name: 'kv-down', fields: (family) => ({ targets: { sites: sitesOf(family, ['attn.k', 'attn.v', 'mlp.down']) }, feedforwardSites: ['mlp.down'] }) },
      { name: 'all-linear', fields: (family) => ({ targets: { sites: sitesOf(family, ALL_SITES) }, feedforwardSites: ['mlp.down'] }) },
    ],
    sizeField: undefined,
    maxSize: () => 1,
    fixed: {},
    sequenceOnly: false,
    sharedExpert: false,
  },
];

/** Router kinds the search draws (routers/): top-k with k = 1 or 2, noisy top-k, soft (all experts). */
export const ROUTER_CHOICES: readonly Readonly<Record<string, unknown>>[] = [
  { kind: 'top-k', k: 1 },
  { kind: 'top-k', k: 2 },
  { kind: 'noisy-top-k', k: 2 },
  { kind: 'soft' },
];
export const EXPERT_COUNTS: readonly number[] = [2, 4, 8];
export const GRANULARITIES: readonly ('token' | 'sequence')[] = ['token', 'sequence'];
export const PLACEMENTS: readonly ('site' | 'layer' | 'model')[] = ['site', 'layer', 'model'];
export const LAYER_CHOICES: readonly ('all' | 'lower' | 'upper')[] = ['all', 'lower', 'upper'];
export const BUDGET_SHARES: readonly number[] = [1, 0.5, 0.25];
/**
 * A shared expert beside a route (DeepSeekMoE's "shared expert isolation", Dai et al. 2024): one more module
 * of the experts' kind, applied to every row whatever the router picks, summed with the route's output. Its
 * size is the experts' (`same`) or half of it, rounded, at least 1 (`half`).
 */
export const SHARED_EXPERTS: readonly ('none' | 'half' | 'same')[] = ['none', 'half', 'same'];
export type SharedExpert = (typeof SHARED_EXPERTS)[number];

/** The shared expert's size for experts of `size`. */
export function sharedSize(shared: Exclude<SharedExpert, 'none'>, size: number): number {
  return shared === 'same' ? size : Math.max(1, Math.round(size / 2));
}

/**
 * The version of this space, recorded in a search's settings: a search directory written with another
 * version is not resumed (its draws and keys would differ). 1: before shared experts; 2: with them.
 */
export const SEARCH_SPACE_VERSION = 2;

export type Routing =
  | { readonly kind: 'none' }
  | {
      readonly kind: 'route';
      readonly experts: number;
      readonly router: Readonly<Record<string, unknown>>;
      readonly granularity: 'token' | 'sequence';
      readonly placement: 'site' | 'layer' | 'model';
      readonly shared: SharedExpert;
    };

/** One point of the space before its size is fitted. */
export interface Candidate {
  readonly kind: string;
  readonly injection: string;
  readonly layers: 'all' | 'lower' | 'upper';
  /** The share of the budget the size is fitted to. */
  readonly budgetShare: number;
  readonly routing: Routing;
}

/** A stable text key of a candidate (same candidate → same key), used to deduplicate and to resume. */
export function candidateKey(candidate: Candidate): string {
  const r = candidate.routing;
  const routing =
    r.kind === 'none'
      ? 'single'
      : `route:E${r.experts}:${String(r.router['kind'])}${r.router['k'] === undefined ? '' : `:k${String(r.router['k'])}`}:${r.granularity}:${r.placement}${r.shared === 'none' ? '' : `:shared-${r.shared}`}`;
  return `${candidate.kind}:${candidate.injection}:layers-${candidate.layers}:share-${candidate.budgetShare}:${routing}`;
}

/** The method label curves group trials by: the kind, routed or not (`lora`, `lora routed`). */
export function methodOf(candidate: Pick<Candidate, 'kind' | 'routing'>): string {
  return candidate.routing.kind === 'none' ? candidate.kind : `${candidate.kind} routed`;
}

export function searchKind(kind: string): SearchKind {
  const found = SEARCH_KINDS.find((k) => k.kind === kind);
  if (found === undefined) throw new Error(`no search kind ${JSON.stringify(kind)}`);
  return found;
}

/** Equal as JSON (router objects, choice values). */
export const sameJson = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

/** One of `items`, uniformly. */
export function pick<T>(random: () => number, items: readonly T[]): T {
  return items[Math.floor(random() * items.length)] as T;
}

/** The routers a route of `experts` experts may use (a top-k's k stays below E). */
export function routersFor(experts: number): readonly Readonly<Record<string, unknown>>[] {
  return ROUTER_CHOICES.filter((r) => typeof r['k'] !== 'number' || (r['k'] as number) < experts);
}

/**
 * A route of `kind`'s experts drawn uniformly: E, a router that fits E, the granularity (per sequence only
 * if so), the placement, the shared expert (none where the kind has none).
 */
export function drawRouting(random: () => number, kind: SearchKind): Routing {
  const experts = pick(random, EXPERT_COUNTS);
  const router = pick(random, routersFor(experts));
  const granularity = kind.sequenceOnly ? 'sequence' : pick(random, GRANULARITIES);
  const placement = pick(random, PLACEMENTS);
  const shared = kind.sharedExpert ? pick(random, SHARED_EXPERTS) : 'none';
  return { kind: 'route', experts, router, granularity, placement, shared };
}

/** A cell of the space's coarsest split: an adapter kind, routed or not. */
export interface Stratum {
  readonly kind: string;
  readonly routed: boolean;
}

/** Every (kind, routed or not) cell, in SEARCH_KINDS order. */
export const STRATA: readonly Stratum[] = SEARCH_KINDS.flatMap((k) => [
  { kind: k.kind, routed: false },
  { kind: k.kind, routed: true },
]);

/**
 * One candidate of a stratum (or of a uniformly drawn kind and routing), the other dimensions drawn
 * uniformly: injection, layers, budget share, and for a route E, the router, granularity and placement.
 * Choices that cannot combine are not drawn: a prefix route is per sequence, a top-k k is below the expert
 * count, a kind without a size uses the whole budget share.
 */
export function drawCandidate(random: () => number, stratum?: Stratum): Candidate {
  const kind = stratum === undefined ? pick(random, SEARCH_KINDS) : searchKind(stratum.kind);
  const injection = pick(random, kind.injections).name;
  const layers = pick(random, LAYER_CHOICES);
  const budgetShare = kind.sizeField === undefined ? 1 : pick(random, BUDGET_SHARES);
  const routed = stratum === undefined ? random() >= 0.5 : stratum.routed;
  if (!routed) return { kind: kind.kind, injection, layers, budgetShare, routing: { kind: 'none' } };
  return { kind: kind.kind, injection, layers, budgetShare, routing: drawRouting(random, kind) };
}

/**
 * Stratified draws (the strata of STRATA): each round of |STRATA| draws visits every stratum once, in an
 * order shuffled by `random`, so n draws give every (kind, routed or not) cell ⌊n / |STRATA|⌋ or one more.
 * Drawing the kind and the routing uniformly instead can miss a whole cell: seed 0's first 27 uniform draws
 * held no routed LoRA at all.
 */
export function stratifiedDraws(random: () => number): () => Candidate {
  let round: Stratum[] = [];
  return () => {
    if (round.length === 0) {
      round = [...STRATA];
      for (let i = round.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1));
        [round[i], round[j]] = [round[j] as Stratum, round[i] as Stratum];
      }
    }
    return drawCandidate(random, round.pop());
  };
}

/** The layers a layer choice targets in an L-layer model: all, the lower ⌈L/2⌉, or the upper ⌈L/2⌉. */
export function layerList(choice: Candidate['layers'], nLayers: number): 'all' | number[] {
  if (choice === 'all') return 'all';
  const half = Math.ceil(nLayers / 2);
  return choice === 'lower' ? Array.from({ length: half }, (_, i) => i) : Array.from({ length: half }, (_, i) => nLayers - half + i);
}

/** The AdaptedModel spec of a candidate at a size (plain JSON; parsed and checked when built). */
export function candidateSpec(
  candidate: Candidate,
  size: number,
  model: { readonly family: ModelFamily; readonly nLayers: number },
  seed: number,
): Record<string, unknown> {
  const kind = searchKind(candidate.kind);
  const injection = kind.injections.find((i) => i.name === candidate.injection);
  if (injection === undefined) throw new Error(`kind ${kind.kind} has no injection ${JSON.stringify(candidate.injection)}`);
  const fields = injection.fields(model.family);
  const layers = layerList(candidate.layers, model.nLayers);
  const adapter = (name: string, moduleSize = size): Record<string, unknown> => ({
    kind: kind.kind,
    name,
    ...kind.fixed,
    ...fields,
    ...(kind.sizeField === undefined ? {} : { [kind.sizeField]: moduleSize }),
    ...(kind.derived?.(moduleSize) ?? {}),
    targets: { ...((fields['targets'] as Record<string, unknown> | undefined) ?? {}), layers },
  });
  const routing = candidate.routing;
  if (routing.kind === 'none') return { seed, adapters: [adapter(kind.kind)] };
  const names = Array.from({ length: routing.experts }, (_, i) => `e${i}`);
  const route = {
    kind: 'route',
    experts: names,
    router: { ...routing.router },
    granularity: routing.granularity,
    placement: routing.placement,
    ...(routing.placement === 'model' ? { readLayer: 0 } : {}),
  };
  if (routing.shared === 'none') return { seed, adapters: names.map((n) => adapter(n)), composition: route };
  return {
    seed,
    adapters: [adapter('shared', sharedSize(routing.shared, size)), ...names.map((n) => adapter(n))],
    composition: { kind: 'parallel', children: ['shared', route] },
  };
}

/**
 * Why `candidate` is not a point of this space (naming the field, its value and the values allowed), or
 * undefined when it is. For candidates that come from outside (`search --start`): every one the search draws
 * or mutates passes.
 */
export function outsideSpace(candidate: Candidate): { readonly path: string; readonly message: string } | undefined {
  const list = (items: readonly unknown[]): string => items.map((i) => JSON.stringify(i)).join(', ');
  const kind = SEARCH_KINDS.find((k) => k.kind === candidate.kind);
  if (kind === undefined)
    return { path: 'kind', message: `unknown adapter kind ${JSON.stringify(candidate.kind)}; the search has ${list(SEARCH_KINDS.map((k) => k.kind))}` };
  if (!kind.injections.some((i) => i.name === candidate.injection))
    return {
      path: 'injection',
      message: `${kind.kind} has no injection ${JSON.stringify(candidate.injection)}; it has ${list(kind.injections.map((i) => i.name))}`,
    };
  if (!LAYER_CHOICES.includes(candidate.layers))
    return { path: 'layers', message: `layers ${JSON.stringify(candidate.layers)} is not one of ${list(LAYER_CHOICES)}` };
  const shares = kind.sizeField === undefined ? [1] : BUDGET_SHARES;
  if (!shares.includes(candidate.budgetShare))
    return { path: 'budgetShare', message: `budgetShare ${candidate.budgetShare} is not one of ${list(shares)} for ${kind.kind}` };
  const routing = candidate.routing;
  if (routing.kind === 'none') return undefined;
  if (!EXPERT_COUNTS.includes(routing.experts)) return { path: 'routing.experts', message: `${routing.experts} experts is not one of ${list(EXPERT_COUNTS)}` };
  const routers = routersFor(routing.experts);
  if (!routers.some((r) => sameJson(r, routing.router)))
    return { path: 'routing.router', message: `router ${JSON.stringify(routing.router)} is not one of ${list(routers)} for ${routing.experts} experts` };
  if (!GRANULARITIES.includes(routing.granularity) || (kind.sequenceOnly && routing.granularity !== 'sequence'))
    return {
      path: 'routing.granularity',
      message: `granularity ${JSON.stringify(routing.granularity)} is not allowed for ${kind.kind}${kind.sequenceOnly ? ' (per sequence only)' : ''}`,
    };
  if (!PLACEMENTS.includes(routing.placement))
    return { path: 'routing.placement', message: `placement ${JSON.stringify(routing.placement)} is not one of ${list(PLACEMENTS)}` };
  const shared = kind.sharedExpert ? SHARED_EXPERTS : (['none'] as const);
  if (!(shared as readonly string[]).includes(routing.shared))
    return { path: 'routing.shared', message: `shared expert ${JSON.stringify(routing.shared)} is not one of ${list(shared)} for ${kind.kind}` };
  return undefined;
}
