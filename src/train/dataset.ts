/**
 * JSONL training data. One JSON object per line, of one of three kinds:
 *
 *   {"text": "..."}                              language modelling on the whole text
 *   {"prompt": "...", "completion": "..."}       language modelling on the completion only
 *   {"text": "...", "label": "positive" | 3}     sequence classification
 *
 * each with an optional `"task"` (a name or a non-negative integer) that task routers read. Text and
 * prompt/completion lines may carry an `"image"`: a PNG path (relative to the JSONL file) or a generated-image
 * spec object (vision/image-spec.ts, validated here: an unknown field is a malformed line), for a
 * MultimodalModel; readers that cannot use images must refuse such datasets (`datasetImages`). Other keys are
 * ignored. Text and prompt/completion lines may share a file (both are language modelling); labelled lines
 * may not be mixed with them.
 *
 * Names become integer ids in order of first appearance: `tasks[id]` and `labels[id]` give the names back.
 * Integers are taken as ids as written (`"task": 2` is task 2; the table then names it "2"), up to
 * MAX_DATASET_ID (65,535): a larger id is a malformed line, since the tables (and a classification head)
 * hold one entry per id up to the largest. A file may hold at most MAX_DATASET_ID + 1 distinct task (or
 * label) names. One file may not use both names and integers for tasks (or for labels), since "0" and 0
 * would be ambiguous. Pass the tables of a training set as `tasks` / `labels` when reading its validation
 * set, so ids agree.
 *
 * Malformed lines are reported by line number (1-based) and skipped; blank lines are ignored. A file with
 * more than `maxBadFraction` malformed non-empty lines, or with no examples at all, is refused.
 */
import { z } from 'zod';
import { ImageSpec } from '../vision/image-spec.js';
import { formatPath, parseConfig } from '../config/parse.js';
import { DatasetError } from './dataset-errors.js';

// ---------------------------------------------------------------------------------------------------------
// Public types

/** The image of a line: a PNG file (path resolved against the JSONL file's directory) or a generated spec. */
export type ExampleImage = { readonly kind: 'file'; readonly path: string } | { readonly kind: 'spec'; readonly spec: ImageSpec };

export interface TextExample {
  readonly kind: 'text';
  readonly text: string;
  readonly image?: ExampleImage;
  /** Task id (index into Dataset.tasks). */
  readonly task?: number;
  /** 1-based line in the source file. */
  readonly line: number;
}

export interface CompletionExample {
  readonly kind: 'prompt-completion';
  /** May be empty (unconditional generation). */
  readonly prompt: string;
  readonly completion: string;
  readonly image?: ExampleImage;
  readonly task?: number;
  readonly line: number;
}

export interface LabelledExample {
  readonly kind: 'labelled';
  readonly text: string;
  /** Class id (index into Dataset.labels). */
  readonly label: number;
  readonly task?: number;
  readonly line: number;
}

export type Example = TextExample | CompletionExample | LabelledExample;

/** `language-modelling` for text and prompt/completion lines; `classification` for labelled lines. */
export type DatasetKind = 'language-modelling' | 'classification';

export interface DatasetProblem {
  /** 1-based line number. */
  readonly line: number;
  readonly message: string;
}

export interface Dataset {
  /** The file path (or the name given to parseJsonlDataset). */
  readonly source: string;
  readonly kind: DatasetKind;
  readonly examples: readonly Example[];
  /** Malformed lines that were skipped. */
  readonly problems: readonly DatasetProblem[];
  /** Task names by id. */
  readonly tasks: readonly string[];
  /** Class names by id (empty for language modelling). */
  readonly labels: readonly string[];
  /** Non-empty lines read (examples + problems). */
  readonly lineCount: number;
}

export const DatasetOptions = z
  .object({
    /** Refuse the file when more than this fraction of its non-empty lines is malformed. */
    maxBadFraction: z.number().min(0).max(1).default(0.1),
    /** Task table to start from (e.g. the training set's, when reading its validation set). */
    tasks: z.array(z.string()).readonly().optional(),
    /** Label table to start from. */
    labels: z.array(z.string()).readonly().optional(),
  })
  .strict()
  .readonly();
export type DatasetOptions = z.input<typeof DatasetOptions>;

/** How many malformed lines a DatasetError lists before "... and N more". */
const LISTED_PROBLEMS = 5;

const FORMAT_HINT =
  'Write one JSON object per line: {"text": ...}, {"prompt": ..., "completion": ...} or {"text": ..., "label": ...}, each with an optional "task"';

// ---------------------------------------------------------------------------------------------------------
// Line schemas

const missingOr = (what: string, message: string) => (issue: { readonly input?: unknown }) => (issue.input === undefined ? `${what} is missing` : message);
const nonBlank = (what: string) =>
  z.string({ error: missingOr(what, `${what} must be a string`) }).refine((s) => s.trim() !== '', { error: `${what} must not be empty` });
