/**
 * Hash routing (Roller et al. 2021, "Hash Layers For Large Sparse Models"): each token goes to a fixed
 * expert chosen by hashing its token id, expert = hash(tokenId) mod E; k = 1, weight 1, no parameters.
 * Token granularity only (a pooled sequence has no token id).
 *
 * The hash is Knuth's multiplicative hash: the top 16 bits of tokenId · 0x9E3779B1 mod 2³² (Fibonacci
 * hashing), i.e. `(Math.imul(id, 0x9E3779B1) >>> 16) % E` — `hashExpert` below is the host reference. On
 * device the 32-bit product is built from int32 multiplications that each stay exact in float64, so it
 * wraps identically on the wasm, cpu and tensorflow backends: id·A = id·A_lo + (id·A_hi)·2¹⁶ (mod 2³²).
 *
 * logits and probabilities are those of a fixed choice (see task.ts: one-hot probabilities, log-zero −1e4).
 *
 * Shape letters: R rows, D feature width, E choices, K = 1 slot.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { RoutedPeftError } from '../src/errors.js';
import type { Router, RouterInput, RouterKind, RouterShape, RoutingDecision } from '../src/routing/router.js';
import { fixedDecision, rowIds } from './task.js';
import { checkRouterInput } from '../src/routing/gating.js';

/** Knuth's multiplier ⌊2³² / φ⌋ (odd), split in 16-bit halves. */
const HASH_MULTIPLIER = 0x9e3779b1;
const MULTIPLIER_LOW = HASH_MULTIPLIER & 0xffff;
const MULTIPLIER_HIGH = HASH_MULTIPLIER >>> 16;

export const HashRouterConfig = z
  .object({ kind: z.literal('hash') })
  .strict()
  .readonly();
export type HashRouterConfig = z.infer<typeof HashRouterConfig>;

/** Host reference of the hash: the expert of a token id among E choices. */
export function hashExpert(tokenId: number, choices: number): number {
  return (Math.imul(tokenId, HASH_MULTIPLIER) >>> 16) % choices;
}

/** expert = hashExpert(tokenId, E) for every row, on device: tokenIds [R] int32 → [R] int32. */
export function hashExperts(tokenIds: tf.Tensor1D, choices: number): tf.Tensor1D {
  const int = (v: number): tf.Scalar => tf.scalar(v, 'int32');
  const low = tf.mul(tokenIds, int(MULTIPLIER_LOW)); // [R], id·A_lo mod 2³² (wrapping int32)
  const high = tf.mul(tf.mul(tokenIds, int(MULTIPLIER_HIGH)), int(0x10000)); // [R], (id·A_hi mod 2³²)·2¹⁶ mod 2³²
  const product = tf.add(low, high); // [R], id·A mod 2³² as a signed int32
  const top16 = tf.mod(tf.floorDiv(product, int(0x10000)), int(0x10000)); // [R], product >>> 16
  return tf.mod<tf.Tensor1D>(top16, int(choices)); // [R], in [0, E)
}

class HashRouter implements Router {
  readonly kind = 'hash';
  readonly choices: number;

  constructor(private readonly shape: RouterShape) {
    this.choices = shape.choices;
  }

  route(input: RouterInput): RoutingDecision {
    const rows = checkRouterInput(input, this.shape, this.kind);
    if (input.tokenIds === undefined) {
      throw new RoutedPeftError('the hash router routes by token id, and no token ids were given', {
        path: 'router.tokenIds',
        hint: "Use the hash router with granularity 'token' (pooled sequence rows have no token id)",
      });
    }
    const tokens = rowIds(input.tokenIds, rows, 'tokenIds', this.kind); // [R] int32
    return fixedDecision(hashExperts(tokens, this.choices), input.mask, this.choices);
  }

  variables(): readonly tf.Variable[] {
    return [];
  }

  dispose(): void {}
}

export const hashRouterKind: RouterKind<HashRouterConfig> = {
  kind: 'hash',
  schema: HashRouterConfig,
  needsTokenIds: true,
  create: (_config, shape) => new HashRouter(shape),
};
