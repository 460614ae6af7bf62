import type { Redis } from 'ioredis';
import { deleteIfHeld } from './held-keys.ts';
import type { Logger } from 'pino';

/** Every key the cluster keeps in Redis starts with this. */
export const KEY_PREFIX = 'plexichat:';
const leaseKey = (userId: string) => `${KEY_PREFIX}lease:${userId}`;
const fenceKey = (userId: string) => `${KEY_PREFIX}fence:${userId}`;
export const nodeKey = (nodeId: string) => `${KEY_PREFIX}node:${nodeId}`;

/**
 * Claims a user: theirs already (renewed), someone else's (their node is named), or free (a new
 * fencing token is drawn, one more than any before for this user, and the lease set). Atomic.
 * Returns {1, token} or {0, owner}.
 */
const ACQUIRE = `
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, '|', 1, true)
  local node = string.sub(current, 1, sep - 1)
  if node == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, string.sub(current, sep + 1)}
  end
  return {0, node}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return {1, tostring(token)}
`;

/** Extends each lease that still holds this node's value; returns the (1-based) indices of the others. */
const RENEW = `
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  else
    table.insert(lost, i)
  end
end
return lost
`;

/**
 * Hands a user over to another holder (an admin command that asked for them): only if the lease
 * still holds this node's value, a new fencing token is drawn and the lease set to the new holder
 * with it, in one step, so no node can take the user in between. Returns the token, or 0.
 */
const HAND_OVER = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2] .. '|' .. token, 'PX', ARGV[3])
return token
`;

/** Deletes a lease if it names this holder, whatever its token (one handed over after the holder stopped waiting). */
const ABANDON = `
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '|' then return redis.call('DEL', KEYS[1]) end
return 0
`;

/** Raises a user's fencing counter to at least ARGV[1]. */
const FENCE_AT_LEAST = `
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
`;

/**
 * What the holders of leases that are admin commands are called (`command:<process>-<random>`):
 * never a node id, which has no ':' (config.ts), so a node that finds one knows nobody can be
 * relayed to.
 */
const COMMAND_HOLDER_PREFIX = 'command:';

export function commandHolderName(unique: string): string {
  return `${COMMAND_HOLDER_PREFIX}${unique}`;
}

export function isCommandHolder(holder: string): boolean {
  return holder.startsWith(COMMAND_HOLDER_PREFIX);
}

/** Leases renewed per script call: one call, one round trip, for a thousand users. */
const RENEW_BATCH = 1000;

interface Held {
  token: number;
  /** This node's own deadline: past it, the lease may have ended in Redis, so nothing more is written. */
  validUntil: number;
}

export type Claim = { token: number } | { owner: string };

/**
 * The leases this node holds in Redis: each user's file has one owner node at a time. A lease
 * lasts `leaseMs` unless renewed (every third of it). This node stops counting on a lease a fifth
 * of `leaseMs` before it could have ended in Redis, measured from when the renewal was sent, so
 * that by the time another node can take the user, this one has stopped writing (and a write it
 * still tried would be refused by the fencing token in the file). An admin command holds users
 * with the same leases, under a holder name no node can have (command-holds.ts).
 */
export class Leases {
  private readonly held = new Map<string, Held>();

  constructor(
    private readonly redis: Redis,
    private readonly nodeId: string,
    private readonly leaseMs: number,
    private readonly logger: Logger,
    private readonly clock: () => number = Date.now,
  ) {}

  get count(): number {
    return this.held.size;
  }

  users(): IterableIterator<string> {
    return this.held.keys();
  }

  /** Whether this node owns the user right now (no Redis call). */
  owns(userId: string): boolean {
    const held = this.held.get(userId);
    return held !== undefined && this.clock() < held.validUntil;
  }

  /** Claims the user for this node, or names the node that owns them. */
  async acquire(userId: string): Promise<Claim> {
    const sent = this.clock();
    const [won, value] = (await this.redis.eval(ACQUIRE, 2, leaseKey(userId), fenceKey(userId), this.nodeId, this.leaseMs)) as [number, string];
    if (won !== 1) return { owner: value };
    const token = Number(value);
    this.held.set(userId, { token, validUntil: this.deadline(sent) });
    return { token };
  }

  /** Gives the user up (this node stopped using their file first). */
  async release(userId: string): Promise<void> {
    const held = this.held.get(userId);
    if (held === undefined) return;
    this.held.delete(userId);
    await deleteIfHeld(this.redis, leaseKey(userId), `${this.nodeId}|${held.token}`);
  }

  /**
   * Gives the user over to `holder` (an admin command) for `leaseMs`, unless this node's lease on
   * them ended meanwhile (this node stopped using their file first). Resolves with whether it did.
   */
  async handOver(userId: string, holder: string, leaseMs: number): Promise<boolean> {
    const held = this.held.get(userId);
    if (held === undefined) return false;
    this.held.delete(userId);
    const token = (await this.redis.eval(HAND_OVER, 2, leaseKey(userId), fenceKey(userId), `${this.nodeId}|${held.token}`, holder, leaseMs)) as number;
    return token !== 0;
  }

  /** Deletes the user's lease in Redis if it names this holder, held here or not (a hand-over that came too late). */
  async abandon(userId: string): Promise<void> {
    this.held.delete(userId);
    await this.redis.eval(ABANDON, 1, leaseKey(userId), this.nodeId);
  }

  /**
   * The user's file holds a newer token than Redis drew (Redis lost its data): the next token
   * drawn for them is above `stored`.
   */
  async raiseFence(userId: string, stored: number): Promise<void> {
    await this.redis.eval(FENCE_AT_LEAST, 1, fenceKey(userId), stored);
  }

  /** Forgets a lease without telling Redis (it was lost, or this node cannot reach Redis). */
  drop(userId: string): void {
    this.held.delete(userId);
  }

  /**
   * Renews every lease; returns the users this node no longer owns: leases another node holds now,
   * and leases not renewed in time (Redis unreachable). Those are forgotten here.
   */
  async renew(): Promise<string[]> {
    const lost = new Set<string>();
    const entries = [...this.held];
    for (let start = 0; start < entries.length; start += RENEW_BATCH) {
      const batch = entries.slice(start, start + RENEW_BATCH);
      const sent = this.clock();
      let missing: number[];
      try {
        missing = (await this.redis.eval(
          RENEW,
          batch.length,
          ...batch.map(([userId]) => leaseKey(userId)),
          this.leaseMs,
          ...batch.map(([, held]) => `${this.nodeId}|${held.token}`),
        )) as number[];
      } catch (error) {
        this.logger.warn({ err: error }, 'could not renew leases');
        continue;
      }
      const gone = new Set(missing.map((index) => index - 1));
      batch.forEach(([userId, held], index) => {
        if (gone.has(index)) lost.add(userId);
        else if (this.held.get(userId) === held) held.validUntil = this.deadline(sent);
      });
    }
    const now = this.clock();
    for (const [userId, held] of this.held) if (now >= held.validUntil) lost.add(userId);
    for (const userId of lost) this.held.delete(userId);
    return [...lost];
  }

  private deadline(sentAt: number): number {
    return sentAt + this.leaseMs - Math.ceil(this.leaseMs / 5);
  }
}
