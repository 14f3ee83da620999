/**
 * A static composition of LoRA adapters as weighted LoRA terms per point. At a site output every child of a
 * static composition (adapter, stack, parallel, average) reads the same site input and a LoRA delta ignores
 * the value it adapts, so the composition's delta is Σ weight · s · B·A·x over its terms (weight: the product of
 * the `average` weights above the adapter). Mixed-adapter passes give each such selection one choice of a LoRA
 * bank (runtime/mixed-hooks.ts), so every row gets its own selection's delta from one product.
 */
import type { AdapterInstance } from '../adapters/instance.js';
import { LoraModule } from '../adapters/lora/layer.js';
import type { CompositionNode } from '../compose/spec.js';

/** One LoRA of a selection at one site, with the weight the composition gives its delta. */
export interface LoraTerm {
  readonly module: LoraModule;
  readonly weight: number;
}

/** A selection as LoRA terms: moduleKey(layer, site output) → its terms there. */
export type LoraTerms = ReadonlyMap<string, readonly LoraTerm[]>;

/** The composition's LoRA terms, or undefined when it is not a static composition of LoRA adapters only. */
export function staticLoraTerms(root: CompositionNode, adapters: ReadonlyMap<string, AdapterInstance>): LoraTerms | undefined {
  const terms = new Map<string, LoraTerm[]>();
  const visit = (node: CompositionNode, weight: number): boolean => {
    switch (node.kind) {
      case 'route':
        return false;
      case 'adapter': {
        const modules = adapters.get(node.adapter)?.modules;
        if (modules === undefined) return false;
        for (const [key, module] of modules) {
          if (!(module instanceof LoraModule)) return false;
          terms.set(key, [...(terms.get(key) ?? []), { module, weight }]);
        }
        return true;
      }
      case 'average': {
        const weights = node.weights ?? node.children.map(() => 1 / node.children.length);
        return node.children.every((child, i) => visit(child, weight * (weights[i] ?? 0)));
      }
      case 'stack':
      case 'parallel':
        return node.children.every((child) => visit(child, weight));
    }
  };
  return visit(root, 1) ? terms : undefined;
}
