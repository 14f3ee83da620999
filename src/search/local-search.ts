/**
 * Local search (White, Zela, Ru, Liu & Hutter 2021, "Exploring the Loss Landscape in Neural Architecture
 * Search"): from the best trial so far, train every one-change neighbour not trained yet; when the
 * neighbourhood is done, move to the best trial if it is new, or stop at a local optimum. The first P trials
 * are the `start` candidates and the stratified draws, as evolution's.
 *
 * A neighbour changes one dimension of the space to each of its other values (evolution.ts's mutations,
 * enumerated instead of drawn). Where a change forces others (a new kind without the injection, a top-k
 * whose k reaches the new E), every valid repair is a neighbour; a route added to a single adapter is drawn
 * from `random`, so the neighbourhood is a function of the seed and the candidate.
 */
import { mutableDimensions, withKind } from './evolution.js';
import {
  BUDGET_SHARES,
  type Candidate,
  candidateKey,
  drawRouting,
  EXPERT_COUNTS,
  GRANULARITIES,
  LAYER_CHOICES,
  PLACEMENTS,
  routersFor,
  SEARCH_KINDS,
  SHARED_EXPERTS,
  sameJson,
  searchKind,
} from './space.js';

/** Every one-change neighbour of `candidate`, in the order of its dimensions and values, without repeats. */
export function neighbours(candidate: Candidate, random: () => number): Candidate[] {
  const out: Candidate[] = [];
  const add = (c: Candidate): void => {
    if (candidateKey(c) !== candidateKey(candidate) && !out.some((o) => candidateKey(o) === candidateKey(c))) out.push(c);
  };
  const others = <T>(items: readonly T[], current: T): T[] => items.filter((v) => !sameJson(v, current));
  const routing = candidate.routing;
  for (const dimension of mutableDimensions(candidate)) {
    switch (dimension) {
      case 'kind':
        for (const kind of others(
          SEARCH_KINDS.map((k) => k.kind),
          candidate.kind,
        )) {
          const row = searchKind(kind);
          const injections = row.injections.some((i) => i.name === candidate.injection) ? [candidate.injection] : row.injections.map((i) => i.name);
          for (const injection of injections) add(withKind(candidate, kind, injection));
        }
        break;
      case 'injection':
        for (const injection of others(
          searchKind(candidate.kind).injections.map((i) => i.name),
          candidate.injection,
        ))
          add({ ...candidate, injection });
        break;
      case 'layers':
        for (const layers of others(LAYER_CHOICES, candidate.layers)) add({ ...candidate, layers });
        break;
      case 'budgetShare':
        for (const budgetShare of others(BUDGET_SHARES, candidate.budgetShare)) add({ ...candidate, budgetShare });
        break;
      case 'routed':
        add({ ...candidate, routing: routing.kind === 'route' ? { kind: 'none' } : drawRouting(random, searchKind(candidate.kind)) });
        break;
      default:
        if (routing.kind !== 'route') break;
        if (dimension === 'experts') {
          for (const experts of others(EXPERT_COUNTS, routing.experts)) {
            const valid = routersFor(experts);
            const routers = valid.some((r) => sameJson(r, routing.router)) ? [routing.router] : valid;
            for (const router of routers) add({ ...candidate, routing: { ...routing, experts, router } });
          }
        } else if (dimension === 'router') {
          for (const router of others(routersFor(routing.experts), routing.router)) add({ ...candidate, routing: { ...routing, router } });
        } else if (dimension === 'granularity') {
          for (const granularity of others(GRANULARITIES, routing.granularity)) add({ ...candidate, routing: { ...routing, granularity } });
        } else if (dimension === 'placement') {
          for (const placement of others(PLACEMENTS, routing.placement)) add({ ...candidate, routing: { ...routing, placement } });
        } else if (dimension === 'shared') {
          for (const shared of others(SHARED_EXPERTS, routing.shared)) add({ ...candidate, routing: { ...routing, shared } });
        }
    }
  }
  return out;
}
