/**
 * Validation at the edge: every public factory parses plain objects through zod here, so an invalid spec
 * becomes one ConfigError that names the offending path and value.
 */
import type { z } from 'zod';
import type * as zcore from 'zod/v4/core';
import { ConfigError } from '../errors.js';

/** Formats a zod path like `experts[2].rank`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else out += out === '' ? String(key) : `.${String(key)}`;
  }
  return out;
}

/**
 * A short JSON-like preview of any value, for messages. Never throws and never recurses deeply: cyclic,
 * deeply nested or huge values (hostile input) are cut off at `max` characters / three levels.
 */
export function previewValue(value: unknown, max = 80): string {
  const out: string[] = [];
  let length = 0;
  const push = (text: string): boolean => {
    out.push(text);
    length += text.length;
    return length <= max;
  };
  const walk = (v: unknown, depth: number): boolean => {
    if (v === undefined) return push('undefined');
    if (v === null || typeof v === 'boolean') return push(String(v));
    if (typeof v === 'number') return push(String(v));
    if (typeof v === 'bigint') return push(`${v}n`);
    if (typeof v === 'string') return push(JSON.stringify(v.length > max ? `${v.slice(0, max)}…` : v));
    if (typeof v !== 'object') return push(`<${typeof v}>`);
    if (depth >= 3) return push(Array.isArray(v) ? '[...]' : '{...}');
    if (Array.isArray(v)) {
      if (!push('[')) return false;
      for (let i = 0; i < v.length; i++) {
        if (i > 0 && !push(',')) return false;
        if (!walk(v[i], depth + 1)) return false;
      }
      return push(']');
    }
    if (!push('{')) return false;
    let first = true;
    for (const key of Object.keys(v)) {
      if (!first && !push(',')) return false;
      first = false;
      if (!push(`${JSON.stringify(key.length > max ? `${key.slice(0, max)}…` : key)}:`)) return false;
      if (!walk((v as Record<string, unknown>)[key], depth + 1)) return false;
    }
    return push('}');
  };
  let text: string;
  try {
    const complete = walk(value, 0);
    text = out.join('');
    if (!complete || text.length > max) text = `${text.slice(0, max - 3)}...`;
  } catch {
    text = '<unprintable value>';
  }
  return text;
}

function describeValue(root: unknown, path: readonly PropertyKey[]): string {
  let value: unknown = root;
  for (const key of path) {
    if (value === null || typeof value !== 'object') return 'nothing';
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  if (value === undefined) return 'nothing';
  return previewValue(value);
}

type Issue = zcore.$ZodIssue;

/** How many issues a ConfigError lists before "... and N more". */
const LISTED_ISSUES = 20;

/**
 * A union's failure lists every option's issues; report the option that got furthest (its issues reach
 * deepest into the value), so `{kind: "stack", children: [...]}` errors name the bad child, not "Invalid input".
 */
function expandIssue(issue: Issue): Issue[] {
  if (issue.code !== 'invalid_union' || issue.errors.length === 0) return [issue];
  const depth = (issues: readonly Issue[]): number => issues.reduce((m, i) => Math.max(m, i.path.length + (i.code === 'invalid_type' ? 0 : 0.5)), -Infinity);
  const best = [...issue.errors].sort((a, b) => depth(b) - depth(a))[0] ?? [];
  if (best.length === 0 || depth(best) === 0) return [issue];
  return best.flatMap((inner) => expandIssue({ ...inner, path: [...issue.path, ...inner.path] } as Issue));
}

/**
 * Parses `value` with `schema`; on failure throws a ConfigError listing every issue as
 * `<what>.<path>: <message> (got <value>)`.
 */
export function parseConfig<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const expanded = result.error.issues.flatMap(expandIssue);
  const issues = expanded.slice(0, LISTED_ISSUES).map((issue) => {
    const where = formatPath(issue.path);
    return `${where === '' ? what : `${what}.${where}`}: ${issue.message} (got ${describeValue(value, issue.path)})`;
  });
  if (expanded.length > LISTED_ISSUES) issues.push(`... and ${expanded.length - LISTED_ISSUES} more`);
  const first = expanded[0];
  throw new ConfigError(`invalid ${what}:\n  ${issues.join('\n  ')}`, {
    path: first === undefined ? what : `${what}${first.path.length > 0 ? '.' : ''}${formatPath(first.path)}`,
    hint: 'Fix the listed fields; see README for the schema',
  });
}
