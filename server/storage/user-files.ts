import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { isSnowflake } from '../../shared/snowflake.ts';
import { backupOpenDatabase, type PageProgress } from './backup.ts';
import { FileHeldElsewhereError, NotOwnerError, StorageBusyError, isOutOfDescriptors } from './errors.ts';
import { USER_FILE_MIGRATIONS } from './schema.ts';
import { StatementCache, dataVersionReader, openDatabase, openExistingForReading, type Db, type Statement } from './sqlite.ts';

/**
 * Cluster mode: which users' files this process may open and write now (it holds their lease).
 * Asked before every open and inside every write transaction, so it must be cheap (no I/O).
 */
export interface FileAccess {
  mayUse(userId: string): boolean;
  /** Takes a user that does not exist yet (a new account's id) for this process; resolves with the fencing token. */
  claimNew(userId: string): Promise<number>;
  /**
   * A process that is no node (an admin command): takes the user for a moment of work, from the
   * node serving them if one does (it hands them over), and resolves with what gives them back.
   * Nodes have none: they take users as requests come (`claim`).
   */
  hold?(userId: string): Promise<() => Promise<void>>;
}

/** Tries at claiming a new account's id before a registration gives up (see `UserFiles.claimNew`). */
const NEW_CLAIM_ATTEMPTS = 3;

/** An open user file: its connection and the statements prepared on it. */
export class UserFile {
  private readonly statements: StatementCache;
  pins = 0;
  /** Bumped by every transaction, and by commits of other processes once seen: memoised reads older than it are stale. */
  private generation = 0;
  private readonly memos = new Map<string, { generation: number; value: unknown }>();
  private readonly readDataVersion: () => number;
  /** `PRAGMA data_version` when last looked at: another process has committed since if it differs. */
  private dataVersion: number;
  private deleted = false;
  /**
   * Cluster mode: the fencing token this node holds for the file, checked by every write
   * transaction (`checkFence`); undefined on one node, and for files this node does not own.
   */
  fence: number | undefined;
  /** The data_version at which the stored token was last seen to be `fence`. */
  private fenceSeenAt = -1;

  constructor(
    readonly userId: string,
    readonly db: Db,
    /** Cluster mode: asked under the write lock before every write (see `FileAccess`). */
    private readonly access?: Pick<FileAccess, 'mayUse'>,
  ) {
    this.statements = new StatementCache(db);
    this.readDataVersion = dataVersionReader(db);
    this.dataVersion = this.readDataVersion();
  }

  stmt(sql: string): Statement {
    return this.statements.get(sql);
  }

  /**
   * Runs `fn` in one IMMEDIATE transaction (it takes the write lock up front, so it never
   * upgrades). Every write to a user file goes through here, which is what keeps `memo` honest.
   * Under the lock it first looks whether another process committed meanwhile (data_version, a
   * tenth of a microsecond inside a transaction): memos are dropped, and a file whose account was
   * deleted is written no more (UserFileDeletedError, nothing changed).
   */
  transaction<T>(fn: () => T): T {
    try {
      return this.db
        .transaction(() => {
          if (this.refresh() === 'deleted') throw new UserFileDeletedError(`the account ${this.userId} was deleted`);
          // A lease that ran out while this process was paused or cut off from Redis: another
          // process may hold the user now (on a network volume whose server broke a stale lock,
          // even the file), so nothing more is written here.
          if (this.access !== undefined && !this.access.mayUse(this.userId)) throw new NotOwnerError(`this process no longer holds ${this.userId}`);
          this.checkFence();
          return fn();
        })
        .immediate();
    } finally {
      this.generation += 1;
    }
  }

  /**
   * Under the write lock: throws NotOwnerError, writing nothing, when another node has written a
   * newer fencing token since this one took the file. Only another connection can have written it,
   * which SQLite tells by `data_version`: while that has not moved, the token is not read again.
   */
  private checkFence(): void {
    if (this.fence === undefined || this.fenceSeenAt === this.dataVersion) return;
    if (readFence(this) !== this.fence) throw new NotOwnerError(`another node owns the file of ${this.userId} now`);
    this.fenceSeenAt = this.dataVersion;
  }

  /**
   * Takes the file over with `token` (cluster mode): stores it, unless a newer one is stored
   * already (then NotOwnerError), and checks it from then on.
   */
  takeOver(token: number): void {
    this.fence = undefined;
    this.transaction(() => {
      const stored = readFence(this);
      if (stored !== undefined && stored > token) throw new NotOwnerError(`a newer owner's token is stored in the file of ${this.userId}`, stored);
      writeFence(this, token);
    });
    this.holdFence(token);
  }

