/**
 * A JSONL data file of the demo's four tasks for `routed-peft search`: `{"prompt", "completion", "task"}`
 * lines (the task name is there for per-task reports; the search's routers never read it). Drawn from its
 * own seed, and without any prompt the demo holds out to score its runs with seeds 0..`demoRuns`−1 (at the
 * full demo sizes), so a spec searched on this file is never selected on the prompts it is later scored on.
 */
import { FULL_SIZES } from './run-demo.js';
import { DEMO_TASKS, heldOutExamples, taskExamples } from './tasks.js';

export interface SearchDataOptions {
  /** Examples per task (default 300, as the demo trains on). */
  readonly perTask?: number;
  /** Seed of the draws (default 1000: none of the demo's own run seeds). */
  readonly seed?: number;
  /** The demo run seeds whose held-out prompts are excluded (default 3: seeds 0, 1, 2). */
  readonly demoRuns?: number;
}

/** The held-out prompts of the demo's runs with seeds 0..runs−1. */
export function demoHeldOutPrompts(runs: number): Set<string> {
  const prompts = new Set<string>();
  for (let seed = 0; seed < runs; seed++) {
    const train = new Set(taskExamples(FULL_SIZES.trainPerTask, seed).map((e) => e.prompt));
    for (const e of heldOutExamples(FULL_SIZES.evalPerTask, seed + 7919, train)) prompts.add(e.prompt);
  }
  return prompts;
}

/** The file's text: one JSON object per line. */
export function demoSearchJsonl(options: SearchDataOptions = {}): string {
  const excluded = demoHeldOutPrompts(options.demoRuns ?? 3);
  const examples = heldOutExamples(options.perTask ?? FULL_SIZES.trainPerTask, options.seed ?? 1000, excluded);
  return examples.map((e) => `${JSON.stringify({ prompt: e.prompt, completion: e.completion, task: DEMO_TASKS[e.task]?.name ?? String(e.task) })}\n`).join('');
}
