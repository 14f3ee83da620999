/**
 * A directory on disk as a FileSource (Node only). Names are joined to the directory as the loaders always
 * joined them, so messages and error paths are the paths a user passed.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FileSource } from './file-source.js';

export function directoryFiles(dir: string): FileSource {
  return {
    origin: dir,
    path: (name) => (name === '' ? dir : join(dir, name)),
    exists: async (name) => existsSync(join(dir, name)),
    read: async (name) => {
      const buf = await readFile(join(dir, name));
      // A plain Uint8Array view, so slices are not Buffers with Buffer's different slice().
      return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    },
    sub: (sub) => directoryFiles(join(dir, sub)),
  };
}
