/** What every route shares: the runtime and its tokenizer, the served targets, limits, metrics, admission. */
import type { ServingRuntime } from './serving-runtime.js';
import type { Tokenizer } from '../tokenizers/tokenizer.js';
import type { Admission } from './admission.js';
import type { ChatTemplate } from './chat-template.js';
import type { ServerMetrics } from './metrics.js';
import type { ServedTargets } from './targets.js';

export interface ServerLimits {
  /** Most tokens one choice may ask for (`max_tokens`). */
  readonly maxTokens: number;
  /** Longest request body, in bytes. */
  readonly bodyLimitBytes: number;
}

export interface ServerContext {
  readonly runtime: ServingRuntime;
  readonly tokenizer: Tokenizer | undefined;
  /** Prepend BOS to text prompts (llama-family models whose tokenizer has one). */
  readonly addBos: boolean;
  readonly chatTemplate: ChatTemplate;
  readonly targets: ServedTargets;
  readonly admission: Admission;
  readonly metrics: ServerMetrics;
  readonly limits: ServerLimits;
  readonly allowRuntimeLoading: boolean;
  /** Aborts of the requests in flight (aborted when a drain runs out of time). */
  readonly inflight: Set<AbortController>;
  readonly draining: () => boolean;
}
