/**
 * Where a loader's files come from. Every loader (safetensors model directories, tokenizer.json, PEFT
 * adapters, routed-model directories) reads through this one interface, so the same code reads a directory
 * on disk (Node, `node-files.ts`), files under a URL (`url-files.ts`), files a user dropped on a page or
 * bytes held in memory (`memory-files.ts`). Names are relative paths with `/` separators
 * (`adapters/e0/adapter_config.json`); no implementation may be reached outside its root.
 */
import { CheckpointError } from '../errors.js';

export interface FileSource {
  /** The root in messages: a directory path, a URL, or a description such as `dropped files`. */
  readonly origin: string;
  /** How one file is named in messages (and error `path`s). */
  path(name: string): string;
  exists(name: string): Promise<boolean>;
  /** The file's bytes; rejects with the underlying error (callers use `readBytes`, which names the file). */
  read(name: string): Promise<Uint8Array>;
  /** The files below `dir` (a name already checked by `inside`). */
  sub(dir: string): FileSource;
}

/** Reads a file's bytes; a failure is a CheckpointError `cannot read <what>` naming the file. */
export async function readBytes(files: FileSource, name: string, what: string): Promise<Uint8Array> {
  try {
    return await files.read(name);
  } catch (cause) {
    throw new CheckpointError(`cannot read ${what}: ${cause instanceof Error ? cause.message : String(cause)}`, { path: files.path(name), cause });
  }
}

/** Reads a file as UTF-8 text (a leading byte-order mark removed). */
export async function readText(files: FileSource, name: string, what: string): Promise<string> {
  const text = new TextDecoder('utf-8').decode(await readBytes(files, name, what));
  // A UTF-8 byte-order mark (Windows editors write one) is not part of the content.
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/** Reads and parses a JSON file; errors are CheckpointErrors naming the file. */
export async function readJson(files: FileSource, name: string, what: string): Promise<unknown> {
  const text = await readText(files, name, what);
  try {
    return JSON.parse(text) as unknown;
  } catch (cause) {
    throw new CheckpointError(`${what} is not valid JSON: ${(cause as Error).message}`, { path: files.path(name), cause });
  }
}

/**
 * Normalises a relative path read from a manifest (`adapters/e0`, `./routers.safetensors`) to the names a
 * FileSource takes. Throws CheckpointError when it is not a string, is absolute, holds a NUL byte, or leads
 * outside the root (`..`). `details` names the file and the field it was read from.
 */
export function relativeInside(entry: unknown, details: { readonly file: string; readonly field: string; readonly origin: string }): string {
  const { file, field } = details;
  if (typeof entry !== 'string' || entry === '' || entry.includes('\0')) {
    throw new CheckpointError(`${field} is ${JSON.stringify(entry)}, not a relative path`, {
      path: file,
      hint: 'Paths in the file must name files inside its directory',
    });
  }
  if (/^[A-Za-z]:|^[\\/]|^[a-z][a-z0-9+.-]*:/i.test(entry)) {
    throw new CheckpointError(`${field} ${JSON.stringify(entry)} is an absolute path; only paths inside the directory are followed`, {
      path: file,
      hint: 'Write paths relative to the directory, e.g. "adapters/e0"',
    });
  }
  const parts: string[] = [];
  for (const part of entry.split(/[\\/]+/)) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (parts.pop() === undefined) {
        throw new CheckpointError(`${field} ${JSON.stringify(entry)} leads outside the directory ${details.origin}; it is not followed`, {
          path: file,
          hint: 'Write paths relative to the directory without "..", e.g. "adapters/e0"',
        });
      }
      continue;
    }
    parts.push(part);
  }
  return parts.join('/');
}

/** Joins a directory name and a file name of a FileSource (`''` is the root). */
export function joinName(dir: string, name: string): string {
  return dir === '' ? name : `${dir.replace(/\/+$/, '')}/${name}`;
}
