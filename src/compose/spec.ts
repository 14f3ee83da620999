/**
 * Compositions: how the modules present at one point of a layer combine. A composition is a declarative
 * tree, validated here and serialisable to JSON and back unchanged.
 *
 *   adapter   one adapter's module (written as the adapter's name, or {kind: "adapter", adapter})
 *   stack     sequential: each child's output is the next child's input value y
 *   parallel  deltas summed: y + Σ Δᵢ
 *   average   static weights: y + Σ wᵢ Δᵢ (default wᵢ = 1/n; any finite weights, negative ones subtract)
 *   route     weights chosen per input by a router: y + Σ_k g_k Δ_{e_k}
 *
 * Nesting rules: stack, parallel and average may hold any node, route included; a route's experts are
 * adapter names only (so routes never nest directly, and an expert is always one adapter); every adapter
 * appears at most once in the whole tree. At points where a child has no module (e.g. a LoRA on q only,
 * at the v site) the child contributes nothing. Prefix modules combine by concatenating their slots, with
 * their values scaled by the weight (average) or the sequence's gate (route).
 */
import { z } from 'zod';

export const RouterSpec = z.looseObject({ kind: z.string().min(1) });
export type RouterSpec = z.infer<typeof RouterSpec>;

export const AuxLossWeights = z
  .object({
    /** Switch/Mixtral load-balancing loss α·E·Σ fᵢ·Pᵢ. */
    balance: z.number().min(0).default(0.01),
    /** ST-MoE router z-loss: mean (logsumexp logits)². */
    zLoss: z.number().min(0).default(0),
    /** Shazeer et al.'s importance loss: CV² of per-expert importance. */
    importance: z.number().min(0).default(0),
    /** Mean routing entropy (positive weight pushes towards confident routing). */
    entropy: z.number().default(0),
  })
  .strict()
  .readonly();
export type AuxLossWeights = z.infer<typeof AuxLossWeights>;

export const RouteNode = z
  .object({
    kind: z.literal('route'),
    experts: z.array(z.string().min(1)).min(1),
    router: RouterSpec,
    /** Adds a null expert: the input may activate no module at all. */
    nullExpert: z.boolean().default(false),
    /** Route each token, or each sequence (features mean-pooled over its real tokens). */
    granularity: z.enum(['token', 'sequence']).default('token'),
    /**
     * `site`: one router per site, reading the site's input; `layer`: one router per layer shared by its
     * sites, reading the layer's input; `model`: one router for the whole model, reading the hidden state
     * entering layer `readLayer` (decided once, in the same pass).
     */
    placement: z.enum(['site', 'layer', 'model']).default('site'),
    readLayer: z.number().int().min(0).default(0),
    /** `dense` (all experts on all rows, masked; fused for LoRA), `grouped` (rows gathered per expert), or `auto`. */
    strategy: z.enum(['auto', 'dense', 'grouped']).default('auto'),
    aux: AuxLossWeights.default({ balance: 0.01, zLoss: 0, importance: 0, entropy: 0 }),
  })
  .strict()
  .readonly();
export type RouteNode = z.infer<typeof RouteNode>;

export type CompositionNode =
  | { readonly kind: 'adapter'; readonly adapter: string }
  | { readonly kind: 'stack'; readonly children: readonly CompositionNode[] }
  | { readonly kind: 'parallel'; readonly children: readonly CompositionNode[] }
  | { readonly kind: 'average'; readonly children: readonly CompositionNode[]; readonly weights?: readonly number[] | undefined }
  | RouteNode;

/** What users may write: adapter leaves as plain names; route defaults may be omitted. */
export type CompositionInput =
  | string
  | { readonly kind: 'adapter'; readonly adapter: string }
  | { readonly kind: 'stack'; readonly children: readonly CompositionInput[] }
  | { readonly kind: 'parallel'; readonly children: readonly CompositionInput[] }
  | { readonly kind: 'average'; readonly children: readonly CompositionInput[]; readonly weights?: readonly number[] | undefined }
  | z.input<typeof RouteNode>;

const AdapterObject = z.object({ kind: z.literal('adapter'), adapter: z.string().min(1) }).strict();

export const CompositionNode: z.ZodType<CompositionNode, CompositionInput> = z.lazy(() =>
  z.union([
    z
      .string()
      .min(1)
      .transform((adapter) => ({ kind: 'adapter' as const, adapter })),
    z.discriminatedUnion('kind', [
      AdapterObject,
      z.object({ kind: z.literal('stack'), children: z.array(CompositionNode).min(1) }).strict(),
      z.object({ kind: z.literal('parallel'), children: z.array(CompositionNode).min(1) }).strict(),
      z
        .object({ kind: z.literal('average'), children: z.array(CompositionNode).min(1), weights: z.array(z.number()).optional() })
        .strict()
        .refine((n) => n.weights === undefined || n.weights.length === n.children.length, {
          message: 'average needs one weight per child',
          path: ['weights'],
        }),
      RouteNode,
    ]),
  ]),
);

/** Adapter names a composition refers to, in tree order (duplicates kept, for checking). */
export function adaptersIn(node: CompositionNode): string[] {
  switch (node.kind) {
    case 'adapter':
      return [node.adapter];
    case 'route':
      return [...node.experts];
    default:
      return node.children.flatMap(adaptersIn);
  }
}

export function routesIn(node: CompositionNode): RouteNode[] {
  if (node.kind === 'route') return [node];
  if (node.kind === 'adapter') return [];
  return node.children.flatMap(routesIn);
}
