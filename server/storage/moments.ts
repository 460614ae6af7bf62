import { MOMENT_WAIT_MS, StatementCache, openDatabase, type OpenOptions } from './sqlite.ts';

/**
 * How a process reaches a SQLite file of the data folder that every process uses now and then
 * (`ids.sqlite`, `directory.sqlite`):
 * - one node (no Redis) holds it open for its whole life, in WAL mode with its shared-memory
 *   index: one process on a local disk, and nothing is paid per use;
 * - a cluster's processes (nodes, commands given `--redis-url`) take it in turns on a volume that
 *   may be a network filesystem, which gives whole-file locks but no shared memory between
 *   machines: each use opens the file for a moment in EXCLUSIVE locking mode (WAL keeps its index
 *   in the process's memory, no `-shm` file), reads or writes, and closes it. A process finding
 *   it held by another's moment waits for it (`MOMENT_WAIT_MS`).
 */
export interface SharedFile {
  /** Runs `fn` with a connection to the file; nothing may keep the statements past it. */
  use<T>(fn: (statements: StatementCache) => T): T;
  close(): void;
}

/** Opened now, kept open until `close` (one node). */
export function heldOpen(file: string, options: OpenOptions): SharedFile {
  const statements = new StatementCache(openDatabase(file, options));
  return {
    use: (fn) => fn(statements),
    close: () => statements.db.close(),
  };
}

/** Opened for each use, alone, and closed after it (cluster mode); nothing is open in between. */
export function inTurns(file: string, options: OpenOptions): SharedFile {
  return {
    use(fn) {
      const db = openForMoment(file, options);
      try {
        return fn(new StatementCache(db));
      } finally {
        db.close();
      }
    },
    close() {},
  };
}

/** One moment's connection: EXCLUSIVE locking mode, waiting for another process's moment to end. */
export function openForMoment(file: string, options: OpenOptions) {
  return openDatabase(file, { ...options, exclusive: true, exclusiveWaitMs: MOMENT_WAIT_MS });
}
