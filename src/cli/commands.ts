/**
 * The CLI command table. To add a command, write `src/cli/<name>-command.ts` exporting a CliCommand
 * and register it in `commands` below (the key must equal the command's `name`).
 */
import type { RouterRegistry } from '../routing/router-registry.js';
import type { CliIo } from './io.js';
import { demoCommand } from './demo-command.js';
import { forwardCommand } from './forward-command.js';
import { generateCommand } from './generate-command.js';
import { infoCommand } from './info-command.js';
import { initCommand } from './init-command.js';
import { inspectCommand } from './inspect-command.js';
import { trainCommand } from './train-command.js';
import { evalCommand } from './eval-command.js';

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

/** Every command, in the order `--help` lists them. */
export const commands: Readonly<Record<string, CliCommand>> = {
  info: infoCommand,
  generate: generateCommand,
  forward: forwardCommand,
  init: initCommand,
  inspect: inspectCommand,
  train: trainCommand,
  eval: evalCommand,
  demo: demoCommand,
};

export function findCommand(name: string): CliCommand | undefined {
  return Object.hasOwn(commands, name) ? commands[name] : undefined;
}
