/**
 * The budget controller of one AdaLoRA adapter: what the Trainer calls around its optimizer steps (through
 * its controller seam, train/controllers.ts) to run AdaLoRA's schedule.
 *
 *  - `loss()`, inside the gradient tape: orthWeight × the mean over modules of ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F.
 *  - `afterStep(t)`, after optimizer step t was applied: updates the importance scores (until the final
 *    allocation), allocates b(t) triplets across all the adapter's modules when the schedule says so, and
 *    writes λᵢ = 0 for every triplet outside the current allocation. An allocation holds until the next one
 *    (PEFT zeroes λ only at allocation steps, so pruned values drift back in between); a pruned triplet can
 *    return at a later allocation if its smoothed score still ranks within the budget. After the final
 *    allocation (t = T − tfinal) the scores are freed and the allocation is fixed.
 *
 * Steps the Trainer skips (non-finite loss or gradient) do not reach the controller.
 */
import * as tf from '@tensorflow/tfjs';
import type { AdapterInstance } from '../instance.js';
import { type BudgetPoint, type BudgetSchedule, allocate, budgetAt, checkSchedule } from './budget.js';
import type { AdaloraConfig } from './config.js';
import { ImportanceScores } from './importance.js';
import { AdaloraModule } from './layer.js';

/** What one controller step did (plain data, for logs and tests). */
export interface BudgetStep {
  readonly adapter: string;
  readonly step: number;
  readonly phase: BudgetPoint['phase'];
  readonly budget: number;
  readonly allocated: boolean;
  /** Live triplets after the step, over the whole adapter. */
  readonly totalRank: number;
}

export class AdaloraBudget {
  readonly modules: readonly AdaloraModule[];
  readonly schedule: BudgetSchedule;
  readonly orthWeight: number;
  /** Only a fresh run can be controlled: the scores are not checkpointed, so a resumed run would differ. */
  readonly resumable = false;
  private importance: ImportanceScores | undefined;
  /** keep[m][i]: the current allocation (undefined until the first). */
  private keep: boolean[][] | undefined;
  private fixed = false;

  /** `totalSteps`: the run's optimizer steps when the spec leaves them out (the Trainer's schedule.totalSteps). */
  constructor(
    readonly instance: AdapterInstance,
    totalSteps: number,
  ) {
    const spec = instance.spec as AdaloraConfig;
    this.modules = [...instance.modules.values()].filter((m): m is AdaloraModule => m instanceof AdaloraModule);
    this.schedule = {
      initial: this.modules.reduce((s, m) => s + m.rank, 0),
      target: spec.targetR * this.modules.length,
      tinit: spec.tinit,
      tfinal: spec.tfinal,
      deltaT: spec.deltaT,
      totalSteps: spec.totalSteps ?? totalSteps,
    };
    checkSchedule(this.schedule, `adapters.${instance.name}`);
    this.orthWeight = spec.orthWeight;
    this.importance = new ImportanceScores(this.modules, spec.beta1, spec.beta2);
  }

  get adapter(): string {
    return this.instance.name;
  }

  /** The weighted orthogonality regulariser (call inside the gradient tape); undefined at weight 0. */
  loss(): tf.Scalar | undefined {
    if (this.orthWeight === 0 || this.modules.length === 0) return undefined;
    return tf.tidy(() => tf.mul<tf.Scalar>(tf.addN(this.modules.map((m) => m.orthogonality())), this.orthWeight / this.modules.length)); // []
  }

  /** Runs the schedule after applied optimizer step `step` (1-based: steps completed). */
  afterStep(step: number, gradOf: (variable: tf.Variable) => tf.Tensor | undefined): BudgetStep {
    const point = budgetAt(this.schedule, step);
    if (!this.fixed) {
      this.importance?.update(gradOf);
      if (point.allocate) {
        this.keep = allocate(this.importance?.scores() ?? [], point.budget);
      }
      if (point.final) {
        this.fixed = true;
        this.importance?.dispose();
        this.importance = undefined;
      }
    }
    this.applyMasks();
    return { adapter: this.adapter, step, phase: point.phase, budget: point.budget, allocated: point.allocate, totalRank: this.totalRank() };
  }

  /** Live triplets per module under the current allocation (every triplet before the first). */
  ranks(): number[] {
    return this.modules.map((m, i) => this.keep?.[i]?.filter(Boolean).length ?? m.rank);
  }

  totalRank(): number {
    return this.ranks().reduce((a, b) => a + b, 0);
  }

  dispose(): void {
    this.importance?.dispose();
    this.importance = undefined;
  }

  /** λ ← λ ⊙ mask for every module (the pruned triplets' singular values become exactly 0). */
  private applyMasks(): void {
    const keep = this.keep;
    if (keep === undefined) return;
    this.modules.forEach((m, i) => {
      const row = keep[i] as boolean[];
      if (row.every(Boolean)) return;
      tf.tidy(() =>
        m.lambda.assign(
          tf.mul(
            m.lambda,
            tf.tensor1d(
              row.map((k) => (k ? 1 : 0)),
              'float32',
            ),
          ),
        ),
      ); // [r] ⊙ [r]
    });
  }
}
