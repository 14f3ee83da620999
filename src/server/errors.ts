/**
 * HTTP errors in OpenAI's shape. Every failure a request can cause becomes one ServerError: a status, and a
 * body `{ error: { message, type, param, code } }` as the OpenAI API returns it, so OpenAI clients raise
 * their usual exception classes (BadRequestError, NotFoundError, RateLimitError, ...). The message names the
 * offending field and value and says how to fix it, like every RoutedPeftError.
 */
import type { z } from 'zod';
import { formatPath } from '../config/parse.js';
import { RoutedPeftError } from '../errors.js';

export type ErrorType = 'invalid_request_error' | 'authentication_error' | 'not_found_error' | 'rate_limit_error' | 'server_error';

export interface OpenAiErrorBody {
  readonly error: {
    readonly message: string;
    readonly type: ErrorType;
    readonly param: string | null;
    readonly code: string | null;
  };
}

export interface ServerErrorDetails {
  readonly status: number;
  readonly type?: ErrorType;
  /** The request field at fault (`max_tokens`, `messages[1].content`). */
  readonly param?: string | undefined;
  /** A machine-readable code (`model_not_found`, `invalid_api_key`, ...). */
  readonly code?: string;
  readonly hint?: string;
  /** Extra response headers (e.g. Retry-After). */
  readonly headers?: Readonly<Record<string, string>>;
  readonly cause?: unknown;
}

/** A request failed; carries the HTTP status and the OpenAI error body. */
export class ServerError extends RoutedPeftError {
  readonly status: number;
  readonly type: ErrorType;
  readonly param: string | null;
  readonly code: string | null;
  readonly headers: Readonly<Record<string, string>>;

  constructor(message: string, details: ServerErrorDetails) {
    super(message, {
      ...(details.param === undefined ? {} : { path: details.param }),
      ...(details.hint === undefined ? {} : { hint: details.hint }),
      cause: details.cause,
    });
    this.status = details.status;
    this.type = details.type ?? (details.status >= 500 ? 'server_error' : 'invalid_request_error');
    this.param = details.param ?? null;
    this.code = details.code ?? null;
    this.headers = details.headers ?? {};
  }

  body(): OpenAiErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 400 for a field that is present but not allowed or not usable. */
export function badField(param: string, message: string, hint?: string): ServerError {
  return new ServerError(message, { status: 400, param, code: 'invalid_value', ...(hint === undefined ? {} : { hint }) });
}

function describeValue(root: unknown, path: readonly PropertyKey[]): string {
  let value: unknown = root;
  for (const key of path) {
    if (value === null || typeof value !== 'object') return 'nothing';
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  if (value === undefined) return 'nothing';
  const json = JSON.stringify(value);
  return json === undefined ? String(value) : json.length > 60 ? `${json.slice(0, 57)}...` : json;
}

type Issue = z.core.$ZodIssue;

/** A union's failure lists each option's issues: report the option that reached deepest into the value. */
function deepestIssue(issue: Issue): Issue {
  if (issue.code !== 'invalid_union' || issue.errors.length === 0) return issue;
  const depth = (issues: readonly Issue[]): number => Math.max(...issues.map((i) => i.path.length + (i.code === 'invalid_type' ? 0 : 0.5)));
  const best = [...issue.errors].sort((a, b) => depth(b) - depth(a))[0] ?? [];
  const first = best[0];
  if (first === undefined || depth(best) === 0) return issue;
  return deepestIssue({ ...first, path: [...issue.path, ...first.path] } as Issue);
}

/** Parses a request body with a zod schema; the first problem becomes a 400 naming the field and the value it got. */
export function parseBody<S extends z.ZodType>(schema: S, body: unknown): z.output<S> {
  if (body === undefined || body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new ServerError('the request body must be a JSON object', {
      status: 400,
      code: 'invalid_body',
      hint: 'Send Content-Type: application/json with an object body',
    });
  }
  const result = schema.safeParse(body);
  if (result.success) return result.data;
  const raw = result.error.issues[0];
  const issue = raw === undefined ? undefined : deepestIssue(raw);
  if (issue === undefined) throw new ServerError('invalid request body', { status: 400, code: 'invalid_body' });
  if (issue.code === 'unrecognized_keys') {
    const path = [...issue.path, issue.keys[0] ?? ''];
    const param = formatPath(path);
    throw new ServerError(`unknown field ${JSON.stringify(param)}`, {
      status: 400,
      param,
      code: 'unknown_field',
      hint: 'Remove it or check its spelling (see the README for the fields this server accepts)',
    });
  }
  const param = formatPath(issue.path);
  const where = param === '' ? 'request body' : param;
  throw new ServerError(`invalid ${where}: ${issue.message} (got ${describeValue(body, issue.path)})`, {
    status: 400,
    param: param === '' ? undefined : param,
    code: issue.path.length > 0 && describeValue(body, issue.path) === 'nothing' ? 'missing_field' : 'invalid_type',
  });
}

/** Any error thrown while serving, as a ServerError: library input errors are 400, anything else 500. */
export function toServerError(error: unknown): ServerError {
  if (error instanceof ServerError) return error;
  if (error instanceof RoutedPeftError) {
    return new ServerError(error.message, { status: 400, param: error.path, code: 'invalid_value', cause: error });
  }
  return new ServerError('internal server error', { status: 500, code: 'internal_error', cause: error });
}
