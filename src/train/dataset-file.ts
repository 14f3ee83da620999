/** JSONL datasets on disk (Node); parsing is `dataset.ts`, which a browser page uses on pasted text. */
import { readFile } from 'node:fs/promises';
import { DatasetError } from './dataset-errors.js';
import { type Dataset, type DatasetOptions, parseJsonlDataset } from './dataset.js';

/** Reads a JSONL file (UTF-8) and parses it with parseJsonlDataset. */
export async function readJsonlDataset(path: string, options: DatasetOptions = {}): Promise<Dataset> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new DatasetError(`cannot read dataset ${path}: ${error instanceof Error ? error.message : String(error)}`, {
      path,
      hint: 'Check the path and that the file is readable',
      cause: error,
    });
  }
  return parseJsonlDataset(text, path, options);
}
