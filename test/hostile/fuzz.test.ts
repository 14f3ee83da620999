// Fuzzing the five kinds of untrusted input (test/hostile/inputs.ts: safetensors files, specs, PEFT adapter
// configs, routed-model manifests, JSONL rows) with a modest seeded budget: every case is accepted or refused
// with a RoutedPeftError — never another error — and each takes well under a second (no hang). The long run
// (≥ 20,000 cases, with a watchdog counting hangs) is benchmarks/fuzz-inputs.ts.
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type FuzzContext, INPUT_KINDS, type InputKind, arbitraryOf, createFuzzContext, runCase } from './inputs.js';

/** Cases per kind in `npm test` (the benchmark runs thousands). */
const RUNS: Readonly<Record<InputKind, number>> = { safetensors: 300, spec: 80, 'adapter-config': 60, manifest: 40, jsonl: 150 };
const SEED = 20;

let context: FuzzContext;
beforeAll(async () => {
  context = await createFuzzContext();
});
afterAll(async () => {
  await context.dispose();
});

describe('fuzz: hostile inputs give a typed error or a clean result, fast', () => {
  for (const kind of INPUT_KINDS) {
    test(`${kind}: ${RUNS[kind]} seeded cases, 0 untyped errors, none over 1 s`, async () => {
      const cases = fc.sample(arbitraryOf(kind, context), { seed: SEED, numRuns: RUNS[kind] });
      const counts = { ok: 0, typed: 0, untyped: 0 };
      const untyped: string[] = [];
      let slowest = 0;
      for (const input of cases) {
        const result = await runCase(kind, input, context);
        counts[result.outcome]++;
        if (result.outcome === 'untyped') untyped.push(result.detail ?? '');
        slowest = Math.max(slowest, result.ms);
      }
      expect(untyped).toEqual([]);
      expect(slowest).toBeLessThan(1000);
      // The generators reach both sides of the contract.
      expect(counts.typed).toBeGreaterThan(0);
      if (kind !== 'manifest') expect(counts.ok).toBeGreaterThan(0);
    });
  }
});
