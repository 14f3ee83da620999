/**
 * Files under a URL as a FileSource: `urlFiles('https://host/models/demo/')` reads
 * `https://host/models/demo/config.json` with `fetch`. Works in a browser, a worker, and Node ≥ 18.
 */
import type { FileSource } from './file-source.js';

export interface UrlFilesOptions {
  /** The fetch to use (default: the global one); pass one to add headers or credentials. */
  readonly fetch?: typeof fetch;
}

/** `base` names a directory: a missing trailing slash is added, so `models/demo` and `models/demo/` agree. */
export function urlFiles(base: string | URL, options: UrlFilesOptions = {}): FileSource {
  const text = String(base);
  const root = text.endsWith('/') ? text : `${text}/`;
  const doFetch = options.fetch ?? ((input: string, init?: RequestInit) => fetch(input, init));
  const url = (name: string): string => new URL(name, new URL(root, (globalThis as { location?: { href: string } }).location?.href)).href;
  return {
    origin: root,
    path: (name) => `${root}${name}`,
    exists: async (name) => {
      const response = await doFetch(url(name), { method: 'HEAD' });
      return response.ok;
    },
    read: async (name) => {
      const response = await doFetch(url(name));
      if (!response.ok) throw new Error(`HTTP ${response.status} ${response.statusText}`.trim());
      return new Uint8Array(await response.arrayBuffer());
    },
    sub: (dir) => urlFiles(`${root}${dir}`, options),
  };
}
