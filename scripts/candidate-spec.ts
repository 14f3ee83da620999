/**
 * Writes the spec `routed-peft search` would train for one candidate of its space (src/search/space.ts),
 * fitted to a budget exactly as the search fits it (src/search/budget.ts): for probing the space by hand,
 * e.g. a candidate's neighbours, with `benchmarks/search-vs-routed.ts --spec OUT.json`.
 *
 *   node --import tsx scripts/candidate-spec.ts MODEL_DIR BUDGET CANDIDATE_JSON OUT.json
 *
 * CANDIDATE_JSON is a `candidate` object of trials.jsonl, e.g.
 *   '{"kind":"lora","injection":"all-linear","layers":"all","budgetShare":1,
 *     "routing":{"kind":"route","experts":4,"router":{"kind":"top-k","k":2},"granularity":"sequence","placement":"model"}}'
 */
import { writeFile } from 'node:fs/promises';
import { builtinRouters } from '../routers/index.js';
import { selectBackend } from '../src/backend.js';
import { loadBaseModel } from '../src/base/checkpoints/load-model.js';
import { formatPath } from '../src/config/parse.js';
import { fitCandidate } from '../src/search/budget.js';
import { searchKind } from '../src/search/space.js';
import { CandidateRecord } from '../src/search/trial-log.js';

const USAGE = 'usage: node --import tsx scripts/candidate-spec.ts MODEL_DIR BUDGET CANDIDATE_JSON OUT.json\n';

function fail(message: string): never {
  process.stderr.write(`${message}\n${USAGE}`);
  process.exit(2);
}

const [modelDir, budgetText, candidateText, out] = process.argv.slice(2);
if (modelDir === undefined || budgetText === undefined || candidateText === undefined || out === undefined) fail('missing arguments');
const budget = Number(budgetText);
if (!Number.isInteger(budget) || budget < 1) fail(`BUDGET must be a whole number of parameters ≥ 1, got '${budgetText}'`);
let raw: unknown;
try {
  raw = JSON.parse(candidateText);
} catch (error) {
  fail(`CANDIDATE_JSON is not JSON: ${(error as Error).message}`);
}
const parsed = CandidateRecord.safeParse(raw);
if (!parsed.success) {
  const issue = parsed.error.issues[0];
  fail(`CANDIDATE_JSON${issue === undefined ? '' : ` at ${formatPath(issue.path)}: ${issue.message}`}`);
}
const candidate = parsed.data;
try {
  searchKind(candidate.kind);
} catch {
  fail(`CANDIDATE_JSON: unknown adapter kind '${candidate.kind}'`);
}

await selectBackend({ preference: 'wasm', threads: 1 });
const { model: base } = await loadBaseModel(modelDir);
const fitted = fitCandidate(base, builtinRouters(), candidate, Math.floor(budget * candidate.budgetShare), 0);
if (fitted === undefined) fail(`the candidate does not fit ${budget} × ${candidate.budgetShare} parameters even at size 1`);
await writeFile(out, `${JSON.stringify(fitted.spec, null, 2)}\n`);
process.stderr.write(`wrote ${out}: size ${fitted.size}, ${fitted.trainableParams} trainable parameters\n`);
process.exit(0);
