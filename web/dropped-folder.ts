/**
 * A folder dropped on the page, as the files the library's `droppedFiles` reads: each File with its path
 * relative to the dropped folder's parent (`routed-demo/adapters/e0/adapter_config.json`), found by walking
 * the drop's directory entries. A folder picked with `<input type="file" webkitdirectory>` needs no walk:
 * its Files already carry `webkitRelativePath`.
 */
import type { DroppedFile } from '../src/browser.js';

function readEntries(reader: FileSystemDirectoryReader): Promise<FileSystemEntry[]> {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

async function walk(entry: FileSystemEntry, out: DroppedFile[]): Promise<void> {
  if (entry.isFile) {
    const file = await new Promise<File>((resolve, reject) => (entry as FileSystemFileEntry).file(resolve, reject));
    out.push(Object.assign(file, { webkitRelativePath: entry.fullPath.replace(/^\//, '') }));
    return;
  }
  const reader = (entry as FileSystemDirectoryEntry).createReader();
  // readEntries returns the entries in batches until it returns none.
  for (let batch = await readEntries(reader); batch.length > 0; batch = await readEntries(reader)) {
    for (const child of batch) await walk(child, out);
  }
}

export async function filesFromDrop(transfer: DataTransfer): Promise<DroppedFile[]> {
  const entries = [...transfer.items].map((item) => item.webkitGetAsEntry()).filter((e): e is FileSystemEntry => e !== null);
  const out: DroppedFile[] = [];
  for (const entry of entries) await walk(entry, out);
  return out;
}
