import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config } from '../config.ts';
import { AuthService } from '../auth/service.ts';
import { createThrottles } from '../core/throttle.ts';
import { MfaService } from '../mfa/service.ts';
import type { PageProgress } from '../storage/backup.ts';
import { inspectOpenDataFile, unopenableDataFile, type DataFile, type FileHealth } from '../storage/data-folder.ts';
import { FILE_RESERVATION_WORKER_ID } from '../storage/ids.ts';
import { UserFileMissingError, openStorage, type Storage } from '../storage/index.ts';
import { DIRECTORY_IN_REDIS } from '../storage/sqlite-directory.ts';
import { notifyServer } from '../storage/coordination.ts';
import type { DirectoryStore } from '../storage/directory-store.ts';
import { announceAdminChanges } from '../cluster/announce.ts';
import { CommandHolds } from '../cluster/command-holds.ts';
import { moveDirectoryToRedis } from '../cluster/directory-move.ts';
import { RedisDirectory } from '../cluster/redis-directory.ts';
import { connectRedis } from '../cluster/redis.ts';
import { UsersService, type AccountSummary } from '../users/service.ts';
import type { IndexProblem } from '../users/directory-index.ts';
import { avatarHashOf } from '../avatars/card.ts';
import { allowDmsFromOf } from '../settings/messaging-service.ts';

/** User files an admin command keeps open at once: it touches a few, or walks them one by one. */
const ADMIN_MAX_OPEN_USER_FILES = 16;

/** What a running server said to a command's notice (storage/coordination.ts). */
export type ServerNotice = Awaited<ReturnType<typeof notifyServer>>;

/**
 * The administration of a data folder (`plexichat admin …`): the same storage and the same
 * services the server composes, so every change follows the server's own rules and write order,
 * from another process, through SQLite's locking. Nothing here reads or writes a table itself.
 * Each change ends by telling a server running on the folder, which looks at it before it
 * answers: once a method resolves, the next request sees the change.
 *
 * On a cluster's folder the nodes hold their users' files exclusively: every method takes the
 * users it touches for the moment of its work (cluster/command-holds.ts; the node serving one
 * hands them over) and gives them back before it resolves.
 */
export class AccountsAdmin {
  readonly storage: Storage;
  readonly users: UsersService;
  private readonly auth: AuthService;
  /** Sessions this command ended, for the cluster's nodes to be told (`notify`). */
  private readonly endedSessions: string[] = [];
  /** Cluster mode: the users this command holds (set by `open`, before any user file is opened). */
  private holds: CommandHolds | undefined;

  /**
   * The data folder of one node; with `cluster` (see `open`), a cluster's, whose directory is the
   * Redis store given.
   */
  constructor(
    private readonly config: Config,
    logger: Logger,
    private readonly cluster?: { redis: Redis; directory: DirectoryStore },
  ) {
    // Worker id 0, whatever the server's: commands reserve their milliseconds in ids.sqlite, so no
    // server without Redis repeats their ids, and cluster nodes never lease 0 (docs/cluster.md).
    // Given Redis, it is one of the cluster's processes: ids.sqlite and directory.sqlite are only
    // opened for a moment at a time (storage/moments.ts).
    this.storage = openStorage({
      dataDir: config.dataDir,
      workerId: FILE_RESERVATION_WORKER_ID,
      maxOpenUserFiles: ADMIN_MAX_OPEN_USER_FILES,
      clustered: cluster !== undefined,
    });
    try {
      if (cluster !== undefined) this.storage.directory = cluster.directory;
      else if (this.storage.localDirectory.movedToRedis()) throw new Error(DIRECTORY_IN_REDIS);
      // A command makes no attempt a budget counts (no login, no search): memory, never Redis.
      const throttles = createThrottles();
      const mfa: MfaService = new MfaService({
        storage: this.storage,
        logger,
        accounts: {
          verifyPassword: (userId, password) => this.users.verifyPassword(userId, password),
          accountName: (userId) => this.users.privateUser(userId).username,
        },
        attemptsPerAccount: config.totpAccountRateLimit,
        throttles,
        clock: Date.now,
      });
      // Admin commands never answer avatar URLs: the avatars feature (and its image library) is not
      // loaded for them. They derive cards all the same (a badge, an import, a rebuild), from the
      // avatar's hash alone.
      this.users = new UsersService({
        storage: this.storage,
        logger,
        avatars: { urlOf: () => null },
        cardSources: { avatarHashOf, allowDmsFromOf },
        mfa,
        currentPasswordLimit: config.loginFailureLimit,
        throttles,
      });
      // No sweep: expiry is measured with the running server's limits, which a command does not know.
      this.auth = new AuthService({
        storage: this.storage,
        users: this.users,
        logger,
        sessions: { idleSeconds: config.sessionIdleSeconds, lifetimeSeconds: config.sessionLifetimeSeconds },
        login: { failuresPerAddress: 0, perAccount: 0 },
        throttles,
        secondFactor: mfa,
      });
      this.auth.onSessionsRevoked((sessionIds) => this.endedSessions.push(...sessionIds));
    } catch (error) {
      this.storage.close();
      throw error;
    }
  }

  /** The id of the account `reference` names (id, username or email); 404 `user_not_found` otherwise. */
  resolve(reference: string): Promise<string> {
    return this.users.resolveAccount(reference);
  }

