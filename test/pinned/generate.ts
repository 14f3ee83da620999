// Writes test/pinned/paths.fixture.json: every path of run-paths.ts, run with the current implementation
// on the wasm backend. Run it only to re-pin on purpose (the point of the fixture is that a refactor does
// NOT regenerate it):
//
//   node --import tsx test/pinned/generate.ts
//
// Values are float32 results written with the fewest decimal digits that read back (Math.fround) to the
// identical float32, so nothing is rounded away and the file stays small. The generator also prints how far
// apart paths that compute the same function are (e.g. per-site vs fused), i.e. the float round-off a
// correct reimplementation may show, to compare with the test's tolerances.
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import '../helpers/setup-backend.js'; // selects the backend exactly as the tests do (default wasm)
import { LOGITS_RTOL, maxAbs, maxDiff, storeCase, type Fixture, type StoredCase } from './compare.js';
import { PATHS, type PinnedTensor } from './run-paths.js';

const FIXTURE = fileURLToPath(new URL('./paths.fixture.json', import.meta.url));

if (tf.getBackend() !== 'wasm') throw new Error(`the fixture is pinned on wasm, but the backend is ${tf.getBackend()} (unset ROUTED_PEFT_BACKEND)`);

/** The shortest decimal that Math.fround maps back to the same float32. */
function shortestFloat32(value: number): number {
  const f = Math.fround(value);
  if (f !== value) throw new Error(`${value} is not a float32 value`);
  if (!Number.isFinite(f) || f === 0) return f;
  for (let digits = 1; digits <= 9; digits++) {
    const candidate = Number(f.toPrecision(digits));
    if (Math.fround(candidate) === f) return candidate;
  }
  return f;
}

/** Float32 values shortened; others (e.g. gradient norms, computed in double) kept as they are. */
function shortestIfFloat32(value: number): number {
  return Math.fround(value) === value ? shortestFloat32(value) : value;
}

/** Shortens a float32 array (outputs and bases; scalars, e.g. gradient norms computed in double, stay as they are). */
function shorten(tensor: PinnedTensor): PinnedTensor {
  return { shape: tensor.shape, values: tensor.values.map(shortestFloat32) };
}

/** JSON with objects indented and arrays of numbers or strings on one line. */
function format(value: unknown, indent = ''): string {
  if (Array.isArray(value)) {
    if (value.every((v) => typeof v !== 'object' || v === null)) return `[${value.map((v) => JSON.stringify(v)).join(',')}]`;
    const inner = `${indent}  `;
    return `[\n${value.map((v) => `${inner}${format(v, inner)}`).join(',\n')}\n${indent}]`;
  }
  if (typeof value === 'object' && value !== null) {
    const inner = `${indent}  `;
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    if (entries.length === 0) return '{}';
    return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${format(v, inner)}`).join(',\n')}\n${indent}}`;
  }
  return JSON.stringify(value);
}

const bases: Record<string, PinnedTensor> = {};
const cases: Record<string, StoredCase> = {};
const timings: string[] = [];
for (const [name, path] of Object.entries(PATHS)) {
  const started = performance.now();
  const before = tf.memory().numTensors;
  const fresh = await path.run();
  const leaked = tf.memory().numTensors - before;
  if (leaked !== 0) throw new Error(`${name} leaked ${leaked} tensors`);
  cases[name] = storeCase(path.about, fresh, bases);
  timings.push(`${name}: ${Math.round(performance.now() - started)} ms`);
}

// ---------------------------------------------------------------------------------------------------------
// Report: agreement of equivalent paths, delta sizes, decode margins

