import path from 'node:path';
import { SnowflakeGenerator } from '../../shared/snowflake.ts';
import type { DirectoryFile } from './directory.ts';
import { ClusterUnavailableError } from './errors.ts';
import { deleteMeta, readMeta } from './meta-repo.ts';
import { ID_FILE_MIGRATIONS } from './schema.ts';
import { heldOpen, inTurns, type SharedFile } from './moments.ts';
import type { StatementCache } from './sqlite.ts';

/** Where servers before `ids.sqlite` kept the reservation: the directory's `meta` table. */
const LEGACY_HIGH_WATER_KEY = 'snowflake_high_water_ms';
/** How far ahead a reservation reaches: at most one write per second of ids. */
const LEASE_MS = 1000;

export type IdGenerator = () => string;

/**
 * The worker id of every process that issues ids through `ids.sqlite` beside a cluster: admin
 * commands (and a single server left at the default `--worker-id`). Cluster nodes never lease it
 * (cluster/worker-ids.ts), so a command's ids cannot be a node's, whatever their clocks say.
 */
export const FILE_RESERVATION_WORKER_ID = 0;

/**
 * No id can be issued right now (cluster mode: this node holds no worker id it can count on, or it
 * has used up the time it reserved ahead). Retryable: answered 503 like a busy storage.
 */
export class IdsUnavailableError extends ClusterUnavailableError {
  override readonly name = 'IdsUnavailableError';
}

/** `ids.sqlite`'s mark as a floor other generators respect (cluster/worker-ids.ts). */
export interface ReservationMark {
  /** Every id issued through `ids.sqlite`, and every range a node started, is below this (0: none). */
  read(): number;
  /** Raises it (never lowers it); a write of its own. */
  raise(untilMs: number): void;
}

/**
 * A worker id held by this process alone, and the milliseconds it may issue ids in:
 * `[fromMs, untilMs)`. Nobody else issued an id of this worker id at or after `fromMs`, and
 * whoever holds the worker id next starts at or after `untilMs`. `untilMs` only grows while
 * the same holding lasts (the holder renews it); a new holding is a new object.
 */
export interface WorkerHolding {
  readonly workerId: number;
  readonly fromMs: number;
  readonly untilMs: number;
}

/**
 * `<dataDir>/ids.sqlite`: how far the id generator has reserved time ahead. A file of its own
 * because the reservation must outlive every transaction: ids are taken inside directory and
 * user-file transactions that may roll back, and a reservation written there would roll back with
 * them, leaving ids already handed out above the persisted mark. Nothing else writes here, so each
 * write is a transaction of its own that nobody can undo.
 */
export class IdReservationFile {
  private readonly file: SharedFile;

  /** `inTurns`: cluster mode, where no process holds the file open (storage/moments.ts). */
  constructor(dataDir: string, options: { inTurns: boolean }) {
    const file = path.join(dataDir, 'ids.sqlite');
    this.file = options.inTurns ? inTurns(file, { migrations: ID_FILE_MIGRATIONS }) : heldOpen(file, { migrations: ID_FILE_MIGRATIONS });
  }

  /** The reserved millisecond every issued id is below, or undefined before the first reservation. */
  read(): number | undefined {
    return this.file.use(readReservation);
  }

  /** Moves the reservation up to `untilMs`; never down (a stale value cannot shrink it). */
  raise(untilMs: number): void {
    this.file.use((statements) => raiseReservation(statements, untilMs));
  }

  /**
   * Reserves `leaseMs` of milliseconds for this process's ids, from `fromMs` or, when another
   * process sharing the data folder (an admin command beside the server) reserved past it, from
   * the end of that reservation: every id that process issued is below it. Read and written in one
   * IMMEDIATE transaction, so two processes never hold the same milliseconds, and one worker id is
   * safe for both. Returns the reserved range.
   */
  reserve(fromMs: number, leaseMs: number): { fromMs: number; untilMs: number } {
    return this.file.use((statements) =>
      statements.db
        .transaction(() => {
          const start = Math.max(fromMs, readReservation(statements) ?? 0);
          raiseReservation(statements, start + leaseMs);
          return { fromMs: start, untilMs: start + leaseMs };
        })
        .immediate(),
    );
  }

  close(): void {
    this.file.close();
  }
}

