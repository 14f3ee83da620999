/**
 * Paths read from manifests and configs are untrusted: `adapters/e0` is fine, `../../etc` or `/etc` is not.
 * resolveInside resolves such a path against its directory and requires the result — after following
 * symbolic links — to stay inside that directory.
 */
import { existsSync, realpathSync } from 'node:fs';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { CheckpointError } from '../errors.js';

function inside(root: string, candidate: string): boolean {
  const rel = relative(root, candidate);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
}

function real(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return resolve(path);
  }
}

/**
 * Resolves `entry` (a relative path read from `file`) against `dir`. Throws CheckpointError when it is not a
 * string, is absolute, holds a NUL byte, or leads outside `dir` (`..`, or a symbolic link pointing out).
 */
export function resolveInside(dir: string, entry: unknown, details: { readonly file: string; readonly field: string }): string {
  const { file, field } = details;
  if (typeof entry !== 'string' || entry === '' || entry.includes('\0')) {
    throw new CheckpointError(`${field} is ${JSON.stringify(entry)}, not a relative path`, {
      path: file,
      hint: 'Paths in the file must name files inside its directory',
    });
  }
  if (isAbsolute(entry) || /^[A-Za-z]:|^[\\/]/.test(entry)) {
    throw new CheckpointError(`${field} ${JSON.stringify(entry)} is an absolute path; only paths inside the directory are followed`, {
      path: file,
      hint: 'Write paths relative to the directory, e.g. "adapters/e0"',
    });
  }
  const root = resolve(dir);
  const target = resolve(root, entry);
  if (!inside(root, target)) {
    throw new CheckpointError(`${field} ${JSON.stringify(entry)} leads outside the directory ${root}; it is not followed`, {
      path: file,
      hint: 'Write paths relative to the directory without "..", e.g. "adapters/e0"',
    });
  }
  if (existsSync(target)) {
    const realRoot = real(root);
    const realTarget = real(target);
    if (!inside(realRoot, realTarget)) {
      throw new CheckpointError(`${field} ${JSON.stringify(entry)} is a symbolic link to ${realTarget}, outside the directory; it is not followed`, {
        path: file,
        hint: 'Copy the files into the directory instead of linking them',
      });
    }
  }
  return target;
}