  /** Checks `token`, stored in the file by this connection, from now on. */
  holdFence(token: number): void {
    this.fence = token;
    this.fenceSeenAt = this.dataVersion;
  }

  /**
   * A value read from this file, kept until the next transaction on it, or until a commit of
   * another process is seen (`refresh`: on every write, and when the server is told of one). Hot
   * reads (the profile behind every `GET /users/@me`) then cost no SQLite call at all.
   */
  memo<T>(key: string, read: () => T): T {
    const hit = this.memos.get(key);
    if (hit && hit.generation === this.generation) return hit.value as T;
    const value = read();
    this.memos.set(key, { generation: this.generation, value });
    return value;
  }

  /**
   * Looks whether another process committed to this file since the last look: if so, memoised
   * reads are dropped ('changed'), and 'deleted' when that commit deleted the account.
   */
  refresh(): 'unchanged' | 'changed' | 'deleted' {
    // A deletion is never undone: once seen, the file stays deleted for this handle.
    if (this.deleted) return 'deleted';
    const version = this.readDataVersion();
    if (version === this.dataVersion) return 'unchanged';
    this.dataVersion = version;
    this.generation += 1;
    this.deleted = isMarkedDeleted(this);
    return this.deleted ? 'deleted' : 'changed';
  }
}

function writeFence(file: UserFile, token: number): void {
  file.stmt('INSERT INTO owner_lease (singleton, token) VALUES (1, ?) ON CONFLICT (singleton) DO UPDATE SET token = excluded.token').run(token);
}

function clearFence(file: UserFile): void {
  file.stmt('DELETE FROM owner_lease').run();
}

function readFence(file: UserFile): number | undefined {
  const row = file.stmt('SELECT token FROM owner_lease').get() as { token: number } | undefined;
  return row?.token;
}

/** Whether the account of this file was deleted (the first write of a deletion marks the file). */
function isMarkedDeleted(file: UserFile): boolean {
  return file.stmt('SELECT 1 FROM deletion').get() !== undefined;
}

export class UserFileMissingError extends Error {}

/**
 * The account was deleted (by an admin command, possibly in another process) while its file was
 * still here or still open: the same as a missing file to every caller, and never written again.
 */
export class UserFileDeletedError extends UserFileMissingError {}

/**
 * The per-user SQLite files under `<dataDir>/users`, opened on demand, at most `maxOpen` at a time
 * (each holds three descriptors: the database, its WAL and its shared-memory file).
 *
 * The cap is a real bound. Opening a file when `maxOpen` are open first closes the least recently
 * used unpinned one, right away; when every open file is pinned (a live sync connection holds its
 * user's file), the open fails with StorageBusyError, which callers answer as "retry shortly".
 *
 * Because eviction is immediate, a handle from `get()` stays open only until another user's file
 * is opened. Use it within one synchronous block that opens no other user file, or hold it with
 * `use()`/`pin()`.
 */
export class UserFiles {
  private readonly dir: string;
  /** Map order is recency order: the first entry is the least recently used. */
  private readonly open = new Map<string, UserFile>();
  private readonly closingListeners = new Set<(userId: string) => void>();
  /** Cluster mode: the fencing token of each user this node owns, given to their file whenever it is opened. */
  private readonly fences = new Map<string, number>();
  /** Cluster mode (`ownOnly`): the users whose files this process may open, which it then holds exclusively. */
  private access: FileAccess | undefined;
  /** Files opened and idle files closed to make room, since start (for metrics: many evictions = cap too low). */
  opened = 0;
  evicted = 0;

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

  /**
   * Called with a user's id just before their file is closed to make room, while it is still open:
   * whatever keeps state over the file (a loaded document) writes it back and lets go.
   */
  onClosing(listener: (userId: string) => void): void {
    this.closingListeners.add(listener);
  }

  /**
   * Cluster mode: from now on this process opens only the files of users `access` says it holds,
   * and opens them in exclusive locking mode (storage/sqlite.ts): no other process can read or
   * write a file this one has open, and an open of a file another process holds fails at once
   * (FileHeldElsewhereError, answered as "your data is moving"). Called once, before any file is
   * opened.
   */
  ownOnly(access: FileAccess): void {
    if (this.open.size > 0) throw new Error('ownOnly must be called before any user file is opened');
    this.access = access;
  }

