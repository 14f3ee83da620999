/**
 * Builds the page (web/index.html) into dist/web/: `npm run build:web`. The library comes from src/browser.ts
 * (no Node built-ins); tfjs-wasm's .wasm files are emitted as assets and located with setWasmPaths.
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  base: './',
  logLevel: 'warn',
  build: {
    outDir: fileURLToPath(new URL('../dist/web', import.meta.url)),
    emptyOutDir: true,
    target: 'es2022',
    chunkSizeWarningLimit: 4096,
    assetsInlineLimit: 0,
  },
});
