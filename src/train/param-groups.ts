/**
 * Parameter groups: each trainable variable gets a peak learning rate and a weight decay from its group
 * (router or expert) and, with layer-wise LR decay, from its depth.
 *
 * Names come from AdaptedModel.namedVariables(): experts are `<adapter>/<layer>|<point>/<i>` (moduleKey in
 * compose/modules.ts), routers `route<i>/<router key>/<j>` with the key `model` (no layer), `<layer>` or
 * `<layer>|<point>`. Anything else (a classification head `head/…`) is an expert-group variable with no layer.
 *
 * Layer-wise LR decay (Howard & Ruder 2018, ULMFiT "discriminative fine-tuning"; Clark et al. 2020, ELECTRA):
 * a variable at layer l of L trains at lr · layerDecay^(L−1−l), so the top layer gets lr and lower layers
 * less. Variables with no layer (model-level routers, heads) get the group LR unscaled.
 */
import { z } from 'zod';
import { parseConfig } from '../config/parse.js';

/**
 * Largest peak learning rate accepted. AdamW moves every weight by about lr per step whatever the gradient's
 * scale, so lr > 1 cannot train adapters (weights of order 0.01–1): `--lr 1e30` used to "succeed" with the
 * loss stuck at ln V. Adapter learning rates are 1e-5 to 1e-1.
 */
export const MAX_LEARNING_RATE = 1;

export const paramGroupsFields = {
  /** Peak LR of expert (adapter) variables and heads. */
  lr: z.number().positive().max(MAX_LEARNING_RATE).default(1e-3),
  /** Peak LR of router variables; default: lr. */
  routerLr: z.number().positive().max(MAX_LEARNING_RATE).optional(),
  /** Decoupled weight decay of expert variables (AdamW's λ). */
  weightDecay: z.number().min(0).finite().default(0),
  /** Decoupled weight decay of router variables. */
  routerWeightDecay: z.number().min(0).finite().default(0),
  /** Layer-wise LR decay factor in (0, 1]; 1 disables it. */
  layerDecay: z.number().gt(0).max(1).default(1),
};

export const ParamGroupsConfig = z.object(paramGroupsFields).strict().readonly();
export type ParamGroupsConfig = z.infer<typeof ParamGroupsConfig>;

export type ParamGroupName = 'router' | 'expert';

export interface ParamGroupEntry {
  readonly group: ParamGroupName;
  /** Layer the variable belongs to, when its name says. */
  readonly layer: number | undefined;
  /** layerDecay^(L−1−layer), or 1 without a layer. */
  readonly lrScale: number;
  /** Peak LR: the group's LR times lrScale (the schedule multiplies it per step). */
  readonly lr: number;
  readonly weightDecay: number;
}

const ROUTER_NAME = /^route\d+\/([^/]+)\//;

/** Router variables are named `route<i>/<key>/<j>` (an adapter named e.g. `router-a` is not a router). */
export function isRouterVariable(name: string): boolean {
  return ROUTER_NAME.test(name);
}

/** The layer in a variable name, or undefined (model-level routers, heads, unknown names). */
export function variableLayer(name: string): number | undefined {
  const key = ROUTER_NAME.exec(name)?.[1] ?? name.split('/')[1];
  if (key === undefined) return undefined;
  const match = /^(\d+)(\||$)/.exec(key);
  return match?.[1] === undefined ? undefined : Number(match[1]);
}

/** Assigns every named variable its group, layer, peak LR and weight decay. `nLayers` is L. */
export function paramGroups(names: Iterable<string>, nLayers: number, value: unknown = {}): Map<string, ParamGroupEntry> {
  const config = parseConfig(ParamGroupsConfig, value, 'optimizer');
  return assignGroups(names, nLayers, config);
}

/** paramGroups for an already-parsed config. */
export function assignGroups(names: Iterable<string>, nLayers: number, config: ParamGroupsConfig): Map<string, ParamGroupEntry> {
  const routerLr = config.routerLr ?? config.lr;
  const groups = new Map<string, ParamGroupEntry>();
  for (const name of names) {
    const group: ParamGroupName = isRouterVariable(name) ? 'router' : 'expert';
    const layer = variableLayer(name);
    const depthFromTop = layer === undefined ? 0 : Math.max(0, nLayers - 1 - layer);
    const lrScale = config.layerDecay ** depthFromTop;
    const base = group === 'router' ? routerLr : config.lr;
    groups.set(name, { group, layer, lrScale, lr: base * lrScale, weightDecay: group === 'router' ? config.routerWeightDecay : config.weightDecay });
  }
  return groups;
}
