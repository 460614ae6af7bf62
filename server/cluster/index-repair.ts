import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { deleteIfHeld } from './held-keys.ts';
import type { Logger } from 'pino';
import { isNotOwner } from '../storage/errors.ts';
import { KEY_PREFIX } from './leases.ts';

/** Held by the one node repairing the users index; the others wait, then find it repaired. */
const REPAIR_LOCK = `${KEY_PREFIX}dir:repairing`;
/** Long enough to read every user file once; a node that died holding it leaves it to the next after this. */
const REPAIR_LOCK_MS = 120_000;

/**
 * Cluster mode: runs `repair` (the users index made what the user files derive: UsersService's
 * `repairDirectoryIndex`) on one node at a time, under a lock in Redis, so that nodes seeing Redis
 * back together do not read every file at once. A rebuild reads every user file, and owners hold
 * theirs exclusively until they see their leases gone (at their next renewal, after Redis lost
 * them): a repair that meets a held file is tried again, every third of a lease, until
 * `boundMs` has passed. The next holder finds the index repaired and has nothing to do.
 */
export async function repairIndexAlone(
  redis: Redis,
  holder: string,
  leaseMs: number,
  boundMs: number,
  repair: () => Promise<void>,
  logger: Logger,
): Promise<void> {
  const deadline = Date.now() + boundMs;
  for (;;) {
    if ((await redis.set(REPAIR_LOCK, holder, 'PX', REPAIR_LOCK_MS, 'NX')) === 'OK') {
      try {
        await repair();
        return;
      } catch (error) {
        if (!isNotOwner(error) || Date.now() > deadline) throw error;
        logger.info({ err: error }, 'a user file is still held by its former owner: repairing the users index again shortly');
      } finally {
        await deleteIfHeld(redis, REPAIR_LOCK, holder).catch((error: unknown) => {
          logger.warn({ err: error }, 'could not release the lock of the users index repair; it expires by itself');
        });
      }
    } else if (Date.now() > deadline) {
      throw new Error(`the users index is being repaired by ${await redis.get(REPAIR_LOCK)}, for too long`);
    }
    await sleep(Math.max(50, Math.floor(leaseMs / 3)));
  }
}
