/**
 * Hugging Face model directories on disk (Node): the reader is `hf-model-source.ts`, which takes any
 * FileSource; this file gives it a directory path.
 */
import { existsSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { readJson } from '../../formats/file-source.js';
import type { FiniteOptions } from '../../formats/finite.js';
import { directoryFiles } from '../../formats/node-files.js';
import { readHfModelFrom, type HfModelDirectory } from './hf-model-source.js';

export { modelConfigFromHf, readHfModelFrom, type HfModelDirectory } from './hf-model-source.js';

/** Reads and parses a JSON file (a leading UTF-8 BOM is skipped); errors are CheckpointErrors naming the file. */
export async function readJsonFile(path: string, what: string): Promise<unknown> {
  return readJson(directoryFiles(dirname(path)), basename(path), what);
}

/** Reads config.json and lists the tensors; each decodes lazily (and is checked for NaN/±Infinity unless allowed). */
export async function readHfModelDirectory(path: string, options: FiniteOptions = {}): Promise<HfModelDirectory> {
  return readHfModelFrom(directoryFiles(resolve(path)), options);
}

/** True when `path` looks like a Hugging Face model directory (or a config.json inside one). */
export function isHfModelPath(path: string): boolean {
  return existsSync(join(path, 'config.json')) || (basename(path) === 'config.json' && existsSync(dirname(path)));
}
