/**
 * Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"): every
 * targeted layer gets P trainable key and value slots that every query of the layer may attend to, ahead
 * of the cached and new tokens. The prefix keys are used as given: RoPE does not rotate them (they have
 * no position).
 *
 * With `reparameterize`, each layer's prefixes are the output of a small MLP, as in the paper (§4.3):
 * embedding [P, hidden] → Linear → tanh → Linear to 2·Hk·Dh; `collapse()` on a module turns a trained MLP
 * into the plain prefixes it produces.
 *
 * Unlike the other kinds, a freshly initialised prefix is NOT the identity: its slots take attention
 * probability mass from the real tokens, so the output changes from the first step. That is inherent to
 * prefix tuning (the slots are extra attention targets, not an additive delta that can start at zero).
 *
 * `targets.sites` does not apply (prefixes attach to attention, not to a site); `targets.layers` does.
 */
import { z } from 'zod';
import { MAX_ADAPTER_DIM } from '../limits.js';
import { adapterSpecFields } from '../targets.js';

export const PrefixConfig = z
  .object({
    kind: z.literal('prefix'),
    ...adapterSpecFields,
    /** P: virtual key/value slots per layer. */
    prefixLength: z.number().int().positive().max(MAX_ADAPTER_DIM).default(8),
    /** Produce the prefixes with a per-layer MLP (embedding → Linear → tanh → Linear), as the paper does. */
    reparameterize: z.boolean().default(false),
    /** Width of the reparameterisation MLP (its embedding and hidden layer). */
    reparamHiddenDim: z.number().int().positive().max(MAX_ADAPTER_DIM).default(64),
    /** `random`: plain prefixes drawn from N(0, 0.02²); the MLP uses torch's default initialisation. */
    init: z.enum(['random']).default('random'),
  })
  .strict()
  .superRefine((config, ctx) => {
    if (config.targets.sites !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['targets', 'sites'],
        message: 'prefix adapters attach to attention (key/value slots), not to sites; remove targets.sites',
      });
    }
  })
  .readonly();
export type PrefixConfig = z.infer<typeof PrefixConfig>;
