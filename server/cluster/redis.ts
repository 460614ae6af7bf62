import { Redis } from 'ioredis';
import type { Logger } from '../log.ts';

/**
 * The longest any command may wait for Redis. Without it a Redis that stops answering without
 * closing the connection (paused, a network partition) would leave every request that needs it
 * waiting until the kernel gives up on the socket; with it they fail and are answered 503.
 */
const COMMAND_TIMEOUT_MS = 2000;

/** What the log says when a node loses its connection to Redis, and when it has it back. */
export const REDIS_LOST = 'lost the connection to Redis: what needs it is answered 503 until it is back';
export const REDIS_BACK = 'Redis is reachable again';

/**
 * The one Redis client of a node (cluster mode, `--redis-url`), connected before the server
 * starts: an address where no Redis answers (refused, unknown host, wrong password, a server that
 * is not Redis) fails the start with one line saying why. Once started it reconnects on its own
 * (ioredis' backoff, at most 2 s apart). Meanwhile every command fails at once instead of being
 * queued (`enableOfflineQueue: false`), so whoever sent it answers "retry later" rather than hang;
 * one already sent when the connection dropped is sent again at most once, on the next connection
 * (`maxRetriesPerRequest: 1`), and fails otherwise. Losing and regaining Redis is logged once
 * each, not at every reconnection attempt.
 */
export async function connectRedis(url: string, logger: Logger): Promise<Redis> {
  const redis = new Redis(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: COMMAND_TIMEOUT_MS,
  });
  let lastError: Error | undefined;
  let started = false;
  let reachable = false;
  // Without a listener, ioredis prints every failed connection attempt to the console.
  redis.on('error', (error: Error) => {
    lastError = error;
  });
  // Only when it will try again: a node closing its own client is no loss.
  redis.on('reconnecting', () => {
    if (!reachable) return;
    reachable = false;
    logger.warn({ err: lastError }, REDIS_LOST);
  });
  redis.on('ready', () => {
    const back = started && !reachable;
    reachable = true;
    if (back) logger.info(REDIS_BACK);
  });
  try {
    await redis.connect();
  } catch (error) {
    // Stops the reconnection attempts the failed connect started in the background.
    redis.disconnect();
    // connect() only says "Connection is closed."; the error event said why.
    const cause = lastError ?? error;
    throw new Error(`cannot reach Redis at ${withoutPassword(url)}: ${cause instanceof Error ? cause.message : String(cause)}`);
  }
  started = true;
  return redis;
}

/** The URL as a log line may show it. */
function withoutPassword(url: string): string {
  const parsed = new URL(url);
  if (parsed.password !== '') parsed.password = '***';
  return parsed.toString();
}
