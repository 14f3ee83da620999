/**
 * A training batch's rows split into contiguous shards (data-parallel replicas each take one).
 */

/** The per-row fields of a training batch (trainer.ts's TrainBatch without retention rows or images). */
export interface RowBatch {
  readonly ids: readonly (readonly number[])[];
  readonly mask: readonly (readonly number[])[];
  readonly lossMask: readonly (readonly number[])[];
  readonly taskIds?: readonly number[];
  readonly labels?: readonly number[];
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
