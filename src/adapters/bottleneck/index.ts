/**
 * The bottleneck adapter kind: one module per targeted layer and sub-block output chosen by `placement`
 * (houlsby: attn and mlp; pfeiffer: mlp). Sites play no part, so `defaultSites` is empty.
 */
import type { AdapterKind, AdapterPoint } from '../adapter.js';
import { ConfigError } from '../../errors.js';
import { checkAdapterSize, targetedLayers } from '../limits.js';
import { BottleneckConfig, bottleneckWidth } from './config.js';
import { BottleneckModule } from './layer.js';

export { BottleneckConfig, bottleneckWidth } from './config.js';
export { BottleneckModule, activate, type BottleneckActivation, type BottleneckShape } from './layer.js';

const HOULSBY: readonly AdapterPoint[] = [
  { kind: 'block-output', block: 'attn' },
  { kind: 'block-output', block: 'mlp' },
];
const PFEIFFER: readonly AdapterPoint[] = [{ kind: 'block-output', block: 'mlp' }];

export const bottleneckKind: AdapterKind<BottleneckConfig> = {
  kind: 'bottleneck',
  schema: BottleneckConfig,
  defaultSites: [],
  points(config, _sites, model) {
    if (config.targets.sites !== undefined) {
      throw new ConfigError('bottleneck adapters are placed by `placement`, not by targets.sites', {
        path: `adapters.${config.name}.targets.sites`,
        hint: "Remove targets.sites and choose placement: 'houlsby' (after attention and FFN) or 'pfeiffer' (after FFN)",
      });
    }
    const points = config.placement === 'houlsby' ? HOULSBY : PFEIFFER;
    const width = bottleneckWidth(config, model.dim);
    const D = model.dim;
    const layers = targetedLayers(config.targets.layers, model);
    const perPoint = [
      { what: `down [${width}, ${D}]`, elements: width * D + width },
      { what: `up [${D}, ${width}]`, elements: D * width + D },
    ];
    const planned = layers.flatMap(() => points.flatMap(() => perPoint));
    const field = config.bottleneckDim === undefined ? 'reductionFactor' : 'bottleneckDim';
    checkAdapterSize(
      config.name,
      'bottleneck',
      planned,
      `adapters.${config.name}.${field}`,
      `width ${width} at ${points.length} point${points.length === 1 ? '' : 's'} × ${layers.length} layers`,
    );
    return points;
  },
  create(config, placement) {
    if (placement.point.kind !== 'block-output') throw new Error(`a bottleneck adapter cannot attach at ${placement.point.kind}`);
    return new BottleneckModule(placement, {
      width: bottleneckWidth(config, placement.inFeatures),
      activation: config.activation,
      dropout: config.dropout,
      init: config.init,
    });
  },
};
