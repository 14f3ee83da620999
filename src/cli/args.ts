/**
 * Small helpers over node:util parseArgs for CLI commands: strict parsing, and conversion of flag
 * values to numbers, integers, integer lists and choices with range checks. Every problem throws a
 * UsageError that names the flag and the bad value (the CLI prints it with the command's usage, exit 2).
 */
import { parseArgs } from 'node:util';
import type { ParseArgsConfig } from 'node:util';
import { UsageError } from '../errors.js';

/** One flag, as node:util parseArgs describes it. */
export interface FlagSpec {
  readonly type: 'string' | 'boolean';
  readonly short?: string;
  readonly multiple?: boolean;
  readonly default?: string | boolean | readonly string[] | readonly boolean[];
}

export type FlagSpecs = Readonly<Record<string, FlagSpec>>;

type FlagValue<S extends FlagSpec> = S['type'] extends 'boolean'
  ? S['multiple'] extends true
    ? boolean[]
    : boolean
  : S['multiple'] extends true
    ? string[]
    : string;

/** Parsed flag values: a flag with a `default` is always present, the others may be missing. */
export type FlagValues<O extends FlagSpecs> = {
  -readonly [K in keyof O as O[K] extends { readonly default: unknown } ? K : never]: FlagValue<O[K]>;
} & {
  -readonly [K in keyof O as O[K] extends { readonly default: unknown } ? never : K]?: FlagValue<O[K]>;
};

export interface ParsedArgs<O extends FlagSpecs> {
  readonly values: FlagValues<O>;
  readonly positionals: string[];
}

export interface ParseOptions {
  /** Accept positional arguments (default false: any positional is a usage error). */
  readonly allowPositionals?: boolean;
}

/** A value that looks like a negative number (`-1`, `-0.5`, `-1e3`), not like a flag. */
const NEGATIVE_NUMBER = /^-(\d|\.\d)/;

/**
 * `--steps -1`: parseArgs reads `-1` as an option and calls the argument "ambiguous" without naming it; a
 * string flag followed by something shaped like a negative number takes it as its value (`--steps=-1`), so the
 * flag's own check can say what is wrong with the value.
 */
function joinNegativeValues(args: readonly string[], options: FlagSpecs): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (arg === '--') {
      out.push(...args.slice(i));
      break;
    }
    const next = args[i + 1];
    const name = arg.startsWith('--') && !arg.includes('=') ? arg.slice(2) : undefined;
    if (name !== undefined && Object.hasOwn(options, name) && options[name]?.type === 'string' && next !== undefined && NEGATIVE_NUMBER.test(next)) {
      out.push(`${arg}=${next}`);
      i++;
      continue;
    }
    out.push(arg);
  }
  return out;
}

/** parseArgs in strict mode; unknown flags, missing values and unexpected positionals become UsageErrors. */
export function parseStrict<const O extends FlagSpecs>(args: readonly string[], options: O, parseOptions: ParseOptions = {}): ParsedArgs<O> {
  try {
    const { values, positionals } = parseArgs({
      args: joinNegativeValues(args, options),
      options: options as ParseArgsConfig['options'],
      strict: true,
      allowPositionals: parseOptions.allowPositionals ?? false,
    });
    return { values: { ...values } as FlagValues<O>, positionals: [...positionals] };
  } catch (error) {
    if (error instanceof TypeError && 'code' in error && String(error.code).startsWith('ERR_PARSE_ARGS_')) {
      throw new UsageError(error.message, { cause: error });
    }
    throw error;
  }
}

export interface NumberRange {
  readonly min?: number;
  readonly max?: number;
  /** Exclude `min` itself (e.g. a learning rate must be > 0). */
  readonly minExclusive?: boolean;
  /** Exclude `max` itself. */
  readonly maxExclusive?: boolean;
}

export interface IntListOptions extends NumberRange {
  /** Fewest items allowed (default 1). */
  readonly minLength?: number;
  readonly maxLength?: number;
  /** Reject repeated values. */
  readonly unique?: boolean;
}

const INT_PATTERN = /^[+-]?\d+$/;
const NUMBER_PATTERN = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

