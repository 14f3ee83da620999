/**
 * Evaluation metrics from plain data (numbers, strings, trace entries): no tensors, no model.
 *
 * Entropies and mutual information are in nats, from counts (plug-in estimates). Normalised mutual
 * information is NMI = I(X; Y) / min(H(X), H(Y)) (one of the standard normalisations, Kvålseth 1987), so a
 * deterministic mapping in either direction scores 1 and independence scores 0.
 */
import { ShapeError } from '../errors.js';
import type { RoutingTraceEntry } from '../routing/trace.js';

// ---------------------------------------------------------------------------------------------------------
// Language modelling and classification

/** exp(mean token cross-entropy in nats). */
export function perplexity(meanLoss: number): number {
  return Math.exp(meanLoss);
}

/** Whether the prediction equals the expected text after trimming both (case and inner spaces count). */
export function exactMatch(predictedText: string, expectedText: string): boolean {
  return predictedText.trim() === expectedText.trim();
}

/** Fraction of positions where predicted === gold; 0 for empty inputs. */
export function accuracy<T>(predicted: readonly T[], gold: readonly T[]): number {
  if (predicted.length !== gold.length) {
    throw new ShapeError(`accuracy needs as many predictions as gold answers; got ${predicted.length} and ${gold.length}`);
  }
  if (gold.length === 0) return 0;
  let right = 0;
  for (let i = 0; i < gold.length; i++) if (predicted[i] === gold[i]) right++;
  return right / gold.length;
}

export interface EvalRecord {
  readonly task: number | string;
  /** Mean loss per token of this example (nats). */
  readonly loss: number;
  /** Whether the example was answered correctly (or a score in [0, 1]). */
  readonly correct: boolean | number;
  /** Target tokens the loss averages over (weights the task's loss). */
  readonly tokens: number;
}

export interface TaskMetrics {
  readonly task: number | string;
  /** Token-weighted mean loss: Σ loss·tokens / Σ tokens (the plain mean when no record has tokens). */
  readonly loss: number;
  /** Mean of `correct`. */
  readonly accuracy: number;
  /** Records. */
  readonly count: number;
  /** Σ tokens. */
  readonly tokens: number;
}

/** Per-task loss, accuracy and count, sorted by task (numbers numerically, then names). */
export function taskBreakdown(records: readonly EvalRecord[]): TaskMetrics[] {
  const groups = new Map<number | string, { lossTokens: number; lossSum: number; correct: number; count: number; tokens: number }>();
  for (const r of records) {
    const g = groups.get(r.task) ?? { lossTokens: 0, lossSum: 0, correct: 0, count: 0, tokens: 0 };
    g.lossTokens += r.loss * r.tokens;
    g.lossSum += r.loss;
    g.correct += typeof r.correct === 'boolean' ? (r.correct ? 1 : 0) : r.correct;
    g.count++;
    g.tokens += r.tokens;
    groups.set(r.task, g);
  }
  return [...groups]
    .sort(([a], [b]) => compareKeys(a, b))
    .map(([task, g]) => ({
      task,
      loss: g.tokens > 0 ? g.lossTokens / g.tokens : g.lossSum / g.count,
      accuracy: g.correct / g.count,
      count: g.count,
      tokens: g.tokens,
    }));
}

