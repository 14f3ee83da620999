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

/** Deepest composition accepted (a stack inside a parallel inside … counts one level each). */
export const MAX_COMPOSITION_DEPTH = 64;
/** Most nodes (adapter leaves included) one composition may hold. */
export const MAX_COMPOSITION_NODES = 10_000;
/** Most experts one route may list. */
export const MAX_ROUTE_EXPERTS = 4096;

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

/**
 * What a route does with base-domain (retention) rows of a training batch — the rows a caller marks with
 * `routing.retentionRows` (the Trainer marks the rows of its retention data). Both terms are added to the
 * route's auxiliary losses of a training forward; neither changes inference.
 *
 *   nullRouting   weight of the binary cross-entropy of p_null against the row's kind (−log p_null on
 *                 base-domain rows, −log(1 − p_null) on task rows): the router learns to send base-domain
 *                 inputs to the null expert and to keep it out of task inputs (AdaMoE, Zeng et al. 2024, adds
 *                 null experts so that a token may use fewer experts; here the null expert is taught which
 *                 inputs should use none). Needs `nullExpert: true`.
 *   localBalance  weight of LoRAMoE's localized balancing constraint (Dou et al. 2023, §3.2): the choices are
 *                 split into two groups, `group` serving base-domain rows and the others serving task rows,
 *                 and each row's router probabilities are balanced within its group while its group holds
 *                 more of them (see routing/retention-losses.ts).
 */
export const RetentionRouting = z
  .object({
    nullRouting: z.number().min(0).finite().default(0),
    localBalance: z.number().min(0).finite().default(0),
    /** The choices (expert names, `null` for the null expert) that serve base-domain rows; default: the null expert. */
    group: z.array(z.string().min(1)).min(1).optional(),
    /** δ of the localized balance: matched entries are weighted 1 − δ, the others 1 + δ. */
    delta: z.number().min(0).lt(1).default(0.5),
  })
  .strict()
  .readonly();
export type RetentionRouting = z.infer<typeof RetentionRouting>;

export const RouteNode = z
  .object({
    kind: z.literal('route'),
    experts: z.array(z.string().min(1)).min(1).max(MAX_ROUTE_EXPERTS),
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
    /**
     * Routers also read each token's modality (0 text, 1 image: an image prefix) as two one-hot features
     * appended to their input, [R, D] → [R, D + 2] (pooled like the rest at sequence granularity).
     */
    modalityFeature: z.boolean().optional(),
    /** Retention terms on base-domain training rows (absent: none). */
    retention: RetentionRouting.optional(),
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

/**
 * Checks the tree's shape before zod walks it, without recursion: a composition nested deeper than
 * MAX_COMPOSITION_DEPTH, holding more than MAX_COMPOSITION_NODES nodes, or containing itself (a cycle, only
 * possible for objects built in code) is refused here, so neither zod nor any later walk can overflow the stack
 * or run for ever. Returns the problem and where, or undefined.
 */
export function compositionShapeProblem(value: unknown): { readonly message: string; readonly path: (string | number)[] } | undefined {
  interface Frame {
    readonly node: unknown;
    readonly path: (string | number)[];
    readonly depth: number;
    readonly exit?: boolean;
  }
  const stack: Frame[] = [{ node: value, path: [], depth: 1 }];
  const onPath = new Set<object>();
  let nodes = 0;
  while (stack.length > 0) {
    const frame = stack.pop() as Frame;
    if (frame.exit === true) {
      onPath.delete(frame.node as object);
      continue;
    }
    nodes++;
    const node = frame.node;
    if (typeof node !== 'object' || node === null) continue;
    if (onPath.has(node)) return { message: 'the composition contains itself (a cycle): a node is its own descendant', path: frame.path };
    if (frame.depth > MAX_COMPOSITION_DEPTH) {
      return { message: `the composition is nested more than ${MAX_COMPOSITION_DEPTH} levels deep`, path: frame.path };
    }
    let children: unknown;
    try {
      children = (node as Record<string, unknown>)['children'];
    } catch {
      return { message: 'the composition node cannot be read', path: frame.path };
    }
    if (!Array.isArray(children)) continue;
    if (nodes + stack.length + children.length > MAX_COMPOSITION_NODES) {
      return { message: `the composition holds more than ${MAX_COMPOSITION_NODES} nodes`, path: frame.path };
    }
    onPath.add(node);
    stack.push({ node, path: frame.path, depth: frame.depth, exit: true });
    for (let i = children.length - 1; i >= 0; i--) stack.push({ node: children[i], path: [...frame.path, 'children', i], depth: frame.depth + 1 });
  }
  return undefined;
}

const CompositionTree: z.ZodType<CompositionNode, CompositionInput> = z.lazy(() =>
  z.union([
    z
      .string()
      .min(1)
      .transform((adapter) => ({ kind: 'adapter' as const, adapter })),
    z.discriminatedUnion('kind', [
      AdapterObject,
      z.object({ kind: z.literal('stack'), children: z.array(CompositionTree).min(1) }).strict(),
      z.object({ kind: z.literal('parallel'), children: z.array(CompositionTree).min(1) }).strict(),
      z
        .object({ kind: z.literal('average'), children: z.array(CompositionTree).min(1), weights: z.array(z.number()).optional() })
        .strict()
        .refine((n) => n.weights === undefined || n.weights.length === n.children.length, {
          message: 'average needs one weight per child',
          path: ['weights'],
        }),
      RouteNode,
    ]),
  ]),
);

/** A composition tree; its shape (depth, size, cycles) is checked iteratively before zod parses it. */
export const CompositionNode = z.preprocess((value, ctx) => {
  const problem = compositionShapeProblem(value);
  if (problem === undefined) return value;
  ctx.addIssue({ code: 'custom', message: problem.message, path: problem.path, input: undefined });
  return z.NEVER;
}, CompositionTree) as unknown as z.ZodType<CompositionNode, CompositionInput>;

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
