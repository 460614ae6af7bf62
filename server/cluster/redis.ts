import { Redis } from 'ioredis';
import type { Logger } from 'pino';

/** How long to wait between reconnection attempts, growing to this at most. */
const MAX_RECONNECT_DELAY_MS = 2000;

/**
 * A connection to the cluster's Redis. Commands fail at once while it is down (no offline queue):
 * a request that needs Redis is answered 503 then, instead of waiting for a Redis that may not come
 * back. It reconnects by itself; state changes are logged once each, not per failed attempt.
 * A wrong URL or an unreachable Redis fails the start with one line.
 */
export async function connectRedis(url: string, logger: Logger, name: string): Promise<Redis> {
  const redis = new Redis(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectionName: name,
    retryStrategy: (attempt) => Math.min(attempt * 100, MAX_RECONNECT_DELAY_MS),
  });
  let down = false;
  redis.on('error', (error: Error) => {
    if (down) return;
    down = true;
    logger.warn({ err: error, connection: name }, 'Redis is unreachable; retrying');
  });
  redis.on('ready', () => {
    if (!down) return;
    down = false;
    logger.info({ connection: name }, 'Redis is reachable again');
  });
  try {
    await redis.connect();
  } catch (error) {
    redis.disconnect();
    throw new Error(`cannot reach Redis at ${redactUrl(url)}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
  return redis;
}

/** The URL without its password, for messages. */
function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== '') parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparsable URL)';
  }
}
