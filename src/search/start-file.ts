/**
 * The file of `routed-peft search --start FILE`: the points of the space a search starts from — one
 * candidate object or an array of them, written as trials.jsonl's `candidate` fields are, e.g.
 *
 *   {"kind":"lora","injection":"all-linear","layers":"all","budgetShare":1,
 *    "routing":{"kind":"route","experts":4,"router":{"kind":"top-k","k":2},"granularity":"sequence","placement":"model"}}
 *
 * This reads the shape only; runSearch checks that each is a point of the space and fits the budget.
 */
import { readFile } from 'node:fs/promises';
import { formatPath } from '../config/parse.js';
import { SearchError } from './errors.js';
import type { Candidate } from './space.js';
import { CandidateRecord } from './trial-log.js';

const HINT = 'Give one candidate object or an array of them, as the "candidate" fields of a search\'s trials.jsonl';

export function parseStartCandidates(text: string, path: string): Candidate[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new SearchError(`--start ${path} is not JSON`, { path, cause: error, hint: HINT });
  }
  const items = Array.isArray(value) ? value : [value];
  if (items.length === 0) throw new SearchError(`--start ${path} holds no candidate`, { path, hint: HINT });
  return items.map((item, i) => {
    const parsed = CandidateRecord.safeParse(item);
    if (parsed.success) return parsed.data as Candidate;
    const issue = parsed.error.issues[0];
    const where = formatPath([...(Array.isArray(value) ? [i] : []), ...(issue?.path ?? [])]);
    throw new SearchError(`--start ${path}${where === '' ? '' : ` at ${where}`}: ${issue?.message ?? 'not a candidate'}`, { path, hint: HINT });
  });
}

export async function readStartCandidates(path: string): Promise<Candidate[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new SearchError(`cannot read --start ${path}: ${(error as Error).message}`, { path, cause: error, hint: HINT });
  }
  return parseStartCandidates(text, path);
}
