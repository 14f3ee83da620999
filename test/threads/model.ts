// The model and input of the threads tests: small; every linear map's product (256 rows × 128 × ≥ 128 ≈ 4 M
// multiply-adds) runs on the pool once the tests lower its threshold to 4 M; attention's products stay below.
import type { RandomLlamaOptions } from '../../benchmarks/lib/random-model.js';

export const THREADS_TEST_MODEL: RandomLlamaOptions = { dim: 128, nLayers: 2, nHeads: 4, nKvHeads: 4, hiddenDim: 344, vocabSize: 512, maxSeqLen: 64 };
export const THREADS_TEST_SHAPE = { batch: 4, tokens: 64 } as const;
