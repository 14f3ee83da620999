/**
 * The Pareto front of accuracy against trainable parameters: the points no other point beats on both (at
 * most as many parameters and at least the accuracy, better on one). Sorted by parameters, so the front is
 * a staircase rising left to right.
 */

export interface ParetoPoint {
  readonly trainableParams: number;
  readonly accuracy: number;
}

export function paretoFront<P extends ParetoPoint>(points: readonly P[]): P[] {
  const sorted = [...points].sort((a, b) => a.trainableParams - b.trainableParams || b.accuracy - a.accuracy);
  const front: P[] = [];
  let best = Number.NEGATIVE_INFINITY;
  for (const p of sorted) {
    if (p.accuracy > best) {
      front.push(p);
      best = p.accuracy;
    }
  }
  return front;
}
