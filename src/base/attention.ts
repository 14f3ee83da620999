/**
 * Scaled dot-product attention with grouped-query heads (Ainslie et al. 2023) and an additive mask.
 *
 * Query head h reads key/value head ⌊h / G⌋ (as HF's repeat_kv and llama2.c do). Rather than copying each
 * key/value head G times, the G query heads of a group are folded into the query axis, so one batched
 * matmul serves the whole group.
 *
 * Shape letters: B batch, T queries, S key slots, H query heads, Hk key/value heads, G = H / Hk, Dh head width.
 */
import * as tf from '@tensorflow/tfjs';

/** Additive mask value: large enough that exp underflows to exactly 0, finite so fully masked rows stay finite. */
export const MASKED = -1e9;

/**
 * Builds the additive attention bias [B, 1, 1, T, S] from the key mask over cached + new slots and
 * causality: query t (absolute slot past + t) sees slot s when s ≤ past + t and slot s is a real token.
 * `prefixSlots` leading slots (prefix tuning) are visible to every query.
 */
export function attentionBias(keyMask: readonly (readonly number[])[], tokens: number, past: number, prefixSlots: number): tf.Tensor {
  const batch = keyMask.length;
  const slots = past + tokens;
  const total = prefixSlots + slots;
  const bias = new Float32Array(batch * tokens * total);
  for (let b = 0; b < batch; b++) {
    const row = keyMask[b] ?? [];
    for (let t = 0; t < tokens; t++) {
      const base = (b * tokens + t) * total;
      for (let s = 0; s < slots; s++) {
        const visible = s <= past + t && row[s] === 1;
        if (!visible) bias[base + prefixSlots + s] = MASKED;
      }
    }
  }
  return tf.tensor(bias, [batch, 1, 1, tokens, total]); // [B, 1, 1, T, S]
}

/**
 * softmax(q·kᵀ/√Dh + bias)·v. q [B, T, H, Dh]; k, v [B, S, Hk, Dh]; bias [B, 1, 1, T, S] → [B, T, H·Dh].
 */
export function groupedQueryAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, bias: tf.Tensor): tf.Tensor3D {
  const [b, t, h, dh] = q.shape;
  const [, s, hk] = k.shape;
  const g = h / hk;
  const queries = tf.reshape(tf.transpose(tf.reshape(q, [b, t, hk, g, dh]), [0, 2, 3, 1, 4]), [b, hk, g * t, dh]); // [B, Hk, G·T, Dh]
  const keys = tf.transpose(k, [0, 2, 1, 3]); // [B, Hk, S, Dh]
  const values = tf.transpose(v, [0, 2, 1, 3]); // [B, Hk, S, Dh]
  const scores = tf.mul(tf.matMul(queries, keys, false, true), 1 / Math.sqrt(dh)); // [B, Hk, G·T, S]
  const masked = tf.add(tf.reshape(scores, [b, hk, g, t, s]), bias); // [B, Hk, G, T, S]
  const probabilities = tf.reshape(tf.softmax(masked), [b, hk, g * t, s]); // [B, Hk, G·T, S]
  const mixed = tf.reshape(tf.matMul(probabilities, values), [b, hk, g, t, dh]); // [B, Hk, G, T, Dh]
  return tf.reshape(tf.transpose(mixed, [0, 3, 1, 2, 4]), [b, t, h * dh]); // [B, T, H·Dh]
}
