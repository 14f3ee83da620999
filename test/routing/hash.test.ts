// Hash router (Roller et al. 2021): expert = hash(tokenId) mod E, the same on device as on the host,
// deterministic, roughly uniform, and an error without token ids.
import { fc } from '@fast-check/vitest';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { hashExpert, hashExperts, hashRouterKind } from '../../routers/hash.js';
import { RoutedPeftError } from '../../src/errors.js';
import { FC_PARAMS, createRouter, routeCase, runRouter } from './harness.js';

describe('hash router', () => {
  it('routes every token to hashExpert(tokenId, E) with weight 1, the same token always to the same expert', () => {
    fc.assert(
      fc.property(routeCase(), (c) => {
        const router = createRouter({ kind: 'hash' }, c);
        const d = runRouter(router, c, { tokenIds: true });
        router.dispose();
        for (let r = 0; r < c.rows; r++) {
          expect(d.expertIds[r]).toBe(hashExpert(c.tokenIds[r] as number, c.choices));
          expect(d.weights[r]).toBe(c.mask[r]);
        }
      }),
      FC_PARAMS,
    );
  });

  it('computes the 32-bit multiplicative hash exactly on device, for the whole int32 range', () => {
    const ids = [0, 1, 2, 3, 255, 256, 65535, 65536, 123_456_789, 2 ** 31 - 1, -1, -(2 ** 31)];
    for (const choices of [1, 2, 3, 7, 8, 64]) {
      const device = tf.tidy(() => Array.from(hashExperts(tf.tensor1d(ids, 'int32'), choices).dataSync()));
      expect(device).toEqual(ids.map((id) => hashExpert(id, choices)));
    }
  });

  it('spreads consecutive token ids evenly over the experts', () => {
    const counts = new Array<number>(8).fill(0);
    for (let id = 0; id < 4096; id++) counts[hashExpert(id, 8)]! += 1;
    for (const n of counts) expect(Math.abs(n - 512)).toBeLessThan(512 * 0.15);
  });

  it('needs token ids (token granularity) and says so', () => {
    expect(hashRouterKind.needsTokenIds).toBe(true);
    const c = { rows: 2, dim: 2, choices: 3, features: [0, 0, 0, 0], mask: [1, 1], taskIds: [0, 0], tokenIds: [5, 6], seed: 0, gateStd: 0 };
    const router = createRouter({ kind: 'hash' }, c);
    expect(() => runRouter(router, c)).toThrow(RoutedPeftError);
    expect(() => runRouter(router, c)).toThrow(/token id.*granularity 'token'/);
    router.dispose();
  });
});
