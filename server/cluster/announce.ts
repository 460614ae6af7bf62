import * as encoding from 'lib0/encoding';
import type { Redis } from 'ioredis';
import { BROADCAST } from './bus.ts';
import { writeNodeMessage } from './wire.ts';

/**
 * Tells every node, from a process that is no node (an admin command given `--redis-url`), that
 * these sessions ended: each drops them from its session cache and closes their sockets (4401), as
 * when a node ends them. Resolves with how many nodes listened (0: none runs).
 */
export async function announceEndedSessions(redis: Redis, from: string, sessionIds: readonly string[]): Promise<number> {
  const encoder = encoding.createEncoder();
  writeNodeMessage(encoder, { kind: 'sessions-ended', from, sessionIds: [...sessionIds] });
  return redis.publish(BROADCAST, Buffer.from(encoding.toUint8Array(encoder)));
}
