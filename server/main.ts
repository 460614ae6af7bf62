import { runCli } from './cli/index.ts';

/**
 * Entry point (what the build bundles): the command line of server/cli/. `serve`, the default,
 * keeps the process running until SIGINT/SIGTERM; every other command exits with its code.
 */
// A reader that stops early (`plexichat --help | head`) closes the pipe: what is left is not
// wanted, which is no failure of the command (the shell's own tools exit quietly too).
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code !== 'EPIPE') throw error;
  process.exit(0);
});

runCli(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin }).then(
  (code) => {
    // Standard streams are synchronous on Linux (files and pipes alike): nothing printed is lost.
    if (code !== undefined) process.exit(code);
  },
  (error: unknown) => {
    process.stderr.write(`plexichat: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  },
);
