import type { Config } from '../config.ts';
import { createLogger } from '../log.ts';
import { createServer, type RunningServer } from '../app.ts';
import { CliError } from './io.ts';

/**
 * `plexichat serve` (the default command): starts the server and stops it cleanly on
 * SIGINT/SIGTERM (exit code 0; 1 when shutting down failed). Resolves once it listens; the process
 * then runs until a signal.
 */
export async function serve(config: Config): Promise<void> {
  const logger = createLogger(config.logLevel);
  let server: RunningServer;
  try {
    server = await createServer(config, { logger });
  } catch (error) {
    throw new CliError(`cannot start: ${error instanceof Error ? error.message : String(error)}`);
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
