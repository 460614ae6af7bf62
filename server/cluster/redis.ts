import { Redis } from 'ioredis';
import type { Logger } from 'pino';

/** How long to wait between reconnection attempts, growing to this at most. */
const MAX_RECONNECT_DELAY_MS = 2000;
/**
 * The longest any command may wait for Redis. Without it a Redis that stops answering without
 * closing the connection (paused, a network partition) would leave every request that needs it
 * waiting until the kernel gives up on the socket; with it they fail and are answered 503.
 */
const COMMAND_TIMEOUT_MS = 2000;

/** What the log says when a connection to Redis is lost, and when it is back (with `connection`: its name). */
export const REDIS_LOST = 'Redis is unreachable; retrying';
export const REDIS_BACK = 'Redis is reachable again';

/**
 * A connection to the cluster's Redis. Commands fail at once while it is down (no offline queue):
 * a request that needs Redis is answered 503 then, instead of waiting for a Redis that may not come
 * back; one already sent when the connection dropped fails too, never sent again
 * (`maxRetriesPerRequest: 0`: a relayed sync frame sent twice would be stored and acknowledged
 * twice, and a device would take a second acknowledgement for an update of its own that was never
 * stored), and no command waits more than 2 s for an answer. It
 * reconnects by itself; losing and regaining the connection is logged once each, not per failed
 * attempt. A wrong URL or an unreachable Redis (refused, unknown host, wrong password, a server
 * that is not Redis) fails the start with one line saying why. A connection made to `subscribe`
 * is not subscribed again by ioredis when it comes back: ioredis leaves that subscription's
 * refusal unhandled (the connection dropped or was closed again while it came back), which would
 * end the process; its user subscribes again itself (cluster/bus.ts).
 */
export async function connectRedis(url: string, logger: Logger, name: string, options: { subscribe?: boolean } = {}): Promise<Redis> {
  const redis = new Redis(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: COMMAND_TIMEOUT_MS,
    connectionName: name,
    retryStrategy: (attempt) => Math.min(attempt * 100, MAX_RECONNECT_DELAY_MS),
    autoResubscribe: options.subscribe !== true,
  });
  let lastError: Error | undefined;
  let started = false;
  let reachable = false;
  // Without a listener, ioredis prints every failed connection attempt to the console.
  redis.on('error', (error: Error) => {
    lastError = error;
  });
  // Only when it will try again: a node closing its own connection is no loss, and a failed start
  // says why in its one line.
  redis.on('reconnecting', () => {
    if (!reachable) return;
    reachable = false;
    logger.warn({ err: lastError, connection: name }, REDIS_LOST);
  });
  redis.on('ready', () => {
    const back = started && !reachable;
    reachable = true;
    if (back) logger.info({ connection: name }, REDIS_BACK);
  });
  try {
    await redis.connect();
  } catch (error) {
    // Stops the reconnection attempts the failed connect started in the background.
    redis.disconnect();
    // connect() only says "Connection is closed."; the error event said why.
    const cause = lastError ?? error;
    throw new Error(`cannot reach Redis at ${redactUrl(url)}: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
  started = true;
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
