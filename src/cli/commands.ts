/**
 * The CLI command table. To add a command, write `src/cli/<name>-command.ts` exporting a CliCommand
 * (command.ts) and register it in `commands` below (the key must equal the command's `name`).
 */
import { analyzeCommand } from './analyze-command.js';
import type { CliCommand } from './command.js';
import { demoCommand } from './demo-command.js';
import { forwardCommand } from './forward-command.js';
import { generateCommand } from './generate-command.js';
import { infoCommand } from './info-command.js';
import { initCommand } from './init-command.js';
import { inspectCommand } from './inspect-command.js';
import { trainCommand } from './train-command.js';
import { evalCommand } from './eval-command.js';
import { serveCommand } from './serve-command.js';
import { webCommand } from './web-command.js';
import { searchCommand } from './search-command.js';

/** Every command, in the order `--help` lists them. */
export const commands: Readonly<Record<string, CliCommand>> = {
  info: infoCommand,
  generate: generateCommand,
  forward: forwardCommand,
  init: initCommand,
  inspect: inspectCommand,
  train: trainCommand,
  eval: evalCommand,
  analyze: analyzeCommand,
  search: searchCommand,
  demo: demoCommand,
  serve: serveCommand,
  web: webCommand,
};

export function findCommand(name: string): CliCommand | undefined {
  return Object.hasOwn(commands, name) ? commands[name] : undefined;
}
