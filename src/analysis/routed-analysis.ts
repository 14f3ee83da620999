/**
 * The efficiency-vs-expressiveness analysis of a routed model: per adapter site (layer × point), every
 * module's measure (module-measures.ts), and for each route, how much its experts' ΔWs share: the overlap of
 * their output subspaces for every pair of experts (spectrum.ts), and the mean over the pairs.
 */
import { pointKey } from '../adapters/adapter.js';
import { routesIn } from '../compose/spec.js';
import type { AdaptedModel } from '../model/adapted-model.js';
import type { HostMatrix } from './linear-algebra.js';
import { type MeasuredModule, measureModule } from './module-measures.js';
import type { ExpertPairOverlap, RouteOverlap, RoutedAnalysis, SiteAnalysis } from './report.js';
import { RANK_TOLERANCE, subspaceOverlap } from './spectrum.js';

interface SiteEntry {
  readonly layer: number;
  readonly site: string;
  readonly measured: Map<string, MeasuredModule>; // adapter name → measure
}

/** A route's expert at one site, with the output basis of its ΔW. */
interface ExpertBasis {
  readonly name: string;
  readonly basis: HostMatrix; // [O, r]
  readonly rank: number;
}

function routeOverlap(route: number, experts: readonly string[], site: SiteEntry): RouteOverlap {
  const present: ExpertBasis[] = experts.flatMap((name) => {
    const measured = site.measured.get(name);
    if (measured?.outputBasis === undefined || measured.measure.measure !== 'delta-w') return [];
    return [{ name, basis: measured.outputBasis, rank: measured.measure.numericalRank }];
  });
  const pairs: ExpertPairOverlap[] = [];
  present.forEach((first, i) => {
    for (const second of present.slice(i + 1)) {
      const result = subspaceOverlap(first.basis, first.rank, second.basis, second.rank);
      const outputWidth = first.basis.rows; // O
      pairs.push({
        first: first.name,
        second: second.name,
        rank: result.rank,
        cosines: result.cosines,
        overlap: result.meanSquaredCosine,
        chance: result.rank / outputWidth,
      });
    }
  });
  const defined = pairs.flatMap((p) => (p.overlap === null ? [] : [p.overlap]));
  return {
    route,
    experts: present.map((e) => e.name),
    pairs,
    mean: defined.length === 0 ? null : defined.reduce((sum, x) => sum + x, 0) / defined.length,
  };
}

/** Measures every module of `model` (host reads only: it creates no tensors). `directory` is recorded as given. */
export async function analyzeRoutedModel(model: AdaptedModel, directory: string): Promise<RoutedAnalysis> {
  const sites = new Map<string, SiteEntry>();
  const adapters: RoutedAnalysis['adapters'] = [];
  for (const spec of model.spec.adapters) {
    const instance = model.adapters.get(spec.name);
    if (instance === undefined) continue;
    adapters.push({ name: spec.name, kind: spec.kind, parameters: instance.parameterCount(), modules: instance.modules.size });
    for (const module of instance.modules.values()) {
      const site = pointKey(module.point);
      const key = `${module.layer}|${site}`;
      let entry = sites.get(key);
      if (entry === undefined) {
        entry = { layer: module.layer, site, measured: new Map() };
        sites.set(key, entry);
      }
      entry.measured.set(spec.name, await measureModule(module));
    }
  }
  const routes = routesIn(model.composition).map((route, i) => ({ route: i, experts: [...route.experts] }));
  const ordered = [...sites.values()].sort((a, b) => a.layer - b.layer);
  const siteReports: SiteAnalysis[] = ordered.map((site) => ({
    layer: site.layer,
    site: site.site,
    modules: [...site.measured.values()].map((m) => m.measure),
    overlap: routes.map((r) => routeOverlap(r.route, r.experts, site)),
  }));
  const notAnalysed = siteReports.flatMap((site) =>
    site.modules.flatMap((m) => (m.measure === 'none' ? [{ adapter: m.adapter, kind: m.kind, layer: site.layer, site: site.site, reason: m.reason }] : [])),
  );
  const { family, dim, nLayers } = model.base.config;
  return { directory, base: { family, dim, nLayers }, rankTolerance: RANK_TOLERANCE, adapters, routes, sites: siteReports, notAnalysed };
}
