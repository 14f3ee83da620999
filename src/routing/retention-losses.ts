/**
 * Router losses on base-domain (retention) rows: what teaches a route to apply nothing where the base model
 * already knows the answer. Each reads a routing decision, the real-row mask and the rows' domain (1 for a
 * base-domain row, 0 for a task row), is differentiable in the router variables through
 * decision.probabilities, and is 0 when no row qualifies. Call inside a tidy.
 *
 * Shape letters: R rows, E choices (experts, then the null expert when the route has one).
 */
import * as tf from '@tensorflow/tfjs';
import type { RetentionRouting } from '../compose/spec.js';
import type { RoutingDecision } from './router.js';

/**
 * The binary cross-entropy of the null expert's router probability against the row's domain, averaged over
 * real rows: −log p_null on base-domain rows and −log(1 − p_null) on task rows. The router learns to send
 * base-domain inputs to the null expert and to keep it out of task inputs (where it would take a share of
 * the gate from the experts). nullIndex is the null expert's choice (E − 1).
 */
export function nullRoutingLoss(decision: RoutingDecision, mask: tf.Tensor1D, domain: tf.Tensor1D, nullIndex: number): tf.Scalar {
  const pNull = tf.reshape(tf.slice(decision.probabilities, [0, nullIndex], [-1, 1]), [-1]); // [R]
  const toNull = tf.mul(domain, tf.log(tf.maximum(pNull, 1e-30))); // [R]
  const away = tf.mul(tf.sub(1, domain), tf.log(tf.maximum(tf.sub(1, pNull), 1e-30))); // [R]
  const bce = tf.neg(tf.add(toNull, away)); // [R]
  return tf.div(tf.sum(tf.mul(bce, mask)), tf.maximum(tf.sum(mask), 1)); // []
}

/**
 * LoRAMoE's localized balancing constraint (Dou et al. 2023, "LoRAMoE: Alleviate World Knowledge Forgetting in
 * Large Language Models via MoE-Style Plugin", §3.2): the importance of choice e for row r, Q[r, e] (here the
 * router probability), is weighted by a coefficient I[r, e] that depends on whether e's group matches the
 * row's kind, and the loss is the squared coefficient of variation of Z = I ∘ Q over real rows and choices.
 *
 * CV²(Z) is smallest when Z is uniform, that is when Q ∝ 1 / I. So that the matched group is the one that
 * gets more of a row's probability, matched entries are weighted 1 − δ and the others 1 + δ: at the optimum
 * each matched choice holds (1 + δ) / (1 − δ) times the probability of each other choice, and choices within
 * a group are balanced. (The paper writes the coefficients the other way round, 1 + δ on the matched entries;
 * minimised on its own that form moves probability away from the matched group, so this file states the
 * intent — one group serves base-domain rows — in the form that has it.)
 *
 * group [E] is 1 on the choices that serve base-domain rows.
 */
export function localizedBalanceLoss(decision: RoutingDecision, mask: tf.Tensor1D, domain: tf.Tensor1D, group: tf.Tensor1D, delta: number): tf.Scalar {
  const choices = decision.probabilities.shape[1];
  const d = tf.expandDims(domain, 1); // [R, 1]
  const g = tf.expandDims(group, 0); // [1, E]
  const matched = tf.add(tf.mul(d, g), tf.mul(tf.sub(1, d), tf.sub(1, g))); // [R, E] 1 where e's group serves r's kind
  const coefficient = tf.sub(1 + delta, tf.mul(matched, 2 * delta)); // [R, E] 1 − δ matched, 1 + δ otherwise
  const real = tf.expandDims(mask, 1); // [R, 1]
  const z = tf.mul(tf.mul(coefficient, decision.probabilities), real); // [R, E]
  const entries = tf.maximum(tf.mul(tf.sum(mask), choices), 1); // []
  const mean = tf.div(tf.sum(z), entries); // []
  const variance = tf.div(tf.sum(tf.mul(tf.square(tf.sub(z, mean)), real)), entries); // []
  return tf.div(variance, tf.add(tf.square(mean), 1e-10)); // []
}

/** Where a route's retention terms read: the null expert's choice (if any) and the base-domain group [E]. */
export interface RetentionChoices {
  readonly nullIndex: number | undefined;
  /** 1 on the choices of the retention group, per choice. */
  readonly group: readonly number[];
}

/** Σ weight · loss over the route's retention terms (terms with weight 0 are not computed). */
export function retentionLossTotal(
  decision: RoutingDecision,
  mask: tf.Tensor1D,
  domain: tf.Tensor1D,
  spec: RetentionRouting,
  choices: RetentionChoices,
): tf.Scalar {
  const terms: tf.Scalar[] = [];
  if (spec.nullRouting !== 0 && choices.nullIndex !== undefined) {
    terms.push(tf.mul(nullRoutingLoss(decision, mask, domain, choices.nullIndex), spec.nullRouting));
  }
  if (spec.localBalance !== 0) {
    terms.push(tf.mul(localizedBalanceLoss(decision, mask, domain, tf.tensor1d([...choices.group], 'float32'), spec.delta), spec.localBalance));
  }
  return terms.length === 0 ? tf.scalar(0) : (tf.addN(terms) as tf.Scalar); // []
}