/** Parses a decimal integer like `12` or `-3`; rejects `1.5`, `1e3`, `0x10`, `` and unsafe integers. */
export function toInt(flag: string, raw: string, range: NumberRange = {}): number {
  const text = raw.trim();
  const value = INT_PATTERN.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(value)) throw bad(flag, raw, `an integer${describeRange(range)}`);
  checkRange(flag, raw, value, range, 'an integer');
  return value;
}

/** Parses a finite decimal number like `0.5`, `-2`, `3e-4`; rejects `NaN`, `Infinity`, `0x10` and ``. */
export function toNumber(flag: string, raw: string, range: NumberRange = {}): number {
  const text = raw.trim();
  const value = NUMBER_PATTERN.test(text) ? Number(text) : Number.NaN;
  if (!Number.isFinite(value)) throw bad(flag, raw, `a number${describeRange(range)}`);
  checkRange(flag, raw, value, range, 'a number');
  return value;
}

/** Parses a comma-separated integer list like `1,2,3` (spaces around items are allowed; empty items are not). */
export function toIntList(flag: string, raw: string, options: IntListOptions = {}): number[] {
  const what = `a comma-separated list of integers${describeRange(options)}`;
  const items = raw.trim() === '' ? [] : raw.split(',').map((item) => item.trim());
  if (items.some((item) => item === '')) throw bad(flag, raw, `${what} (no empty items)`);
  const values = items.map((item) => {
    const value = INT_PATTERN.test(item) ? Number(item) : Number.NaN;
    if (!Number.isSafeInteger(value)) throw bad(flag, raw, `${what}; '${item}' is not an integer`);
    checkRange(flag, raw, value, options, 'a list of integers', `item ${item}`);
    return value;
  });
  const minLength = options.minLength ?? 1;
  if (values.length < minLength) throw bad(flag, raw, `${what} with at least ${minLength} item${minLength === 1 ? '' : 's'}`);
  if (options.maxLength !== undefined && values.length > options.maxLength) {
    throw bad(flag, raw, `${what} with at most ${options.maxLength} item${options.maxLength === 1 ? '' : 's'}`);
  }
  if (options.unique === true) {
    const seen = new Set<number>();
    for (const value of values) {
      if (seen.has(value)) throw bad(flag, raw, `${what} without repeats; ${value} appears twice`);
      seen.add(value);
    }
  }
  return values;
}

/** Checks that `raw` is one of `choices`. */
export function toChoice<const C extends readonly string[]>(flag: string, raw: string, choices: C): C[number] {
  if (!choices.includes(raw)) throw bad(flag, raw, `one of ${choices.join(', ')}`);
  return raw as C[number];
}

/** Applies `convert` when the flag was given, otherwise returns `fallback`. */
export function optional<T, D = T>(raw: string | undefined, convert: (raw: string) => T, fallback: D): T | D {
  return raw === undefined ? fallback : convert(raw);
}

/** `steps` → `--steps`; names that already start with `-` are kept. */
export function flagName(flag: string): string {
  return flag.startsWith('-') ? flag : `--${flag}`;
}

function bad(flag: string, raw: string, expected: string): UsageError {
  return new UsageError(`Invalid value for ${flagName(flag)}: '${raw}' (expected ${expected})`);
}

function checkRange(flag: string, raw: string, value: number, range: NumberRange, kind: string, subject?: string): void {
  const belowMin = range.min !== undefined && (range.minExclusive === true ? value <= range.min : value < range.min);
  const aboveMax = range.max !== undefined && (range.maxExclusive === true ? value >= range.max : value > range.max);
  if (belowMin || aboveMax) {
    const which = subject === undefined ? '' : `; ${subject} is out of range`;
    throw bad(flag, raw, `${kind}${describeRange(range)}${which}`);
  }
}

function describeRange(range: NumberRange): string {
  const parts: string[] = [];
  if (range.min !== undefined) parts.push(`${range.minExclusive === true ? '>' : '>='} ${range.min}`);
  if (range.max !== undefined) parts.push(`${range.maxExclusive === true ? '<' : '<='} ${range.max}`);
  return parts.length === 0 ? '' : ` ${parts.join(' and ')}`;
}
