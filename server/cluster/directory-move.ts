import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { deleteIfHeld } from './held-keys.ts';
import type { Logger } from 'pino';
import type { DirectoryRecord } from '../storage/sqlite-directory.ts';
import { KEY_PREFIX } from './leases.ts';
import type { RedisDirectory } from './redis-directory.ts';

/** Held by the one process moving a data folder's directory into Redis; the others wait for it. */
const MOVE_LOCK = `${KEY_PREFIX}dir:moving`;
/** Long enough for a large directory; a mover that died leaves it to the next after this. */
const MOVE_LOCK_MS = 120_000;
/** How often a waiting process looks whether the move is over. */
const MOVE_POLL_MS = 200;

/**
 * A data folder's first start in cluster mode (a node, or an admin command given `--redis-url`):
 * what one node kept in `directory.sqlite` (the users index, sessions, relationships, DM channels,
 * mailed tokens) is copied into Redis, then the file records the move, so that nothing ever serves
 * from the stale copy again (one node or a command without `--redis-url` refuses the folder).
 * Exactly one process copies, under a lock in Redis; the others wait until the file says it moved.
 *
 * A Redis whose directory has users already is taken as this folder's (a move whose last step, the
 * record in the file, did not happen): it is not written over. Returns whether this call copied.
 */
export async function moveDirectoryToRedis(
  local: DirectoryRecord,
  remote: RedisDirectory,
  redis: Redis,
  holder: string,
  logger: Logger,
  clock: () => number = Date.now,
): Promise<boolean> {
  const deadline = clock() + 2 * MOVE_LOCK_MS;
  while (!local.movedToRedis()) {
    if ((await redis.set(MOVE_LOCK, holder, 'PX', MOVE_LOCK_MS, 'NX')) === 'OK') {
      try {
        return await copyOnce(local, remote, logger, clock);
      } finally {
        await deleteIfHeld(redis, MOVE_LOCK, holder).catch((error: unknown) => {
          logger.warn({ err: error }, 'could not release the lock of the directory move; it expires by itself');
        });
      }
    }
    if (clock() > deadline) throw new Error(`the directory is being moved into Redis by ${await redis.get(MOVE_LOCK)}, for too long: try again`);
    // Another process is copying: nothing to do here but wait for the file to say it is done.
    await sleep(MOVE_POLL_MS);
  }
  return false;
}

async function copyOnce(local: DirectoryRecord, remote: RedisDirectory, logger: Logger, clock: () => number): Promise<boolean> {
  // Looked at again under the lock: the previous holder may have finished meanwhile.
  if (local.movedToRedis()) return false;
  const dump = local.exportAll();
  if ((await remote.countUsers()) > 0) {
    logger.warn(
      { inFile: dump.users.length },
      "Redis holds a directory already: it is kept as this data folder's (a move that stopped before its last step); directory.sqlite is not copied",
    );
    local.markMovedToRedis(Math.floor(clock() / 1000));
    return false;
  }
  await remote.importAll(dump);
  local.markMovedToRedis(Math.floor(clock() / 1000));
  logger.info(
    {
      users: dump.users.length,
      sessions: dump.sessions.length,
      relationships: dump.relationships.length,
      dmChannels: dump.dmChannels.length,
      mailTokens: dump.mailTokens.length,
    },
    "moved the data folder's directory into Redis: from now on the cluster's directory is there",
  );
  return true;
}
