import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { type RateLimiterAbstract, RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { AppError } from './app-error.ts';

/** How many attempts a key may make in a window, and how long it is refused once it made them all. */
export interface ThrottleRule {
  /** Names the rule in keys and messages (e.g. `login-address`). */
  name: string;
  points: number;
  durationSeconds: number;
  /** Refused for this long once over (default: until the window ends). */
  blockSeconds?: number;
}

/**
 * Builds the throttle of a rule. The server composes one (`createThrottles`) and hands it to every
 * feature that counts attempts, so that where counts are kept is decided in one place.
 */
export type Throttles = (rule: ThrottleRule) => Throttle;

/** Every node's counts live under this prefix in the shared Redis, one key per rule and key. */
const REDIS_KEY_PREFIX = 'plexichat:rl:';
/** What a client is told to wait when counts cannot be kept: Redis reconnects within about 2 s. */
const STORE_RETRY_AFTER_S = 5;

/**
 * The throttles of one server. Without Redis (one node, admin commands) counts are kept in this
 * process's memory and a restart forgets them. With Redis (cluster mode) they are kept there, so
 * every node counts against the same budgets: an attacker gains nothing by spreading attempts
 * over the nodes behind a load balancer. When Redis cannot be asked, an attempt is neither let
 * through uncounted (that would turn an outage into a window for guessing) nor left hanging: it
 * is answered 503 with `Retry-After` and the cause is logged.
 */
export function createThrottles(shared?: { redis: Redis; logger: Logger }): Throttles {
  if (shared === undefined) {
    return (rule) => new Throttle(rule, rule.points > 0 ? new RateLimiterMemory(limiterOptions(rule, rule.name)) : undefined, (error) => error);
  }
  const { redis, logger } = shared;
  const unavailable = (rule: ThrottleRule, error: unknown): AppError => {
    logger.warn({ err: error, rule: rule.name }, 'rate-limit counts unreachable in Redis: answered 503');
    return new AppError('service_unavailable', 'Attempts cannot be counted right now; retry later', {
      headers: { 'Retry-After': String(STORE_RETRY_AFTER_S) },
    });
  };
  return (rule) =>
    new Throttle(
      rule,
      rule.points > 0
        ? new RateLimiterRedis({ ...limiterOptions(rule, REDIS_KEY_PREFIX + rule.name), storeClient: redis, rejectIfRedisNotReady: true })
        : undefined,
      (error) => unavailable(rule, error),
    );
}

function limiterOptions(rule: ThrottleRule, keyPrefix: string) {
  return { keyPrefix, points: rule.points, duration: rule.durationSeconds, blockDuration: rule.blockSeconds ?? 0 };
}

/**
 * One brute-force budget, counted per key (a client address, an account, or both), on
 * rate-limiter-flexible (built by `createThrottles`). Over the budget, `consume` throws the
 * documented 429 with `Retry-After` and the `X-RateLimit-Limit/Remaining/Reset` headers; a rule
 * with no points is off.
 */
export class Throttle {
  constructor(
    readonly rule: ThrottleRule,
    private readonly limiter: RateLimiterAbstract | undefined,
    /** What to throw when the store failed (rather than refused): the store's own error, or a 503. */
    private readonly storeFailed: (error: unknown) => unknown,
  ) {}

  /** Counts one attempt against `key`; throws 429 (`too_many_requests`) when the key is over its budget. */
  async consume(key: string): Promise<void> {
    if (!this.limiter) return;
    try {
      await this.limiter.consume(key);
    } catch (error) {
      // The store rejects with a RateLimiterRes when the key is over; with an Error when it failed.
      if (!(error instanceof RateLimiterRes)) throw this.storeFailed(error);
      const seconds = Math.max(1, Math.ceil(error.msBeforeNext / 1000));
      throw new AppError('too_many_requests', `Too many attempts; retry in ${seconds} s`, {
        headers: {
          'Retry-After': String(seconds),
          'X-RateLimit-Limit': String(this.rule.points),
          'X-RateLimit-Remaining': '0',
          'X-RateLimit-Reset': String(Math.ceil((Date.now() + error.msBeforeNext) / 1000)),
        },
      });
    }
  }

  /** Forgets the attempts of `key` (e.g. consecutive failures, after a success). */
  async reset(key: string): Promise<void> {
    if (!this.limiter) return;
    try {
      await this.limiter.delete(key);
    } catch (error) {
      throw this.storeFailed(error);
    }
  }
}
