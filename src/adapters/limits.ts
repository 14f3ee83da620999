/**
 * Size limits of adapters, checked before any tensor is allocated so a hostile or mistyped spec (a rank of
 * 10⁹, a prefix longer than the context) is a ConfigError naming the field and the limit instead of a
 * `RangeError: Invalid typed array length` or an out-of-memory abort.
 *
 *  - every size field (LoRA `r` and pattern ranks, `bottleneckDim`, `prefixLength`, `reparamHiddenDim`) is at
 *    most MAX_ADAPTER_DIM, checked by the zod schemas;
 *  - against the model: one adapter holds at most MAX_ADAPTER_PARAMETERS trainable parameters (1 GiB of
 *    float32) and no single tensor more than MAX_TENSOR_ELEMENTS; a prefix is at most the model's context.
 */
import type { ModelConfig } from '../base/config.js';
import { ConfigError } from '../errors.js';

/** Largest rank / width / length any adapter size field may take. */
export const MAX_ADAPTER_DIM = 65_536;
/** Most trainable parameters one adapter may hold (2^28: 1 GiB of float32, before optimizer state). */
export const MAX_ADAPTER_PARAMETERS = 2 ** 28;
/** Most elements of one adapter tensor (2^28). */
export const MAX_TENSOR_ELEMENTS = 2 ** 28;

/** One planned tensor of an adapter, for the size check. */
export interface PlannedTensor {
  /** What it is, for the message: `layers.0.attn.q lora_A [r, in]`. */
  readonly what: string;
  readonly elements: number;
}

/**
 * Throws ConfigError when one planned tensor or the adapter's total exceeds the limits. `tensors` lists every
 * tensor of the adapter (all layers); `field` names the spec field that sets the size (e.g.
 * `adapters.e0.r`), `detail` how the size comes about.
 */
export function checkAdapterSize(name: string, kind: string, tensors: Iterable<PlannedTensor>, field: string, detail: string): void {
  const setting = field.slice(field.lastIndexOf('.') + 1);
  let total = 0;
  for (const t of tensors) {
    if (!Number.isFinite(t.elements) || t.elements > MAX_TENSOR_ELEMENTS) {
      throw new ConfigError(
        `${kind} adapter ${JSON.stringify(name)}: ${t.what} would hold ${t.elements.toExponential(3)} elements, more than the limit of ${MAX_TENSOR_ELEMENTS} per tensor`,
        { path: field, hint: `Lower ${setting} (${detail})` },
      );
    }
    total += t.elements;
  }
  if (total > MAX_ADAPTER_PARAMETERS) {
    throw new ConfigError(
      `${kind} adapter ${JSON.stringify(name)} would hold ${total.toExponential(3)} trainable parameters (${detail}), more than the limit of ${MAX_ADAPTER_PARAMETERS} (1 GiB of float32) per adapter`,
      { path: field, hint: `Lower ${setting}, or target fewer sites or layers` },
    );
  }
}

/** The layer indices a `targets.layers` value selects (indices beyond the model are left out; resolveLayers reports them). */
export function targetedLayers(layers: 'all' | readonly number[], model: ModelConfig): number[] {
  if (layers === 'all') return Array.from({ length: model.nLayers }, (_, i) => i);
  return [...new Set(layers.filter((l) => l < model.nLayers))].sort((a, b) => a - b);
}
