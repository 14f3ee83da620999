/**
 * CLI entry point: `main(argv, io)` dispatches to a command from the table in commands.ts and
 * returns the exit code (0 ok, 1 failure, 2 usage error). bin/routed-peft.js calls it.
 */
import { RoutedPeftError, UsageError } from '../errors.js';
import { BACKEND_ENV_VAR, setDefaultThreads, THREADS_ENV_VAR } from '../backend.js';
import { toInt } from './args.js';
import { packageVersion } from '../version.js';
import { commands, findCommand } from './commands.js';
import type { CliCommand, CliContext } from './command.js';
import { processIo } from './io.js';
import type { CliIo } from './io.js';

export type { CliIo } from './io.js';

const HELP_FLAGS = new Set(['-h', '--help']);
const VERSION_FLAGS = new Set(['-V', '--version']);

export function globalUsage(): string {
  const list = Object.values(commands);
  const width = Math.max(0, ...list.map((c) => c.name.length));
  const rows = list.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`);
  return `Usage: routed-peft <command> [options]

Routed parameter-efficient fine-tuning on TensorFlow.js.

Commands:
${rows.join('\n')}

Options:
  -h, --help     Show this help; \`routed-peft <command> --help\` shows a command's options
  -V, --version  Print the version

${GLOBAL_OPTIONS}`;
}

/** Options every command accepts (main.ts handles them before the command sees its arguments). */
export const GLOBAL_OPTIONS = `Options of every command:
  --threads N    Threads the wasm backend computes on (default: ${THREADS_ENV_VAR}, else the available
                 parallelism); 1 = the single-threaded path; \`routed-peft info\` shows the count in use

Environment:
  ${BACKEND_ENV_VAR}  tensorflow | webgpu | wasm | cpu | auto (default auto)
  ${THREADS_ENV_VAR}  threads for the wasm backend (default: the available parallelism)
`;

/**
 * Takes `--threads N` / `--threads=N` out of a command's arguments (before any `--`), so every command
 * accepts it; returns the count (undefined when absent) and the remaining arguments.
 */
export function takeThreadsFlag(args: readonly string[]): { threads: number | undefined; rest: string[] } {
  const rest: string[] = [];
  let threads: number | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (arg === '--') {
      rest.push(...args.slice(i));
      break;
    }
    if (arg === '--threads' || arg.startsWith('--threads=')) {
      const raw = arg === '--threads' ? args[++i] : arg.slice('--threads='.length);
      if (raw === undefined || raw.startsWith('-'))
        throw new UsageError("Option '--threads <N>' argument missing", { hint: 'Give a whole number ≥ 1, e.g. --threads 2' });
      threads = toInt('threads', raw, { min: 1 });
      continue;
    }
    rest.push(arg);
  }
  return { threads, rest };
}

export async function main(argv: string[], io: CliIo = processIo, context: CliContext = {}): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined) {
    io.stderr(`routed-peft: no command given\n\n${globalUsage()}`);
    return 2;
  }
  if (HELP_FLAGS.has(first)) {
    io.stdout(globalUsage());
    return 0;
  }
  if (VERSION_FLAGS.has(first)) {
    io.stdout(`${packageVersion()}\n`);
    return 0;
  }
  if (first === 'help') return help(rest, io);
  const command = findCommand(first);
  if (command === undefined) {
    const what = first.startsWith('-') ? 'unknown option' : 'unknown command';
    io.stderr(`routed-peft: ${what} '${first}'\n\n${globalUsage()}`);
    return 2;
  }
  if (wantsHelp(rest)) {
    io.stdout(commandUsage(command));
    return 0;
  }
  try {
    const { threads, rest: commandArgs } = takeThreadsFlag(rest);
    if (threads !== undefined) setDefaultThreads(threads);
    return await command.run(commandArgs, io, context);
  } catch (error) {
    return reportError(error, command, io);
  }
}

/** `routed-peft help [command]`. */
function help(args: readonly string[], io: CliIo): number {
  const [name] = args;
  if (name === undefined) {
    io.stdout(globalUsage());
    return 0;
  }
  const command = findCommand(name);
  if (command === undefined) {
    io.stderr(`routed-peft: unknown command '${name}'\n\n${globalUsage()}`);
    return 2;
  }
  io.stdout(commandUsage(command));
  return 0;
}

function commandUsage(command: CliCommand): string {
  return `${withNewline(command.usage)}\n${GLOBAL_OPTIONS}`;
}

/** A help flag before any `--` terminator. */
function wantsHelp(args: readonly string[]): boolean {
  for (const arg of args) {
    if (arg === '--') return false;
    if (HELP_FLAGS.has(arg)) return true;
  }
  return false;
}

function reportError(error: unknown, command: CliCommand, io: CliIo): number {
  if (error instanceof UsageError) {
    io.stderr(`routed-peft ${command.name}: ${error.message}\n\n${commandUsage(command)}`);
    return 2;
  }
  if (error instanceof RoutedPeftError) {
    io.stderr(`routed-peft ${command.name}: ${error.message}\n`);
    return 1;
  }
  const detail = error instanceof Error ? (error.stack ?? `${error.name}: ${error.message}`) : String(error);
  io.stderr(`routed-peft ${command.name}: unexpected error\n${withNewline(detail)}`);
  return 1;
}

function withNewline(text: string): string {
  return text.endsWith('\n') ? text : `${text}\n`;
}
