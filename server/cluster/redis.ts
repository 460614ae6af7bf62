import { Redis } from 'ioredis';
import type { Logger } from '../log.ts';

/**
 * The longest any command may wait for Redis. Without it a Redis that stops answering without
 * closing the connection (paused, a network partition) would leave every request that needs it
 * waiting until the kernel gives up on the socket; with it they fail and are answered 503.
 */
const COMMAND_TIMEOUT_MS = 2000;

/**
 * The one Redis client of a node (cluster mode, `--redis-url`), connected before the server
 * starts: an address where no Redis answers (refused, unknown host, wrong password, a server that
 * is not Redis) fails the start with one line saying why. Once started it reconnects on its own
 * (ioredis' backoff, at most 2 s apart), and meanwhile every command fails at once instead of
 * being queued (`enableOfflineQueue: false`): whoever sent it answers "retry later" rather than
 * hang, and no stale command runs when Redis returns. Losing and regaining Redis is logged once
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
  let reachable = false;
  // Without a listener, ioredis prints every failed reconnection attempt to the console.
  redis.on('error', (error: Error) => {
    lastError = error;
    if (!reachable) return;
    reachable = false;
    logger.warn({ err: error }, 'Redis is unreachable: what needs it is answered 503 until it is back');
  });
  redis.on('ready', () => {
    if (reachable) return;
    reachable = true;
    if (lastError !== undefined) logger.info('Redis is reachable again');
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
  lastError = undefined;
  return redis;
}

/** The URL as a log line may show it. */
function withoutPassword(url: string): string {
  const parsed = new URL(url);
  if (parsed.password !== '') parsed.password = '***';
  return parsed.toString();
}
