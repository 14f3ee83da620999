/**
 * Files held in memory as a FileSource: bytes a page already has (`ArrayBuffer`s, `Uint8Array`s, strings),
 * or `File`s a user dropped or picked (`<input type="file" webkitdirectory>` gives each its
 * `webkitRelativePath`, `folder/config.json`; the folder every file shares is taken as the root).
 */
import { joinName, type FileSource } from './file-source.js';

export type FileContent = ArrayBuffer | Uint8Array | string | Blob;

/** `entries` maps relative names (`config.json`, `adapters/e0/adapter_config.json`) to contents. */
export function memoryFiles(entries: ReadonlyMap<string, FileContent> | Readonly<Record<string, FileContent>>, origin = 'memory'): FileSource {
  const map = entries instanceof Map ? (entries as ReadonlyMap<string, FileContent>) : new Map(Object.entries(entries));
  return prefixed(map, '', origin);
}

/** The minimum of a DOM File read here (a Blob with a name and, from a directory pick, its relative path). */
export interface DroppedFile extends Blob {
  readonly name: string;
  readonly webkitRelativePath?: string;
}

/** Files a user dropped or picked, keyed by their path relative to the folder they share. */
export function droppedFiles(files: Iterable<DroppedFile>, origin = 'dropped files'): FileSource {
  const list = [...files];
  const paths = list.map((f) => (f.webkitRelativePath !== undefined && f.webkitRelativePath !== '' ? f.webkitRelativePath : f.name));
  const first = paths[0]?.split('/')[0];
  const shared = first !== undefined && paths.every((p) => p.startsWith(`${first}/`)) ? `${first}/` : '';
  const map = new Map<string, FileContent>();
  list.forEach((file, i) => map.set((paths[i] as string).slice(shared.length), file));
  return prefixed(map, '', shared === '' ? origin : `${origin} (${shared.slice(0, -1)})`);
}

function prefixed(map: ReadonlyMap<string, FileContent>, dir: string, origin: string): FileSource {
  return {
    origin,
    path: (name) => `${origin}: ${joinName(dir, name)}`,
    exists: async (name) => map.has(joinName(dir, name)) || [...map.keys()].some((key) => key.startsWith(`${joinName(dir, name)}/`)),
    read: async (name) => {
      const content = map.get(joinName(dir, name));
      if (content === undefined) throw new Error('no such file');
      if (typeof content === 'string') return new TextEncoder().encode(content);
      if (content instanceof Uint8Array) return content;
      if (content instanceof ArrayBuffer) return new Uint8Array(content);
      return new Uint8Array(await content.arrayBuffer());
    },
    sub: (sub) => prefixed(map, joinName(dir, sub), origin),
  };
}
