/**
 * The CLI's view of the terminal. Commands write through a CliIo instead of `process.stdout`, so
 * tests can capture output and stdout stays reserved for the command's result (e.g. JSON).
 */

export interface CliIo {
  /** Writes `text` verbatim to standard output (include the trailing newline yourself). */
  stdout(text: string): void;
  /** Writes `text` verbatim to standard error. */
  stderr(text: string): void;
  /** Whether standard output is a terminal (for progress bars, colours). */
  readonly isTTY: boolean;
}

/** The default CliIo, bound to the process streams. */
export const processIo: CliIo = {
  stdout: (text) => {
    process.stdout.write(text);
  },
  stderr: (text) => {
    process.stderr.write(text);
  },
  get isTTY(): boolean {
    return process.stdout.isTTY === true;
  },
};

/** A CliIo that keeps everything in memory; for tests and for embedding the CLI. */
export interface MemoryIo extends CliIo {
  readonly out: string;
  readonly err: string;
}

export function createMemoryIo(options: { readonly isTTY?: boolean } = {}): MemoryIo {
  let out = '';
  let err = '';
  return {
    stdout: (text) => {
      out += text;
    },
    stderr: (text) => {
      err += text;
    },
    isTTY: options.isTTY ?? false,
    get out(): string {
      return out;
    },
    get err(): string {
      return err;
    },
  };
}
