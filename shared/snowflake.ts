/**
 * Snowflake ids: 42-bit milliseconds since 2024-01-01T00:00:00Z, 10-bit worker, 12-bit sequence,
 * written as decimal strings (they do not fit a JS number).
 */
export const SNOWFLAKE_EPOCH_MS = Date.UTC(2024, 0, 1);
const WORKER_BITS = 10n;
const SEQUENCE_BITS = 12n;
const MAX_SEQUENCE = (1 << Number(SEQUENCE_BITS)) - 1;
export const MAX_WORKER_ID = (1 << Number(WORKER_BITS)) - 1;
const MAX_SNOWFLAKE = (1n << 63n) - 1n;

/** Digits only, no sign, no leading zero, at most 19 digits and within a signed 64-bit integer. */
export function isSnowflake(value: unknown): value is string {
  if (typeof value !== 'string' || !/^[1-9][0-9]{0,18}$/.test(value)) return false;
  return BigInt(value) <= MAX_SNOWFLAKE;
}

/** The creation time encoded in a snowflake, in milliseconds since the Unix epoch. */
export function snowflakeTimeMs(id: string): number {
  return Number(BigInt(id) >> (WORKER_BITS + SEQUENCE_BITS)) + SNOWFLAKE_EPOCH_MS;
}

export interface SnowflakeOptions {
  workerId: number;
  /** Lowest millisecond (since the Unix epoch) the generator may use: survives clock steps back. */
  notBeforeMs?: number;
  now?: () => number;
}

/**
 * Generates strictly increasing snowflakes. If the clock steps back, or 4096 ids are taken in one
 * millisecond, it borrows the next millisecond instead of repeating an id.
 */
export class SnowflakeGenerator {
  readonly workerId: number;
  private lastMs: number;
  private sequence = 0;
  private readonly now: () => number;

  constructor(options: SnowflakeOptions) {
    if (!Number.isInteger(options.workerId) || options.workerId < 0 || options.workerId > MAX_WORKER_ID) {
      throw new RangeError(`workerId must be an integer 0-${MAX_WORKER_ID}`);
    }
    this.workerId = options.workerId;
    this.now = options.now ?? Date.now;
    this.lastMs = Math.max(options.notBeforeMs ?? 0, SNOWFLAKE_EPOCH_MS) - 1;
  }

  /** The last millisecond handed out, for persisting a high-water mark. */
  get lastTimestampMs(): number {
    return this.lastMs;
  }

  next(): string {
    const now = this.now();
    if (now > this.lastMs) {
      this.lastMs = now;
      this.sequence = 0;
    } else if (this.sequence < MAX_SEQUENCE) {
      this.sequence += 1;
    } else {
      this.lastMs += 1;
      this.sequence = 0;
    }
    const ms = BigInt(this.lastMs - SNOWFLAKE_EPOCH_MS);
    const id = (ms << (WORKER_BITS + SEQUENCE_BITS)) | (BigInt(this.workerId) << SEQUENCE_BITS) | BigInt(this.sequence);
    return id.toString();
  }
}

/** Compares two snowflake strings numerically (shorter is smaller, then lexicographic). */
export function compareSnowflakes(a: string, b: string): number {
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}
