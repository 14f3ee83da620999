// Calls a model's group hooks for one site, as the Transformer would for the site's group: the group's sites
// share the input x; the other sites' base outputs are zeros of their widths.
import * as tf from '@tensorflow/tfjs';
import type { ForwardHooks } from '../../src/base/hooks.js';
import type { SiteName } from '../../src/base/sites.js';
import type { Transformer } from '../../src/base/transformer.js';

/** The adapted output of `site` at `layer`: x [N, I], y [N, O] → [N, O]. */
export function adaptSite(hooks: ForwardHooks | undefined, base: Transformer, layer: number, site: SiteName, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D {
  const group = base.groups.find((g) => g.sites.includes(site));
  if (group === undefined || hooks?.groupOutputs === undefined) throw new Error(`no group hooks for ${site}`);
  const ys = group.sites.map((s) => (s === site ? y : tf.zeros<tf.Rank.R2>([x.shape[0], base.weights.layers[layer]?.sites[s]?.weight.shape[1] ?? 0])));
  return hooks.groupOutputs(
    layer,
    group,
    group.sites.map(() => x),
    ys,
  )[group.sites.indexOf(site)] as tf.Tensor2D;
}
