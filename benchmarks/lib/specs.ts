/**
 * Adapter specs the benchmarks attach: E LoRA experts of rank r on all seven llama sites of every layer,
 * routed by a top-k router per site (the spec's defaults: token granularity, site placement).
 */
import type { ExecutionStrategy } from '../../src/routing/routed-layer.js';

export interface LoraSpecOptions {
  readonly r: number;
  /** Sites: 'all-linear' (default) or a list. */
  readonly sites?: 'all-linear' | readonly string[];
}

/** One LoRA adapter (random A and B, so the delta is not trivially zero). */
export function loraAdapter(name: string, options: LoraSpecOptions): Record<string, unknown> {
  return { kind: 'lora', name, r: options.r, alpha: 2 * options.r, init: 'random', targets: { sites: options.sites ?? 'all-linear', layers: 'all' } };
}

export function expertNames(experts: number): string[] {
  return Array.from({ length: experts }, (_, i) => `e${i}`);
}

export interface RoutedSpecOptions extends LoraSpecOptions {
  readonly experts: number;
  readonly k: number;
  readonly strategy?: 'auto' | ExecutionStrategy;
}

/** E LoRA experts routed top-k at every site of every layer. */
export function routedLoraSpec(options: RoutedSpecOptions): Record<string, unknown> {
  const names = expertNames(options.experts);
  return {
    seed: 1,
    adapters: names.map((n) => loraAdapter(n, options)),
    composition: { kind: 'route', experts: names, router: { kind: 'top-k', k: options.k }, strategy: options.strategy ?? 'auto' },
  };
}

/** A single static LoRA adapter (no routing). */
export function singleLoraSpec(options: LoraSpecOptions): Record<string, unknown> {
  return { seed: 1, adapters: [loraAdapter('single', options)] };
}
