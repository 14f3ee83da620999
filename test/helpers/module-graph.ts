/**
 * The import graph of a TypeScript entry inside this repository, walked statically: every file reached
 * through relative `import` / `export … from` / `import()` specifiers, and every bare specifier (package or
 * Node built-in) each file names. Type-only imports are skipped (they vanish when compiled).
 */
import { readFileSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';

export interface ModuleGraph {
  /** Repository-relative paths of the files reached. */
  readonly files: string[];
  /** Bare specifier → the files importing it. */
  readonly bare: Map<string, string[]>;
}

const SPECIFIER = /(?:^|[\s;])(import|export)\s+(type\s+)?(?:[^'";]*?\s+from\s+)?['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g;

export function moduleGraph(entry: string, root: string): ModuleGraph {
  const seen = new Set<string>();
  const bare = new Map<string, string[]>();
  const queue = [resolve(entry)];
  while (queue.length > 0) {
    const file = queue.pop() as string;
    if (seen.has(file)) continue;
    seen.add(file);
    const text = readFileSync(file, 'utf8')
      .replace(/\/\*[\s\S]*?\*\//g, '')
      .replace(/^\s*\/\/.*$/gm, '');
    for (const match of text.matchAll(SPECIFIER)) {
      if (match[2] !== undefined) continue; // import type / export type
      const specifier = (match[3] ?? match[4]) as string;
      if (specifier.startsWith('.')) {
        queue.push(resolve(dirname(file), specifier.replace(/\.js$/, '.ts')));
      } else {
        const from = relative(root, file);
        bare.set(specifier, [...(bare.get(specifier) ?? []), from]);
      }
    }
  }
  return { files: [...seen].map((f) => relative(root, f)).sort(), bare };
}
