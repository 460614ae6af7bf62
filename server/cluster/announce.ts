import * as encoding from 'lib0/encoding';
import type { Redis } from 'ioredis';
import { BROADCAST } from './bus.ts';
import { writeNodeMessage } from './wire.ts';

/**
 * Tells every node, from a process that is no node (an admin command given `--redis-url`), what it
 * changed: these sessions ended (each node drops them from its session cache and closes their
 * sockets, 4401, as when a node ends them), and user files changed (each node looks at them at
 * once, as a single server does when a command tells it). Resolves with how many nodes listened
 * (0: none runs).
 */
export async function announceAdminChanges(redis: Redis, from: string, sessionIds: readonly string[]): Promise<number> {
  const encoder = encoding.createEncoder();
  writeNodeMessage(encoder, { kind: 'sessions-ended', from, sessionIds: [...sessionIds] });
  // In the same batch: each node closes the sockets, then looks at the user files.
  writeNodeMessage(encoder, { kind: 'files-changed', from });
  return redis.publish(BROADCAST, Buffer.from(encoding.toUint8Array(encoder)));
}
