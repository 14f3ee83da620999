/**
 * Auxiliary router losses on a routing decision. Each returns a tf.Scalar that is differentiable in the
 * router variables (through decision.probabilities / logits / weights), counts only real rows (mask 1),
 * and is 0 when there are none. Call inside a tidy.
 *
 * Shape letters: R rows, K slots, E choices (experts, plus the null expert when enabled).
 */
import * as tf from '@tensorflow/tfjs';
import { oneHotFloat } from '../base/one-hot.js';
import type { AuxLossWeights } from '../compose/spec.js';
import type { RoutingDecision } from './router.js';

/** Number of real rows, at least 1 (so empty batches give 0 instead of NaN). */
function realRows(mask: tf.Tensor1D): tf.Scalar {
  return tf.maximum(tf.sum(mask), 1); // []
}

/** Mean over real rows of a per-row value [R]. */
function maskedMean(perRow: tf.Tensor1D, mask: tf.Tensor1D): tf.Scalar {
  return tf.div(tf.sum(tf.mul(perRow, mask)), realRows(mask)); // []
}

/**
 * Per-choice sum over real rows and used slots: Σ_r Σ_k value[r, k] · [expertIds[r, k] = i] → [E].
 * A slot is used when its weight is > 0 (sign, whose gradient is zero, so `used` carries no gradient).
 */
function perChoice(decision: RoutingDecision, mask: tf.Tensor1D, value: 'count' | 'weight', choices: number): tf.Tensor1D {
  const slotOneHot = oneHotFloat(decision.expertIds, choices); // [R, K, E]
  const perSlot = value === 'count' ? tf.sign(decision.weights) : decision.weights; // [R, K]
  const real = tf.mul(perSlot, tf.expandDims(mask, 1)); // [R, K]
  return tf.sum(tf.mul(slotOneHot, tf.expandDims(real, 2)), [0, 1]); // [E]
}

/**
 * Load-balancing loss (Fedus et al. 2021, eq. 4–6; Mixtral uses the same): L = E · Σᵢ fᵢ · Pᵢ, with
 * fᵢ = (used slots assigned to choice i over real rows) / (real rows)  — no gradient, and
 * Pᵢ = mean over real rows of the router probability of i.
 * Σᵢ fᵢ is the mean number of used slots per row, so L = k at perfectly uniform top-k routing (fᵢ = k/E,
 * Pᵢ = 1/E) and grows towards E as routing collapses onto one choice (fᵢ = Pᵢ = 1). Rows dropped over capacity have
 * weight 0 and so do not count in f (the Switch paper counts the router's choice before dropping).
 */
export function loadBalancingLoss(decision: RoutingDecision, mask: tf.Tensor1D, experts: number): tf.Scalar {
  const rows = realRows(mask); // []
  const fraction = tf.div(perChoice(decision, mask, 'count', experts), rows); // [E], fᵢ
  const meanProbability = tf.div(tf.sum(tf.mul(decision.probabilities, tf.expandDims(mask, 1)), 0), rows); // [E], Pᵢ
  return tf.mul(tf.sum(tf.mul(fraction, meanProbability)), experts); // []
}

/**
 * Router z-loss (Zoph et al. 2022, ST-MoE, eq. 5): mean over real rows of (log Σ_e exp logits)², which
 * keeps router logits small for numerical stability.
 */
export function routerZLoss(decision: RoutingDecision, mask: tf.Tensor1D): tf.Scalar {
  const logSumExp = tf.logSumExp<tf.Tensor1D>(decision.logits, 1); // [R]
  return maskedMean(tf.square(logSumExp), mask); // []
}

/**
 * Importance loss (Shazeer et al. 2017, eq. 6–7): CV(Importance)², with Importanceᵢ = Σ over real rows
 * and slots of the gate weight given to choice i; CV² = variance / mean² (population variance).
 */
export function importanceLoss(decision: RoutingDecision, mask: tf.Tensor1D): tf.Scalar {
  const choices = decision.logits.shape[1];
  const importance = perChoice(decision, mask, 'weight', choices); // [E]
  const { mean, variance } = tf.moments(importance); // [], []
  return tf.div(variance, tf.add(tf.square(mean), 1e-10)); // []
}

/** Mean over real rows of the routing entropy −Σ_e p log p (nats), from decision.probabilities. */
export function routingEntropy(decision: RoutingDecision, mask: tf.Tensor1D): tf.Scalar {
  const p = decision.probabilities; // [R, E]
  const logP = tf.log(tf.maximum(p, 1e-30)); // [R, E], 0·log 0 → 0
  const entropy = tf.neg(tf.sum<tf.Tensor1D>(tf.mul(p, logP), 1)); // [R]
  return maskedMean(entropy, mask); // []
}

/**
 * Σ weight · loss over the four auxiliary losses (terms with weight 0 are not computed). The balance loss
 * uses E = the decision's number of choices (the null expert included).
 */
export function auxLossTotal(decision: RoutingDecision, mask: tf.Tensor1D, weights: AuxLossWeights): tf.Scalar {
  const terms: tf.Scalar[] = [];
  if (weights.balance !== 0) terms.push(tf.mul(loadBalancingLoss(decision, mask, decision.logits.shape[1]), weights.balance));
  if (weights.zLoss !== 0) terms.push(tf.mul(routerZLoss(decision, mask), weights.zLoss));
  if (weights.importance !== 0) terms.push(tf.mul(importanceLoss(decision, mask), weights.importance));
  if (weights.entropy !== 0) terms.push(tf.mul(routingEntropy(decision, mask), weights.entropy));
  return terms.length === 0 ? tf.scalar(0) : (tf.addN(terms) as tf.Scalar); // []
}
