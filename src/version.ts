/**
 * The package's own name and version, read at runtime from package.json.
 *
 * Walks up from this module's directory to the first package.json named `routed-peft`, so it works
 * from `src/` (tsx, vitest), from `dist/src/` (built) and from an installed copy in node_modules.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface PackageInfo {
  readonly name: string;
  readonly version: string;
}

const PACKAGE_NAME = 'routed-peft';
let cached: PackageInfo | undefined;

export function packageInfo(): PackageInfo {
  cached ??= findPackageInfo(dirname(fileURLToPath(import.meta.url)));
  return cached;
}

export function packageVersion(): string {
  return packageInfo().version;
}

function findPackageInfo(startDir: string): PackageInfo {
  for (let dir = startDir; ; dir = dirname(dir)) {
    const found = readPackageJson(join(dir, 'package.json'));
    if (found !== undefined) return found;
    if (dirname(dir) === dir) break;
  }
  throw new Error(`cannot find the ${PACKAGE_NAME} package.json above ${startDir}`);
}

function readPackageJson(file: string): PackageInfo | undefined {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return undefined; // missing or unreadable: keep walking up
  }
  if (typeof json !== 'object' || json === null) return undefined;
  const { name, version } = json as { name?: unknown; version?: unknown };
  return name === PACKAGE_NAME && typeof version === 'string' ? { name, version } : undefined;
}
