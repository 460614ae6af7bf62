import { pino, type Logger } from 'pino';

export type { Logger } from 'pino';

/**
 * JSON lines on stdout (or `destination`: admin commands log on stderr, their result goes to
 * stdout); tokens and passwords never reach a log call, query strings are not logged.
 */
export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  const options = {
    level,
    base: undefined,
    redact: { paths: ['req.headers.authorization', '*.password', '*.token'], censor: '[redacted]' },
  };
  return destination === undefined ? pino(options) : pino(options, destination);
}