  /** The ids of every user file there is, opened or not (names that are not snowflakes are skipped). */
  list(): string[] {
    const ids: string[] = [];
    for (const name of fs.readdirSync(this.dir)) {
      const match = /^([0-9]+)\.sqlite$/.exec(name);
      if (match !== null && isSnowflake(match[1])) ids.push(match[1]);
    }
    return ids;
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
    // Checked first: a user that does not exist must not cost another user's open file (and is
    // no account, whoever would hold it).
    if (!fs.existsSync(file)) throw new UserFileMissingError(`no user file for ${userId}`);
    this.assertMayUse(userId);
    let db: Db;
    try {
      db = this.openFile(file, true);
    } catch (error) {
      if (!(error instanceof StorageBusyError) && !fs.existsSync(file)) throw new UserFileMissingError(`no user file for ${userId}`);
      throw error;
    }
    const opened = new UserFile(userId, db, this.access);
    opened.fence = this.fences.get(userId);
    // A deletion stopped half-way (or still going on in another process) leaves a marked file:
    // it is no account any more, whatever else still names it.
    if (isMarkedDeleted(opened)) {
      db.close();
      throw new UserFileDeletedError(`the account ${userId} was deleted`);
    }
    return this.remember(opened);
  }

  /**
   * Cluster mode: takes a new account's id for this process before its file is created, so that
   * `create` makes the file as its owner, fencing token included. Nothing to do on one node.
   */
  async claimNew(userId: string): Promise<void> {
    const access = this.access;
    if (access === undefined) return;
    // An answer that came later than the lease can be counted on (an event loop stalled past a
    // good part of a lease) leaves the user claimed in Redis but not usable here: claiming again
    // renews it (the same token). A few tries, then the refusal says the data is moving (retry).
    for (let attempt = 0; attempt < NEW_CLAIM_ATTEMPTS; attempt += 1) {
      this.fences.set(userId, await access.claimNew(userId));
      if (access.mayUse(userId)) return;
    }
    throw new NotOwnerError(`the claim of the new user ${userId} kept ending before it could be used`);
  }

  /**
   * Creates a new user file and runs `init` on it in one transaction. If anything fails, no file
   * is left behind (a half-made file would block the id and hold nothing). Cluster mode: `fence`
   * is the token of this node's lease on the new user, stored by the same transaction and checked
   * from then on, as `claim` does for an existing file (the file is made by its owner).
   */
  create(userId: string, init: (file: UserFile) => void, fence?: number): UserFile {
    const file = this.pathOf(userId);
    this.assertMayUse(userId);
    if (fs.existsSync(file)) throw new Error(`user file for ${userId} already exists`);
    let userFile: UserFile | undefined;
    try {
      userFile = new UserFile(userId, this.openFile(file, false), this.access);
      const created = userFile;
      const token = this.fences.get(userId);
      created.transaction(() => {
        init(created);
        if (token !== undefined) writeFence(created, token);
      });
      created.fence = token;
      if (token !== undefined) this.fences.set(userId, token);
    } catch (error) {
      if (userFile?.db.open) userFile.db.close();
      removeDatabaseFiles(file);
      throw error;
    }
    if (fence !== undefined) {
      userFile.holdFence(fence);
      this.fences.set(userId, fence);
    }
    return this.remember(userFile);
  }

