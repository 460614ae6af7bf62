import type { Redis } from 'ioredis';
import { deleteIfHeld } from './held-keys.ts';
import type { Logger } from 'pino';
import { MAX_WORKER_ID } from '../../shared/snowflake.ts';
import { FILE_RESERVATION_WORKER_ID, type ReservationMark, type WorkerHolding } from '../storage/ids.ts';
import { KEY_PREFIX } from './leases.ts';

/** Worker ids nodes lease: all but the one of processes without Redis (admin commands). */
const FIRST_LEASED_WORKER_ID = FILE_RESERVATION_WORKER_ID + 1;
const WORKER_KEY_PREFIX = `${KEY_PREFIX}worker:`;
export const workerKey = (workerId: number) => `${WORKER_KEY_PREFIX}${workerId}`;
export const workerUntilKey = (workerId: number) => `${workerKey(workerId)}:until`;

/**
 * How far the clocks of two nodes may disagree (NTP keeps them within milliseconds). Only relied
 * on when Redis lost the marks (a restart without its data, or the last second of writes under
 * `appendfsync everysec`): a new holder then starts this much past the furthest any former holder
 * could have reserved ahead of its own clock.
 */
export const CLOCK_SKEW_ALLOWANCE_MS = 1000;

/** What a start refused for want of a worker id says. */
export const NO_FREE_WORKER_ID = `every snowflake worker id (${FIRST_LEASED_WORKER_ID}-${MAX_WORKER_ID}) is held by a running node: a cluster has at most ${MAX_WORKER_ID - FIRST_LEASED_WORKER_ID + 1} nodes`;

/**
 * Takes the lowest free worker id in [ARGV[4], ARGV[5]]: `<prefix><n>` = the holder, expiring
 * after ARGV[3] ms. Its range starts at the worker id's mark `<prefix><n>:until` (every id any
 * former holder issued is below it) or at the floor ARGV[6], whichever is later, and the mark is
 * raised ARGV[7] ms past that start before the holder issues anything. Atomic, so two nodes never
 * take one worker id, and the mark is read and moved in the same step. Returns {n, from, until},
 * or {0} when every worker id is held. (The keys are built here, one per worker id tried: one
 * Redis, not a Redis Cluster, which would need them declared.)
 */
const ACQUIRE = `
for n = tonumber(ARGV[4]), tonumber(ARGV[5]) do
  local key = ARGV[1] .. n
  if redis.call('SET', key, ARGV[2], 'PX', ARGV[3], 'NX') then
    local from = math.max(tonumber(redis.call('GET', key .. ':until') or '0'), tonumber(ARGV[6]))
    local untilMs = from + tonumber(ARGV[7])
    redis.call('SET', key .. ':until', string.format('%d', untilMs))
    return {n, from, untilMs}
  end
end
return {0}
`;

/**
 * Extends the holder's lease of a worker id and raises its mark to ARGV[3] (never lowers it), if
 * the holder still holds it. Returns 1, or 0 when the lease is gone (expired, or another node's).
 */
