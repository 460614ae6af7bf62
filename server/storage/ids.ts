import { SnowflakeGenerator } from '../../shared/snowflake.ts';
import type { DirectoryFile } from './directory.ts';
import { readMeta, writeMeta } from './meta-repo.ts';

const HIGH_WATER_KEY = 'snowflake_high_water_ms';
/** How far ahead a persisted reservation reaches: at most one directory write per second of ids. */
const LEASE_MS = 1000;

export type IdGenerator = () => string;

/**
 * Snowflakes that stay monotonic across restarts, even if the clock stepped back while the server
 * was down: a high-water mark a little ahead of the last id is persisted, and a restarted server
 * never issues an id below it.
 */
export function createIdGenerator(directory: DirectoryFile, workerId: number, now: () => number = Date.now): IdGenerator {
  const stored = Number(readMeta(directory, HIGH_WATER_KEY) ?? '0');
  // Every earlier id is below `stored`, so starting at `stored + 1` can never repeat one.
  const generator = new SnowflakeGenerator({ workerId, notBeforeMs: Number.isFinite(stored) ? stored + 1 : 0, now });
  let reservedUntil = stored;
  return () => {
    const id = generator.next();
    if (generator.lastTimestampMs >= reservedUntil) {
      reservedUntil = generator.lastTimestampMs + LEASE_MS;
      writeMeta(directory, HIGH_WATER_KEY, String(reservedUntil));
    }
    return id;
  };
}
