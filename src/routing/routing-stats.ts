/**
 * Routing statistics from host copies of a decision (for logs, traces and benchmarks; no tensors):
 * the expert load histogram, how evenly it is spread, and how many rows were dropped.
 *
 * Shape letters: R rows, K slots, E choices.
 */
import { ShapeError } from '../errors.js';

export interface HostRouting {
  /** [R·K], row-major. */
  readonly expertIds: ArrayLike<number>;
  /** [R·K], row-major; a slot is used when its weight is > 0. */
  readonly weights: ArrayLike<number>;
  /** [R], 1 where the row was dropped. */
  readonly dropped: ArrayLike<number>;
  /** [R], 1 for real rows. */
  readonly mask: ArrayLike<number>;
  /** E: choices (the null expert included when enabled). */
  readonly choices: number;
}

export interface RoutingStats {
  /** Real rows counted. */
  readonly rows: number;
  /** Used slots per choice over real rows: [E]. */
  readonly load: number[];
  /** load / Σ load: [E] (all 0 when nothing was routed). */
  readonly loadFraction: number[];
  /** Entropy of loadFraction in nats: log E when perfectly balanced, 0 when all load is on one choice. */
  readonly loadEntropy: number;
  /** loadEntropy / log E, in [0, 1] (1 when E = 1). */
  readonly normalizedLoadEntropy: number;
  /** Mean number of used slots per real row. */
  readonly meanExpertsPerRow: number;
  /** Dropped real rows / real rows (0 when there are none). */
  readonly droppedRate: number;
}

export function routingStats(routing: HostRouting): RoutingStats {
  const { expertIds, weights, dropped, mask, choices } = routing;
  const rows = mask.length;
  if (dropped.length !== rows || expertIds.length !== weights.length || (rows === 0 ? expertIds.length !== 0 : expertIds.length % rows !== 0)) {
    throw new ShapeError(
      `routing stats need expertIds and weights [R·K] and dropped, mask [R]; got ${expertIds.length}, ${weights.length}, ${dropped.length}, ${rows}`,
    );
  }
  const slots = rows === 0 ? 0 : expertIds.length / rows;
  const load = new Array<number>(choices).fill(0);
  let realRows = 0;
  let droppedRows = 0;
  let used = 0;
  for (let r = 0; r < rows; r++) {
    if ((mask[r] as number) <= 0) continue;
    realRows++;
    if ((dropped[r] as number) > 0) droppedRows++;
    for (let k = 0; k < slots; k++) {
      if ((weights[r * slots + k] as number) <= 0) continue;
      const id = expertIds[r * slots + k] as number;
      if (!Number.isInteger(id) || id < 0 || id >= choices) throw new ShapeError(`expert id ${id} at row ${r}, slot ${k} is outside [0, ${choices})`);
      load[id] = (load[id] as number) + 1;
      used++;
    }
  }
  const loadFraction = load.map((n) => (used === 0 ? 0 : n / used));
  const loadEntropy = loadFraction.reduce((h, f) => (f > 0 ? h - f * Math.log(f) : h), 0);
  return {
    rows: realRows,
    load,
    loadFraction,
    loadEntropy,
    normalizedLoadEntropy: choices <= 1 ? 1 : loadEntropy / Math.log(choices),
    meanExpertsPerRow: realRows === 0 ? 0 : used / realRows,
    droppedRate: realRows === 0 ? 0 : droppedRows / realRows,
  };
}