  /** Whether the user has a file (without opening it). */
  exists(userId: string): boolean {
    return fs.existsSync(this.pathOf(userId));
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

  /**
   * The first step of deleting an account: the file is marked, in a transaction of its own, so
   * every process that has it open stops using it (see `UserFile.refresh`), and a deletion that
   * stops here leaves no account behind. Then the caller removes the index entry, then the file.
   */
  markDeleted(userId: string, nowSeconds: number): void {
    this.use(userId, (file) =>
      file.transaction(() => {
        file.stmt('INSERT INTO deletion (singleton, deleted_at) VALUES (1, ?) ON CONFLICT (singleton) DO NOTHING').run(nowSeconds);
      }),
    );
  }

  /**
   * Looks at every open file for commits of other processes (memos dropped); returns the ids of
   * those whose account was deleted meanwhile, still open: the caller lets go of what it keeps
   * over them, then `forget`s them.
   */
  refreshOpen(): string[] {
    const deleted: string[] = [];
    for (const [id, file] of this.open) if (file.refresh() === 'deleted') deleted.push(id);
    return deleted;
  }

  /** Closes a handle whatever holds it (its account is gone), without the closing listeners: nothing is written back. */
  forget(userId: string): void {
    const cached = this.open.get(userId);
    if (!cached) return;
    this.open.delete(userId);
    cached.db.close();
  }

  /**
   * Copies the user's file to `destination` with SQLite's online backup: a consistent snapshot,
   * taken while other connections (the server) keep reading and writing it, through this
   * process's own connection (in cluster mode the only one the file allows). The destination must
   * not exist. `progress` hears of each step (pages copied, pages in all).
   */
  async exportTo(userId: string, destination: string, progress?: PageProgress): Promise<void> {
    if (fs.existsSync(destination)) throw new Error(`${destination} already exists`);
    if (!fs.existsSync(path.dirname(path.resolve(destination)))) throw new Error(`the folder of ${destination} does not exist`);
    const { file, release } = this.pin(userId);
    try {
      await backupOpenDatabase(file.db, destination, progress);
    } finally {
      release();
    }
  }

  /**
   * Takes in a user file from elsewhere (an export of another instance): copied with the backup
   * API under a temporary name in the users folder, migrated, shown to `check` (which reads it and
   * throws to refuse it) and linked in under the user id `check` returns, never over an existing
   * file. Returns what `check` returned; the file is then open here, not yet indexed (the caller
   * indexes it, and removes it if that fails). Nothing is left behind on failure.
   */
  async adopt<T extends { userId: string }>(source: string, check: (file: UserFile) => T | Promise<T>): Promise<T> {
    if (!fs.existsSync(source)) throw new Error(`${source} does not exist`);
    // A dot name: `list()` never takes it for a user, and a failure leaves nothing a start would read.
    const temporary = path.join(this.dir, `.import-${randomBytes(8).toString('hex')}.sqlite`);
    let adopted: T;
    try {
      try {
        const reader = openExistingForReading(source);
        try {
          await reader.backup(temporary, { progress: () => 0x7fffffff });
        } finally {
          reader.close();
        }
      } catch (error) {
        throw new Error(`${source} cannot be read as a user file: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
      }
      const db = openDatabase(temporary, { migrations: USER_FILE_MIGRATIONS, mustExist: true });
      try {
        const candidate = new UserFile('', db);
        // `check` first: it says what is wrong with a file that is no user file at all (whose
        // tables the user-file migrations need not have made), before its deletion mark is looked for.
        adopted = await check(candidate);
        if (isMarkedDeleted(candidate)) throw new Error('this file belongs to an account that was deleted');
        // Another instance's owner token means nothing here (and could stand above this one's counter).
        candidate.transaction(() => clearFence(candidate));
      } finally {
        // Closing the last connection folds its WAL into the file, which then moves alone.
        db.close();
      }
      if (!isSnowflake(adopted.userId)) throw new Error(`the file names ${JSON.stringify(adopted.userId)} as its user id, which is not a snowflake`);
      // Cluster mode: the id is this process's before its file appears, as a registration's.
      await this.claimNew(adopted.userId);
      const target = this.pathOf(adopted.userId);
      try {
        // A hard link never replaces an existing file: two imports of one id cannot both win.
        fs.linkSync(temporary, target);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new Error(`a user file for id ${adopted.userId} already exists here`);
        throw error;
      }
    } finally {
      removeDatabaseFiles(temporary);
    }
    const token = this.fences.get(adopted.userId);
    if (token === undefined) this.get(adopted.userId);
    else this.claim(adopted.userId, token);
    return adopted;
  }

  /**
   * Cluster mode: this node now owns the user's file with fencing token `token` (from its lease):
   * the token is stored in the file (NotOwnerError when a newer one is there) and every write of
   * this node checks it from now on, including after the file is closed and opened again.
   */
  claim(userId: string, token: number): void {
    this.use(userId, (file) => file.takeOver(token));
    this.fences.set(userId, token);
  }

  /** Cluster mode: this node no longer owns the user's file; it is closed (nothing is written). */
  disown(userId: string): void {
    this.fences.delete(userId);
    this.forget(userId);
  }

  /**
   * Runs `fn` on the user's file to read it, whoever serves the user: through the open handle
   * when this process may use the file, otherwise (cluster mode: another process owns the user, or
   * nobody does) on a connection of its own, opened for this call and closed after it, without
   * taking the user over. That open fails at once (FileHeldElsewhereError) while another process
   * holds the file, and a node claiming the user meanwhile is refused the same way and retries:
   * two processes never have the file open together. For what reads every file (the users index
   * derived again); `fn` must not write.
   */
  read<T>(userId: string, fn: (file: UserFile) => T): T {
    if (this.access === undefined || this.open.has(userId) || this.access.mayUse(userId)) return this.use(userId, fn);
    const file = this.pathOf(userId);
    if (!fs.existsSync(file)) throw new UserFileMissingError(`no user file for ${userId}`);
    let db: Db;
    try {
      db = openDatabase(file, { migrations: USER_FILE_MIGRATIONS, mustExist: true, exclusive: true });
    } catch (error) {
      throw this.openFailure(error, file, userId);
    }
    try {
      const peeked = new UserFile(userId, db, { mayUse: () => false });
      if (isMarkedDeleted(peeked)) throw new UserFileDeletedError(`the account ${userId} was deleted`);
      return fn(peeked);
    } finally {
      db.close();
    }
  }

  /**
   * Runs `fn` while this process may use the user's file: a command in cluster mode takes the
   * user first (`FileAccess.hold`: the node serving them hands them over) and gives them back
   * after, whatever happens; on one node, and on a cluster node, `fn` just runs.
   */
  async holding<T>(userId: string, fn: () => T | Promise<T>): Promise<T> {
    const giveBack = await this.access?.hold?.(userId);
    try {
      return await fn();
    } finally {
      await giveBack?.();
    }
  }

  /**
   * Runs `fn` on the user's file as a database, whatever it holds (a deletion that stopped
   * half-way included): for checks of the file itself. Through the open handle, else a connection
   * opened for the call and closed after it; in cluster mode only for a user this process holds.
   */
  inspect<T>(userId: string, fn: (db: Db) => T): T {
    const cached = this.open.get(userId);
    if (cached) return fn(cached.db);
    this.assertMayUse(userId);
    const db = this.openFile(this.pathOf(userId), true);
    try {
      return fn(db);
    } finally {
      db.close();
    }
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
      },
    };
  }

  /** Runs `fn` with the user's file held open (pinned) for the whole call. */
  use<T>(userId: string, fn: (file: UserFile) => T): T {
    const { file, release } = this.pin(userId);
    try {
      return fn(file);
    } finally {
      release();
    }
  }

  get openCount(): number {
    return this.open.size;
  }

  closeAll(): void {
    for (const file of this.open.values()) file.db.close();
    this.open.clear();
  }

  private assertMayUse(userId: string): void {
    if (this.access !== undefined && !this.access.mayUse(userId)) throw new NotOwnerError(`this process does not hold ${userId}`);
  }

  /** What a failed open of `file` throws: FileHeldElsewhereError when another process holds it exclusively. */
  private openFailure(error: unknown, file: string, userId: string): unknown {
    if (this.access !== undefined && (error as { code?: unknown }).code === 'SQLITE_BUSY') {
      return new FileHeldElsewhereError(`the file of ${userId} is held by another process (${path.basename(file)})`);
    }
    return error;
  }

  /** Opens a database file once there is room, recovering once from a process out of descriptors. */
  private openFile(file: string, mustExist: boolean): Db {
    this.makeRoom(this.maxOpen - 1);
    const exclusive = this.access !== undefined;
    const userId = path.basename(file, '.sqlite');
    try {
      return openDatabase(file, { migrations: USER_FILE_MIGRATIONS, mustExist, exclusive });
    } catch (error) {
      if (!isOutOfDescriptors(error) || (mustExist && !fs.existsSync(file))) throw this.openFailure(error, file, userId);
      // The process limit (ulimit -n) is below what our cap needs: give back idle files and retry once.
      if (this.closeIdle(Math.ceil(this.open.size / 2)) === 0) throw new StorageBusyError('out of file descriptors, with every user file in use');
      try {
        return openDatabase(file, { migrations: USER_FILE_MIGRATIONS, mustExist, exclusive });
      } catch (retryError) {
        if (isOutOfDescriptors(retryError)) throw new StorageBusyError('out of file descriptors');
        throw this.openFailure(retryError, file, userId);
      }
    }
  }

  private remember(file: UserFile): UserFile {
    this.opened += 1;
    this.open.set(file.userId, file);
    return file;
  }

  /** Closes least recently used unpinned files until at most `keep` are open. */
  private makeRoom(keep: number): void {
    if (this.open.size <= keep) return;
    this.closeIdle(this.open.size - keep);
    if (this.open.size > keep) throw new StorageBusyError(`all ${this.maxOpen} user files the server may open are in use`);
  }

  /** Closes up to `count` unpinned files, least recently used first; returns how many it closed. */
  private closeIdle(count: number): number {
    let closed = 0;
    for (const [id, file] of this.open) {
      if (closed >= count) break;
      if (file.pins > 0) continue;
      for (const listener of this.closingListeners) listener(id);
      // A listener may have pinned or closed it meanwhile; only an idle, still-listed file goes.
      if (file.pins > 0 || this.open.get(id) !== file) continue;
      this.open.delete(id);
      file.db.close();
      closed += 1;
      this.evicted += 1;
    }
    return closed;
  }
}

function removeDatabaseFiles(file: string): void {
  for (const suffix of ['', '-wal', '-shm', '-journal']) fs.rmSync(file + suffix, { force: true });
}
