/**
 * safetensors files on disk (Node): the codec (`safetensors-codec.ts`, which a browser uses alone) plus
 * reading and writing files.
 */
import { readFile } from 'node:fs/promises';
import { CheckpointError, RoutedPeftError } from '../errors.js';
import { writeFileAtomic } from './atomic-write.js';
import { parseSafetensors, serialize, type SafetensorsFile, type TensorsToWrite } from './safetensors-codec.js';

export * from './safetensors-codec.js';

// ---------------------------------------------------------------------------------------------
// Files

/** Reads and validates a safetensors file; errors carry the file path. */
export async function readSafetensorsFile(path: string): Promise<SafetensorsFile> {
  let buf: Uint8Array;
  try {
    buf = await readFile(path);
  } catch (err) {
    const why = err instanceof Error ? `: ${err.message}` : '';
    throw new CheckpointError(`cannot read safetensors file${why}`, { path, cause: err });
  }
  // A plain Uint8Array view, so entry bytes are not Buffers with Buffer's different slice().
  return parseSafetensors(new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength), { source: path });
}

/** Serialises tensors and writes them atomically (temporary sibling + rename). */
export async function writeSafetensorsFile(path: string, tensors: TensorsToWrite, metadata?: Readonly<Record<string, string>>): Promise<void> {
  const bytes = serialize(tensors, metadata, path);
  try {
    await writeFileAtomic(path, bytes);
  } catch (err) {
    // writeFileAtomic already names the path and the reason (OutputError: read-only, no space, …).
    if (err instanceof RoutedPeftError) throw err;
    const why = err instanceof Error ? `: ${err.message}` : '';
    throw new CheckpointError(`cannot write safetensors file${why}`, { path, cause: err });
  }
}
