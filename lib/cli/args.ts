/**
 * Command-line plumbing shared by every `nysact` command: strict option parsing (node:util
 * `parseArgs`), value validation with one message shape, and the exit codes.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** Exit codes of every command. */
export const ExitCode = Object.freeze({
  /** Success. */
  OK: 0,
  /** The command ran and failed (native addon missing, a kernel threw, ...). */
  FAILURE: 1,
  /** The command line is wrong: unknown command or option, missing or bad value. */
  USAGE: 2,
} as const);

/** A command-line mistake: printed with a pointer to `--help`, exit code {@link ExitCode.USAGE}. */
export class UsageError extends Error {
  /** @param message what is wrong, naming the option and the value received */
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** One command of the `nysact` dispatcher (`lib/cli/main.ts` registers it). */
export interface CommandModule {
  /**
   * Runs the command.
   *
   * @param argv the arguments after the command name
   * @returns the exit code ({@link ExitCode})
   * @throws {UsageError} for a bad command line (the dispatcher prints it and exits 2)
   */
  main(argv: string[]): Promise<number>;
}

type Options = NonNullable<ParseArgsConfig['options']>;

type OptionValue<T> = T extends { type: 'string'; multiple: true }
  ? string[]
  : T extends { type: 'string' }
    ? string
    : T extends { type: 'boolean'; multiple: true }
      ? boolean[]
      : boolean;

/** The values of a strict parse: every option optional, `help` always known. */
export type ParsedOptions<O extends Options> = { [K in keyof O]?: OptionValue<O[K]> } & { help?: boolean };

/**
 * Parses `argv` strictly: unknown options, missing values and positional arguments become a
 * {@link UsageError}. Every command accepts `--help` / `-h`.
 */
export function parseCommandLine<O extends Options>(command: string, argv: string[], options: O): ParsedOptions<O> {
  try {
    return parseArgs({
      args: argv,
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      strict: true,
      allowPositionals: false,
    }).values as ParsedOptions<O>;
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_')) {
      // node's messages carry a long hint about '--'; the first sentence names the problem.
      const message = (error as Error).message.split('. ')[0].replace(/\.$/, '');
      throw new UsageError(`nysact ${command}: ${message}`);
    }
    throw error;
  }
}

/** Parses an integer option value in [min, max]. */
export function integerOption(command: string, name: string, raw: string, min: number, max: number): number {
  const value = /^[+]?\d+$/.test(raw.trim()) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new UsageError(`nysact ${command}: expected an integer in [${min}, ${max}] for --${name} but received '${raw}'`);
  }
  return value;
}

/** Checks that `raw` is one of `choices`. */
export function choiceOption<T extends string>(command: string, name: string, raw: string, choices: readonly T[]): T {
  if (!(choices as readonly string[]).includes(raw)) {
    throw new UsageError(`nysact ${command}: expected one of ${choices.join(', ')} for --${name} but received '${raw}'`);
  }
  return raw as T;
}

/** Splits a comma-separated list option and checks every element against `choices` (no duplicates). */
export function listOption<T extends string>(command: string, name: string, raw: string, choices: readonly T[]): T[] {
  const items = raw.split(',').map((s) => s.trim());
  const out: T[] = [];
  for (const item of items) {
    const value = choiceOption(command, name, item, choices);
    if (!out.includes(value)) out.push(value);
  }
  return out;
}

/** Writes a progress line to stderr (never to stdout, which carries the result). */
export function progress(enabled: boolean, message: string): void {
  if (enabled) process.stderr.write(`${message}\n`);
}