const output = (name: string, out: string): PinnedTensor => {
  const found = cases[name]?.outputs[out];
  if (found === undefined) throw new Error(`no output ${name} ${out}`);
  return found;
};
const relative = (a: PinnedTensor, b: PinnedTensor): string => (maxDiff(a.values, b.values).diff / maxAbs(b.values)).toExponential(2);
const groups: [string, [string, string][]][] = [
  [
    'unpadded 2×6',
    [
      ['routed/per-site-dense', 'logits'],
      ['routed/grouped', 'call'],
      ['routed/grouped', 'spec'],
      ['routed/fused-host', 'logits'],
      ['routed/fused-device', 'logits'],
    ],
  ],
  [
    'padded 2×6',
    [
      ['routed/padded', 'perSite'],
      ['routed/padded', 'host'],
      ['routed/padded', 'device'],
      ['train/routed', 'logits'],
    ],
  ],
  [
    'traced 2×4',
    [
      ['routed/trace', 'perSite'],
      ['routed/trace', 'host'],
      ['routed/trace', 'device'],
    ],
  ],
  [
    'null expert',
    [
      ['routed/null-expert', 'perSite'],
      ['routed/null-expert', 'host'],
    ],
  ],
  [
    'mixed kinds',
    [
      ['routed/mixed-kinds', 'dense'],
      ['routed/mixed-kinds', 'grouped'],
    ],
  ],
  [
    'gpt2',
    [
      ['routed/gpt2', 'perSite'],
      ['routed/gpt2', 'host'],
      ['routed/gpt2', 'device'],
    ],
  ],
];
console.log('Equivalent paths, max|x − ref| / max|ref| (the test allows', LOGITS_RTOL, 'against the pinned values):');
for (const [label, members] of groups) {
  const [refName, refOut] = members[0] as [string, string];
  const ref = output(refName, refOut);
  console.log(
    `  ${label}: ref ${refName} ${refOut}; ${members
      .slice(1)
      .map(([n, o]) => `${n} ${o} ${relative(output(n, o), ref)}`)
      .join('; ')}`,
  );
}
const mixed = cases['runtime/mixed-batch'] as StoredCase;
const mixedDiffs = Object.keys(mixed.outputs)
  .filter((k) => k.startsWith('mixed.'))
  .map((k) => `${k.slice(6)} ${relative(output('runtime/mixed-batch', k), output('runtime/mixed-batch', `solo.${k.slice(6)}`))}`);
console.log(`  runtime mixed vs solo: ${mixedDiffs.join('; ')}`);

console.log('Smallest delta (max|adapted − base|) per case:');
for (const [name, stored] of Object.entries(cases)) {
  const sizes = Object.entries(stored.outputs)
    .filter(([, o]) => o.bare !== true)
    .map(([, o]) => maxAbs(o.values.map((v, i) => v - ((bases[o.base] as PinnedTensor).values[i] as number))));
  console.log(
    `  ${name}: ${Math.min(...sizes).toFixed(4)} (logits up to ${Math.max(...Object.values(stored.outputs).map((o) => maxAbs(o.values))).toFixed(3)})`,
  );
}

for (const name of ['decode/routed', 'decode/sequence']) {
  const stored = cases[name] as StoredCase;
  const steps = stored.outputs.steps as PinnedTensor;
  const tokens = stored.exact?.tokens as number[][];
  const [count, batch, vocab] = steps.shape as [number, number, number];
  let margin = Number.POSITIVE_INFINITY;
  for (let s = 0; s < count; s++) {
    for (let b = 0; b < batch; b++) {
      const row = steps.values.slice((s * batch + b) * vocab, (s * batch + b + 1) * vocab);
      const best = row.indexOf(Math.max(...row));
      if (best !== tokens[b]?.[s]) throw new Error(`${name}: step ${s} row ${b} argmax ${best} is not the generated token ${tokens[b]?.[s]}`);
      const second = Math.max(...row.filter((_, i) => i !== best));
      margin = Math.min(margin, (row[best] as number) - second);
    }
  }
  if (JSON.stringify(stored.exact?.tokens) !== JSON.stringify(stored.exact?.perSiteTokens)) throw new Error(`${name}: fused and per-site greedy tokens differ`);
  console.log(`${name}: tokens ${JSON.stringify(tokens)}, smallest top-1 − top-2 logit margin ${margin.toFixed(4)}`);
  if (margin < 1e-3) throw new Error(`${name}: a greedy choice is a near tie (${margin}); pick other inputs`);
}

// ---------------------------------------------------------------------------------------------------------

const shortBases = Object.fromEntries(Object.entries(bases).map(([k, t]) => [k, shorten(t)]));
const shortCases = Object.fromEntries(
  Object.entries(cases).map(([name, c]) => [
    name,
    {
      ...c,
      outputs: Object.fromEntries(Object.entries(c.outputs).map(([k, o]) => [k, { ...o, ...shorten(o) }])),
      ...(c.scalars === undefined
        ? {}
        : { scalars: Object.fromEntries(Object.entries(c.scalars).map(([k, s]) => [k, { rtol: s.rtol, values: s.values.map(shortestIfFloat32) }])) }),
    },
  ]),
);
const fixture: Fixture = {
  about:
    'Outputs of every LoRA/routing execution path (test/pinned/run-paths.ts), pinned before the execution-path refactor; checked by paths.test.ts. Regenerate only on purpose: node --import tsx test/pinned/generate.ts',
  generatedFrom: 'routed-peft 0ea9cf4 (branch pin-outputs)',
  backend: tf.getBackend(),
  tfjs: tf.version.tfjs,
  bases: shortBases,
  cases: shortCases,
};
const text = `${format(fixture)}\n`;
await writeFile(FIXTURE, text);
console.log(timings.join('\n'));
console.log(`wrote ${FIXTURE}: ${(text.length / 1024).toFixed(1)} KiB, ${Object.keys(cases).length} cases, ${Object.keys(bases).length} base inputs`);
