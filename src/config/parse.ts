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

function describeValue(root: unknown, path: readonly PropertyKey[]): string {
  let value: unknown = root;
  for (const key of path) {
    if (value === null || typeof value !== 'object') return 'nothing';
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  if (value === undefined) return 'nothing';
  const json = JSON.stringify(value);
  return json === undefined ? String(value) : json.length > 80 ? `${json.slice(0, 77)}...` : json;
}

type Issue = zcore.$ZodIssue;

/**
 * A union's failure lists every option's issues; report the option that got furthest (its issues reach
 * deepest into the value), so `{kind: "stack", children: [...]}` errors name the bad child, not "Invalid input".
 */
function expandIssue(issue: Issue): Issue[] {
  if (issue.code !== 'invalid_union' || issue.errors.length === 0) return [issue];
  const depth = (issues: readonly Issue[]): number => Math.max(...issues.map((i) => i.path.length + (i.code === 'invalid_type' ? 0 : 0.5)));
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
  const issues = expanded.map((issue) => {
    const where = formatPath(issue.path);
    return `${where === '' ? what : `${what}.${where}`}: ${issue.message} (got ${describeValue(value, issue.path)})`;
  });
  const first = expanded[0];
  throw new ConfigError(`invalid ${what}:\n  ${issues.join('\n  ')}`, {
    path: first === undefined ? what : `${what}${first.path.length > 0 ? '.' : ''}${formatPath(first.path)}`,
    hint: 'Fix the listed fields; see README for the schema',
  });
}
