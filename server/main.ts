import { type Config, ConfigError, loadConfig, usage } from './config.ts';
import { createLogger } from './log.ts';
import { createServer, type RunningServer } from './app.ts';

/** Entry point: parse config, start, and shut down cleanly on SIGINT/SIGTERM. */
async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(process.argv.slice(2));
  } catch (error) {
    // `loadConfig` answers --help with a ConfigError carrying the usage text: asked for, that is
    // not an error, so it goes to stdout with exit code 0 (and can be piped into a pager or grep).
    if (error instanceof ConfigError && error.message === usage()) {
      process.stdout.write(`${error.message}\n`);
      process.exitCode = 0;
      return;
    }
    if (error instanceof ConfigError) {
      process.stderr.write(`plexichat: ${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
  const logger = createLogger(config.logLevel);
  let server: RunningServer;
  try {
    server = await createServer(config, { logger });
  } catch (error) {
    process.stderr.write(`plexichat: cannot start: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  }
  // The start-up line is printed at any level but silent: operators and scripts wait for it.
  const startupLogger = config.logLevel === 'silent' ? logger : logger.child({}, { level: 'info' });
  startupLogger.info({ url: server.url, dataDir: config.dataDir }, `Plexichat server listening on ${server.url}`);

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    server.close().then(
      () => {
        logger.info('stopped');
        process.exit(0);
      },
      (error: unknown) => {
        logger.error({ err: error }, 'error during shutdown');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

void main();
