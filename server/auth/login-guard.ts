import { AppError } from '../core/app-error.ts';
import type { Throttle, Throttles } from '../core/throttle.ts';

/** The login budgets a self-hoster sets (`--login-failure-limit`, `--login-account-limit`); 0 turns one off. */
export interface LoginLimits {
  /** Attempts in a row without a success, per login name and client address, within 15 minutes. */
  failuresPerAddress: number;
  /** Attempts per login name per hour from all addresses, not counting each address's first few. */
  perAccount: number;
}

const FAILURE_WINDOW_S = 15 * 60;
const ACCOUNT_WINDOW_S = 60 * 60;
/**
 * How many attempts an address makes at a login name (since its last success there, within the
 * hour) before they count against the name's own budget. The owner typing the password on a
 * device that has not been failing is never refused by that budget, however many addresses attack
 * the account: only addresses already failing at it are.
 */
const FRESH_ATTEMPTS = 3;

/**
 * The per-account side of login's brute-force protection (the per-address budget is the route's).
 * Budgets are counted per login name as typed, in any case — never per resolved account — so that
 * names that are no account behave exactly like names that are one, and a refusal never tells
 * which username goes with which email. Every attempt is counted before the password is verified:
 * parallel attempts cannot overtake the count, and a refused attempt never learns whether its
 * password was right. A verified password clears its address's count for that name.
 */
export class LoginGuard {
  private readonly failures: Throttle;
  private readonly fresh: Throttle;
  private readonly account: Throttle;

  constructor(limits: LoginLimits, throttles: Throttles) {
    this.failures = throttles({ name: 'login-failures', points: limits.failuresPerAddress, durationSeconds: FAILURE_WINDOW_S });
    // Off with the account budget: then nothing asks whether an address is fresh.
    this.fresh = throttles({ name: 'login-fresh', points: limits.perAccount > 0 ? FRESH_ATTEMPTS : 0, durationSeconds: ACCOUNT_WINDOW_S });
    this.account = throttles({ name: 'login-account', points: limits.perAccount, durationSeconds: ACCOUNT_WINDOW_S });
  }

  /** Counts an attempt at `login` from `address`; throws 429 (`too_many_requests`) when one of its budgets is spent. */
  async attempt(login: string, address: string): Promise<void> {
    const name = login.toLowerCase();
    const pair = pairKey(name, address);
    await this.failures.consume(pair);
    if (this.account.rule.points > 0 && !(await this.isFresh(pair))) await this.account.consume(name);
  }

  /** The password was right: this address starts afresh at `login` (the account's budget stays as it is). */
  async succeeded(login: string, address: string): Promise<void> {
    const pair = pairKey(login.toLowerCase(), address);
    await Promise.all([this.failures.reset(pair), this.fresh.reset(pair)]);
  }

  /** Whether this is one of the address's first attempts at the name: the fresh budget is not spent yet. */
  private async isFresh(pair: string): Promise<boolean> {
    try {
      await this.fresh.consume(pair);
      return true;
    } catch (error) {
      if (error instanceof AppError && error.code === 'too_many_requests') return false;
      throw error;
    }
  }
}

/** One key for a name and an address, unambiguous whatever characters either holds. */
function pairKey(name: string, address: string): string {
  return JSON.stringify([name, address]);
}
