/** What every CLI command is and receives; the table of commands is commands.ts. */
import type { RouterRegistry } from '../routing/router-registry.js';
import type { CliIo } from './io.js';

/**
 * What the launcher provides beyond arguments and streams. src/ never imports routers/: bin/routed-peft.js
 * passes the built-in router kinds (routers/index.ts) here.
 */
export interface CliContext {
  readonly routers?: RouterRegistry;
}

export interface CliCommand {
  readonly name: string;
  /** One line, shown in `routed-peft --help`. */
  readonly summary: string;
  /** Full help text, starting with `Usage: routed-peft <name> ...`; shown by `--help` and after usage errors. */
  readonly usage: string;
  /**
   * Runs the command on the arguments after its name; resolves to the exit code.
   * Throw UsageError for bad arguments (exit 2) and other RoutedPeftErrors for failures (exit 1).
   */
  run(args: string[], io: CliIo, context: CliContext): Promise<number>;
}
