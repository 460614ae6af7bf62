import Database from 'better-sqlite3';

export type Db = Database.Database;
export type Statement = Database.Statement;

/** A schema change: applied in order, once, tracked by `PRAGMA user_version`. */
export type Migration = (db: Db) => void;

export interface OpenOptions {
  migrations: readonly Migration[];
  /** Open only an existing file (user files are created explicitly, never by a lookup). */
  mustExist?: boolean;
  /**
   * Hold the file for this connection alone (cluster mode, user files): SQLite's EXCLUSIVE locking
   * mode, set before the first access, so WAL runs without its shared-memory index (a heap copy
   * instead), which network filesystems cannot share safely. The lock is taken by the open's first
   * read and kept until the connection closes; an open that finds the file held by another
   * connection fails at once with SQLITE_BUSY (no busy wait: the holder keeps it for as long as it
   * serves the user).
   */
  exclusive?: boolean;
  /**
   * With `exclusive`: how long the open waits for another connection's hold to end before it
   * fails with SQLITE_BUSY, instead of failing at once. For files every process of a cluster opens
   * for a moment and closes again (`ids.sqlite`, `directory.sqlite`: storage/moments.ts), whose
   * holds are short.
   */
  exclusiveWaitMs?: number;
}

/**
 * How long a process waits for another's moment with a file opened in turns (storage/moments.ts):
 * a moment is one read or one small write, so a few seconds only run out when something is wrong.
 */
export const MOMENT_WAIT_MS = 5000;

/** Opens a SQLite file in WAL mode and brings its schema up to date in one transaction. */
export function openDatabase(file: string, options: OpenOptions): Db {
  const db = new Database(file, { fileMustExist: options.mustExist ?? false });
  try {
    if (options.exclusive === true) {
      db.pragma('locking_mode = EXCLUSIVE');
      db.pragma(`busy_timeout = ${options.exclusiveWaitMs ?? 0}`);
    }
    db.pragma('journal_mode = WAL');
    // NORMAL in WAL mode: a committed transaction survives a process crash (kill -9); only an OS
    // crash or power loss can drop the last few. Acknowledged writes are committed first.
    db.pragma('synchronous = NORMAL');
    if (options.exclusive !== true) db.pragma('busy_timeout = 5000');
    // better-sqlite3 builds SQLite with a 16 MB page cache per connection, and up to
    // --max-open-user-files connections are open: SQLite's own default of 2 MB bounds that (the
    // rest is served from the OS page cache). A long sync session on one document otherwise
    // grows RSS by the full 16 MB (and the directory by as much again).
    db.pragma('cache_size = -2000');
    db.pragma('foreign_keys = ON');
    migrate(db, options.migrations);
    return db;
  } catch (error) {
    db.close();
    throw error;
  }
}

function migrate(db: Db, migrations: readonly Migration[]): void {
  if (schemaVersion(db, migrations) === migrations.length) return;
  db.transaction(() => {
    // Read again under the write lock: another process (an admin command beside the server) may
    // have migrated the file since the read above, and a migration must never run twice.
    const current = schemaVersion(db, migrations);
    for (let version = current; version < migrations.length; version += 1) {
      (migrations[version] as Migration)(db);
    }
    db.pragma(`user_version = ${migrations.length}`);
  }).immediate();
}

/** The file's schema version; throws when it is newer than this server knows (never misread it). */
function schemaVersion(db: Db, migrations: readonly Migration[]): number {
  const current = readSchemaVersion(db);
  if (current > migrations.length) {
    throw new Error(`${db.name} has schema version ${current}, newer than this server knows (${migrations.length})`);
  }
  return current;
}

export function readSchemaVersion(db: Db): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/**
 * Opens an existing SQLite file as it is, for reading (integrity checks, backups): no migration,
 * no change of its journal mode. Opened read-write all the same, because reading a WAL file needs
 * its shared-memory file, which a read-only connection cannot create; nothing is ever written
 * through it.
 */
export function openExistingForReading(file: string, options: { exclusive?: boolean } = {}): Db {
  const db = new Database(file, { fileMustExist: true });
  try {
    // Cluster mode (`ids.sqlite`, `directory.sqlite`, which no process holds open there): held for
    // this connection alone, WAL without shared memory, as every other process of the cluster
    // opens them (storage/moments.ts); it waits as long as they do for a moment of another.
    if (options.exclusive === true) db.pragma('locking_mode = EXCLUSIVE');
    db.pragma(`busy_timeout = ${options.exclusive === true ? MOMENT_WAIT_MS : 5000}`);
    return db;
  } catch (error) {
    db.close();
    throw error;
  }
}

/**
 * A reader of `PRAGMA data_version` on this connection, prepared once. The value changes when
 * another connection (another process: an admin command beside the server) commits to the file,
 * never for this connection's own commits. Inside a transaction it costs a tenth of a microsecond;
 * outside one it is a read transaction of its own (about a microsecond, with lock system calls),
 * which is why hot paths never call it per request.
 */
export function dataVersionReader(db: Db): () => number {
  const statement = db.prepare('PRAGMA data_version').pluck();
  return () => statement.get() as number;
}

/** Prepared statements cached per connection, so hot paths never re-prepare SQL. */
export class StatementCache {
  private readonly statements = new Map<string, Statement>();
  constructor(readonly db: Db) {}

  get(sql: string): Statement {
    let statement = this.statements.get(sql);
    if (!statement) {
      statement = this.db.prepare(sql);
      this.statements.set(sql, statement);
    }
    return statement;
  }
}
