// Child script for threads.test.ts: wasm asked for 2 threads where SharedArrayBuffer does not exist (as in a
// browser page that is not crossOriginIsolated); prints the threads report as JSON on stdout. The wasm package
// is imported first (module loading itself needs SharedArrayBuffer under tsx), then SharedArrayBuffer goes.
import '@tensorflow/tfjs-backend-wasm';
import { selectBackend } from '../../src/backend.js';

Reflect.deleteProperty(globalThis, 'SharedArrayBuffer');
const report = await selectBackend({ preference: 'wasm', threads: 2 });
process.stdout.write(JSON.stringify(report.threads));
