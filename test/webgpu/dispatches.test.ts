// Dispatches of one KV-cached decode step on webgpu, counted at the backend (runWebGPUProgram): the routed
// model against the bare base, per routed site group. The bound is base + 3 per site group: the routed-site
// kernel (router, gating, experts and the add in one dispatch) runs once per site, so q/k/v cost 3 and down 1;
// the test prints the counts by kernel.
import type * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { AdaptedModel } from '../../src/model/adapted-model.js';
import { tinyLlama } from '../helpers/tiny-models.js';
import { WEBGPU_SKIP_NOTE, countDispatches, hasWebGpu, onBackend } from '../helpers/webgpu.js';

const routers = builtinRouters();
const lora = (name: string) => ({ kind: 'lora', name, r: 4, alpha: 8, init: 'random', targets: { sites: ['attn.q', 'attn.k', 'attn.v', 'mlp.down'] } });
const SPEC = {
  seed: 3,
  adapters: [lora('e0'), lora('e1'), lora('e2'), lora('e3')],
  composition: { kind: 'route', experts: ['e0', 'e1', 'e2', 'e3'], router: { kind: 'top-k', k: 2 }, nullExpert: true },
};
/** Routed site groups per layer in SPEC: q/k/v and down. */
const GROUPS_PER_LAYER = 2;

describe.skipIf(!hasWebGpu)(`dispatches per routed decode step${WEBGPU_SKIP_NOTE}`, () => {
  test('routed decode step: base dispatches + one routed-site kernel per site, within base + 3 per site group', async () => {
    await onBackend('webgpu', async () => {
      const base = tinyLlama({ maxSeqLen: 64 });
      const model = AdaptedModel.create(base, SPEC, { routers });
      try {
        const step = async (forward: (ids: number[][], cache: ReturnType<typeof base.newCache>) => tf.Tensor) => {
          const cache = base.newCache(1);
          try {
            (await forward([[1, 5, 9, 4]], cache).data()) && undefined; // prefill
            await forward([[7]], cache).data(); // warm the decode shapes
            return await countDispatches(async () => {
              const out = forward([[3]], cache);
              await out.data();
              out.dispose();
            });
          } finally {
            cache.dispose();
          }
        };
        const bare = await step((ids, cache) => base.forward({ ids, cache, output: 'last-logits' }));
        const routed = await step((ids, cache) => model.forward({ ids, cache, output: 'last-logits' }));
        const groups = base.config.nLayers * GROUPS_PER_LAYER;
        const perGroup = (routed.total - bare.total) / groups;
        console.log(
          `decode step dispatches on webgpu: base ${bare.total}, routed ${routed.total} (${groups} routed site groups: +${perGroup.toFixed(2)} per group); routed by kernel:`,
          JSON.stringify(Object.fromEntries(routed.byKey)),
          'base:',
          JSON.stringify(Object.fromEntries(bare.byKey)),
        );
        const sites = base.config.nLayers * 4; // q, k, v, down
        expect(routed.byKey.get('routedSite')).toBe(sites); // one dispatch per routed site…
        expect(routed.total - bare.total).toBe(sites); // …and nothing else: q/k/v +3, down +1
        expect(routed.total - bare.total).toBeLessThanOrEqual(groups * 3); // the bound: base + 3 per site group
      } finally {
        model.dispose();
        base.dispose();
      }
    });
  });
});
