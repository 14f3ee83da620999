/**
 * Regularized evolution (Real, Aggarwal, Huang & Le 2019, "Regularized Evolution for Image Classifier
 * Architecture Search"): a population of the P most recent trials; each new trial samples S of them, takes
 * the best of the sample as the parent and trains a child that differs from it along one dimension of the
 * space (space.ts). The oldest member leaves as the child joins ("aging"), so a lucky early score cannot hold
 * the population forever. The first P trials are the stratified draws successive halving starts from.
 *
 * Every choice is a pure function of the seed, the trial's index and the finished trials before it, so a
 * resumed search proposes exactly the children the interrupted one would have.
 */
import { seededRandom } from '../base/sampling.js';
import { type RankedResult, compareResults } from './halving.js';
import {
  BUDGET_SHARES,
  type Candidate,
  drawRouting,
  EXPERT_COUNTS,
  GRANULARITIES,
  LAYER_CHOICES,
  PLACEMENTS,
  pick,
  type Routing,
  routersFor,
  SEARCH_KINDS,
  sameJson,
  SHARED_EXPERTS,
  searchKind,
} from './space.js';

/** Population size P and tournament sample S of `--method evolution` (the paper's ratio, scaled to short runs). */
export const EVOLUTION_DEFAULTS = { population: 10, sample: 3 } as const;

/** One dimension a mutation can change. */
export type MutationDimension = 'kind' | 'injection' | 'layers' | 'budgetShare' | 'routed' | 'experts' | 'router' | 'granularity' | 'placement' | 'shared';

/** The dimensions along which `candidate` has another valid value. */
export function mutableDimensions(candidate: Candidate): MutationDimension[] {
  const kind = searchKind(candidate.kind);
  const dims: MutationDimension[] = ['kind', 'layers', 'routed'];
  if (kind.injections.length > 1) dims.push('injection');
  if (kind.sizeField !== undefined) dims.push('budgetShare');
  if (candidate.routing.kind === 'route') {
    dims.push('experts', 'router', 'placement');
    if (!kind.sequenceOnly) dims.push('granularity');
    if (kind.sharedExpert) dims.push('shared');
  }
  return dims;
}

/**
 * `candidate` with another adapter kind and one of that kind's injections, repaired to fit it: a kind
 * without a size uses the whole budget, a prefix route goes per sequence, a kind without shared experts
 * drops the shared one.
 */
export function withKind(candidate: Candidate, kind: string, injection: string): Candidate {
  const row = searchKind(kind);
  const routing = candidate.routing;
  const budgetShare = row.sizeField === undefined ? 1 : candidate.budgetShare;
  const repaired: Routing =
    routing.kind === 'route'
      ? { ...routing, granularity: row.sequenceOnly ? 'sequence' : routing.granularity, shared: row.sharedExpert ? routing.shared : 'none' }
      : routing;
  return { ...candidate, kind, injection, budgetShare, routing: repaired };
}

/**
 * A child of `parent` that differs along one dimension (drawn uniformly among those with another value), the
 * new value drawn uniformly among the others. Values the new point cannot hold are repaired the way
 * drawCandidate avoids them: a kind without that injection draws one of its own, a kind without a size
 * uses the whole budget, a prefix route goes per sequence, a kind without shared experts drops the shared
 * one, a top-k whose k reaches E draws another router.
 */
export function mutateCandidate(random: () => number, parent: Candidate): Candidate {
  const dimension = pick(random, mutableDimensions(parent));
  const others = <T>(items: readonly T[], current: T): T =>
    pick(
      random,
      items.filter((v) => !sameJson(v, current)),
    );
  const routing = parent.routing;
  switch (dimension) {
    case 'kind': {
      const kind = others(
        SEARCH_KINDS.map((k) => k.kind),
        parent.kind,
      );
      const row = searchKind(kind);
      const injection = row.injections.some((i) => i.name === parent.injection) ? parent.injection : pick(random, row.injections).name;
      return withKind(parent, kind, injection);
    }
    case 'injection':
      return {
        ...parent,
        injection: others(
          searchKind(parent.kind).injections.map((i) => i.name),
          parent.injection,
        ),
      };
    case 'layers':
      return { ...parent, layers: others(LAYER_CHOICES, parent.layers) };
    case 'budgetShare':
      return { ...parent, budgetShare: others(BUDGET_SHARES, parent.budgetShare) };
    case 'routed':
      return { ...parent, routing: routing.kind === 'route' ? { kind: 'none' } : drawRouting(random, searchKind(parent.kind)) };
  }
  if (routing.kind !== 'route') throw new Error(`mutation ${dimension} needs a routed candidate`);
  switch (dimension) {
    case 'experts': {
      const experts = others(EXPERT_COUNTS, routing.experts);
      const valid = routersFor(experts);
      const router = valid.some((r) => sameJson(r, routing.router)) ? routing.router : pick(random, valid);
      return { ...parent, routing: { ...routing, experts, router } };
    }
    case 'router':
      return { ...parent, routing: { ...routing, router: others(routersFor(routing.experts), routing.router) } };
    case 'granularity':
      return { ...parent, routing: { ...routing, granularity: others(GRANULARITIES, routing.granularity) } };
    case 'placement':
      return { ...parent, routing: { ...routing, placement: others(PLACEMENTS, routing.placement) } };
    case 'shared':
      return { ...parent, routing: { ...routing, shared: others(SHARED_EXPERTS, routing.shared) } };
  }
}

/** A finished trial as evolution sees it: its point of the space and its ranking fields. */
export interface EvolvedTrial {
  readonly candidate: Candidate;
  readonly ranked: RankedResult;
}

/** The random stream of trial `index` (independent of how many draws earlier trials used). */
export function trialRandom(seed: number, index: number): () => number {
  return seededRandom((seed ^ 0x2545f491) + Math.imul(index + 1, 0x9e3779b1));
}

/**
 * The parent of the next child: the best of `sample` members drawn without replacement from the
 * population, the `population` most recent trials of `history`.
 */
export function tournamentParent(random: () => number, history: readonly EvolvedTrial[], population: number, sample: number): EvolvedTrial {
  const members = history.slice(-population);
  if (members.length === 0) throw new Error('evolution needs at least one finished trial');
  const pool = [...members];
  const drawn: EvolvedTrial[] = [];
  const count = Math.min(sample, pool.length);
  for (let i = 0; i < count; i++) {
    const j = Math.floor(random() * pool.length);
    drawn.push(pool.splice(j, 1)[0] as EvolvedTrial);
  }
  return drawn.reduce((best, t) => (compareResults(t.ranked, best.ranked) < 0 ? t : best));
}
