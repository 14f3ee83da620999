/**
 * A training batch's rows split into contiguous shards (data-parallel replicas each take one).
 */

/** A training batch's per-row fields (trainer.ts's TrainBatch adds retention rows and images). Rows are padded to one length. */
export interface RowBatch {
  readonly ids: readonly (readonly number[])[];
  /** 1 for real tokens. */
  readonly mask: readonly (readonly number[])[];
  /** 1 at target positions that count in the LM loss (0 on prompts and padding). Unused for classification. */
  readonly lossMask: readonly (readonly number[])[];
  /** Task id per row (task routers). */
  readonly taskIds?: readonly number[];
  /** Class per row (classification objective). */
  readonly labels?: readonly number[];
  /** [B, T] tokens sequence-level routers pool (makeBatches: the prompt of prompt/completion rows); see AdaptedCallOptions. */
  readonly routingMask?: readonly (readonly number[])[];
}

/**
 * Splits a batch's rows into `count` contiguous shards, as equal as they can be (the first ones take one row
 * more). Per-row fields split along; retention rows and images are not split (the trainer refuses them).
 */
export function splitRows(batch: RowBatch, count: number): RowBatch[] {
  const rows = batch.ids.length;
  const shards: RowBatch[] = [];
  let start = 0;
  for (let s = 0; s < count; s++) {
    const size = Math.floor(rows / count) + (s < rows % count ? 1 : 0);
    const end = start + size;
    const take = <T>(x: readonly T[] | undefined): T[] | undefined => x?.slice(start, end);
    const shard: RowBatch = {
      ids: batch.ids.slice(start, end),
      mask: batch.mask.slice(start, end),
      lossMask: batch.lossMask.slice(start, end),
      ...(batch.taskIds === undefined ? {} : { taskIds: take(batch.taskIds) as number[] }),
      ...(batch.labels === undefined ? {} : { labels: take(batch.labels) as number[] }),
      ...(batch.routingMask === undefined ? {} : { routingMask: take(batch.routingMask) as number[][] }),
    };
    shards.push(shard);
    start = end;
  }
  return shards;
}
