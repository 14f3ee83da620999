// Dispatches of one KV-cached decode step on webgpu, counted at the backend (runWebGPUProgram): the routed
// model against the bare base, per routed site group. The bound is base + 3 per site group; the
// test asserts what the code achieves today (3 + 2 per site of the group) and prints the counts.
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
  test('routed decode step: base dispatches + at most a few per site group; the routed-LoRA kernel runs once per site', async () => {
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
        expect(routed.byKey.get('routedLora')).toBe(base.config.nLayers * 4); // one per routed site (q, k, v, down)
        // Per routed group today: 1 router matmul + 2 gating dispatches + per site one LoRA kernel and one add
        // (q/k/v: 9, down: 5), i.e. 3 + 2·G, against the bound of 3 per group.
        const bound = base.config.nLayers * (3 + 2 * 3 + (3 + 2 * 1));
        expect(routed.total - bare.total).toBeLessThanOrEqual(bound);
        expect(routed.byKey.get('routedTopK')).toBe(groups * 2);
      } finally {
        model.dispose();
        base.dispose();
      }
    });
  });
});
