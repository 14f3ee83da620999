/**
 * Regular expressions from files (PEFT `target_modules` / `rank_pattern` keys, spec `/regex/` site entries,
 * globs) run on RE2JS, a linear-time engine (no backtracking), so a pattern like `(a+)+$` costs time
 * proportional to the input instead of hanging the process (ReDoS). RE2 has no backreferences or
 * lookaround; such a pattern is a RegexError naming it. Patterns longer than MAX_REGEX_SOURCE are refused
 * before compiling.
 */
import { RE2JS } from 're2js';
import { ConfigError, type ErrorDetails } from '../errors.js';

/** Longest pattern source accepted from a file (characters). */
export const MAX_REGEX_SOURCE = 10_000;

/** A pattern the linear-time engine cannot compile (syntax, unsupported construct, or too long). */
export class RegexError extends ConfigError {}

export interface SafeRegex {
  /** The pattern as given. */
  readonly source: string;
  /** Whether the pattern matches somewhere in `text` (like RegExp.prototype.test). */
  test(text: string): boolean;
  /** Whether the pattern matches all of `text` (Python's re.fullmatch). */
  fullMatch(text: string): boolean;
}

function short(text: string, max = 120): string {
  return JSON.stringify(text.length > max ? `${text.slice(0, max)}…` : text);
}

/**
 * Compiles `source` with RE2JS. Throws RegexError (a ConfigError) naming the pattern and `details.path`
 * when it is too long or RE2 cannot compile it.
 */
export function compileSafeRegex(source: string, details: ErrorDetails & { readonly what?: string } = {}): SafeRegex {
  const what = details.what ?? 'regular expression';
  if (source.length > MAX_REGEX_SOURCE) {
    throw new RegexError(`${what} ${short(source)} is ${source.length} characters long, more than the limit of ${MAX_REGEX_SOURCE}`, {
      ...details,
      hint: 'Use a shorter pattern, or a list of names',
    });
  }
  let compiled: RE2JS;
  try {
    compiled = RE2JS.compile(source);
  } catch (cause) {
    const reason = cause instanceof Error ? cause.message.replace(/^error parsing regexp: /, '') : String(cause);
    throw new RegexError(`${what} ${short(source)} cannot be compiled by the linear-time regex engine: ${reason.slice(0, 200)}`, {
      ...details,
      hint: 'Backreferences and lookaround are not supported (they can take exponential time); rewrite the pattern without them',
      cause,
    });
  }
  return {
    source,
    test: (text) => compiled.test(text),
    fullMatch: (text) => compiled.testExact(text),
  };
}

/** Escapes `text` so it matches itself literally in RE2 syntax. */
export function escapeRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
