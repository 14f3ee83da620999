/**
 * A call's rows of token ids: the checks every runtime call makes on them, and how a RuntimePool (pool.ts)
 * splits one multi-row call over its workers and joins the parts' answers into the one a single runtime
 * gives. Rows are left-padded per pass and their values do not depend on the padding (batcher.ts), so a row
 * computed in a part equals the row computed with the whole call, up to float round-off; the join pads each
 * part to the call's width again.
 *
 * Shape letters: B rows of the call, Bₚ of a part, T the call's width (longest row), Tₚ a part's, V vocabulary.
 */
import type { ModelConfig } from '../base/config.js';
import { ShapeError } from '../errors.js';
import type { RoutingTraceEntry } from '../routing/trace.js';
import type { ForwardResult } from './types.js';

/** The refusals of a malformed call, naming the row (and token) by its index in the whole call. */
export function checkCallRows(rows: readonly (readonly number[])[], config: Pick<ModelConfig, 'vocabSize' | 'maxSeqLen'>, path: string): void {
  const { vocabSize, maxSeqLen } = config;
  if (rows.length === 0) throw new ShapeError('a call needs at least one row of tokens', { path, hint: 'Pass ids as [[id, ...], ...]' });
  rows.forEach((row, b) => {
    if (row.length === 0) throw new ShapeError(`row ${b} is empty`, { path: `${path}[${b}]`, hint: 'Start from the BOS id when there is no text' });
    if (row.length > maxSeqLen)
      throw new ShapeError(`row ${b} has ${row.length} tokens, more than the model's maximum of ${maxSeqLen}`, { path: `${path}[${b}]` });
    row.forEach((id, t) => {
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
        throw new ShapeError(`token id ${id} is outside the vocabulary [0, ${vocabSize})`, { path: `${path}[${b}][${t}]` });
      }
    });
  });
}

/** [first, last) row ranges: `rows` cut into min(rows, parts) contiguous parts whose sizes differ by ≤ 1. */
export function rowParts(rows: number, parts: number): [number, number][] {
  const count = Math.max(1, Math.min(rows, parts));
  return Array.from({ length: count }, (_, i) => [Math.floor((i * rows) / count), Math.floor(((i + 1) * rows) / count)]);
}

/** The parts' forward answers as the whole call's: rows in order, each left-padded to the call's width. */
export function joinForward(results: readonly ForwardResult[], parts: readonly (readonly [number, number])[]): ForwardResult {
  const rows = parts.reduce((n, [first, last]) => n + last - first, 0); // B
  const width = Math.max(...results.map((r) => r.shape[1])); // T
  const vocab = results[0]?.shape[2] ?? 0; // V
  const logits = new Float32Array(rows * width * vocab); // [B, T, V], padded positions 0
  const traced = results.some((r) => r.trace !== undefined);
  for (const [p, result] of results.entries()) {
    const [first] = parts[p] as readonly [number, number];
    const [partRows, partWidth] = result.shape; // Bₚ, Tₚ
    const shift = width - partWidth; // extra left padding of this part's rows
    for (let r = 0; r < partRows; r++) {
      const from = result.logits.subarray(r * partWidth * vocab, (r + 1) * partWidth * vocab); // [Tₚ, V]
      logits.set(from, ((first + r) * width + shift) * vocab);
    }
  }
  return { logits, shape: [rows, width, vocab], ...(traced ? { trace: joinTraces(results, parts) } : {}) };
}

/**
 * The parts' trace entries in a single runtime's order: a runtime records one routing decision (layer, site,
 * route) at a time, for all its rows in order, so each decision's entries are the parts' entries for it in
 * part order, and decisions come in the order they were made. Batch indices become the whole call's.
 */
function joinTraces(results: readonly ForwardResult[], parts: readonly (readonly [number, number])[]): RoutingTraceEntry[] {
  const decisions = new Map<string, RoutingTraceEntry[]>(); // insertion order: the order decisions were made
  for (const [p, result] of results.entries()) {
    const [first] = parts[p] as readonly [number, number];
    for (const entry of result.trace ?? []) {
      const key = `${entry.layer}\u0000${entry.site}\u0000${entry.route}`;
      const entries = decisions.get(key) ?? [];
      if (entries.length === 0) decisions.set(key, entries);
      entries.push({ ...entry, batch: entry.batch + first });
    }
  }
  return [...decisions.values()].flat();
}
