/**
 * (IA)³ (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
 * Learning"): learned vectors l, initialised to one, rescale activations element-wise. Keys and values are
 * rescaled after their projections (site outputs); the FFN intermediate is rescaled before the
 * down-projection (a site input). As a delta: Δ = y·(l − 1) or x·(l − 1), exactly zero at initialisation,
 * so a fresh adapter leaves the output bit-identical.
 *
 * `feedforwardSites` (PEFT's feedforward_modules) lists the targeted sites whose *input* is scaled; every
 * other targeted site has its *output* scaled. Entries are site names, globs or /regex/ like targets.sites.
 */
import { z } from 'zod';
import { MAX_SITE_ENTRIES, adapterSpecFields } from '../targets.js';

export const Ia3Config = z
  .object({
    kind: z.literal('ia3'),
    ...adapterSpecFields,
    /** Sites scaled at their input (the FFN intermediate); other targeted sites are scaled at their output. */
    feedforwardSites: z.array(z.string().min(1)).max(MAX_SITE_ENTRIES).default(['mlp.down']),
  })
  .strict()
  .readonly();
export type Ia3Config = z.infer<typeof Ia3Config>;
