/**
 * Sizes of the built page (dist/web/, `npm run build:web` first): every emitted file, raw and gzipped
 * (level 9), with totals for JavaScript and wasm. The webgpu chunk loads only when the webgpu backend is
 * chosen, and a browser fetches one of the three wasm binaries (plain, SIMD, or threaded SIMD).
 *
 *   npm run build:web && node --import tsx scripts/web-bundle-size.ts
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

const dir = join(import.meta.dirname, '..', 'dist', 'web', 'assets');
const kb = (bytes: number): string => `${(bytes / 1024).toFixed(1)} KiB`;
let js = 0;
let jsGzip = 0;
console.log('| file | raw | gzip |\n|---|---|---|');
for (const name of readdirSync(dir).sort()) {
  const bytes = readFileSync(join(dir, name));
  const gzip = gzipSync(bytes, { level: 9 }).length;
  if (name.endsWith('.js')) {
    js += bytes.length;
    jsGzip += gzip;
  }
  console.log(`| ${name.replace(/-[\w-]{8}\./, '.')} | ${kb(bytes.length)} | ${kb(gzip)} |`);
}
console.log(`| all JavaScript | ${kb(js)} | ${kb(jsGzip)} |`);

// The library's own share: src/browser.ts bundled alone, every package (tfjs, tokenizers, zod, …) external.
const { build } = await import('vite');
const out = await build({
  configFile: false,
  logLevel: 'silent',
  build: {
    write: false,
    minify: true,
    lib: { entry: join(import.meta.dirname, '..', 'src', 'browser.ts'), formats: ['es'], fileName: 'routed-peft' },
    rollupOptions: { external: (id: string) => !id.startsWith('.') && !id.startsWith('/') },
  },
});
const chunks = (Array.isArray(out) ? out : [out]).flatMap((o) => ('output' in o ? o.output : [])).filter((c) => c.type === 'chunk');
const code = Buffer.concat(chunks.map((c) => Buffer.from(c.code)));
console.log(`| of which routed-peft itself (src/browser.ts, packages external, minified) | ${kb(code.length)} | ${kb(gzipSync(code, { level: 9 }).length)} |`);
