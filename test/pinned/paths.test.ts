// Pinning test: every LoRA / routing execution path (run-paths.ts) recomputed and compared with what the
// implementation before the execution-path refactor produced (paths.fixture.json, written by generate.ts).
// Logits within 1e-6·max|old|; the adapter delta (adapted − bare base logits) within 1e-4·max|Δold|, and
// non-trivial; token ids and trace entries exactly; losses, gradient norms and trace weights within their
// rtol. Each path must also leave tf.memory().numTensors where it found it. Rules: compare.ts.
//
// Never regenerate the fixture to make this pass after a refactor: a failure means the new code computes
// something else. Update run-paths.ts only when a public option or name was renamed.
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, test } from 'vitest';
import { compareCase, maxAbs, DELTA_RTOL, type Fixture, type StoredCase } from './compare.js';
import { PATHS, type PinnedCase } from './run-paths.js';

const fixture = JSON.parse(readFileSync(new URL('./paths.fixture.json', import.meta.url), 'utf8')) as Fixture;
const backend = tf.getBackend();
const SKIP_NOTE = backend === fixture.backend ? '' : ` — SKIPPED: pinned on ${fixture.backend}, running on ${backend} (other kernels round differently)`;

/** A stored case read back as if freshly computed (its bases re-attached). */
function asFresh(stored: StoredCase): PinnedCase {
  const outputs = Object.fromEntries(
    Object.entries(stored.outputs).map(([name, o]) => {
      const base = fixture.bases[o.base];
      if (base === undefined) throw new Error(`no base ${o.base}`);
      return [name, { logits: { shape: o.shape, values: o.values }, base: { key: o.base, ...base }, ...(o.bare === true ? { bare: true } : {}) }];
    }),
  );
  return { outputs, ...(stored.exact === undefined ? {} : { exact: stored.exact }), ...(stored.scalars === undefined ? {} : { scalars: stored.scalars }) };
}

describe.skipIf(backend !== fixture.backend)(`pinned outputs of every execution path${SKIP_NOTE}`, () => {
  test('the fixture pins exactly the paths of run-paths.ts', () => {
    expect(Object.keys(fixture.cases).sort()).toEqual(Object.keys(PATHS).sort());
  });

  test.each(Object.keys(PATHS))('%s', async (name) => {
    const path = PATHS[name];
    const stored = fixture.cases[name];
    if (path === undefined || stored === undefined) throw new Error(`${name} is missing from ${path === undefined ? 'run-paths.ts' : 'the fixture'}`);
    const start = tf.memory().numTensors;
    const fresh = await path.run();
    expect(tf.memory().numTensors, `${name} leaked tensors`).toBe(start);
    expect(compareCase(name, fresh, stored, fixture.bases)).toEqual([]);
  });

  test('the comparison fails on one element moved by 10× the delta tolerance, and on a lost adapter', () => {
    // On the stored data alone: an unchanged case passes, a case with one element moved by
    // 10·DELTA_RTOL·max|Δ| fails, and a case whose adapter vanished (logits = base) fails.
    const name = 'routed/fused-host';
    const stored = fixture.cases[name] as StoredCase;
    expect(compareCase(name, asFresh(stored), stored, fixture.bases)).toEqual([]);
    const out = stored.outputs.logits;
    if (out === undefined) throw new Error('no logits output');
    const base = fixture.bases[out.base];
    if (base === undefined) throw new Error('no base');
    const deltaScale = maxAbs(out.values.map((v, i) => v - (base.values[i] as number)));
    const nudged = asFresh(stored);
    const nudgedValues = [...out.values];
    nudgedValues[17] = (nudgedValues[17] as number) + 10 * DELTA_RTOL * deltaScale;
    (nudged.outputs as Record<string, unknown>).logits = { ...nudged.outputs.logits, logits: { shape: out.shape, values: nudgedValues } };
    expect(compareCase(name, nudged, stored, fixture.bases).length).toBeGreaterThan(0);
    const lost = asFresh(stored);
    (lost.outputs as Record<string, unknown>).logits = { ...lost.outputs.logits, logits: { shape: out.shape, values: [...base.values] } };
    expect(compareCase(name, lost, stored, fixture.bases).length).toBeGreaterThan(0);
  });
});