function readReservation(statements: StatementCache): number | undefined {
  const row = statements.get('SELECT reserved_until_ms FROM reservation').get() as { reserved_until_ms: number } | undefined;
  return row?.reserved_until_ms;
}

function raiseReservation(statements: StatementCache, untilMs: number): void {
  statements
    .get(
      `INSERT INTO reservation (singleton, reserved_until_ms) VALUES (1, ?)
       ON CONFLICT (singleton) DO UPDATE SET reserved_until_ms = max(reserved_until_ms, excluded.reserved_until_ms)`,
    )
    .run(untilMs);
}

/**
 * Carries the reservation of a data folder written by an older server (in the directory) over to
 * `ids.sqlite`, once: the key is deleted after it is copied, so it is never read again. Copied
 * first, deleted second: a failure in between leaves both, and the copy is a no-op the next time.
 */
export function adoptLegacyReservation(directory: DirectoryFile, reservations: IdReservationFile): void {
  const legacy = readMeta(directory, LEGACY_HIGH_WATER_KEY);
  if (legacy === undefined) return;
  const value = Number(legacy);
  if (Number.isSafeInteger(value)) reservations.raise(value);
  deleteMeta(directory, LEGACY_HIGH_WATER_KEY);
}

/**
 * Snowflakes that stay unique and monotonic across restarts, even if the clock stepped back while
 * the server was down: before an id past the reservation is handed out, the reservation is moved a
 * little ahead of it, so every id ever issued is below the stored mark, and a restarted server
 * never issues an id below it. Reservations are exclusive (`IdReservationFile.reserve`), so an
 * admin command that takes ids while the server runs, with the same worker id, never repeats one.
 */
export function createIdGenerator(reservations: IdReservationFile, workerId: number, now: () => number = Date.now): IdGenerator {
  const startAt = (notBeforeMs: number) => new SnowflakeGenerator({ workerId, notBeforeMs, now });
  const stored = reservations.read() ?? 0;
  // Every earlier id is below `stored`, so starting at `stored + 1` can never repeat one (the
  // generator may use `stored` itself, with a later sequence number, when the clock is behind).
  let generator = startAt(stored + 1);
  let reservedUntil = stored;
  const next = (): string => {
    const id = generator.next();
    const ms = generator.lastTimestampMs;
    if (ms < reservedUntil) return id;
    // Stored before the id is returned: if the write fails, the id is never seen (and the next
    // call tries again).
    const lease = reservations.reserve(ms, LEASE_MS);
    reservedUntil = lease.untilMs;
    if (lease.fromMs <= ms) return id;
    // Another process holds the milliseconds up to `lease.fromMs` (its ids may be anywhere below
    // it): this id is dropped unseen, and ours go on after them.
    generator = startAt(lease.fromMs + 1);
    return next();
  };
  return next;
}

/**
 * Snowflakes of a worker id leased elsewhere (cluster mode, cluster/worker-ids.ts): `current`
 * says which worker id this process holds and the milliseconds reserved for it, or undefined
 * while it holds none it can count on (lost, expired, Redis unreachable). Every id is issued
 * inside the holding's reserved range, so it can never be one issued by another holder of the
 * same worker id, before or after; without a holding, or past its range, no id is issued at all
 * (IdsUnavailableError), rather than one that might repeat.
 */
export function createLeasedIdGenerator(current: () => WorkerHolding | undefined, now: () => number = Date.now): IdGenerator {
  let holding: WorkerHolding | undefined;
  let generator: SnowflakeGenerator | undefined;
  return () => {
    const held = current();
    if (held === undefined) throw new IdsUnavailableError('no snowflake worker id is held right now (Redis unreachable, or the lease was lost)');
    if (generator === undefined || held !== holding) {
      // A new holding: its range starts at `fromMs` (notBeforeMs is one past the first millisecond
      // the generator may use, see createIdGenerator).
      holding = held;
      generator = new SnowflakeGenerator({ workerId: held.workerId, notBeforeMs: held.fromMs + 1, now });
    }
    const id = generator.next();
    // Dropped unseen: past the range, another holder may come to issue the same id.
    if (generator.lastTimestampMs >= held.untilMs) throw new IdsUnavailableError('the time reserved for ids ran out before it could be renewed');
    return id;
  };
}
