// Seeded host values and LoRA banks for the WebGPU kernel tests: the same numbers on every backend, so a
// kernel and its reference can be built on different backends from the same description.
import * as tf from '@tensorflow/tfjs';
import { LoraBank, type LoraTerm, type LoraWeights } from '../../src/adapters/lora/bank.js';

/** Seeded values in [-1, 1] generated on the host; `quarters` rounds them to multiples of 1/4 (exact sums). */
export function seededValues(count: number, seed: number, quarters = false): Float32Array {
  let s = seed * 2654435761 + 1;
  return Float32Array.from({ length: count }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    const v = (s / 2147483648) * 2 - 1;
    return quarters ? Math.round(v * 4) / 4 : v;
  });
}

/**
 * A bank of one LoRA per choice at every site (`outputs`: O_g per site; `ranks`: per choice, 0 for a choice
 * without columns such as the null expert), scales 0.5 / 0.75 / 1 by choice. Dispose frees bank and weights.
 */
export function randomLoraBank(outputs: readonly number[], ranks: readonly number[], inputWidth: number, seed: number): { bank: LoraBank; dispose(): void } {
  const loras: LoraWeights[] = [];
  const terms: LoraTerm[][] = outputs.map((out, g) =>
    ranks.flatMap((rank, e) => {
      if (rank === 0) return [];
      const lora: LoraWeights = {
        a: tf.tidy(() => tf.variable(tf.tensor2d(seededValues(rank * inputWidth, seed + 17 * e + 3 * g), [rank, inputWidth]))), // the tidy frees the initial value
        b: tf.tidy(() => tf.variable(tf.tensor2d(seededValues(out * rank, seed + 17 * e + 3 * g + 1), [out, rank]))),
        rank,
        scale: 0.5 + (e % 3) * 0.25,
        dropout: 0,
      };
      loras.push(lora);
      return [{ lora, choice: e, weight: 1 }];
    }),
  );
  const bank = new LoraBank(terms, ranks.length);
  return {
    bank,
    dispose: () => {
      bank.dispose();
      tf.dispose(loras.flatMap((l) => [l.a, l.b]));
    },
  };
}
