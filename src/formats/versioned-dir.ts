/**
 * Directories replaced as a whole with no moment at which they are missing: routed-model directories and
 * training checkpoints.
 *
 * Layout. `DIR` is a symbolic link to a hidden sibling version directory `.<name>.v-<generation>-<pid>-<hex>`
 * holding the content (so `DIR/routed-peft.json`, `DIR/adapters/e0/…` work as paths, for this library and
 * for any other tool). A save writes a complete new version beside the current one, fsyncs it, creates a new
 * link beside `DIR` and renames it over `DIR` — one rename(2), atomic on POSIX file systems: every reader
 * sees the previous version or the new one, whatever moment the writer is killed at. Then the previous
 * version and anything stale (versions, temporaries and links of saves whose process is gone) is removed.
 *
 * Readers resolve `DIR` once (resolveVersionedDirectory) and read everything from that version. Where `DIR`
 * is missing — a crash while converting a directory written by an older release (which has to be renamed
 * away once), or on a file system without symbolic links, where the swap falls back to two renames — they
 * take the newest complete sibling version or backup, so no crash point leaves nothing loadable.
 */
import { randomBytes } from 'node:crypto';
import { lstatSync, readdirSync, realpathSync, statSync } from 'node:fs';
import { lstat, mkdir, readdir, readlink, rename, rm, symlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { OutputError } from '../errors.js';
import { syncDirectory, syncTree } from './atomic-write.js';
import { errnoCode, toOutputError } from './output.js';

/** A named point of a save, for crash tests: the hook may kill the process there. */
export type SaveStep = (step: string) => void | Promise<void>;

export interface VersionedWriteOptions {
  /** Called (and awaited) at every step of the swap: `version-created`, `filled`, `synced`, `link-created`, `old-moved`, `swapped`, `cleaned`. */
  readonly onStep?: SaveStep | undefined;
}

let generationCounter = 0;
/** Versions being written by this process (never removed as stale). */
const inProgress = new Set<string>();

function generation(): string {
  generationCounter = (generationCounter + 1) % 1296;
  return `${Date.now().toString(36).padStart(9, '0')}${generationCounter.toString(36).padStart(2, '0')}`;
}

function sibling(target: string, tag: string, gen?: string): string {
  const name = `.${basename(target)}.${tag}-${gen === undefined ? '' : `${gen}-`}${process.pid}-${randomBytes(6).toString('hex')}`;
  return join(dirname(target), name);
}

interface SiblingInfo {
  readonly name: string;
  readonly tag: 'v' | 'tmp' | 'old' | 'link';
  readonly generation: string | undefined;
  readonly pid: number;
}

/** Parses `.<name>.<tag>-[<generation>-]<pid>-<hex>` siblings of `target`. */
function parseSibling(target: string, name: string): SiblingInfo | undefined {
  const prefix = `.${basename(target)}.`;
  if (!name.startsWith(prefix)) return undefined;
  const match = /^(v|tmp|old|link)-(?:([0-9a-z]{11})-)?(\d+)-[0-9a-f]+$/.exec(name.slice(prefix.length));
  if (match === null) return undefined;
  const tag = match[1] as SiblingInfo['tag'];
  if ((tag === 'v') !== (match[2] !== undefined)) return undefined;
  return { name, tag, generation: match[2], pid: Number(match[3]) };
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return errnoCode(error) === 'EPERM';
  }
}

type TargetState = { readonly kind: 'missing' } | { readonly kind: 'link'; readonly version: string } | { readonly kind: 'directory' };

async function targetState(target: string): Promise<TargetState> {
  let info: Awaited<ReturnType<typeof lstat>>;
  try {
    info = await lstat(target);
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return { kind: 'missing' };
    throw toOutputError(error, target, 'inspect the output path');
  }
  if (info.isSymbolicLink()) {
    const link = await readlink(target);
    const parsed = basename(link) === link ? parseSibling(target, link) : undefined;
    if (parsed?.tag !== 'v') {
      throw new OutputError(`the output path is a symbolic link to ${link}, which routed-peft did not create`, {
        path: target,
        hint: 'Write to the directory the link points to, or remove the link',
      });
    }
    return { kind: 'link', version: link };
  }
  if (info.isDirectory()) return { kind: 'directory' };
  throw new OutputError('cannot replace a directory here: the path exists and is not a directory', {
    path: target,
    hint: 'Choose another output directory or remove the file',
  });
}

/** Whether this platform and file system can create the link (probed once per parent directory). */
async function makeLink(version: string, link: string): Promise<boolean> {
  try {
    if (process.platform === 'win32') await symlink(version, link, 'junction');
    else await symlink(basename(version), link, 'dir');
    return true;
  } catch (error) {
    const code = errnoCode(error);
    if (code === 'EPERM' || code === 'ENOSYS' || code === 'EINVAL' || code === 'ENOTSUP' || code === 'EOPNOTSUPP') return false;
    throw error;
  }
}