/** Largest integer task or label id a dataset line may give; a file holds at most this + 1 distinct names. */
export const MAX_DATASET_ID = 65_535;

/** A name or a non-negative integer id up to MAX_DATASET_ID; null means "no task". */
const NameOrId = (what: string) => {
  const error = `${what} must be a non-empty string or a non-negative integer`;
  return z.union(
    [
      nonBlank(what),
      z
        .number({ error })
        .int({ error })
        .min(0, { error })
        .max(MAX_DATASET_ID, {
          error: (issue) => `${what} ${String(issue.input)} exceeds the largest id ${MAX_DATASET_ID}; use names, or ids 0..${MAX_DATASET_ID}`,
        }),
    ],
    { error },
  );
};

const ImageField = z.union([z.string().min(1, { error: 'image must be a PNG path or an image spec object' }), ImageSpec], {
  error: 'image must be a PNG path or an image spec object ({"kind": "shapes" | "digit", ...})',
});
const TextLine = z.object({ text: nonBlank('text'), image: ImageField.optional(), task: NameOrId('task').nullish() });
const CompletionLine = z.object({
  prompt: z.string({ error: missingOr('prompt', 'prompt must be a string (it may be empty)') }),
  completion: nonBlank('completion'),
  image: ImageField.optional(),
  task: NameOrId('task').nullish(),
});
const LabelledLine = z.object({ text: nonBlank('text'), label: NameOrId('label'), task: NameOrId('task').nullish() });

type ImageValue = string | ImageSpec | undefined;
type LineValue =
  | { readonly kind: 'text'; readonly text: string; readonly image?: ImageValue; readonly task?: string | number | null | undefined }
  | {
      readonly kind: 'prompt-completion';
      readonly prompt: string;
      readonly completion: string;
      readonly image?: ImageValue;
      readonly task?: string | number | null | undefined;
    }
  | { readonly kind: 'labelled'; readonly text: string; readonly label: string | number; readonly task?: string | number | null | undefined };

function zodProblem(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const where = formatPath(issue.path);
      return where === '' || issue.message.startsWith(where) ? issue.message : `${where}: ${issue.message}`;
    })
    .join('; ');
}

/** Parses one non-empty line; returns the value or a problem message. */
function parseLine(raw: string): LineValue | string {
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (error) {
    return `not valid JSON (${error instanceof Error ? error.message : String(error)})`;
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    return `expected a JSON object, got ${Array.isArray(json) ? 'an array' : json === null ? 'null' : typeof json}`;
  }
  const keys = Object.keys(json);
  if (keys.includes('label')) {
    const r = LabelledLine.safeParse(json);
    return r.success ? { kind: 'labelled', ...r.data } : zodProblem(r.error);
  }
  if (keys.includes('prompt') || keys.includes('completion')) {
    const r = CompletionLine.safeParse(json);
    return r.success ? { kind: 'prompt-completion', ...r.data } : zodProblem(r.error);
  }
  if (keys.includes('text')) {
    const r = TextLine.safeParse(json);
    return r.success ? { kind: 'text', ...r.data } : zodProblem(r.error);
  }
  return `expected "text", "prompt" + "completion", or "text" + "label"; got ${keys.length === 0 ? 'no fields' : `fields ${keys.map((k) => JSON.stringify(k)).join(', ')}`}`;
}

// ---------------------------------------------------------------------------------------------------------
// Name tables

/** Maps names (or integer ids) to ids; remembers which style the file used first and where. */
class IdTable {
  readonly names: string[];
  private readonly byName = new Map<string, number>();
  private style: { readonly kind: 'name' | 'integer'; readonly line: number } | undefined;

  constructor(
    private readonly what: 'task' | 'label',
    private readonly source: string,
    initial: readonly string[] = [],
  ) {
    this.names = [...initial];
    this.names.forEach((name, id) => {
      if (!this.byName.has(name)) this.byName.set(name, id);
    });
  }

