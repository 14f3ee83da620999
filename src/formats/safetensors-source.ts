/** Reads and validates a safetensors file from any FileSource (disk, URL, dropped files). */
import { readBytes, type FileSource } from './file-source.js';
import { parseSafetensors, type SafetensorsFile } from './safetensors-codec.js';

/** Errors carry the file's path as the source names it. */
export async function readSafetensorsFrom(files: FileSource, name: string): Promise<SafetensorsFile> {
  const bytes = await readBytes(files, name, 'safetensors file');
  return parseSafetensors(bytes, { source: files.path(name) });
}
