/**
 * The analysis report (`analysis.json`), as zod schemas: what `routed-peft analyze` writes, and what a reader
 * may parse it back with. README's "analyze" section documents every field.
 */
import { z } from 'zod';

/** A LoRA-family module: its dense ΔW [O, I] and that matrix's spectrum. */
export const DeltaWeightMeasure = z
  .object({
    adapter: z.string(),
    kind: z.enum(['lora', 'adalora']),
    measure: z.literal('delta-w'),
    /** [O, I] of ΔW (PEFT's layout: out × in). */
    shape: z.tuple([z.number().int(), z.number().int()]),
    /** The module's rank r (AdaLoRA: the initial rank, the length of Λ). */
    rank: z.number().int(),
    /** The factor in ΔW: LoRA alpha / r (or alpha / √r with rsLoRA); AdaLoRA alpha / r. */
    scale: z.number(),
    /** The r largest singular values of ΔW, descending (ΔW has at most r non-zero ones). */
    singularValues: z.array(z.number()),
    /** exp(entropy of σ / Σσ) (Roy & Vetterli 2007); 0 for ΔW = 0. */
    effectiveRank: z.number(),
    /** Singular values above RANK_TOLERANCE · σ₁. */
    numericalRank: z.number().int(),
    /** ‖ΔW‖_F. */
    frobenius: z.number(),
  })
  .strict();
export type DeltaWeightMeasure = z.infer<typeof DeltaWeightMeasure>;

/** An (IA)³ module: Δ = y·(l − 1) (or x·(l − 1) at a site input) is a rescaling; its measure is l − 1. */
export const ScaleVectorMeasure = z
  .object({
    adapter: z.string(),
    kind: z.literal('ia3'),
    measure: z.literal('scale-vector'),
    /** W: the length of l. */
    width: z.number().int(),
    /** ‖l − 1‖₂: how far the module is from the identity. */
    deviationNorm: z.number(),
    /** max |l_i − 1|. */
    maxDeviation: z.number(),
    /** mean l_i. */
    meanScale: z.number(),
  })
  .strict();
export type ScaleVectorMeasure = z.infer<typeof ScaleVectorMeasure>;

/** A module whose change to the model is no fixed matrix (bottleneck, prefix, any other kind): named, not skipped. */
export const NotAnalysed = z
  .object({
    adapter: z.string(),
    kind: z.string(),
    measure: z.literal('none'),
    /** Trainable parameters of the module. */
    parameters: z.number().int(),
    reason: z.string(),
  })
  .strict();
export type NotAnalysed = z.infer<typeof NotAnalysed>;

export const ModuleMeasure = z.discriminatedUnion('measure', [DeltaWeightMeasure, ScaleVectorMeasure, NotAnalysed]);
export type ModuleMeasure = z.infer<typeof ModuleMeasure>;

export const ExpertPairOverlap = z
  .object({
    first: z.string(),
    second: z.string(),
    /** Directions compared: the smaller of the two ΔWs' numerical ranks. */
    rank: z.number().int(),
    /** Cosines of the principal angles between the two top-rank output subspaces, descending. */
    cosines: z.array(z.number()),
    /** Mean squared cosine: 1 same subspace, 0 orthogonal; null when either ΔW is zero. */
    overlap: z.number().nullable(),
    /** What two random subspaces of dimension rank in R^O overlap on average: rank / O (0 when rank is 0). */
    chance: z.number(),
  })
  .strict();
export type ExpertPairOverlap = z.infer<typeof ExpertPairOverlap>;

export const RouteOverlap = z
  .object({
    /** Index of the route in the composition (tree order), as in routers.safetensors. */
    route: z.number().int(),
    /** The route's experts that have a ΔW at this site. */
    experts: z.array(z.string()),
    pairs: z.array(ExpertPairOverlap),
    /** Mean overlap over the pairs with one; null when there are none. */
    mean: z.number().nullable(),
  })
  .strict();
export type RouteOverlap = z.infer<typeof RouteOverlap>;

export const SiteAnalysis = z
  .object({
    layer: z.number().int(),
    /** The point in the layer: a site name (`q`, `down`, ...), `<site>:input`, `<block>:output` or `attn:prefix`. */
    site: z.string(),
    modules: z.array(ModuleMeasure),
    overlap: z.array(RouteOverlap),
  })
  .strict();
export type SiteAnalysis = z.infer<typeof SiteAnalysis>;

export const RoutedAnalysis = z
  .object({
    directory: z.string(),
    base: z.object({ family: z.string(), dim: z.number().int(), nLayers: z.number().int() }).strict(),
    /** RANK_TOLERANCE of spectrum.ts, for reading numericalRank. */
    rankTolerance: z.number(),
    adapters: z.array(z.object({ name: z.string(), kind: z.string(), parameters: z.number().int(), modules: z.number().int() }).strict()),
    routes: z.array(z.object({ route: z.number().int(), experts: z.array(z.string()) }).strict()),
    sites: z.array(SiteAnalysis),
    /** Every module reported as `measure: "none"`, by adapter, kind, layer and site, with the reason. */
    notAnalysed: z.array(z.object({ adapter: z.string(), kind: z.string(), layer: z.number().int(), site: z.string(), reason: z.string() }).strict()),
  })
  .strict();
export type RoutedAnalysis = z.infer<typeof RoutedAnalysis>;

export const FrontierPoint = z
  .object({
    trainableParams: z.number().int(),
    /** The best validation accuracy of the method at ≤ trainableParams. */
    accuracy: z.number(),
    /** The candidate that reached it (its `candidate` field, or `line N`). */
    candidate: z.string(),
    rung: z.number().int(),
  })
  .strict();
export type FrontierPoint = z.infer<typeof FrontierPoint>;

export const MethodCurve = z
  .object({
    method: z.string(),
    /** Distinct candidates of the method. */
    candidates: z.number().int(),
    /** Each candidate at the highest rung it reached: (trainableParams, accuracy), sorted by parameters. */
    points: z.array(z.object({ trainableParams: z.number().int(), accuracy: z.number(), candidate: z.string(), rung: z.number().int() }).strict()),
    /** The monotone frontier: the steps where the best accuracy at ≤ N parameters rises. */
    frontier: z.array(FrontierPoint),
  })
  .strict();
export type MethodCurve = z.infer<typeof MethodCurve>;

export const SearchAnalysis = z
  .object({
    directory: z.string(),
    trials: z.number().int(),
    methods: z.array(MethodCurve),
  })
  .strict();
export type SearchAnalysis = z.infer<typeof SearchAnalysis>;

export const AnalysisReport = z
  .object({
    format: z.literal('routed-peft-analysis'),
    version: z.literal(1),
    routed: RoutedAnalysis.optional(),
    search: SearchAnalysis.optional(),
  })
  .strict();
export type AnalysisReport = z.infer<typeof AnalysisReport>;
