/**
 * A small static HTTP server for `routed-peft web`: URL prefixes mapped to directories (the built page at
 * `/`, the model directories under `/models/...`). GET and HEAD only; a path is served only when it stays
 * inside its directory after following symbolic links (formats/paths.ts), so `..` or a link leading out
 * gets 404. `.wasm` is served as application/wasm (what WebAssembly.instantiateStreaming requires).
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import { extname } from 'node:path';
import { RoutedPeftError } from '../errors.js';
import { resolveInside } from '../formats/paths.js';

const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.md': 'text/markdown; charset=utf-8',
};

export interface StaticMount {
  /** URL prefix ending in `/` (`/`, `/models/base/`). */
  readonly prefix: string;
  readonly dir: string;
}

/** Where a URL path lands: the longest matching prefix's directory, or undefined (404). */
export function resolveStaticPath(mounts: readonly StaticMount[], urlPath: string): string | undefined {
  let path: string;
  try {
    path = decodeURIComponent(urlPath.split('?')[0] ?? '/');
  } catch {
    return undefined;
  }
  const mount = [...mounts].sort((a, b) => b.prefix.length - a.prefix.length).find((m) => path.startsWith(m.prefix));
  if (mount === undefined) return undefined;
  const rest = path.slice(mount.prefix.length);
  const relative = rest === '' || rest.endsWith('/') ? `${rest}index.html` : rest;
  try {
    return resolveInside(mount.dir, relative, { file: mount.dir, field: 'URL path' });
  } catch (error) {
    if (error instanceof RoutedPeftError) return undefined;
    throw error;
  }
}

async function respond(mounts: readonly StaticMount[], request: IncomingMessage, response: ServerResponse): Promise<void> {
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.writeHead(405, { allow: 'GET, HEAD' }).end();
    return;
  }
  const file = resolveStaticPath(mounts, request.url ?? '/');
  const info = file === undefined ? undefined : await stat(file).catch(() => undefined);
  if (file === undefined || info === undefined || !info.isFile()) {
    response.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found\n');
    return;
  }
  response.writeHead(200, {
    'content-type': TYPES[extname(file).toLowerCase()] ?? 'application/octet-stream',
    'content-length': info.size,
    'cache-control': 'no-cache',
  });
  if (request.method === 'HEAD') {
    response.end();
    return;
  }
  createReadStream(file).pipe(response);
}

/** Starts serving `mounts`; resolves with the server and its URL once listening. */
export async function serveStatic(
  mounts: readonly StaticMount[],
  options: { readonly host: string; readonly port: number },
): Promise<{ server: Server; url: string }> {
  const server = createServer((request, response) => {
    respond(mounts, request, response).catch(() => {
      if (!response.headersSent) response.writeHead(500).end();
      else response.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : options.port;
  const host = options.host.includes(':') ? `[${options.host}]` : options.host;
  return { server, url: `http://${host}:${port}/` };
}