  list(): Promise<AccountSummary[]> {
    return this.users.listAccounts();
  }

  /** A new account, as a registration makes it (no session). Returns its id. */
  async create(username: string, email: string, password: string): Promise<{ id: string; notice: ServerNotice }> {
    const id = await this.users.create({ username, email, password });
    // Cluster mode: the new id was taken for this command (`claimNew`); the nodes may have it now.
    await this.holds?.letGo(id);
    return { id, notice: await this.notify() };
  }

  /** Deletes the account (see UsersService.deleteAccount): every session ends and its sockets close (4401). */
  async delete(userId: string): Promise<ServerNotice> {
    this.auth.announceEndedSessions(await this.storage.userFiles.holding(userId, () => this.users.deleteAccount(userId)));
    return this.notify();
  }

  /** A new password; every session of the account ends first, as a password reset by mail does. */
  async resetPassword(userId: string, password: string): Promise<ServerNotice> {
    await this.storage.userFiles.holding(userId, () => this.users.setPassword(userId, password, () => this.auth.endAllSessions(userId)));
    return this.notify();
  }

  /** Runs a change of the account's profile, then tells the server. */
  async change<T>(userId: string, apply: () => T | Promise<T>): Promise<{ result: T; notice: ServerNotice }> {
    const result = await this.storage.userFiles.holding(userId, apply);
    return { result, notice: await this.notify() };
  }

  async export(userId: string, destination: string): Promise<void> {
    await this.storage.userFiles.holding(userId, () => this.users.exportAccount(userId, destination));
  }

  async import(source: string): Promise<{ account: { id: string; username: string; email: string }; notice: ServerNotice }> {
    const account = await this.users.importAccount(source);
    await this.holds?.letGo(account.id);
    return { account, notice: await this.notify() };
  }

  /**
   * `doctor`'s check of one user file (data-folder.ts) in cluster mode, and of the user's index row
   * against it: through the connection of this command, which holds the user for both (a user that
   * cannot be had ends the check).
   */
  async inspectUserFile(file: DataFile, userId: string): Promise<{ health: FileHealth; index: IndexProblem[] }> {
    const { userFiles } = this.storage;
    // One take of the user for both checks: an online user's sockets reconnect once per run.
    return userFiles.holding(userId, async () => {
      let health: FileHealth;
      try {
        health = userFiles.inspect(userId, (db) => inspectOpenDataFile(this.config.dataDir, file, db));
      } catch (error) {
        health = unopenableDataFile(this.config.dataDir, file, error);
      }
      return { health, index: await this.users.checkHeldUser(userId) };
    });
  }

  /**
   * `backup`'s copy of one user file in cluster mode: taken with the backup API through this
   * command's connection, while it holds the user. False when there is no account to copy (deleted
   * meanwhile, or the file is gone).
   */
  async copyUserFile(userId: string, destination: string, progress: PageProgress): Promise<boolean> {
    const { userFiles } = this.storage;
    return userFiles.holding(userId, async () => {
      try {
        await userFiles.exportTo(userId, destination, progress);
        return true;
      } catch (error) {
        if (error instanceof UserFileMissingError) return false;
        throw error;
      }
    });
  }

  /** Cluster mode: how many users a node was serving when this command took them (their sockets reconnected once). */
  get handedOver(): number {
    return this.holds?.handedOver ?? 0;
  }

  /**
   * The administration of the folder `config` names: of a cluster's when `config.redisUrl` is set
   * (its directory in Redis, moved there first if no node has yet), else of one node's.
   */
  static async open(config: Config, logger: Logger): Promise<AccountsAdmin> {
    if (config.redisUrl === undefined) return new AccountsAdmin(config, logger);
    const redis = await connectRedis(config.redisUrl, logger, `plexichat:admin-${process.pid}`);
    let admin: AccountsAdmin | undefined;
    try {
      const directory = new RedisDirectory(redis);
      admin = new AccountsAdmin(config, logger, { redis, directory });
      admin.holds = await CommandHolds.start(config.redisUrl, redis, admin.storage.userFiles, {
        leaseMs: config.leaseMs,
        logger,
        describe: async (userId) => (await directory.findUserById(userId))?.username,
      });
      await moveDirectoryToRedis(admin.storage.localDirectory, directory, redis, `admin-${process.pid}`, logger);
      return admin;
    } catch (error) {
      if (admin !== undefined) await admin.close();
      else redis.disconnect();
      throw error;
    }
  }

  /**
   * Tells what runs on the data folder to look at what this process committed: the server, through
   * its notice socket; a cluster's nodes, through Redis (each closes the sockets of the sessions this
   * command ended, and looks at the user files). 'confirmed' there means the nodes were sent it
   * (they act on it as it arrives), not that they have acted.
   */
  async notify(): Promise<ServerNotice> {
    if (this.cluster === undefined) return notifyServer(this.config.dataDir);
    const ended = this.endedSessions.splice(0);
    const listening = await announceAdminChanges(this.cluster.redis, `admin-${process.pid}`, ended);
    return listening > 0 ? 'confirmed' : 'no-server';
  }

  /** Gives back every user still held (the file closed first), then closes everything. */
  async close(): Promise<void> {
    await this.auth.close();
    await this.holds?.close();
    this.storage.close();
    await this.cluster?.redis.quit().catch(() => this.cluster?.redis.disconnect());
  }
}
