/**
 * Task routing: each row goes to the expert of its task (one adapter per task, as in multi-task adapter
 * serving; the hard-routing baseline of Polytropon, Ponti et al. 2023). expert = mapping[taskId] when the
 * config maps that task, else taskId mod E. Weight 1, k = 1, no variables. Task ids are passed per call
 * as `taskIds` ([R] int32).
 *
 * logits are the log-probabilities of this deterministic choice with −1e4 standing in for −∞ (0 for the
 * chosen choice, −1e4 elsewhere), so probabilities = softmax(logits) is exactly the one-hot of the choice:
 * the balance loss measures the real load, and z-loss and entropy are 0 (there is nothing to train).
 *
 * Shape letters: R rows, D feature width, E choices, K = 1 slot.
 */
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { ConfigError, RoutedPeftError, ShapeError, formatShape } from '../src/errors.js';
import type { Router, RouterInput, RouterKind, RouterShape, RoutingDecision } from '../src/routing/router.js';
import { checkRouterInput, maskRows, oneHotFloat } from '../src/routing/gating.js';

/** Stand-in for log 0 in the logits of fixed routers: exp(−1e4) is exactly 0 in float32. */
export const FIXED_ROUTE_LOG_ZERO = -1e4;

export const TaskRouterConfig = z
  .object({
    kind: z.literal('task'),
    /** Explicit task → expert index; tasks not listed use taskId mod E. */
    mapping: z.record(z.string().regex(/^(0|[1-9][0-9]*)$/, 'task ids are non-negative integers'), z.number().int().min(0)).optional(),
  })
  .strict()
  .readonly();
export type TaskRouterConfig = z.infer<typeof TaskRouterConfig>;

/** The decision of a fixed (parameter-free) router from its chosen ids [R] int32. */
export function fixedDecision(ids: tf.Tensor1D, mask: tf.Tensor1D, choices: number): RoutingDecision {
  const rows = ids.shape[0];
  const oneHot = oneHotFloat<tf.Tensor2D>(ids, choices); // [R, E]
  return {
    expertIds: tf.expandDims<tf.Tensor2D>(ids, 1), // [R, 1]
    weights: maskRows(tf.ones<tf.Rank.R2>([rows, 1]), mask), // [R, 1]
    dropped: tf.zeros([rows]), // [R]
    logits: tf.mul(tf.sub(1, oneHot), FIXED_ROUTE_LOG_ZERO), // [R, E]
    probabilities: oneHot, // [R, E]
  };
}

/** Checks a per-row id tensor [R] and returns it as int32. */
export function rowIds(ids: tf.Tensor1D, rows: number, what: string, kind: string): tf.Tensor1D {
  if (ids.rank !== 1 || ids.shape[0] !== rows) {
    throw new ShapeError(`${kind} router expects ${what} [${rows}] (one per row), got ${formatShape(ids.shape)}`, { path: `router.${what}` });
  }
  return ids.dtype === 'int32' ? ids : tf.cast(ids, 'int32'); // [R]
}

class TaskRouter implements Router {
  readonly kind = 'task';
  readonly choices: number;
  private readonly mapping: readonly (readonly [task: number, expert: number])[];

  constructor(
    config: TaskRouterConfig,
    private readonly shape: RouterShape,
  ) {
    this.choices = shape.choices;
    this.mapping = Object.entries(config.mapping ?? {}).map(([task, expert]) => {
      if (expert >= shape.choices) {
        throw new ConfigError(`task router: task ${task} maps to expert ${expert}, but there are only E = ${shape.choices} choices`, {
          path: `router.mapping.${task}`,
          hint: `Use an expert index in [0, ${shape.choices - 1}]`,
        });
      }
      return [Number(task), expert] as const;
    });
  }

  route(input: RouterInput): RoutingDecision {
    const rows = checkRouterInput(input, this.shape, this.kind);
    if (input.taskIds === undefined) {
      throw new RoutedPeftError('the task router needs task ids, and none were given', {
        path: 'router.taskIds',
        hint: 'Pass `taskIds` (one task id per sequence) with every call of a model whose route uses a task router',
      });
    }
    const tasks = rowIds(input.taskIds, rows, 'taskIds', this.kind); // [R] int32
    let ids = tf.mod<tf.Tensor1D>(tasks, tf.scalar(this.choices, 'int32')); // [R], floor mod: in [0, E)
    for (const [task, expert] of this.mapping) {
      ids = tf.where(tf.equal(tasks, task), tf.fill([rows], expert, 'int32'), ids); // [R]
    }
    return fixedDecision(ids, input.mask, this.choices);
  }

  variables(): readonly tf.Variable[] {
    return [];
  }

  dispose(): void {}
}

export const taskRouterKind: RouterKind<TaskRouterConfig> = {
  kind: 'task',
  schema: TaskRouterConfig,
  needsTaskIds: true,
  create: (config, shape) => new TaskRouter(config, shape),
};