function compareKeys(a: number | string, b: number | string): number {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  if (typeof a === 'number') return -1;
  if (typeof b === 'number') return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------------------
// Information measures

function entropyOfCounts(counts: Iterable<number>, total: number): number {
  let h = 0;
  for (const n of counts) if (n > 0) h -= (n / total) * Math.log(n / total);
  return h;
}

export interface MutualInformation {
  /** I(X; Y) in nats. */
  readonly mutualInformation: number;
  readonly entropyX: number;
  readonly entropyY: number;
  /** I / min(H(X), H(Y)) in [0, 1]; 0 when either entropy is 0. */
  readonly normalized: number;
}

/** Plug-in mutual information of paired observations (x, y), from their joint counts. Symmetric in x and y. */
export function mutualInformation(pairs: readonly (readonly [x: number | string, y: number | string])[]): MutualInformation {
  const total = pairs.length;
  if (total === 0) return { mutualInformation: 0, entropyX: 0, entropyY: 0, normalized: 0 };
  const xs = new Map<number | string, number>();
  const ys = new Map<number | string, number>();
  const joint = new Map<number | string, Map<number | string, number>>();
  for (const [x, y] of pairs) {
    xs.set(x, (xs.get(x) ?? 0) + 1);
    ys.set(y, (ys.get(y) ?? 0) + 1);
    const row = joint.get(x) ?? new Map<number | string, number>();
    row.set(y, (row.get(y) ?? 0) + 1);
    joint.set(x, row);
  }
  // I = Σ p(x,y) log(p(x,y) / (p(x) p(y))) = Σ n_xy/N · log(n_xy · N / (n_x · n_y))
  let mi = 0;
  for (const [x, row] of joint) {
    const nx = xs.get(x) as number;
    for (const [y, nxy] of row) mi += (nxy / total) * Math.log((nxy * total) / (nx * (ys.get(y) as number)));
  }
  const entropyX = entropyOfCounts(xs.values(), total);
  const entropyY = entropyOfCounts(ys.values(), total);
  const floor = Math.min(entropyX, entropyY);
  mi = Math.max(0, mi); // rounding can leave −1e-17
  return { mutualInformation: mi, entropyX, entropyY, normalized: floor <= 1e-12 ? 0 : Math.min(1, mi / floor) };
}

// ---------------------------------------------------------------------------------------------------------
// Routing

export interface RoutingAssignment {
  readonly task: number;
  readonly expert: string;
}

export interface TaskPurity {
  readonly task: number;
  readonly count: number;
  /** The expert this task is sent to most often (ties: the first seen). */
  readonly topExpert: string;
  /** Fraction of the task's assignments that go to topExpert. */
  readonly purity: number;
}

export interface RoutingPurity {
  /** Σ_task count · purity / Σ count: 1 when every task always uses one expert; ≈ 1/E for uniform routing. */
  readonly purity: number;
  /** I(task; expert) / min(H(task), H(expert)): 1 for a deterministic mapping, ≈ 0 for independence. */
  readonly mutualInformation: number;
  /** Unnormalised I(task; expert) in nats. */
  readonly mutualInformationNats: number;
  readonly perTask: TaskPurity[];
}

/**
 * How well routing separates tasks. Pass one assignment per routing choice (e.g. per token and selected
 * expert, or per sequence for sequence-level routers).
 */
export function routingPurity(assignments: readonly RoutingAssignment[]): RoutingPurity {
  const byTask = new Map<number, Map<string, number>>();
  for (const { task, expert } of assignments) {
    const row = byTask.get(task) ?? new Map<string, number>();
    row.set(expert, (row.get(expert) ?? 0) + 1);
    byTask.set(task, row);
  }
  const perTask: TaskPurity[] = [...byTask]
    .sort(([a], [b]) => a - b)
    .map(([task, row]) => {
      let count = 0;
      let topExpert = '';
      let top = -1;
      for (const [expert, n] of row) {
        count += n;
        if (n > top) {
          top = n;
          topExpert = expert;
        }
      }
      return { task, count, topExpert, purity: top / count };
    });
  const total = assignments.length;
  const purity = total === 0 ? 0 : perTask.reduce((s, t) => s + t.count * t.purity, 0) / total;
  const mi = mutualInformation(assignments.map((a) => [a.task, a.expert] as const));
  return { purity, mutualInformation: mi.normalized, mutualInformationNats: mi.mutualInformation, perTask };
}

export interface ExpertLoad {
  readonly layer: number;
  readonly site: string;
  readonly route: number;
  /** Trace entries (real tokens, or sequences for sequence-level routing). */
  readonly tokens: number;
  /** Expert names, aligned with counts and fractions. */
  readonly experts: string[];
  /** Selections with weight > 0 per expert. */
  readonly counts: number[];
  /** counts / Σ counts (all 0 when nothing was selected). */
  readonly fractions: number[];
  /** Dropped entries / entries. */
  readonly droppedRate: number;
  /** Entropy of fractions in nats (log E when balanced). */
  readonly loadEntropy: number;
  /** loadEntropy / log E in [0, 1] (1 when E ≤ 1). */
  readonly normalizedLoadEntropy: number;
}

export interface ExpertLoadOptions {
  /**
   * Every expert name, so unused experts show with count 0 and E counts them. Default: the experts seen in
   * the trace, in order of first appearance.
   */
  readonly experts?: readonly string[];
}

/** Per (layer, site, route) expert-load histograms from a routing trace, ordered by layer, route, site. */
export function expertLoad(trace: readonly RoutingTraceEntry[], options: ExpertLoadOptions = {}): ExpertLoad[] {
  interface Group {
    readonly layer: number;
    readonly site: string;
    readonly route: number;
    tokens: number;
    dropped: number;
    readonly counts: Map<string, number>;
  }
  const groups = new Map<string, Group>();
  for (const entry of trace) {
    const key = JSON.stringify([entry.layer, entry.route, entry.site]);
    let g = groups.get(key);
    if (g === undefined) {
      g = { layer: entry.layer, site: entry.site, route: entry.route, tokens: 0, dropped: 0, counts: new Map((options.experts ?? []).map((e) => [e, 0])) };
      groups.set(key, g);
    }
    g.tokens++;
    if (entry.dropped) g.dropped++;
    entry.experts.forEach((expert, k) => {
      if ((entry.weights[k] ?? 0) > 0) g.counts.set(expert, (g.counts.get(expert) ?? 0) + 1);
    });
  }
  return [...groups.values()]
    .sort((a, b) => a.layer - b.layer || a.route - b.route || (a.site < b.site ? -1 : a.site > b.site ? 1 : 0))
    .map((g) => {
      const experts = [...g.counts.keys()];
      const counts = experts.map((e) => g.counts.get(e) as number);
      const used = counts.reduce((s, n) => s + n, 0);
      const fractions = counts.map((n) => (used === 0 ? 0 : n / used));
      const loadEntropy = used === 0 ? 0 : entropyOfCounts(counts, used);
      return {
        layer: g.layer,
        site: g.site,
        route: g.route,
        tokens: g.tokens,
        experts,
        counts,
        fractions,
        droppedRate: g.tokens === 0 ? 0 : g.dropped / g.tokens,
        loadEntropy,
        normalizedLoadEntropy: experts.length <= 1 ? 1 : loadEntropy / Math.log(experts.length),
      };
    });
}

// ---------------------------------------------------------------------------------------------------------
// Forgetting

export interface BaseRetention {
  /** Mean token loss of the routed model on base-domain text (nats). */
  readonly routedLoss: number;
  /** Mean token loss of the frozen base on the same text. */
  readonly baseLoss: number;
  /** routedLoss − baseLoss: 0 = perfectly retained, > 0 = forgetting, < 0 = the adapters even help. */
  readonly delta: number;
  /** routedLoss / baseLoss: 1 = retained; Infinity when baseLoss is 0 and routedLoss is not. */
  readonly ratio: number;
  /** perplexity(routed) / perplexity(base) = exp(delta). */
  readonly perplexityRatio: number;
}

/**
 * Share of trace entries (routed decisions × real tokens) that apply no expert: their largest gate is the
 * null expert's, or every gate is 0 (a router that abstained). null when the trace is empty.
 */
export function nullShare(trace: readonly RoutingTraceEntry[], nullName: string): number | null {
  if (trace.length === 0) return null;
  let none = 0;
  for (const entry of trace) {
    let top = -1;
    entry.weights.forEach((w, k) => {
      if (w > 0 && (top < 0 || w > (entry.weights[top] ?? 0))) top = k;
    });
    if (top < 0 || entry.experts[top] === nullName) none++;
  }
  return none / trace.length;
}

/** How much the routed model forgets of what the base knew, measured on base-domain (not task) text. */
export function baseRetention(routedLoss: number, baseLoss: number): BaseRetention {
  const delta = routedLoss - baseLoss;
  const ratio = baseLoss === 0 ? (routedLoss === 0 ? 1 : Infinity) : routedLoss / baseLoss;
  return { routedLoss, baseLoss, delta, ratio, perplexityRatio: Math.exp(delta) };
}
