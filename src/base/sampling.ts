/**
 * Choosing the next token from logits on the host: greedy (temperature 0), temperature, top-k and top-p
 * (nucleus, Holtzman et al. 2019), with a seeded generator so runs repeat exactly.
 */
import { z } from 'zod';

export const SamplingOptions = z
  .object({
    /** 0 means greedy (argmax). */
    temperature: z.number().min(0).default(1),
    /** Keep only the k most likely tokens (0 or absent: all). */
    topK: z.number().int().min(0).optional(),
    /** Keep the smallest set of most likely tokens whose probability reaches p (1 or absent: all). */
    topP: z.number().gt(0).max(1).optional(),
    seed: z.number().int().optional(),
  })
  .readonly();
export type SamplingOptions = z.infer<typeof SamplingOptions>;

/** mulberry32: a small, fast 32-bit generator; plenty for sampling and shuffling. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if ((values[i] as number) > (values[best] as number)) best = i;
  return best;
}

/** Samples one token id from a row of logits [V]. */
export function sampleToken(logits: ArrayLike<number>, options: SamplingOptions, random: () => number): number {
  if (options.temperature === 0 || options.topK === 1) return argmax(logits);
  const ids = Array.from({ length: logits.length }, (_, i) => i);
  ids.sort((a, b) => (logits[b] as number) - (logits[a] as number));
  const keep = options.topK !== undefined && options.topK > 0 ? Math.min(options.topK, ids.length) : ids.length;
  const top = ids.slice(0, keep);
  const max = logits[top[0] as number] as number;
  const weights = top.map((id) => Math.exp(((logits[id] as number) - max) / options.temperature));
  const total = weights.reduce((s, w) => s + w, 0);
  let probabilities = weights.map((w) => w / total);
  let candidates = top;
  if (options.topP !== undefined && options.topP < 1) {
    let cumulative = 0;
    let cut = probabilities.length;
    for (let i = 0; i < probabilities.length; i++) {
      cumulative += probabilities[i] as number;
      if (cumulative >= options.topP) {
        cut = i + 1;
        break;
      }
    }
    candidates = candidates.slice(0, cut);
    const kept = probabilities.slice(0, cut);
    const keptTotal = kept.reduce((s, p) => s + p, 0);
    probabilities = kept.map((p) => p / keptTotal);
  }
  let r = random();
  for (let i = 0; i < candidates.length; i++) {
    r -= probabilities[i] as number;
    if (r < 0) return candidates[i] as number;
  }
  return candidates[candidates.length - 1] as number;
}
