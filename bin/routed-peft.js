#!/usr/bin/env node
// routed-peft command-line launcher.
// Runs the built CLI (dist/src/cli/main.js) when it exists; in a source checkout that was not built,
// runs src/cli/main.ts through tsx (a devDependency). The exit code is whatever main() returns.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const built = new URL('../dist/src/cli/main.js', import.meta.url);
const source = new URL('../src/cli/main.ts', import.meta.url);

async function loadMain() {
  if (existsSync(fileURLToPath(built))) return import(built.href);
  let register;
  try {
    ({ register } = await import('tsx/esm/api'));
  } catch {
    process.stderr.write(
      'routed-peft: dist/ is missing and tsx is not installed; run `npm ci && npm run build` first\n',
    );
    return undefined;
  }
  register();
  return import(source.href);
}

const cli = await loadMain();
if (cli === undefined) {
  process.exitCode = 1;
} else {
  // exitCode rather than process.exit(): lets piped stdout drain completely before the process ends.
  process.exitCode = await cli.main(process.argv.slice(2));
}
