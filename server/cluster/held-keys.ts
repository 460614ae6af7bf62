import type { Redis } from 'ioredis';

/** One script for every key a process holds by its value (a lease, a lock, a node key, a worker id). */
const DELETE_IF_HELD = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;

/**
 * Deletes `key` only if it still holds `value`: what expired meanwhile and went to another holder
 * is never deleted by the former one.
 */
export async function deleteIfHeld(redis: Redis, key: string, value: string): Promise<void> {
  await redis.eval(DELETE_IF_HELD, 1, key, value);
}
