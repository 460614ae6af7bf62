import { RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible';
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
 * One brute-force budget, counted per key (a client address, an account, or both). Built on
 * rate-limiter-flexible so that the cluster mode swaps this one constructor for its Redis store.
 * Over the budget, `consume` throws the documented 429 with `Retry-After` and the
 * `X-RateLimit-Limit/Remaining/Reset` headers; a rule with no points is off.
 */
export class Throttle {
  private readonly limiter: RateLimiterMemory | undefined;

  constructor(readonly rule: ThrottleRule) {
    this.limiter =
      rule.points > 0
        ? new RateLimiterMemory({ keyPrefix: rule.name, points: rule.points, duration: rule.durationSeconds, blockDuration: rule.blockSeconds ?? 0 })
        : undefined;
  }

  /** Counts one attempt against `key`; throws 429 (`too_many_requests`) when the key is over its budget. */
  async consume(key: string): Promise<void> {
    if (!this.limiter) return;
    try {
      await this.limiter.consume(key);
    } catch (error) {
      if (!(error instanceof RateLimiterRes)) throw error;
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
    await this.limiter?.delete(key);
  }
}
