/**
 * Output directories are checked before any work starts — a read-only or full disk should fail in the first
 * second with the path, not after a training step with a raw `EROFS` — and I/O errors while writing are
 * wrapped in OutputError naming the path and the operating system's reason.
 */
import { mkdtemp, rmdir, stat, statfs } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { OutputError, RoutedPeftError } from '../errors.js';

const REASONS: Readonly<Record<string, string>> = {
  EROFS: 'the file system is read-only',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'the disk quota is exhausted',
  ENOTDIR: 'a component of the path is not a directory',
  EEXIST: 'the path exists',
  EISDIR: 'the path is a directory',
  ENAMETOOLONG: 'the path is too long',
  EMFILE: 'too many open files',
  EIO: 'an I/O error occurred',
};

/** The errno code of a Node file-system error, or undefined. */
export function errnoCode(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^E[A-Z]+$/.test(code) ? code : undefined;
}

/**
 * Turns a file-system error into an OutputError naming `path` and the reason; library errors (already typed)
 * and non-errno errors pass through unchanged.
 */
export function toOutputError(error: unknown, path: string, action: string): unknown {
  if (error instanceof RoutedPeftError) return error;
  const code = errnoCode(error);
  if (code === undefined) return error;
  const reason = REASONS[code] ?? (error instanceof Error ? error.message : code);
  return new OutputError(`cannot ${action}: ${reason} (${code})`, {
    path,
    code,
    cause: error,
    hint:
      code === 'ENOSPC' || code === 'EDQUOT'
        ? 'Free some space or write somewhere else'
        : code === 'EROFS' || code === 'EACCES' || code === 'EPERM'
          ? 'Choose an output directory you can write to'
          : 'Check the path and the disk',
  });
}

function formatBytes(n: number): string {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${Math.ceil(n / 1024)} KiB`;
}

export interface OutputCheckOptions {
  /** Names the path in messages, e.g. `--out`. */
  readonly what?: string;
  /** Bytes the output will need; compared with the free space when the OS reports it. */
  readonly bytes?: number;
}

/**
 * Checks that `path` can be created or replaced as a directory: it is a directory (or a symbolic link to one)
 * or does not exist yet, and the nearest existing ancestor is a directory in which a file can be created
 * (probed by creating and removing an empty directory). With `bytes`, also that the file system has that
 * much free space (plus 10%) where it says. Throws OutputError with the path and the reason.
 */
export async function checkOutputDirectory(path: string, options: OutputCheckOptions = {}): Promise<void> {
  const what = options.what ?? 'output directory';
  const target = resolve(path);
  const existing = await stat(target).catch((error: unknown) => (errnoCode(error) === 'ENOENT' ? undefined : error));
  if (existing instanceof Error) throw toOutputError(existing, target, `use ${what}`);
  if (existing !== undefined && !(existing as { isDirectory(): boolean }).isDirectory()) {
    throw new OutputError(`${what} exists and is not a directory`, { path: target, hint: 'Choose another output directory or remove the file' });
  }
  // The directory the output's siblings go in (saves write a sibling and swap it in), or its nearest ancestor.
  let probeDir = dirname(target);
  for (;;) {
    const info = await stat(probeDir).catch(() => undefined);
    if (info !== undefined) {
      if (!info.isDirectory()) {
        throw new OutputError(`${what} cannot be created: ${probeDir} is not a directory`, {
          path: target,
          code: 'ENOTDIR',
          hint: 'Choose another output directory',
        });
      }
      break;
    }
    const up = dirname(probeDir);
    if (up === probeDir) break;
    probeDir = up;
  }
  try {
    const probe = await mkdtemp(join(probeDir, '.routed-peft-probe-'));
    await rmdir(probe);
  } catch (error) {
    throw toOutputError(error, target, `write ${what} (probing ${probeDir})`);
  }
  if (options.bytes !== undefined && options.bytes > 0) {
    const fs = await statfs(probeDir).catch(() => undefined);
    if (fs !== undefined && fs.bsize > 0) {
      const free = Number(fs.bavail) * Number(fs.bsize);
      const needed = Math.ceil(options.bytes * 1.1);
      if (free < needed) {
        throw new OutputError(`${what} needs about ${formatBytes(needed)} but only ${formatBytes(free)} are free on its file system`, {
          path: target,
          code: 'ENOSPC',
          hint: 'Free some space or write somewhere else',
        });
      }
    }
  }
}
