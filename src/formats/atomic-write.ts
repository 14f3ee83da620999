/**
 * Crash-safe file and directory replacement. A reader (or a process restarted after a crash)
 * sees either the old content or the complete new content, never a half-written checkpoint:
 * data goes to a temporary sibling, is fsynced, and is then renamed into place (rename is
 * atomic within one filesystem, which a sibling guarantees).
 */
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { CheckpointError } from '../errors.js';
import { toOutputError } from './output.js';

/** A sibling path like `<dir>/.<name>.tmp-<pid>-<random>`; the dot keeps it out of casual listings. */
function siblingPath(target: string, tag: string): string {
  const abs = resolve(target);
  return join(dirname(abs), `.${basename(abs)}.${tag}-${process.pid}-${randomBytes(6).toString('hex')}`);
}

/** fsyncs a directory so a rename inside it survives power loss. Best effort: not possible on every OS. */
export async function syncDirectory(dir: string): Promise<void> {
  try {
    const handle = await open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // Windows cannot open directories for fsync; the rename itself is still atomic.
  }
}

/** fsyncs every file and directory under `dir` (files must be durable before the swap). */
export async function syncTree(dir: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) {
      await syncTree(p);
    } else if (entry.isFile()) {
      const handle = await open(p, 'r');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
  }
  await syncDirectory(dir);
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** Writes `data` to `path` atomically: temp sibling, fsync, rename over the target, fsync the directory. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const target = resolve(path);
  const tmp = siblingPath(target, 'tmp');
  let mode: number | undefined;
  try {
    // Keep the permissions of a file being replaced rather than resetting them to the default.
    mode = (await stat(target)).mode & 0o7777;
  } catch {
    mode = undefined;
  }
  try {
    // 'wx': fail rather than clobber if the random name somehow exists already.
    const handle = await open(tmp, 'wx', mode ?? 0o666);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, target);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw toOutputError(err, target, 'write the file');
  }
  await syncDirectory(dirname(target));
}

/**
 * Replaces directory `targetDir` with one written by `fill`. `fill` writes into a fresh
 * temporary sibling; only when it resolves is that directory fsynced and swapped in (old
 * renamed to a backup sibling, new renamed into place, backup removed). If `fill` or the sync
 * fails, the old directory is untouched and the temporary one is removed.
 *
 * Node has no atomic directory exchange, so between the two renames `targetDir` briefly does
 * not exist; a crash in that window leaves the complete old content in the `.old-*` sibling.
 */
export async function replaceDirectoryAtomic(targetDir: string, fill: (tmpDir: string) => Promise<void>): Promise<void> {
  const target = resolve(targetDir);
  const parent = dirname(target);
  await mkdir(parent, { recursive: true }).catch((error: unknown) => {
    throw toOutputError(error, parent, 'create the directory');
  });
  if (await exists(target)) {
    const info = await lstat(target);
    if (!info.isDirectory()) {
      throw new CheckpointError('cannot replace a directory here: the path exists and is not a directory', {
        path: target,
        hint: 'Choose another output directory or remove the file',
      });
    }
  }

  const tmp = siblingPath(target, 'tmp');
  await mkdir(tmp).catch((error: unknown) => {
    throw toOutputError(error, target, 'create a temporary directory beside');
  });
  try {
    await fill(tmp);
    await syncTree(tmp);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw toOutputError(err, target, 'write the directory');
  }

  if (!(await exists(target))) {
    try {
      await rename(tmp, target);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
      throw toOutputError(err, target, 'move the new directory into place');
    }
    await syncDirectory(parent);
    return;
  }

  const backup = siblingPath(target, 'old');
  try {
    await rename(target, backup);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw toOutputError(err, target, 'move the old directory aside');
  }
  try {
    await rename(tmp, target);
  } catch (err) {
    // Put the old directory back so a failed swap changes nothing.
    await rename(backup, target).catch(() => undefined);
    await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw toOutputError(err, target, 'move the new directory into place');
  }
  await syncDirectory(parent);
  // The new content is in place; failing to delete the backup should not report the save as failed.
  await rm(backup, { recursive: true, force: true }).catch(() => undefined);
}