const RENEW = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[3]) then redis.call('SET', KEYS[2], ARGV[3]) end
return 1
`;

interface Held {
  readonly workerId: number;
  readonly fromMs: number;
  untilMs: number;
  /** This node's own deadline: past it the lease may have ended in Redis, so no id is issued. */
  validUntil: number;
}

/**
 * The snowflake worker id this node leases in Redis (docs/cluster.md, "Snowflake ids"), so that
 * nodes issue ids without a shared write per second of ids: `plexichat:worker:<n>` names the
 * holder and expires after `--lease-ms` unless renewed (with the node's other leases, every
 * third of it); `plexichat:worker:<n>:until` is the worker id's mark, only ever raised.
 *
 * Ids never repeat, even when a node loses its lease while it runs (paused, cut off from Redis)
 * and another takes the same worker id:
 * - A holding is a range of milliseconds `[from, until)`; the holder issues ids only inside it,
 *   and moves `until` (and the mark in Redis, first) to `leaseMs` past its clock at each renewal.
 *   The next holder starts at the mark: whatever a former holder still issues after losing the
 *   lease is below where the next one begins, whatever the clocks say.
 * - Redis may lose the marks (restarted without its data; the last second of writes with
 *   `appendfsync everysec`), so a new holding also starts no earlier than
 *   (a) the holder's clock plus `leaseMs` plus CLOCK_SKEW_ALLOWANCE_MS: a former holder renewed
 *   for the last time before the new one took the worker id (a renewal needs the key to still
 *   be its own), so the ranges it renewed end below its clock then plus `leaseMs`, below the new
 *   start while clocks agree within the allowance and every node is given the same `--lease-ms`;
 *   and (b) `ids.sqlite`'s mark, which every new holding raises past its first range (one write
 *   per holding, not per second of ids) before using it. (a) puts a new holding's start ahead of
 *   the clock, and its first range further still, which no clock bounds: (b) covers those.
 *   The mark of `ids.sqlite` also covers ids a server without Redis issued there, with any
 *   worker id, before the folder became a cluster's.
 * - As with user leases, the node stops issuing a fifth of a lease before its lease could have
 *   expired in Redis (measured from when the renewal was sent), and when its range runs out.
 *   Then ids are refused (IdsUnavailableError, answered 503) until a renewal succeeds, or until
 *   it takes a free worker id again after losing its own.
 */
export class WorkerIds {
  private held: Held | undefined;

  private constructor(
    private readonly redis: Redis,
    /** `<node>|<instance>`: a restarted process of the same node id is another holder. */
    private readonly holder: string,
    private readonly leaseMs: number,
    /** `ids.sqlite`'s mark: a floor for every new holding, raised past its first range. */
    private readonly fileMark: ReservationMark,
    private readonly logger: Logger,
    private readonly clock: () => number,
  ) {}

  /** Leases a free worker id, or fails with NO_FREE_WORKER_ID. */
  static async acquire(
    redis: Redis,
    holder: string,
    leaseMs: number,
    fileMark: ReservationMark,
    logger: Logger,
    clock: () => number = Date.now,
  ): Promise<WorkerIds> {
    const ids = new WorkerIds(redis, holder, leaseMs, fileMark, logger, clock);
    if (!(await ids.take())) throw new Error(NO_FREE_WORKER_ID);
    return ids;
  }

  /** The worker id held, whether or not it can be counted on right now; null when none. */
  get workerId(): number | null {
    return this.held?.workerId ?? null;
  }

  /** The holding ids may be issued from right now, or undefined (none, or its lease may have ended). */
  current(): WorkerHolding | undefined {
    const held = this.held;
    return held !== undefined && this.clock() < held.validUntil ? held : undefined;
  }

  /**
   * Renews the lease and reserves `leaseMs` ahead; a lease found lost is given up and a free
   * worker id taken instead (a new holding, starting past every mark). Never throws: a renewal
   * that fails leaves the holding to run out, and the next one tries again.
   */
  async renew(): Promise<void> {
    const held = this.held;
    if (held !== undefined) {
      const sent = this.clock();
      const reserveUntil = Math.max(sent, held.fromMs) + this.leaseMs;
      let kept: unknown;
      try {
        kept = await this.redis.eval(RENEW, 2, workerKey(held.workerId), workerUntilKey(held.workerId), this.holder, this.leaseMs, reserveUntil);
      } catch (error) {
        this.logger.warn({ err: error }, 'could not renew the snowflake worker id');
        return;
      }
      if (kept === 1) {
        held.untilMs = Math.max(held.untilMs, reserveUntil);
        held.validUntil = this.deadline(sent);
        return;
      }
      this.held = undefined;
      this.logger.warn({ workerId: held.workerId }, 'lost the lease of the snowflake worker id; taking a free one');
    }
    try {
      if (await this.take()) this.logger.info({ workerId: this.held?.workerId }, 'took a snowflake worker id');
      else this.logger.error(`${NO_FREE_WORKER_ID}; this node issues no ids until one is free`);
    } catch (error) {
      this.logger.warn({ err: error }, 'could not take a snowflake worker id');
    }
  }

  /** Gives the worker id back (a node shutting down): the next holder starts at its mark. */
  async release(): Promise<void> {
    const held = this.held;
    if (held === undefined) return;
    this.held = undefined;
    await deleteIfHeld(this.redis, workerKey(held.workerId), this.holder);
  }

  private async take(): Promise<boolean> {
    const sent = this.clock();
    const floor = Math.max(sent + this.leaseMs + CLOCK_SKEW_ALLOWANCE_MS, this.fileMark.read());
    const reply = (await this.redis.eval(
      ACQUIRE,
      0,
      WORKER_KEY_PREFIX,
      this.holder,
      this.leaseMs,
      FIRST_LEASED_WORKER_ID,
      MAX_WORKER_ID,
      floor,
      this.leaseMs,
    )) as number[];
    const [workerId = 0, fromMs = 0, untilMs = 0] = reply;
    if (workerId === 0) return false;
    try {
      this.fileMark.raise(untilMs);
    } catch (error) {
      // Not recorded, not used: given back at once (or it expires).
      await deleteIfHeld(this.redis, workerKey(workerId), this.holder).catch(() => undefined);
      throw error;
    }
    this.held = { workerId, fromMs, untilMs, validUntil: this.deadline(sent) };
    return true;
  }

  private deadline(sentAt: number): number {
    return sentAt + this.leaseMs - Math.ceil(this.leaseMs / 5);
  }
}