/**
 * Removes stale siblings of `target` — those of this process (but not versions it is still writing) and those
 * whose process no longer runs: temporaries and links always; with `content`, also every version but `keep`
 * and every backup (only once a new version is in place: while `DIR` is missing they may be all there is).
 */
export async function removeStaleSiblings(target: string, keep: string | undefined, content: boolean): Promise<void> {
  const parent = dirname(target);
  let names: string[];
  try {
    names = await readdir(parent);
  } catch {
    return;
  }
  for (const name of names) {
    const info = parseSibling(target, name);
    if (info === undefined || name === keep) continue;
    if (!content && (info.tag === 'v' || info.tag === 'old')) continue;
    const path = join(parent, name);
    if (inProgress.has(path)) continue;
    if (info.pid !== process.pid && processAlive(info.pid)) continue;
    await rm(path, { recursive: true, force: true }).catch(() => undefined);
  }
}

/**
 * Replaces `targetDir` with the directory `fill` writes (see the file header). If `fill` fails, nothing
 * changes and its version is removed. File-system errors become OutputErrors naming the path.
 */
export async function replaceDirectoryVersioned(targetDir: string, fill: (dir: string) => Promise<void>, options: VersionedWriteOptions = {}): Promise<void> {
  const step = async (name: string): Promise<void> => {
    await options.onStep?.(name);
  };
  const target = resolve(targetDir);
  const parent = dirname(target);
  await mkdir(parent, { recursive: true }).catch((error: unknown) => {
    throw toOutputError(error, parent, 'create the directory');
  });
  const state = await targetState(target);
  await removeStaleSiblings(target, undefined, false);

  const version = sibling(target, 'v', generation());
  inProgress.add(version);
  try {
    await mkdir(version).catch((error: unknown) => {
      throw toOutputError(error, target, 'create a version directory beside');
    });
    await step('version-created');
    try {
      await fill(version);
      await step('filled');
      await syncTree(version);
      await step('synced');
    } catch (error) {
      await rm(version, { recursive: true, force: true }).catch(() => undefined);
      throw toOutputError(error, target, 'write the directory');
    }

    const link = sibling(target, 'link');
    let linked: boolean;
    try {
      linked = await makeLink(version, link);
    } catch (error) {
      await rm(version, { recursive: true, force: true }).catch(() => undefined);
      throw toOutputError(error, target, 'create the link to the new version');
    }
    try {
      if (linked) {
        await step('link-created');
        if (state.kind === 'directory') {
          // A directory from an older release (or made by the user): moved aside once; readers fall back to the
          // newest complete sibling while `DIR` is missing.
          await rename(target, sibling(target, 'old'));
          await step('old-moved');
        }
        await rename(link, target);
      } else {
        // No symbolic links here: two renames, with the same reader fallback in between.
        if (state.kind !== 'missing') {
          await rename(target, sibling(target, 'old'));
          await step('old-moved');
        }
        await rename(version, target);
      }
    } catch (error) {
      await rm(link, { force: true }).catch(() => undefined);
      throw toOutputError(error, target, 'swap the new version in');
    }
    await step('swapped');
    await syncDirectory(parent);
    await removeStaleSiblings(target, linked ? basename(version) : undefined, true);
    await step('cleaned');
  } finally {
    inProgress.delete(version);
  }
}

/**
 * The directory a reader should read for `dir`: its real path when it exists (a version directory, or a plain
 * directory); when it is missing, the newest sibling version or backup for which `complete` holds (left by a
 * save interrupted while converting an old-style directory or on a file system without links); otherwise
 * `dir` itself, so the caller reports what is missing.
 */
export function resolveVersionedDirectory(dir: string, complete: (candidate: string) => boolean): string {
  const target = resolve(dir);
  try {
    if (statSync(target).isDirectory()) return realpathSync(target);
  } catch {
    // missing, or a dangling link: look for siblings
  }
  const parent = dirname(target);
  let names: string[];
  try {
    names = readdirSync(parent);
  } catch {
    return target;
  }
  const candidates = names
    .map((name) => parseSibling(target, name))
    .filter((info): info is SiblingInfo => info !== undefined && (info.tag === 'v' || info.tag === 'old'))
    .sort((a, b) => {
      // Newest first: versions by generation, then backups (which hold the content before a version).
      if (a.tag !== b.tag) return a.tag === 'v' ? -1 : 1;
      return (b.generation ?? '').localeCompare(a.generation ?? '');
    });
  for (const info of candidates) {
    const path = join(parent, info.name);
    try {
      if (lstatSync(path).isDirectory() && complete(path)) return path;
    } catch {
      // vanished meanwhile
    }
  }
  return target;
}
