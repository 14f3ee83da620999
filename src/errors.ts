/**
 * Typed errors. Every error the library throws on bad input is a RoutedPeftError:
 * it names the offending value and where it was found (`path`), and says how to fix it (`hint`).
 */

export interface ErrorDetails {
  /** Where the bad value was found: a file path, a tensor name, a config path like `experts[2].rank`. */
  readonly path?: string;
  /** One sentence telling the user how to fix it. */
  readonly hint?: string;
  readonly cause?: unknown;
}

export class RoutedPeftError extends Error {
  readonly path: string | undefined;
  readonly hint: string | undefined;

  constructor(message: string, details: ErrorDetails = {}) {
    const where = details.path === undefined ? '' : ` (at ${details.path})`;
    const fix = details.hint === undefined ? '' : `. ${details.hint}`;
    super(`${message}${where}${fix}`, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.path = details.path;
    this.hint = details.hint;
  }
}

/** A spec or option object failed validation. */
export class ConfigError extends RoutedPeftError {}

/** A checkpoint file or directory is malformed, incomplete, or does not fit the model. */
export class CheckpointError extends RoutedPeftError {}

/** A safetensors file violates the format. */
export class SafetensorsError extends CheckpointError {}

/** A tensor has the wrong shape for where it is used. */
export class ShapeError extends RoutedPeftError {}

/** A requested tfjs backend cannot be loaded. */
export class BackendError extends RoutedPeftError {}

/**
 * A synchronous read (`dataSync`) was asked of a backend that reads only asynchronously (webgpu in Node):
 * the message names what needed it and the async alternative.
 */
export class SyncReadError extends BackendError {}

/** A tokenizer file is malformed or cannot encode/decode the input. */
export class TokenizerError extends RoutedPeftError {}

/** An image cannot be decoded or does not fit the vision encoder (size, channels); `path` names the file or field. */
export class ImageError extends RoutedPeftError {}

/** Bad command-line arguments (the CLI exits 2 on these). */
export class UsageError extends RoutedPeftError {}

/**
 * A tensor holds NaN or ±Infinity where finite values are required: weights read from a file (refused at
 * load unless the caller opts out with `allowNonFinite`), or a model output. `tensor` and `index` name the
 * first offending element.
 */
export class NonFiniteError extends RoutedPeftError {
  readonly tensor: string | undefined;
  readonly index: number | undefined;

  constructor(message: string, details: ErrorDetails & { readonly tensor?: string; readonly index?: number } = {}) {
    super(message, details);
    this.tensor = details.tensor;
    this.index = details.index;
  }
}

/** An output file or directory cannot be written (read-only, no space, no permission); `path` names it. */
export class OutputError extends RoutedPeftError {
  /** The operating system's error code (EROFS, ENOSPC, EACCES, …), when there is one. */
  readonly code: string | undefined;

  constructor(message: string, details: ErrorDetails & { readonly code?: string } = {}) {
    super(message, details);
    this.code = details.code;
  }
}

/** Formats a shape for messages: [2, 3, 4]. */
export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/** An error as plain data, to cross a thread boundary (worker pools, data-parallel replicas). */
export interface SentError {
  readonly name: string;
  readonly message: string;
  readonly path?: string | undefined;
  readonly hint?: string | undefined;
}

/** The error classes of this file by name (what errorFromData revives; callers add their own). */
export const LIBRARY_ERRORS: Readonly<Record<string, new (message: string) => RoutedPeftError>> = {
  RoutedPeftError,
  ConfigError,
  CheckpointError,
  SafetensorsError,
  ShapeError,
  BackendError,
  SyncReadError,
  TokenizerError,
  ImageError,
  UsageError,
  NonFiniteError,
  OutputError,
};

/** An error as plain data: its class name, message and, for a RoutedPeftError, path and hint. */
export function errorToData(error: unknown): SentError {
  if (error instanceof RoutedPeftError) return { name: error.name, message: error.message, path: error.path, hint: error.hint };
  if (error instanceof Error) return { name: error.name, message: error.message };
  return { name: 'Error', message: String(error) };
}

/** The error `sent` describes, as the same class (from `classes`) with the same message, path and hint. */
export function errorFromData(sent: SentError, classes: Readonly<Record<string, new (message: string) => RoutedPeftError>>): Error {
  const Typed = classes[sent.name];
  if (Typed === undefined) {
    const error = new Error(sent.message);
    if (sent.name !== 'Error') error.name = sent.name;
    return error;
  }
  const error = new Typed('');
  // The message already carries the path and hint (RoutedPeftError appended them where it was thrown).
  Object.assign(error, { message: sent.message, path: sent.path, hint: sent.hint });
  return error;
}
