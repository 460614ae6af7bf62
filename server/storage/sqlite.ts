import Database from 'better-sqlite3';

export type Db = Database.Database;
export type Statement = Database.Statement;

/** A schema change: applied in order, once, tracked by `PRAGMA user_version`. */
export type Migration = (db: Db) => void;

export interface OpenOptions {
  migrations: readonly Migration[];
  /** Open only an existing file (user files are created explicitly, never by a lookup). */
  mustExist?: boolean;
}

/** Opens a SQLite file in WAL mode and brings its schema up to date in one transaction. */
export function openDatabase(file: string, options: OpenOptions): Db {
  const db = new Database(file, { fileMustExist: options.mustExist ?? false });
  try {
    db.pragma('journal_mode = WAL');
    // NORMAL in WAL mode: a committed transaction survives a process crash (kill -9); only an OS
    // crash or power loss can drop the last few. Acknowledged writes are committed first.
    db.pragma('synchronous = NORMAL');
    db.pragma('busy_timeout = 5000');
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
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > migrations.length) {
    throw new Error(`${db.name} has schema version ${current}, newer than this server knows (${migrations.length})`);
  }
  if (current === migrations.length) return;
  db.transaction(() => {
    for (let version = current; version < migrations.length; version += 1) {
      (migrations[version] as Migration)(db);
    }
    db.pragma(`user_version = ${migrations.length}`);
  }).immediate();
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
