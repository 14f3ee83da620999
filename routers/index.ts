/**
 * The built-in router kinds, collected in one record. src/ never imports this file: pass
 * `builtinRouters()` where a model needs routers, and `register` your own kinds on the registry it returns.
 */
import { RouterRegistry } from '../src/routing/router-registry.js';
import type { RouterKind } from '../src/routing/router.js';
import { expertChoiceRouterKind } from './expert-choice.js';
import { hashRouterKind } from './hash.js';
import { noisyTopKRouterKind } from './noisy-top-k.js';
import { softRouterKind } from './soft.js';
import { switchRouterKind } from './switch.js';
import { taskRouterKind } from './task.js';
import { thresholdRouterKind } from './threshold.js';
import { topKRouterKind } from './top-k.js';
import { topPRouterKind } from './top-p.js';

export { ExpertChoiceRouterConfig, expertChoiceRouterKind } from './expert-choice.js';
export { HashRouterConfig, hashExpert, hashRouterKind } from './hash.js';
export { NoisyTopKRouterConfig, noisyTopKRouterKind } from './noisy-top-k.js';
export { SoftRouterConfig, softRouterKind } from './soft.js';
export { SwitchRouterConfig, switchRouterKind } from './switch.js';
export { TaskRouterConfig, taskRouterKind } from './task.js';
export { ThresholdRouterConfig, thresholdRouterKind } from './threshold.js';
export { TopKRouterConfig, topKRouterKind } from './top-k.js';
export { TopPRouterConfig, topPRouterKind } from './top-p.js';

/** Every built-in router kind, in the order the docs list them. */
export const BUILTIN_ROUTER_KINDS: readonly RouterKind[] = [
  topKRouterKind,
  noisyTopKRouterKind,
  switchRouterKind,
  expertChoiceRouterKind,
  softRouterKind,
  topPRouterKind,
  taskRouterKind,
  hashRouterKind,
  thresholdRouterKind,
];

/** A fresh registry holding the nine built-in kinds. */
export function builtinRouters(): RouterRegistry {
  return new RouterRegistry(BUILTIN_ROUTER_KINDS);
}