  id(value: string | number, line: number): number {
    const kind = typeof value === 'number' ? 'integer' : 'name';
    if (this.style === undefined) this.style = { kind, line };
    else if (this.style.kind !== kind) {
      throw new DatasetError(
        `${this.source}: line ${line} gives a ${this.what} as ${kind === 'integer' ? 'an integer' : 'a name'} (${JSON.stringify(value)}), but line ${this.style.line} started with ${this.style.kind === 'integer' ? 'integer ids' : 'names'}`,
        { path: this.source, hint: `Use either names or integer ids for every "${this.what}" in one file` },
      );
    }
    if (typeof value === 'number') {
      for (let id = this.names.length; id <= value; id++) {
        const name = String(id);
        this.names.push(name);
        if (!this.byName.has(name)) this.byName.set(name, id);
      }
      return value;
    }
    const known = this.byName.get(value);
    if (known !== undefined) return known;
    const id = this.names.length;
    if (id > MAX_DATASET_ID) {
      throw new DatasetError(
        `${this.source}: line ${line} gives a ${MAX_DATASET_ID + 2}th distinct ${this.what} name (${JSON.stringify(value.slice(0, 80))}); at most ${MAX_DATASET_ID + 1} are allowed`,
        {
          path: this.source,
          hint: `Use at most ${MAX_DATASET_ID + 1} distinct "${this.what}" values in one dataset`,
        },
      );
    }
    this.names.push(value);
    this.byName.set(value, id);
    return id;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Reading

const familyOf = (kind: Example['kind']): DatasetKind => (kind === 'labelled' ? 'classification' : 'language-modelling');
const describeKind = (kind: Example['kind']): string =>
  kind === 'labelled'
    ? 'a labelled classification example ("text" + "label")'
    : kind === 'text'
      ? 'a language-modelling example ("text")'
      : 'a language-modelling example ("prompt" + "completion")';

/** Parses JSONL text. `source` names the data in messages (a file path, usually). */
export function parseJsonlDataset(text: string, source: string, options: DatasetOptions = {}): Dataset {
  const opts = parseConfig(DatasetOptions, options, 'dataset options');
  const tasks = new IdTable('task', source, opts.tasks);
  const labels = new IdTable('label', source, opts.labels);
  const examples: Example[] = [];
  const problems: DatasetProblem[] = [];
  let family: { readonly kind: DatasetKind; readonly line: number } | undefined;
  let lineCount = 0;

  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  lines.forEach((raw, index) => {
    const line = index + 1;
    if (raw.trim() === '') return;
    lineCount++;
    const value = parseLine(raw);
    if (typeof value === 'string') {
      problems.push({ line, message: value });
      return;
    }
    const kind = familyOf(value.kind);
    if (family === undefined) family = { kind, line };
    else if (family.kind !== kind) {
      throw new DatasetError(
        `${source}: line ${line} is ${describeKind(value.kind)}, but line ${family.line} started a ${family.kind} dataset; classification and language-modelling lines cannot be mixed`,
        { path: source, hint: 'Put labelled classification data and language-modelling data in separate files' },
      );
    }
    const task = value.task === undefined || value.task === null ? {} : { task: tasks.id(value.task, line) };
    const given = value.kind === 'labelled' ? undefined : value.image;
    const image: { image?: ExampleImage } =
      given === undefined
        ? {}
        : {
            image: typeof given === 'string' ? { kind: 'file', path: resolveBesideSource(source, given) } : { kind: 'spec', spec: given },
          };
    switch (value.kind) {
      case 'text':
        examples.push({ kind: 'text', text: value.text, ...image, ...task, line });
        break;
      case 'prompt-completion':
        examples.push({ kind: 'prompt-completion', prompt: value.prompt, completion: value.completion, ...image, ...task, line });
        break;
      case 'labelled':
        examples.push({ kind: 'labelled', text: value.text, label: labels.id(value.label, line), ...task, line });
        break;
    }
  });

  if (problems.length > 0 && problems.length > opts.maxBadFraction * lineCount) {
    const listed = problems.slice(0, LISTED_PROBLEMS).map((p) => `line ${p.line}: ${p.message}`);
    if (problems.length > LISTED_PROBLEMS) listed.push(`... and ${problems.length - LISTED_PROBLEMS} more`);
    throw new DatasetError(
      `${source}: ${problems.length} of ${lineCount} non-empty lines are malformed (more than ${formatPercent(opts.maxBadFraction)} allowed):\n  ${listed.join('\n  ')}`,
      { path: source, hint: `${FORMAT_HINT}; or raise maxBadFraction to skip more bad lines` },
    );
  }
  if (examples.length === 0 || family === undefined) {
    throw new DatasetError(`${source}: no examples (${lineCount === 0 ? 'the file holds no non-empty lines' : 'every line is malformed'})`, {
      path: source,
      hint: FORMAT_HINT,
    });
  }
  return { source, kind: family.kind, examples, problems, tasks: tasks.names, labels: labels.names, lineCount };
}

/** Lines of a dataset that carry an image (1-based), for readers that must refuse them. */
export function datasetImages(dataset: Dataset): number[] {
  return dataset.examples.flatMap((e) => (e.kind !== 'labelled' && e.image !== undefined ? [e.line] : []));
}

/**
 * An image path as written in a dataset line, resolved against the dataset file's folder (absolute paths,
 * POSIX or Windows, are kept). String-only so the parser stays free of Node built-ins for the browser.
 */
function resolveBesideSource(source: string, given: string): string {
  if (given.startsWith('/') || /^[A-Za-z]:[\\/]/.test(given) || given.startsWith('\\\\')) return given;
  const cut = Math.max(source.lastIndexOf('/'), source.lastIndexOf('\\'));
  return cut < 0 ? given : `${source.slice(0, cut + 1)}${given}`;
}

function formatPercent(fraction: number): string {
  return `${Number((fraction * 100).toFixed(2))}%`;
}
