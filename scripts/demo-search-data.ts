/**
 * Writes a JSONL file of the demo's four tasks for `routed-peft search` (src/demo/search-data.ts): prompt,
 * completion and task name per line, drawn from seed 1000, without any prompt the demo scores its runs with
 * seeds 0-2 on.
 *
 *   node --import tsx scripts/demo-search-data.ts OUT.jsonl [PER_TASK]
 */
import { writeFile } from 'node:fs/promises';
import { demoSearchJsonl } from '../src/demo/search-data.js';

const [out, perTask] = process.argv.slice(2);
if (out === undefined) {
  process.stderr.write('usage: node --import tsx scripts/demo-search-data.ts OUT.jsonl [PER_TASK]\n');
  process.exit(2);
}
await writeFile(out, demoSearchJsonl(perTask === undefined ? {} : { perTask: Number(perTask) }));
process.stderr.write(`wrote ${out}\n`);
