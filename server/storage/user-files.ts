import fs from 'node:fs';
import path from 'node:path';
import { isSnowflake } from '../../shared/snowflake.ts';
import { USER_FILE_MIGRATIONS } from './schema.ts';
import { StatementCache, openDatabase, type Db, type Statement } from './sqlite.ts';

/** An open user file: its connection and the statements prepared on it. */
export class UserFile {
  private readonly statements: StatementCache;
  pins = 0;

  constructor(
    readonly userId: string,
    readonly db: Db,
  ) {
    this.statements = new StatementCache(db);
  }

  stmt(sql: string): Statement {
    return this.statements.get(sql);
  }

  /** Bumped by every transaction: memoised reads older than it are stale. */
  private generation = 0;
  private readonly memos = new Map<string, { generation: number; value: unknown }>();

  /**
   * Runs `fn` in one IMMEDIATE transaction (it takes the write lock up front, so it never
   * upgrades). Every write to a user file goes through here, which is what keeps `memo` honest.
   */
  transaction<T>(fn: () => T): T {
    try {
      return this.db.transaction(fn).immediate();
    } finally {
      this.generation += 1;
    }
  }

  /**
   * A value read from this file, kept until the next transaction on it. Hot reads (the profile
   * behind every `GET /users/@me`) then cost no SQLite call at all.
   */
  memo<T>(key: string, read: () => T): T {
    const hit = this.memos.get(key);
    if (hit && hit.generation === this.generation) return hit.value as T;
    const value = read();
    this.memos.set(key, { generation: this.generation, value });
    return value;
  }
}

export class UserFileMissingError extends Error {}

/**
 * The per-user SQLite files under `<dataDir>/users`, opened on demand and kept in an LRU of at
 * most `maxOpen` handles. A pinned handle (a live sync session holds one) is never evicted, so the
 * cap can be exceeded while more users than that are pinned.
 */
export class UserFiles {
  private readonly dir: string;
  /** Map order is recency order: the first entry is the least recently used. */
  private readonly open = new Map<string, UserFile>();
  private evictTimer: NodeJS.Immediate | undefined;

  constructor(
    dataDir: string,
    private readonly maxOpen: number,
  ) {
    this.dir = path.join(dataDir, 'users');
    fs.mkdirSync(this.dir, { recursive: true });
  }

  /** The only place a user id becomes a path: it must be a snowflake (digits only). */
  pathOf(userId: string): string {
    if (!isSnowflake(userId)) throw new Error(`refusing to use ${JSON.stringify(userId)} as a user file name`);
    return path.join(this.dir, `${userId}.sqlite`);
  }

  /** Opens an existing user file; throws UserFileMissingError when there is none. */
  get(userId: string): UserFile {
    const cached = this.open.get(userId);
    if (cached) {
      this.open.delete(userId);
      this.open.set(userId, cached);
      return cached;
    }
    const file = this.pathOf(userId);
    let db: Db;
    try {
      db = openDatabase(file, { migrations: USER_FILE_MIGRATIONS, mustExist: true });
    } catch (error) {
      if (!fs.existsSync(file)) throw new UserFileMissingError(`no user file for ${userId}`);
      throw error;
    }
    return this.remember(new UserFile(userId, db));
  }

  /** Creates a new user file and runs `init` on it in one transaction; removes the file if that fails. */
  create(userId: string, init: (file: UserFile) => void): UserFile {
    const file = this.pathOf(userId);
    if (fs.existsSync(file)) throw new Error(`user file for ${userId} already exists`);
    const userFile = new UserFile(userId, openDatabase(file, { migrations: USER_FILE_MIGRATIONS }));
    try {
      userFile.transaction(() => init(userFile));
    } catch (error) {
      userFile.db.close();
      removeDatabaseFiles(file);
      throw error;
    }
    return this.remember(userFile);
  }

  /** Closes and deletes a user's file (e.g. when creating the account failed half-way). */
  remove(userId: string): void {
    const file = this.pathOf(userId);
    const cached = this.open.get(userId);
    if (cached) {
      this.open.delete(userId);
      cached.db.close();
    }
    removeDatabaseFiles(file);
  }

  /** Keeps a handle open until the returned release function is called. */
  pin(userId: string): { file: UserFile; release: () => void } {
    const file = this.get(userId);
    file.pins += 1;
    let released = false;
    return {
      file,
      release: () => {
        if (released) return;
        released = true;
        file.pins -= 1;
        this.scheduleEviction();
      },
    };
  }

  get openCount(): number {
    return this.open.size;
  }

  closeAll(): void {
    if (this.evictTimer) clearImmediate(this.evictTimer);
    this.evictTimer = undefined;
    for (const file of this.open.values()) file.db.close();
    this.open.clear();
  }

  private remember(file: UserFile): UserFile {
    this.open.set(file.userId, file);
    this.scheduleEviction();
    return file;
  }

  /**
   * Eviction waits for the current turn of the event loop: synchronous code may hold several
   * unpinned handles at once and must not see one closed under it. Code that keeps a handle across
   * an await pins it.
   */
  private scheduleEviction(): void {
    if (this.open.size <= this.maxOpen || this.evictTimer) return;
    this.evictTimer = setImmediate(() => {
      this.evictTimer = undefined;
      this.evict();
    });
  }

  private evict(): void {
    if (this.open.size <= this.maxOpen) return;
    for (const [id, file] of this.open) {
      if (this.open.size <= this.maxOpen) break;
      if (file.pins > 0) continue;
      this.open.delete(id);
      file.db.close();
    }
  }
}

function removeDatabaseFiles(file: string): void {
  for (const suffix of ['', '-wal', '-shm', '-journal']) fs.rmSync(file + suffix, { force: true });
}
