// Child script for threads.test.ts: the last-position logits of the test model on the backend and thread count
// named by argv (`node --import tsx test/threads/reference-logits.ts <threads>`), printed as JSON on stdout.
import { selectBackend } from '../../src/backend.js';
import { randomIds, randomLlama } from '../../benchmarks/lib/random-model.js';
import { THREADS_TEST_MODEL, THREADS_TEST_SHAPE } from './model.js';

const threads = Number(process.argv[2] ?? '1');
const report = await selectBackend({ preference: 'wasm', threads });
const base = randomLlama(THREADS_TEST_MODEL);
const ids = randomIds(THREADS_TEST_SHAPE.batch, THREADS_TEST_SHAPE.tokens, THREADS_TEST_MODEL.vocabSize);
const logits = base.forward({ ids, output: 'last-logits' }); // [B, V]
process.stdout.write(JSON.stringify({ threads: report.threads, logits: Array.from(logits.dataSync()) }));
logits.dispose();
base.dispose();
