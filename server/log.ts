import { pino, type Logger } from 'pino';

export type { Logger } from 'pino';

/** JSON lines on stdout; tokens and passwords never reach a log call, query strings are not logged. */
export function createLogger(level: string): Logger {
  return pino({
    level,
    base: undefined,
    redact: { paths: ['req.headers.authorization', '*.password', '*.token'], censor: '[redacted]' },
  });
}
