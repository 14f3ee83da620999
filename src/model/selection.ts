/**
 * What a call applies to the frozen base: one vocabulary for AdaptedModel, RoutedRuntime and the CLI.
 *
 *   'base'                            the bare base model, bit for bit
 *   'spec'                            an AdaptedModel's own composition (its spec; routes included) — its default
 *   { adapter }                       one adapter (AdaptedModel: a resident adapter; runtime: a loaded PEFT target)
 *   { combine, adapters, weights? }   adapters combined statically: `stack`, `parallel` or `average`; `weights` scale
 *                                     each adapter's delta (for `parallel` that makes it a weighted sum; `stack` takes none)
 *   { routed }                        a routed model loaded into a RoutedRuntime, with its own composition and routers
 *   { composition }                   any composition tree of an AdaptedModel's resident adapters (spec routes by value)
 *
 * Each owner refuses, by name, what it cannot serve: an AdaptedModel has no `routed` targets, a runtime has no
 * `spec` and no free `composition` (its targets are named).
 */
import { z } from 'zod';
import { CompositionNode } from '../compose/spec.js';

export const Selection = z.union([
  z.literal('base'),
  z.literal('spec'),
  z.object({ adapter: z.string().min(1) }).strict(),
  z
    .object({
      combine: z.enum(['stack', 'parallel', 'average']),
      adapters: z.array(z.string().min(1)).min(1),
      weights: z.array(z.number().refine(Number.isFinite, 'must be finite')).optional(),
    })
    .strict()
    .refine((s) => s.weights === undefined || s.weights.length === s.adapters.length, { message: 'weights needs one entry per adapter', path: ['weights'] })
    .refine((s) => s.weights === undefined || s.combine !== 'stack', { message: 'a stack takes no weights (use parallel or average)', path: ['weights'] })
    .refine((s) => new Set(s.adapters).size === s.adapters.length, { message: 'each adapter may appear once', path: ['adapters'] }),
  z.object({ routed: z.string().min(1) }).strict(),
  z.object({ composition: CompositionNode }).strict(),
]);
export type Selection = z.infer<typeof Selection>;
/** A selection as users write it (composition defaults may be omitted). */
export type SelectionInput = z.input<typeof Selection>;

/** The static composition of an `{ adapter }` or `{ combine }` selection. */
export function staticComposition(
  select:
    | { readonly adapter: string }
    | { readonly combine: 'stack' | 'parallel' | 'average'; readonly adapters: readonly string[]; readonly weights?: readonly number[] | undefined },
): CompositionNode {
  if ('adapter' in select) return { kind: 'adapter', adapter: select.adapter };
  const children = select.adapters.map((adapter) => ({ kind: 'adapter' as const, adapter }));
  if (select.weights === undefined) return { kind: select.combine, children };
  return { kind: 'average', children, weights: select.weights }; // average's weights are any finite numbers: a weighted sum
}

/** A short label for errors and events: `base`, `adapter:a`, `average(a,b;0.5,0.5)`, `routed:m`, … */
export function selectionLabel(select: Selection): string {
  if (select === 'base' || select === 'spec') return select;
  if ('adapter' in select) return `adapter:${select.adapter}`;
  if ('routed' in select) return `routed:${select.routed}`;
  if ('composition' in select) return `composition:${JSON.stringify(select.composition)}`;
  return `${select.combine}(${select.adapters.join(',')}${select.weights === undefined ? '' : `;${select.weights.join(',')}`})`;
}
