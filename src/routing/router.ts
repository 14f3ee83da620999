/**
 * The router contract. A router reads routing features and *decides*: which experts each row activates
 * and with what weight. It never calls an expert; the routed layer (routed-layer.ts) is the only place
 * expert outputs are combined.
 *
 * Rows are tokens (granularity `token`) or whole sequences (granularity `sequence`, features mean-pooled
 * over real tokens). Shape letters: R rows, D feature width, E choices (experts, plus one null expert at
 * index E−1 when enabled), K slots per row.
 */
import type * as tf from '@tensorflow/tfjs';
import type { z } from 'zod';

export interface RouterInput {
  readonly features: tf.Tensor2D; // [R, D]
  /** 1 for real rows, 0 for padding: [R]. Padding must not influence capacity or auxiliary losses. */
  readonly mask: tf.Tensor1D; // [R]
  /** Token id of each row (token granularity), for hash routing: [R] int32. */
  readonly tokenIds?: tf.Tensor1D;
  /** Task id of each row, for task routing: [R] int32. */
  readonly taskIds?: tf.Tensor1D;
  /** Modality of each row (token granularity, forwards with an image prefix): 0 text, 1 image, [R] int32. */
  readonly modality?: tf.Tensor1D;
  readonly training: boolean;
}

/** A routing decision: plain data, traceable. */
export interface RoutingDecision {
  /** Chosen choice per slot: [R, K] int32 in [0, E). */
  readonly expertIds: tf.Tensor2D;
  /** Weight per slot: [R, K] ≥ 0; a zero weight marks an unused slot (expert-choice, top-p). */
  readonly weights: tf.Tensor2D;
  /** 1 where the row was dropped (over capacity): it keeps only the base output. [R] float32. */
  readonly dropped: tf.Tensor1D;
  /** Router logits [R, E] (before noise), for auxiliary losses. */
  readonly logits: tf.Tensor2D;
  /** Router probabilities [R, E] (softmax of the logits the decision used), for auxiliary losses. */
  readonly probabilities: tf.Tensor2D;
}

/**
 * How a router decides at inference when it is a plain linear top-k gate: logits = x·W / τ, the k largest
 * logits chosen (ties: lower index first), weights = softmax over the chosen logits, padding rows zero.
 * The routed layer uses it to fuse routers that read the same input (one matmul against their concatenated
 * W) without calling `route`; the result must be what `route` returns with `training: false`.
 */
export interface LinearTopK {
  readonly gate: tf.Tensor2D; // W [D, E]
  readonly temperature: number;
  readonly k: number;
}

export interface Router {
  readonly kind: string;
  /** E: choices including the null expert. */
  readonly choices: number;
  /** Present when the inference decision is a linear top-k gate (see LinearTopK); undefined otherwise. */
  linearTopK?(): LinearTopK | undefined;
  /**
   * Runs inside the forward's tidy. With `input.training` the weights must be differentiable with respect
   * to the router's variables; without it a router may take a faster, non-differentiable path.
   */
  route(input: RouterInput): RoutingDecision;
  variables(): readonly tf.Variable[];
  /** Schedules set by the trainer (noise scale, softmax temperature); routers ignore what they lack. */
  setAnnealing?(state: { readonly temperature?: number; readonly noise?: number }): void;
  /** Routers that draw random numbers expose their generator state, so a resumed run continues exactly. */
  getRandomState?(): number;
  setRandomState?(state: number): void;
  dispose(): void;
}

export interface RouterShape {
  /** E: choices the router must produce (experts, plus one when the route has a null expert). */
  readonly choices: number;
  /** D: width of the routing features. */
  readonly inputDim: number;
  readonly seed: number;
}

/** One descriptor per router file in routers/, collected in one record by routers/index.ts. */
export interface RouterKind<Config extends { readonly kind: string } = { readonly kind: string }> {
  readonly kind: Config['kind'];
  readonly schema: z.ZodType<Config>;
  /** Reads task ids (and so needs them on every call). */
  readonly needsTaskIds?: boolean;
  /** Reads token ids. */
  readonly needsTokenIds?: boolean;
  /**
   * A row's decision depends on the other rows of the forward (a capacity shared by all rows, as in switch
   * and expert-choice routing): such routes cannot share a forward pass with other requests.
   */
  readonly couplesRows?: boolean;
  create(config: Config, shape: RouterShape): Router;
}
