/**
 * Public types of the routed inference runtime (runtime.ts): what a call selects, its options, and what it
 * returns. Every result and event is plain data (numbers, typed arrays, copied arrays), never a live tensor
 * (ARCHITECTURE.md, "Events are plain data").
 *
 * Shape letters: B rows of a call, T tokens (the call's longest row), V vocabulary, D width, C classes.
 */
import { z } from 'zod';
import type { Selection } from '../model/selection.js';
import type { AdaptedModel } from '../model/adapted-model.js';
import type { RoutingTraceEntry } from '../routing/trace.js';

/**
 * What a call runs (the library's one selection vocabulary, model/selection.ts): `'base'`, `{ adapter }` (a loaded
 * PEFT adapter target), `{ combine, adapters, weights? }` (loaded PEFT targets combined statically) or
 * `{ routed }` (a loaded routed model with its own composition and routers). `'spec'` and `{ composition }` name
 * an AdaptedModel's own adapters and are refused here.
 */
export { Selection } from '../model/selection.js';

export interface CallOptions {
  readonly select: Selection;
  /** Task id per row (task routers); for generate and score one entry. */
  readonly taskIds?: readonly number[] | undefined;
  /** Collect the routing trace of this call (entries' `batch` is the row within this call). */
  readonly trace?: boolean | undefined;
}

export interface ForwardResult {
  /** [B, T, V] row-major. Rows shorter than T are left-padded; their padded positions hold 0. */
  readonly logits: Float32Array;
  readonly shape: readonly [number, number, number];
  readonly trace?: RoutingTraceEntry[];
}

export interface RuntimeGenerateOptions extends CallOptions {
  readonly maxNewTokens: number;
  /** 0: greedy. Default 1. */
  readonly temperature?: number | undefined;
  readonly topK?: number | undefined;
  readonly topP?: number | undefined;
  readonly seed?: number | undefined;
  /** Stop at this token (default: the model's EOS); null: never stop early. */
  readonly eosId?: number | null | undefined;
  /** Aborting stops the generation at its next step; the stream then ends with reason 'cancelled'. */
  readonly signal?: AbortSignal | undefined;
}

export interface TokenEvent {
  readonly kind: 'token';
  /** 0 for the first new token. */
  readonly index: number;
  readonly token: number;
  /** The text this token adds (only with a tokenizer). */
  readonly text?: string;
}

export type FinishReason = 'eos' | 'length' | 'cancelled';

export interface GenerationSummary {
  readonly kind: 'end';
  readonly reason: FinishReason;
  /** The new tokens (EOS included when it ended the generation). */
  readonly tokens: number[];
  readonly promptTokens: number;
  /** decode(tokens) (only with a tokenizer). */
  readonly text?: string;
  readonly trace?: RoutingTraceEntry[];
}

export type GenerationEvent = TokenEvent | GenerationSummary;

export interface ScoreResult {
  /** Σ log p(continuation token | everything before it). */
  readonly logLikelihood: number;
  /** One natural-log probability per continuation token. */
  readonly tokenLogProbs: number[];
  readonly trace?: RoutingTraceEntry[];
}

export interface ClassifyOptions extends CallOptions {
  /** Target whose classification head to use; default: the selected target (`{ adapter }` or `{ routed }`). */
  readonly head?: string | undefined;
}

export interface Classification {
  /** [C] head logits of the row's last token. */
  readonly logits: number[];
  readonly probabilities: number[];
  /** argmax. */
  readonly label: number;
}

/** A classification head on the final hidden state of the last token: logits = h·W + b. */
export const HeadSpec = z
  .object({
    /** [D][C] */
    weight: z.array(z.array(z.number().refine(Number.isFinite, 'must be finite')).min(1)).min(1),
    /** [C], default zeros. */
    bias: z.array(z.number().refine(Number.isFinite, 'must be finite')).optional(),
  })
  .strict();
export type HeadSpec = z.infer<typeof HeadSpec>;

export interface LoadOptions {
  readonly head?: HeadSpec | undefined;
}

/** Where a target's weights come from; evicted targets are reloaded from it. */
export type TargetSource =
  | { readonly kind: 'peft'; readonly dir: string }
  | { readonly kind: 'routed'; readonly dir: string }
  /**
   * The runtime takes ownership once the load or swap succeeds (it disposes the model on unload, swap and
   * dispose; if loading fails the caller keeps it). Never evicted, since it cannot be reloaded.
   */
  | { readonly kind: 'instance'; readonly model: AdaptedModel };

export interface TargetInfo {
  readonly name: string;
  /** `adapter`: one PEFT LoRA adapter; `routed`: an AdaptedModel with its own composition. */
  readonly kind: 'adapter' | 'routed';
  readonly bytes: number;
  readonly warnings: readonly string[];
  /**
   * A call's rows compute together: a routed target with a batch-coupled router (capacity shared by the
   * rows: switch, expert-choice). Such calls run as one pass; a RuntimePool does not split their rows.
   */
  readonly rowsCoupled: boolean;
}

export interface TargetStats {
  readonly name: string;
  readonly kind: 'adapter' | 'routed';
  readonly source: TargetSource['kind'];
  readonly resident: boolean;
  /** Variables' bytes plus merged weights' bytes (0 when evicted). */
  readonly bytes: number;
  /** Requests holding the current version. */
  readonly inUse: number;
  readonly merged: boolean;
}

export interface RuntimeStats {
  readonly targets: readonly TargetStats[];
  /** Bytes of every live version: resident targets plus swapped/unloaded versions still used by running requests. */
  readonly residentBytes: number;
  readonly budgetBytes: number | undefined;
  readonly loads: number;
  readonly swaps: number;
  readonly evictions: number;
  readonly reloads: number;
  /** Old versions kept alive by running requests. */
  readonly retiredInUse: number;
  /** Requests, loads and swaps waiting now for room under the memory budget. */
  readonly queued: number;
  /** How many ever had to wait for room. */
  readonly queuedTotal: number;
  /** How many waited longer than the queue's timeout (and failed with MemoryBudgetError). */
  readonly queueTimeouts: number;
}

/** One pass the batcher ran (plain data, for monitoring and tests). */
export interface BatchEvent {
  readonly kind: 'logits' | 'hidden' | 'generate';
  readonly requests: number;
  readonly rows: number;
  /** Distinct selections sharing the pass. */
  readonly groups: number;
  readonly selections: readonly string[];
}
