#!/usr/bin/env node
/**
 * The `nysact` command (package.json `bin`): a dispatcher over lazily loaded command modules.
 *
 * A command is a module in this folder exporting {@link CommandModule} (`main(argv): Promise<number>`,
 * returning the exit code; throwing {@link UsageError} for a bad command line). Adding one is one
 * line in {@link COMMANDS}; its module is required only when the command runs, so `nysact info`
 * never loads the benchmark code and a command may depend on things the others do not.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { packageRoot } from '../loader.js';
import { ExitCode, UsageError, type CommandModule } from './args.js';

interface CommandEntry {
  /** One line for `nysact --help`. */
  summary: string;
  load(): CommandModule;
}

/* eslint-disable @typescript-eslint/no-require-imports */
const COMMANDS: Readonly<Record<string, CommandEntry>> = {
  info: {
    summary: 'version, usable backends (and why the others are not), CPU features, threads, GPU',
    load: () => require('./info.js') as CommandModule,
  },
  bench: {
    summary: "microbenchmark every kernel on every backend against this machine's SGEMM and copy peaks",
    load: () => require('./bench.js') as CommandModule,
  },
  train: {
    summary: 'train on Fashion-MNIST with NysAct, SGD-momentum and Adam under one budget (tfjs)',
    load: () => require('./train.js') as CommandModule,
  },
};
/* eslint-enable @typescript-eslint/no-require-imports */

function packageVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function globalHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  return [
    'Usage: nysact <command> [options]',
    '',
    'Commands:',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    '',
    'Options:',
    '  -h, --help     show this help (`nysact <command> --help` for a command)',
    '  -v, --version  print the package version',
    '',
    'Exit codes: 0 success, 1 failure, 2 bad command line.',
  ].join('\n');
}

/**
 * Runs `nysact` with the arguments after the program name.
 *
 * @returns the exit code
 */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined) {
    process.stderr.write(`${globalHelp()}\n`);
    return ExitCode.USAGE;
  }
  if (command === '--help' || command === '-h') {
    process.stdout.write(`${globalHelp()}\n`);
    return ExitCode.OK;
  }
  if (command === '--version' || command === '-v') {
    process.stdout.write(`${packageVersion()}\n`);
    return ExitCode.OK;
  }
  if (command === 'help') return main(rest.length > 0 ? [rest[0], '--help'] : ['--help']);
  const entry = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  if (entry === undefined) {
    const what = command.startsWith('-') ? 'option' : 'command';
    process.stderr.write(
      `nysact: unknown ${what} '${command}' (commands: ${Object.keys(COMMANDS).join(', ')}; see nysact --help)\n`,
    );
    return ExitCode.USAGE;
  }
  try {
    return await entry.load().main(rest);
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`${error.message}\n(see nysact ${command} --help)\n`);
      return ExitCode.USAGE;
    }
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`nysact ${command}: ${message}\n`);
    return ExitCode.FAILURE;
  }
}

if (require.main === module) {
  // `nysact bench | head`: a closed stdout ends the command quietly.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? ExitCode.OK);
    throw error;
  });
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error: unknown) => {
      process.stderr.write(`nysact: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      process.exitCode = ExitCode.FAILURE;
    },
  );
}
