/**
 * The Trainer's controller seam: objects that take part in every optimizer step without the Trainer knowing
 * what they do. A controller may add a term to the objective (inside the gradient tape) and act after each
 * applied optimizer step, reading the gradients that step applied (after averaging and clipping).
 *
 * `modelControllers` builds the controllers a model needs to train correctly: one AdaLoRA budget controller
 * per AdaLoRA adapter (adapters/adalora/controller.ts), so training such a model always runs its schedule.
 */
import type * as tf from '@tensorflow/tfjs';
import { AdaloraBudget } from '../adapters/adalora/controller.js';
import { ConfigError } from '../errors.js';
import type { AdapterInstance } from '../adapters/instance.js';

export interface TrainingController {
  /** A term added to the objective, computed inside the gradient tape; undefined adds nothing. */
  loss?(): tf.Scalar | undefined;
  /** After applied optimizer step `step` (1-based); `gradOf` gives the gradient that step applied to a variable. */
  afterStep?(step: number, gradOf: (variable: tf.Variable) => tf.Tensor | undefined): unknown;
  /** False when the controller's state is not checkpointed, so a resumed run would not continue it exactly. */
  readonly resumable: boolean;
  /** Names the controller in errors. */
  readonly adapter?: string;
  dispose(): void;
}

/** The controllers a model's `adapters` need (AdaLoRA budgets); `totalSteps` is the trainer's schedule.totalSteps. */
export function modelControllers(adapters: Iterable<AdapterInstance>, totalSteps: number | undefined): TrainingController[] {
  const out: TrainingController[] = [];
  try {
    for (const instance of adapters) {
      if (instance.spec.kind !== 'adalora') continue;
      const steps = instance.spec.totalSteps ?? totalSteps;
      if (steps === undefined) {
        throw new ConfigError(`AdaLoRA adapter ${JSON.stringify(instance.name)} needs the run's length for its budget schedule`, {
          path: `adapters.${instance.name}.totalSteps`,
          hint: 'Set totalSteps on the adapter, or schedule.totalSteps in the trainer config (routed-peft train sets it from --steps)',
        });
      }
      out.push(new AdaloraBudget(instance, steps));
    }
  } catch (error) {
    for (const c of out) c.dispose();
    throw error;
  }
  return out;
}
