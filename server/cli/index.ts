import { Command, CommanderError, Option } from 'commander';
import { ConfigError, SETTINGS, type SettingName, resolveConfig } from '../config.ts';
import { AppError } from '../core/app-error.ts';
import { addAdminCommands } from './admin.ts';
import { CliError, CliExit, type CliIo } from './io.ts';
import { addMaintenanceCommands } from './maintenance.ts';

export type { CliIo } from './io.ts';

const COMMANDS = ['serve', 'admin', 'backup', 'restore', 'doctor', 'help'];

/**
 * The one command line (`npm start -- …`, `node server/main.ts …`, the single executable). `serve`
 * is the default command: `plexichat --port 9000` is `plexichat serve --port 9000`, with the flags
 * and environment variables of server/config.ts. The other commands work on a data folder, also
 * while a server runs on it. `--help` on every command prints its usage on stdout and exits 0; an
 * error is one line on stderr (`plexichat: …`) and exit code 1.
 *
 * Resolves with the exit code, or undefined once the server is serving (it then runs until a signal).
 */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number | undefined> {
  let serving = false;
  const program = buildProgram(io, () => {
    serving = true;
  });
  const first = argv[0];
  // `plexichat frobnicate` would otherwise be read as serve with an extra argument.
  if (first !== undefined && !first.startsWith('-') && !COMMANDS.includes(first)) {
    return fail(io, `unknown command '${first}' (commands: ${COMMANDS.join(', ')}; see plexichat --help)`);
  }
  try {
    await program.parseAsync([...argv], { from: 'user' });
  } catch (error) {
    // Help asked for is no error (commander printed it on stdout); its errors it printed already, one line each.
    if (error instanceof CommanderError) return error.exitCode === 0 ? 0 : 1;
    if (error instanceof CliExit) return error.code;
    if (error instanceof CliError || error instanceof ConfigError || error instanceof AppError) return fail(io, error.message);
    if (error instanceof Error) return fail(io, error.message);
    return fail(io, String(error));
  }
  return serving ? undefined : 0;
}

function fail(io: CliIo, message: string): number {
  io.stderr.write(`plexichat: ${message}\n`);
  return 1;
}

function buildProgram(io: CliIo, onServing: () => void): Command {
  const program = new Command('plexichat')
    .description('The Plexichat server: serves (the default command), and administers, backs up, restores and checks its data folder.')
    .usage('[command] [options]')
    .exitOverride()
    .configureOutput({
      writeOut: (text) => io.stdout.write(text),
      writeErr: (text) => io.stderr.write(text),
      // One line, in the form every other error has.
      outputError: (text, write) => write(`plexichat: ${text.replace(/^error: /, '').trimEnd()}\n`),
    });

  const serve = program
    .command('serve', { isDefault: true })
    .description('run the server (the default command); every option also reads the environment variable shown')
    .action(async (options: Record<string, string | undefined>) => {
      const config = resolveConfig(settingsFrom(serve, options), io.env);
      const { serve: start } = await import('./serve.ts');
      await start(config);
      onServing();
    });
  for (const [, setting] of Object.entries(SETTINGS) as [SettingName, (typeof SETTINGS)[SettingName]][]) {
    serve.addOption(new Option(`--${setting.flag} <value>`, `${setting.help} [${setting.env}, default ${setting.default}]`));
  }
  program.addHelpText('after', () => `\n'plexichat --port 9000' is 'plexichat serve --port 9000'.\n\nOptions of serve:\n${optionLines(serve)}`);

  const { dataDir, redisUrl, leaseMs } = SETTINGS;
  // A cluster's data folder keeps its directory in Redis: commands reach it with the nodes' URL,
  // and take each user they touch with a lease, as a node does (docs/cluster.md).
  const withDataDir = (command: Command): Command =>
    command
      .addOption(new Option(`--${dataDir.flag} <dir>`, `the data folder [${dataDir.env}, default ${dataDir.default}]`))
      .addOption(new Option(`--${redisUrl.flag} <url>`, `a cluster's data folder: the Redis its nodes share [${redisUrl.env}]`))
      .addOption(
        new Option(
          `--${leaseMs.flag} <ms>`,
          `a cluster's data folder: how long the command's hold on a user lasts unrenewed, as the nodes' (it waits at most three for a user) [${leaseMs.env}, default ${leaseMs.default}]`,
        ),
      );
  const configFor = (command: Command) => resolveConfig(settingsFrom(command, command.opts()), io.env);
  // Subcommands take the exit override and the output settings from the program as they are made.
  addAdminCommands(program, io, configFor, withDataDir);
  addMaintenanceCommands(program, io, configFor, withDataDir);
  return program;
}

/** The settings among a command's parsed options, by their config names (`--data-dir` → dataDir). */
function settingsFrom(command: Command, options: Record<string, unknown>): Partial<Record<SettingName, string>> {
  const given: Partial<Record<SettingName, string>> = {};
  for (const [name, setting] of Object.entries(SETTINGS) as [SettingName, (typeof SETTINGS)[SettingName]][]) {
    const option = command.options.find((candidate) => candidate.long === `--${setting.flag}`);
    const value = option === undefined ? undefined : options[option.attributeName()];
    if (typeof value === 'string') given[name] = value;
  }
  return given;
}

function optionLines(command: Command): string {
  const help = command.createHelp();
  const width = help.longestOptionTermLength(command, help);
  return help
    .visibleOptions(command)
    .filter((option) => option.long !== '--help')
    .map((option) => `  ${help.optionTerm(option).padEnd(width)}  ${help.optionDescription(option)}`)
    .join('\n');
}
