// `routed-peft analyze` end to end: train a routed model (two LoRA experts and a bottleneck) for two steps on
// the demo model, then analyze it with the search fixture; the files it writes parse, the table names what
// it could not analyse, and a bad directory is a typed error naming its path.
import { cp, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { builtinRouters } from '../../routers/index.js';
import { AnalysisReport } from '../../src/analysis/report.js';
import { createMemoryIo } from '../../src/cli/io.js';
import { main } from '../../src/cli/main.js';
import { CheckpointError } from '../../src/errors.js';
import { readRoutedModelManifest } from '../../src/io/routed-model-dir.js';

const demoModel = fileURLToPath(new URL('../../demo-model/', import.meta.url));
const searchFixture = fileURLToPath(new URL('../fixtures/search-run/', import.meta.url));
const context = { routers: builtinRouters() };

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const io = createMemoryIo();
  const code = await main(argv, io, context);
  return { code, out: io.out, err: io.err };
}

const spec = {
  seed: 1,
  adapters: [
    { kind: 'lora', name: 'e0', r: 2, alpha: 4, targets: { sites: ['attn.q', 'attn.v'] } },
    { kind: 'lora', name: 'e1', r: 2, alpha: 4, targets: { sites: ['attn.q', 'attn.v'] } },
    { kind: 'bottleneck', name: 'bn', bottleneckDim: 4, targets: { layers: [0] } },
  ],
  composition: { kind: 'parallel', children: [{ kind: 'route', experts: ['e0', 'e1'], router: { kind: 'top-k', k: 1 } }, 'bn'] },
};

describe('routed-peft analyze', () => {
  let dir: string;
  let routed: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'routed-peft-analyze-'));
    routed = join(dir, 'routed');
    const rows = ['1+2=3', '2+2=4', '3+4=7', '5+1=6'].map((text) => JSON.stringify({ text }));
    await writeFile(join(dir, 'data.jsonl'), `${rows.join('\n')}\n`);
    await writeFile(join(dir, 'spec.json'), JSON.stringify(spec));
    const train = await run(
      'train',
      '--model',
      demoModel,
      '--data',
      join(dir, 'data.jsonl'),
      '--spec',
      join(dir, 'spec.json'),
      '--out',
      routed,
      '--steps',
      '2',
      '--batch-size',
      '2',
      '--lr',
      '1e-2',
      '--format',
      'json',
    );
    expect(train.code, train.err).toBe(0);
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  test('--routed --search --out writes the report and the plots; the base comes from the manifest', async () => {
    const out = join(dir, 'analysis');
    const tensors = tf.memory().numTensors;
    const result = await run('analyze', '--routed', routed, '--search', searchFixture, '--out', out);
    expect(result.code, result.err).toBe(0);
    expect(tf.memory().numTensors).toBe(tensors);
    expect((await readdir(out)).sort()).toEqual(['analysis.json', 'curves.svg', 'overlap.svg', 'spectra.svg']);
    const report = AnalysisReport.parse(JSON.parse(await readFile(join(out, 'analysis.json'), 'utf8')));
    const sites = report.routed?.sites ?? [];
    // demo model: 3 layers × (q, v) with the experts, plus the bottleneck's points in layer 0.
    expect(sites.filter((s) => s.site === 'attn.q' || s.site === 'attn.v')).toHaveLength(6);
    for (const site of sites.filter((s) => s.site === 'attn.q')) {
      const deltas = site.modules.filter((m) => m.measure === 'delta-w');
      expect(deltas.map((m) => m.adapter)).toEqual(['e0', 'e1']);
      // Two steps from B = 0 moved every expert: a non-zero ΔW of rank ≤ 2.
      for (const m of deltas) if (m.measure === 'delta-w') expect(m.frobenius).toBeGreaterThan(0);
      expect(site.overlap[0]?.pairs).toHaveLength(1);
    }
    expect(report.routed?.notAnalysed.every((n) => n.adapter === 'bn' && n.kind === 'bottleneck')).toBe(true);
    expect(report.routed?.notAnalysed.length).toBeGreaterThan(0);
    expect(report.search?.methods.map((m) => m.method)).toEqual(['lora', 'bottleneck', 'lora+route']);
    for (const svg of ['spectra.svg', 'overlap.svg', 'curves.svg']) expect(await readFile(join(out, svg), 'utf8')).toMatch(/^<svg [\s\S]*<\/svg>\n$/);
    expect(result.out).toContain('layer 0 attn.q');
    expect(result.out).toContain('route 0 overlap: mean');
    expect(result.out).toContain('not analysed: bn (bottleneck)');
    expect(result.out).toContain('lora (4 candidates): frontier 1000 → 0.600, 8000 → 0.650');
  });

  test('--format json prints the report and writes nothing without --out', async () => {
    const before = await readdir(dir);
    const result = await run('analyze', '--search', searchFixture, '--format', 'json');
    expect(result.code, result.err).toBe(0);
    expect(AnalysisReport.parse(JSON.parse(result.out)).search?.trials).toBe(9);
    expect(await readdir(dir)).toEqual(before);
  });

  test('a directory that is not a routed model is a typed error naming it; a missing base or no flags is a usage error', async () => {
    const missing = join(dir, 'not-routed');
    const bad = await run('analyze', '--routed', missing);
    expect(bad.code).toBe(1);
    expect(bad.err).toContain(`no routed-peft.json in the directory (at ${missing})`);
    await expect(readRoutedModelManifest(missing)).rejects.toThrow(CheckpointError);
    // A manifest that records no base path needs --model.
    const copy = join(dir, 'no-base-path');
    await cp(routed, copy, { recursive: true, dereference: true });
    const manifest = JSON.parse(await readFile(join(copy, 'routed-peft.json'), 'utf8')) as { base: { path?: string } };
    delete manifest.base.path;
    await writeFile(join(copy, 'routed-peft.json'), JSON.stringify(manifest));
    const noBase = await run('analyze', '--routed', copy);
    expect(noBase.code).toBe(2);
    expect(noBase.err).toContain(`${copy} does not record the path of its base: pass --model PATH`);
    expect((await run('analyze', '--routed', copy, '--model', demoModel, '--format', 'json')).code).toBe(0);
    const none = await run('analyze');
    expect(none.code).toBe(2);
    expect(none.err).toContain('give --routed DIR, --search DIR, or both');
  });
});
