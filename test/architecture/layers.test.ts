// The layer check (.dependency-cruiser.cjs, run by `npm test` through `npm run lint`) must fail on the mistakes
// it exists for: an upward import, an import cycle, src/ importing the router plug-ins, and a router reaching
// past the routing contract. Each case is a tiny tree in a temporary directory, checked with the real config.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, test } from 'vitest';

const root = fileURLToPath(new URL('../../', import.meta.url));
const config = join(root, '.dependency-cruiser.cjs');
const depcruise = join(root, 'node_modules', '.bin', 'depcruise');
const run = promisify(execFile);
const dirs: string[] = [];

/** Runs the layer check over a tree of files (path → source); resolves to its exit code and output. */
async function check(files: Readonly<Record<string, string>>): Promise<{ code: number; output: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'routed-peft-layers-'));
  dirs.push(dir);
  await writeFile(join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', allowJs: true } }));
  for (const [path, source] of Object.entries(files)) {
    await mkdir(dirname(join(dir, path)), { recursive: true });
    await writeFile(join(dir, path), source);
  }
  try {
    const { stdout, stderr } = await run(depcruise, ['src', 'routers', '--config', config, '--no-progress'], { cwd: dir });
    return { code: 0, output: stdout + stderr };
  } catch (error) {
    const failed = error as { code?: number; stdout?: string; stderr?: string };
    return { code: failed.code ?? 1, output: `${failed.stdout ?? ''}${failed.stderr ?? ''}` };
  }
}

afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('the layer check', () => {
  test('passes a tree that imports only downward', async () => {
    const result = await check({
      'src/errors.ts': 'export const E = 1;\n',
      'src/base/model.ts': "import { E } from '../errors.js';\nexport const M = E;\n",
      'src/model/adapted.ts': "import { M } from '../base/model.js';\nexport const A = M;\n",
      'routers/index.ts': 'export const R = 1;\n',
    });
    expect(result.output).toContain('no dependency violations');
    expect(result.code).toBe(0);
  });

  test('fails on an upward import and names the rule and both files', async () => {
    const result = await check({
      'src/base/model.ts': "import { A } from '../model/adapted.js';\nexport const M = A;\n",
      'src/model/adapted.ts': 'export const A = 1;\n',
      'routers/index.ts': 'export const R = 1;\n',
    });
    expect(result.code).not.toBe(0);
    expect(result.output).toContain('no-upward-from-base');
    expect(result.output).toContain('src/base/model.ts');
    expect(result.output).toContain('src/model/adapted.ts');
  });

  test('fails on an import cycle inside one layer', async () => {
    const result = await check({
      'src/routing/a.ts': "import { B } from './b.js';\nexport const A = B;\n",
      'src/routing/b.ts': "import { A } from './a.js';\nexport const B = () => A;\n",
      'routers/index.ts': 'export const R = 1;\n',
    });
    expect(result.code).not.toBe(0);
    expect(result.output).toContain('no-cycles');
  });

  test('fails when src/ imports a router, or a router imports past the routing contract', async () => {
    const result = await check({
      'src/routing/router.ts': 'export const contract = 1;\n',
      'src/model/adapted.ts': "import { R } from '../../routers/top-k.js';\nexport const A = R;\n",
      'routers/top-k.ts':
        "import { A } from '../src/model/adapted.js';\nimport { contract } from '../src/routing/router.js';\nexport const R = contract;\nexport const B = A;\n",
    });
    expect(result.code).not.toBe(0);
    expect(result.output).toContain('src-not-routers');
    expect(result.output).toContain('routers-use-the-contract-only');
  });
});
