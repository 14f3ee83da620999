// The browser entry (package.json "browser" condition) must reach no Node built-in: every file its imports
// reach, walked statically, names only packages. The same walk on a Node loader finds its built-ins, so the
// check can fail; `npm run lint` holds the same rule (browser-entry-has-no-node-built-ins).
import { builtinModules } from 'node:module';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { moduleGraph } from '../helpers/module-graph.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const isBuiltin = (specifier: string): boolean => specifier.startsWith('node:') || builtinModules.includes(specifier.split('/')[0] as string);

describe('the browser entry', () => {
  const graph = moduleGraph(`${root}src/browser.ts`, root);

  it('reaches no Node built-in', () => {
    const builtins = [...graph.bare].filter(([specifier]) => isBuiltin(specifier));
    expect(builtins).toEqual([]);
    expect([...graph.bare.keys()].sort()).toEqual(['@huggingface/tokenizers', '@tensorflow/tfjs', '@tensorflow/tfjs-backend-wasm', 're2js', 'rxjs', 'zod']);
  });

  it('holds the loaders, the model and the trainer', () => {
    for (const file of [
      'src/base/checkpoints/hf-model-source.ts',
      'src/io/peft-lora.ts',
      'src/io/routed-model-source.ts',
      'src/tokenizers/hf-tokenizer.ts',
      'src/model/adapted-model.ts',
      'src/train/trainer.ts',
    ]) {
      expect(graph.files).toContain(file);
    }
    for (const file of graph.files) expect(readFileSync(`${root}${file}`, 'utf8'), file).not.toMatch(/\bprocess\.|\bBuffer\./);
  });

  it('finds the built-ins of a Node loader (the check can fail)', () => {
    const node = moduleGraph(`${root}src/io/routed-model-dir.ts`, root);
    expect([...node.bare.keys()].filter(isBuiltin)).toEqual(expect.arrayContaining(['node:fs', 'node:path']));
  });

  it('is published through package.json exports conditions', () => {
    const pkg = JSON.parse(readFileSync(`${root}package.json`, 'utf8')) as { exports: Record<string, Record<string, unknown>> };
    // A bundler for the browser takes the first matching condition: "browser", with its own types first.
    expect(Object.keys(pkg.exports['.'] ?? {})).toEqual(['browser', 'types', 'import']);
    expect(pkg.exports['.']?.['browser']).toEqual({ types: './dist/src/browser.d.ts', default: './dist/src/browser.js' });
    expect(pkg.exports['.']?.['import']).toBe('./dist/src/index.js');
    expect(pkg.exports['./browser']).toEqual({ types: './dist/src/browser.d.ts', import: './dist/src/browser.js' });
  });
});
