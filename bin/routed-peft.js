#!/usr/bin/env node
// routed-peft command-line launcher.
// Runs the built CLI (dist/src/cli/main.js) when it exists; in a source checkout that was not built,
// runs src/cli/main.ts through tsx (a devDependency). The exit code is whatever main() returns.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const built = new URL('../dist/src/cli/main.js', import.meta.url);
const source = new URL('../src/cli/main.ts', import.meta.url);
// The built-in routers live beside src/ (src/ never imports them); the launcher hands them to the CLI.
const builtRouters = new URL('../dist/routers/index.js', import.meta.url);
const sourceRouters = new URL('../routers/index.ts', import.meta.url);

async function loadCli() {
  if (existsSync(fileURLToPath(built))) {
    const [cli, routers] = await Promise.all([import(built.href), import(builtRouters.href)]);
    return { main: cli.main, routers: routers.builtinRouters() };
  }
  let register;
  try {
    ({ register } = await import('tsx/esm/api'));
  } catch {
    process.stderr.write('routed-peft: dist/ is missing and tsx is not installed; run `npm ci && npm run build` first\n');
    return undefined;
  }
  register();
  const [cli, routers] = await Promise.all([import(source.href), import(sourceRouters.href)]);
  return { main: cli.main, routers: routers.builtinRouters() };
}

const cli = await loadCli();
if (cli === undefined) {
  process.exitCode = 1;
} else {
  // exitCode rather than process.exit(): lets piped stdout drain completely before the process ends.
  process.exitCode = await cli.main(process.argv.slice(2), undefined, { routers: cli.routers });
}
