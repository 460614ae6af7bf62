import type { Logger } from 'pino';
import type { z } from 'zod';
import { passwordWeakness } from '../../shared/schemas/common.ts';
import { MAX_BADGES, badgeSchema, tierSchema } from '../../shared/schemas/features.ts';
import type { PrivateUser, PublicUser, UpdateMeBody } from '../../shared/schemas/users.ts';
import type { RegisterBody } from '../../shared/schemas/auth.ts';
import { isSnowflake } from '../../shared/snowflake.ts';
import { nowSeconds } from '../../shared/time.ts';
import { AppError } from '../core/app-error.ts';
import type { Placement } from '../core/placement.ts';
import type { Principal } from '../core/principal.ts';
import { KeyedLock } from '../core/keyed-lock.ts';
import { STORAGE_FAILURE, STORAGE_RETRY_AFTER_S, guardStorage, openUserFile, unavailableOnStorageFailure } from '../core/storage-failure.ts';
import type { Throttle, Throttles } from '../core/throttle.ts';
import type { AvatarsService } from '../avatars/service.ts';
import type { MfaService } from '../mfa/service.ts';
import { NameTakenError, type IndexEntry, type IndexedUser, type NewSession, type StoredIndexRow } from '../storage/directory-store.ts';
import { UserFileMissingError, type Storage, type UserFile } from '../storage/index.ts';
import {
  type CardSources,
  checkDirectoryIndex,
  checkHeldUser,
  entryOf,
  rebuildDirectoryIndex,
  rederiveIndexEntry,
  type IndexProblem,
  type IndexRebuild,
} from './directory-index.ts';
import { PasswordHasher } from './passwords.ts';
import * as repo from './repo.ts';

export interface UsersDeps {
  storage: Storage;
  logger: Logger;
  /** The avatars feature, which owns avatar images and the URLs that name them. */
  avatars: Pick<AvatarsService, 'urlOf'>;
  /**
   * What each user's card (in the directory's index) holds of other features' data, read from the
   * user file (the avatar's hash, who may open a DM): other users' requests read the card, never
   * the file.
   */
  cardSources: CardSources;
  /**
   * Wrong `current_password`s in a row per account (15 minutes) before password changes are refused
   * with 429; `--login-failure-limit`, like login's per-address count. 0 disables.
   */
  currentPasswordLimit: number;
  /** Where that count is kept (app.ts: memory, or Redis in cluster mode). */
  throttles: Throttles;
  /** The mfa feature, which owns the second factor and so whether it is on (`totp_enabled`). */
  mfa: Pick<MfaService, 'totpEnabledOf'>;
  /** Cluster mode: who owns each user (a new account not made after all gives its claim back). None on one node. */
  placement?: Pick<Placement, 'abandonNew'>;
}

const CURRENT_PASSWORD_WINDOW_S = 15 * 60;

/**
 * Runs inside a password change, once the change is decided and before the new password is stored;
 * if it rejects, the password does not change.
 */
export type PasswordChangeHandler = (principal: Principal) => Promise<void>;

/** A new account, announced once it exists (its file and index entry committed). */
export interface RegisteredUser {
  id: string;
  username: string;
  email: string;
}

/** An account's address changed (announced once the profile holds the new one). */
export interface EmailChange {
  userId: string;
  username: string;
  previousEmail: string;
  email: string;
}

/** One account as an administrator lists it (`plexichat admin user list`). */
export interface AccountSummary {
  id: string;
  username: string;
  email: string;
  created_at: number;
  email_verified: boolean;
  age_verified: boolean;
  totp_enabled: boolean;
  badges: string[];
  tier: string;
}

/**
 * Accounts: the profile in each user's file (credentials included: the password hash has no other
 * copy) and the directory's index of names derived from it. See storage/schema.ts for where data
 * lives and the order of writes across the two files.
 */
export class UsersService {
  private readonly hasher = new PasswordHasher();
  private passwordChangeHandler: PasswordChangeHandler | undefined;
  /**
   * `current_password` proves the password, so a stolen token must not make it guessable: counted
   * per account (whatever session or address asks), before each check, cleared by a right one.
   */
  private readonly currentPasswordThrottle: Throttle;
  private readonly registeredListeners = new Set<(user: RegisteredUser) => void>();
  private readonly emailChangeListeners = new Set<(change: EmailChange) => void>();
  /**
   * A user's changes that write both the directory and their file, one at a time: the directory's
   * step and the file's are atomic each, not together, so two changes of one account must not
   * interleave (of two password changes from the same password, exactly one wins).
   */
  private readonly changes = new KeyedLock();

  constructor(private readonly deps: UsersDeps) {
    this.currentPasswordThrottle = deps.throttles({
      name: 'current-password',
      points: deps.currentPasswordLimit,
      durationSeconds: CURRENT_PASSWORD_WINDOW_S,
    });
  }

  /**
   * Subscribes to new accounts (recovery mails a verification link). Announced after the account
   * is committed, synchronously, before the registration is answered; a listener that throws is
   * logged and changes nothing: the account exists either way.
   */
  onRegistered(listener: (user: RegisteredUser) => void): void {
    this.registeredListeners.add(listener);
  }

  /**
   * Subscribes to address changes (recovery mails the new address a verification link and tells
   * the old one). Announced after the profile holds the new address, only when it is another
   * address (not the same one in other case); a listener that throws is logged and changes nothing.
   */
  onEmailChanged(listener: (change: EmailChange) => void): void {
    this.emailChangeListeners.add(listener);
  }

  /**
   * Sets what a password change does to sessions (auth: it ends every other session of the user).
   * An event users announces rather than a call into auth, because auth depends on users
   * (registration and login need accounts) and a call back would make the two a cycle. It runs
   * synchronously in the change, under the user file's write lock, before the new hash is stored
   * (the order storage/schema.ts explains). There is exactly one: a change without one would leave
   * old sessions alive, so it fails instead.
   */
  onPasswordChange(handler: PasswordChangeHandler): void {
    if (this.passwordChangeHandler !== undefined) throw new Error('a password-change handler is already set');
    this.passwordChangeHandler = handler;
  }

  /**
   * Creates the user file and indexes it; 409 if the username or email is taken (race-safe).
   * `firstSession` (registration) is started in the same directory step that indexes the user:
   * an account never exists without it, nor it without the account. Returns the new id.
   */
  async create(body: RegisterBody, firstSession?: (userId: string) => NewSession): Promise<string> {
    const weakness = passwordWeakness(body.password, body);
    if (weakness) throw new AppError('weak_password', weakness, { errors: [{ path: 'password', message: weakness }] });
    const { directory, userFiles } = this.deps.storage;
    try {
      // Fast answer for the common case; the unique index below settles races.
      await this.assertAvailable(body.username, body.email, null);
      const passwordHash = await this.hasher.hash(body.password);
      const id = this.deps.storage.nextId();
      const user = { id, username: body.username, email: body.email, createdAt: nowSeconds() };
      // Cluster mode: this process claims the new user first, so their file is made by its owner,
      // with the owner's fencing token in it (docs/cluster.md).
      await userFiles.claimNew(id);
      // The user file first, then the index entry that makes the account exist: a failure in
      // between leaves only a file nobody indexed, removed here (storage/schema.ts).
      try {
        const created = userFiles.create(id, (f) => repo.insertProfile(f, { ...user, passwordHash }));
        // Derived from the file, as every entry (the card's defaults are the new file's own).
        const entry = entryOf(created, this.deps.cardSources);
        try {
          await directory.indexUser(entry, firstSession?.(id));
        } catch (error) {
          userFiles.remove(id);
          throw conflictError(error) ?? error;
        }
      } catch (error) {
        await this.deps.placement?.abandonNew(id).catch((abandonError: unknown) => {
          this.deps.logger.warn({ err: abandonError, userId: id }, 'could not give back the claim of an account not made; it ends by itself');
        });
        throw error;
      }
      this.deps.logger.info({ userId: id }, 'user registered');
      this.announce(this.registeredListeners, { id, username: body.username, email: body.email }, 'a registration');
      return id;
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, STORAGE_FAILURE.register);
    }
  }

  file(userId: string): UserFile {
    return openUserFile(this.deps.storage, this.deps.logger, userId);
  }

  privateUser(userId: string): PrivateUser {
    const { row, avatarUrl, totpEnabled } = this.profile(userId);
    return {
      id: row.id,
      username: row.username,
      email: row.email,
      avatar_url: avatarUrl,
      created_at: row.created_at,
      email_verified: row.email_verified === 1,
      totp_enabled: totpEnabled,
      age_verified: row.age_verified === 1,
      badges: repo.parseBadges(row.badges),
    };
  }

  /**
   * The public object of an indexed user, from their card in the directory (their file may be
   * another node's to open); 404 for ids that are not accounts.
   */
  async publicUser(userId: string): Promise<PublicUser> {
    return this.publicUserOf(await this.cardOf(userId));
  }

  /** The public object a card makes: the same bytes as the profile it was derived from would. */
  publicUserOf(card: IndexEntry): PublicUser {
    return {
      id: card.id,
      username: card.username,
      avatar_url: this.deps.avatars.urlOf(card.id, card.avatarHash),
      created_at: card.createdAt,
      badges: card.badges,
    };
  }

  /**
   * What other users' requests may know of an account (its public object, who may open a DM with
   * it, where its mail goes), read from the directory's index alone, never from the user's file.
   * 404 for ids that are not accounts. A row no start has derived a card for yet (an upgrade's,
   * whose file could not be read) answers 503: the file it waits for is failing.
   */
  async cardOf(userId: string): Promise<IndexEntry> {
    const row = isSnowflake(userId) ? await this.readingDirectory((directory) => directory.findUserRow(userId)) : undefined;
    if (row === undefined) throw new AppError('user_not_found', 'No user with that id');
    if (row.card === null) {
      this.deps.logger.error({ userId }, 'an index row has no card yet (its user file could not be read since the upgrade): answered with 503');
      throw new AppError('service_unavailable', STORAGE_FAILURE.read, { headers: { 'Retry-After': String(STORAGE_RETRY_AFTER_S) } });
    }
    return { id: row.id, username: row.username, createdAt: row.created_at, ...row.card };
  }

  async findByUsername(username: string): Promise<PublicUser> {
    const indexed = await this.readingDirectory((directory) => directory.findUserByUsername(username));
    if (!indexed) throw new AppError('user_not_found', 'No user with that username');
    return this.publicUser(indexed.id);
  }

  /** The account a login names: a username, or an email when it contains "@"; any case. */
  async idForLogin(login: string): Promise<string | undefined> {
    const found = await this.readingDirectory((directory) => (login.includes('@') ? directory.findUserByEmail(login) : directory.findUserByUsername(login)));
    return found?.id;
  }

  /**
   * Whether `password` is the user's. The hash is read from the user file before the first await,
   * so whatever a caller read before this call, it read before the hash. An indexed account whose
   * file is gone matches no password, in the same time as a wrong one.
   */
  verifyPassword(userId: string, password: string): Promise<boolean> {
    let passwordHash: string;
    try {
      passwordHash = this.reading(() => repo.readProfile(this.deps.storage.userFiles.get(userId)).password_hash);
    } catch (error) {
      if (error instanceof UserFileMissingError) return this.hasher.verifyDecoy(password);
      throw error;
    }
    return this.hasher.verify(passwordHash, password);
  }

  /** Spends the time of a password verification and fails: for logins that name no account. */
  verifyNoAccount(password: string): Promise<false> {
    return this.hasher.verifyDecoy(password);
  }

  async updateMe(principal: Principal, body: UpdateMeBody): Promise<PrivateUser> {
    let emailChange: EmailChange | undefined;
    try {
      emailChange = await this.applyUpdate(principal, body);
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, STORAGE_FAILURE.write);
    }
    if (emailChange !== undefined) this.announce(this.emailChangeListeners, emailChange, 'an email change');
    return this.privateUser(principal.userId);
  }

  /**
   * Marks the address verified, if the profile still has `address` (any case); returns whether
   * it does. A token mailed to an address the account has since left verifies nothing.
   */
  markEmailVerified(userId: string, address: string): boolean {
    const file = this.file(userId);
    return file.transaction(() => {
      const profile = repo.readProfile(file);
      if (!sameAddress(profile.email, address)) return false;
      if (profile.email_verified !== 1) repo.updateProfileEmail(file, profile.email, true);
      return true;
    });
  }

  /**
   * Sets a new password without the current one, for an account whose address a mailed token
   * proved (a password reset); the same strength rules as a change (400 `weak_password`). Returns
   * false, changing nothing, when the profile no longer has `address`. `inChange` runs after that
   * check and before the new hash is stored (sessions end first: storage/schema.ts), with the
   * account's other changes held off; if it rejects, nothing changes. The reset also marks the
   * address verified: the mail reached it.
   */
  async resetPassword(userId: string, address: string, password: string, inChange: () => Promise<void>): Promise<boolean> {
    const before = this.reading(() => repo.readProfile(this.file(userId)));
    if (!sameAddress(before.email, address)) return false;
    const weakness = passwordWeakness(password, { username: before.username, email: before.email });
    if (weakness) throw new AppError('weak_password', weakness, { errors: [{ path: 'password', message: weakness }] });
    const passwordHash = await this.hasher.hash(password);
    return this.changes.run(userId, async () => {
      if (!sameAddress(repo.readProfile(this.file(userId)).email, address)) return false;
      await inChange();
      // Fetched after the await: an unpinned handle may have been evicted meanwhile.
      const file = this.file(userId);
      return file.transaction(() => {
        // Another process (an admin command) may have changed the address meanwhile: then the
        // sessions are over and the old password stays, the state a crash between the two leaves.
        const profile = repo.readProfile(file);
        if (!sameAddress(profile.email, address)) return false;
        repo.updateProfilePasswordHash(file, passwordHash);
        if (profile.email_verified !== 1) repo.updateProfileEmail(file, profile.email, true);
        return true;
      });
    });
  }

  /** The account's badges and tier (user features), memoised with the profile. */
  featuresOf(userId: string): { badges: string[]; tier: string } {
    const { row } = this.profile(userId);
    return { badges: repo.parseBadges(row.badges), tier: row.tier };
  }

  // --- administration (`plexichat admin …`): the same files and rules, from another process ----

  /** The account a reference names: its id, username or email (any case); 404 when none. */
  async resolveAccount(reference: string): Promise<string> {
    const { directory } = this.deps.storage;
    const byId = isSnowflake(reference) ? await directory.findUserById(reference) : undefined;
    const id = byId?.id ?? (await this.idForLogin(reference));
    if (id === undefined) throw new AppError('user_not_found', `No account with the id, username or email ${JSON.stringify(reference)}`);
    return id;
  }

  /**
   * Every account of the index, oldest first, as its file describes it. An index row whose file
   * is gone is no account anyone can use, and is left out (doctor reports it). Each file is read
   * while this process may (`holding`: a command on a cluster takes each user in turn).
   */
  async listAccounts(): Promise<AccountSummary[]> {
    const accounts: AccountSummary[] = [];
    for (const { id } of await this.deps.storage.directory.listUsers()) {
      const account = await this.deps.storage.userFiles.holding(id, () => this.accountSummary(id));
      if (account !== undefined) accounts.push(account);
    }
    return accounts;
  }

  private accountSummary(id: string): AccountSummary | undefined {
    let profile: ReturnType<UsersService['profile']>;
    try {
      profile = this.profile(id);
    } catch (error) {
      if (error instanceof AppError && error.code === 'user_not_found') return undefined;
      throw error;
    }
    const { row, totpEnabled } = profile;
    return {
      id,
      username: row.username,
      email: row.email,
      created_at: row.created_at,
      email_verified: row.email_verified === 1,
      age_verified: row.age_verified === 1,
      totp_enabled: totpEnabled,
      badges: repo.parseBadges(row.badges),
      tier: row.tier,
    };
  }

  /**
   * Runs `write`, a write of the user's file that changes what their card holds (the avatar,
   * badges, who may open a DM), in the order storage/schema.ts gives: the index row is marked
   * pending, the file written, then the row derived again from the file. Stopped in between, the
   * mark has the next start derive it. The directory's step comes first, so a directory that
   * cannot be reached refuses the change (503) before anything is written; an account gone from
   * the index meanwhile is 404. One at a time with the account's other changes.
   */
  changeCard<T>(userId: string, write: () => T): Promise<T> {
    return this.changes.run(userId, async () => {
      if (!(await this.deps.storage.directory.markPending(userId))) throw new AppError('user_not_found', 'No user with that id');
      try {
        return write();
      } finally {
        // Whether or not the write landed: the row is what the file says.
        await this.settleIndexEntry(userId);
      }
    });
  }

  /** Gives the account a badge; false when it had it already. */
  addBadge(userId: string, badge: string): Promise<boolean> {
    const id = validFeatureId(badgeSchema, badge, 'badge');
    return this.changeCard(userId, () =>
      this.changeProfile(userId, (file, row) => {
        const badges = repo.parseBadges(row.badges);
        if (badges.includes(id)) return false;
        if (badges.length >= MAX_BADGES) throw new AppError('invalid_input', `An account holds at most ${MAX_BADGES} badges`);
        repo.updateProfileBadges(file, [...badges, id]);
        return true;
      }),
    );
  }

  /** Takes a badge away; false when the account did not have it. */
  removeBadge(userId: string, badge: string): Promise<boolean> {
    return this.changeCard(userId, () =>
      this.changeProfile(userId, (file, row) => {
        const badges = repo.parseBadges(row.badges);
        if (!badges.includes(badge)) return false;
        repo.updateProfileBadges(
          file,
          badges.filter((held) => held !== badge),
        );
        return true;
      }),
    );
  }

  /** Sets the account's tier; returns the tier it had. */
  setTier(userId: string, tier: string): string {
    const id = validFeatureId(tierSchema, tier, 'tier');
    return this.changeProfile(userId, (file, row) => {
      if (row.tier !== id) repo.updateProfileTier(file, id);
      return row.tier;
    });
  }

  /** Marks the address verified (or not); false when it already was as asked. */
  setEmailVerified(userId: string, verified: boolean): boolean {
    return this.changeProfile(userId, (file, row) => {
      if ((row.email_verified === 1) === verified) return false;
      repo.updateProfileEmailVerified(file, verified);
      return true;
    });
  }

  /** Marks the account age-verified (or not); false when it already was as asked. */
  setAgeVerified(userId: string, verified: boolean): boolean {
    return this.changeProfile(userId, (file, row) => {
      if ((row.age_verified === 1) === verified) return false;
      repo.updateProfileAgeVerified(file, verified);
      return true;
    });
  }

  /**
   * Sets a new password without the current one (an administrator's reset), with the same
   * strength rules (400 `weak_password`). `inChange` runs before the new hash is stored (auth
   * ends every session there: storage/schema.ts), with the account's other changes held off; if
   * it rejects, nothing changes.
   */
  async setPassword(userId: string, password: string, inChange: () => Promise<void>): Promise<void> {
    const before = this.reading(() => repo.readProfile(this.file(userId)));
    const weakness = passwordWeakness(password, { username: before.username, email: before.email });
    if (weakness) throw new AppError('weak_password', weakness, { errors: [{ path: 'password', message: weakness }] });
    const passwordHash = await this.hasher.hash(password);
    await this.changes.run(userId, async () => {
      await inChange();
      // Fetched after the await: an unpinned handle may have been evicted meanwhile.
      const file = this.file(userId);
      file.transaction(() => repo.updateProfilePasswordHash(file, passwordHash));
    });
  }

  /**
   * Deletes the account, in the order in which stopping anywhere is safe (storage/schema.ts): the
   * file is marked deleted first (from then on it is no account: every process stops using it, and
   * no rebuild of the index brings it back); then the directory's row goes, and with it
   * everything of the account the directory holds (sessions, relationships, DM channels, mailed
   * tokens); the file goes last. Running it again finishes a deletion that stopped half-way.
   * Returns the sessions that ended, for their sockets to be closed.
   */
  async deleteAccount(userId: string): Promise<string[]> {
    const { directory, userFiles } = this.deps.storage;
    try {
      userFiles.markDeleted(userId, nowSeconds());
    } catch (error) {
      // Marked already (a deletion that stopped half-way), or no file at all: the rest still goes.
      if (!(error instanceof UserFileMissingError)) throw error;
    }
    const ended = await directory.deleteUser(userId);
    userFiles.remove(userId);
    this.deps.logger.info({ userId }, 'account deleted');
    return ended;
  }

  /** Copies the account's file to `destination` (which must not exist) while it stays in use: everything of the account, credentials included. */
  async exportAccount(userId: string, destination: string): Promise<void> {
    this.file(userId);
    await this.deps.storage.userFiles.exportTo(userId, destination);
  }

  /**
   * Takes in an account exported from another instance: its file, under the id it has, and an
   * index entry derived from it. Refused (409 `already_exists`, nothing left behind) when this data
   * folder has that id, username or email already. Sessions, relationships and DM channels lived in
   * the other instance's directory and do not come along: the account signs in again.
   */
  async importAccount(source: string): Promise<{ id: string; username: string; email: string }> {
    const { directory, userFiles } = this.deps.storage;
    const entry = await userFiles.adopt(source, async (file) => {
      let profile: repo.ProfileRow;
      try {
        profile = repo.readProfile(file);
      } catch (error) {
        throw new AppError('invalid_input', `${source} is not a Plexichat user file (${error instanceof Error ? error.message : String(error)})`);
      }
      // The file is open under no id yet: the entry takes the one its profile names.
      const found = { ...entryOf(file, this.deps.cardSources), id: profile.id, userId: profile.id };
      if (isSnowflake(found.userId) && (await directory.findUserById(found.userId))) {
        throw new AppError('already_exists', `An account with the id ${found.userId} exists here already`);
      }
      await this.assertAvailable(found.username, found.email, null);
      return found;
    });
    try {
      const { userId: _, ...indexed } = entry;
      await directory.indexUser(indexed);
    } catch (error) {
      userFiles.remove(entry.userId);
      throw conflictError(error) ?? error;
    }
    this.deps.storage.adoptId(entry.userId);
    this.deps.logger.info({ userId: entry.userId }, 'account imported');
    return { id: entry.userId, username: entry.username, email: entry.email };
  }

  /** How the directory's users index disagrees with the user files (doctor); changes nothing. */
  checkDirectoryIndex(): Promise<IndexProblem[]> {
    return checkDirectoryIndex(this.deps.storage, this.deps.cardSources);
  }

  /** Every row of the directory's users index, as stored (doctor compares them with the user files). */
  listIndexRows(): Promise<StoredIndexRow[]> {
    return this.deps.storage.directory.listUsers();
  }

  /** How one held user's index row disagrees with their file (doctor on a cluster; see checkHeldUser). */
  checkHeldUser(userId: string): Promise<IndexProblem[]> {
    return checkHeldUser(this.deps.storage, this.deps.cardSources, userId);
  }

  /** Derives the whole users index again from the user files (doctor --fix; see rebuildDirectoryIndex). */
  rebuildDirectoryIndex(): Promise<IndexRebuild> {
    return rebuildDirectoryIndex(this.deps.storage, this.deps.cardSources);
  }

  /** Changes the profile under the file's write lock, from the row read under it. */
  private changeProfile<T>(userId: string, change: (file: UserFile, row: repo.ProfileRow) => T): T {
    const file = this.file(userId);
    return file.transaction(() => change(file, repo.readProfile(file)));
  }

  /**
   * At start: makes the directory's users index what the user files derive. An empty index beside
   * user files (the directory was lost, or moved aside because it was damaged) is rebuilt whole;
   * rows a change left pending (the server stopped between its two writes) are derived again, and
   * so are the rows an upgrade marked (written by an older version, they hold no card yet).
   * A rebuild that fails stops the start: a server with an empty index would refuse every login.
   * In a cluster every node runs it at start, and again when Redis comes back.
   */
  async repairDirectoryIndex(): Promise<void> {
    const { storage, logger } = this.deps;
    if ((await storage.directory.countUsers()) === 0 && storage.userFiles.list().length > 0) {
      const rebuilt = await rebuildDirectoryIndex(storage, this.deps.cardSources);
      logger.warn({ indexed: rebuilt.indexed }, "rebuilt the directory's users index from the user files (it was empty)");
      for (const left of rebuilt.leftOut) {
        logger.error(left, `a user file was left out of the rebuilt index: a newer account has the same ${left.field}; rename or remove that file`);
      }
      return;
    }
    // One line for them all: after an upgrade, that is every row.
    const derived: string[] = [];
    for (const userId of await storage.directory.listPendingUsers()) {
      try {
        await rederiveIndexEntry(storage, this.deps.cardSources, userId);
        derived.push(userId);
      } catch (error) {
        logger.error({ err: error, userId }, 'could not derive a directory index entry from its user file; it stays pending');
      }
    }
    if (derived.length > 0) {
      logger.warn(
        { derived: derived.length, userIds: derived.slice(0, 10) },
        'derived directory index entries again from their user files (changes that had stopped half-way, or rows an upgrade marked)',
      );
    }
  }

  /** Applies the change; returns the address change to announce, if the address changed. */
  private async applyUpdate(principal: Principal, body: UpdateMeBody): Promise<EmailChange | undefined> {
    const { userId } = principal;
    const before = repo.readProfile(this.file(userId));

    let newPasswordHash: string | undefined;
    if (body.password !== undefined) {
      if (body.current_password === undefined) {
        throw new AppError('missing_current_password', 'current_password is required to change the password', {
          errors: [{ path: 'current_password', message: 'Required when changing password' }],
        });
      }
      const weakness = passwordWeakness(body.password, {
        username: body.username ?? before.username,
        email: body.email ?? before.email,
      });
      if (weakness) throw new AppError('weak_password', weakness, { errors: [{ path: 'password', message: weakness }] });
      await this.currentPasswordThrottle.consume(userId);
      if (!(await this.hasher.verify(before.password_hash, body.current_password))) throw invalidCurrentPassword();
      await this.currentPasswordThrottle.reset(userId);
      newPasswordHash = await this.hasher.hash(body.password);
    }
    const endOtherSessions = newPasswordHash === undefined ? undefined : this.passwordChangeHandler;
    if (newPasswordHash !== undefined && endOtherSessions === undefined) {
      throw new Error('a password change with no handler to end the other sessions');
    }

    const newUsername = body.username !== undefined && body.username !== before.username ? body.username : undefined;
    const newEmail = body.email !== undefined && body.email !== before.email ? body.email : undefined;
    await this.assertAvailable(
      newUsername !== undefined && newUsername.toLowerCase() !== before.username.toLowerCase() ? newUsername : null,
      newEmail !== undefined && newEmail.toLowerCase() !== before.email.toLowerCase() ? newEmail : null,
      userId,
    );

    await this.changes.run(userId, async () => {
      // current_password was checked against `before` while hashing (no lock held): if another
      // change committed since, it no longer proves anything. Checked with the account's other
      // changes held off, so of two changes racing from the same old password exactly one wins.
      const stale = () => newPasswordHash !== undefined && repo.readProfile(this.file(userId)).password_hash !== before.password_hash;
      if (stale()) throw invalidCurrentPassword();
      let indexAhead = false;
      try {
        // The directory first (storage/schema.ts has the order and why): the new names are claimed
        // (409 if taken) and the row marked pending until the profile is written.
        if (newUsername !== undefined || newEmail !== undefined) {
          indexAhead = true;
          await this.deps.storage.directory.claimNames(userId, { username: newUsername, email: newEmail });
        }
        // Before the new hash is stored: stopped in between, sessions are over and the old password
        // still works; never the other way round.
        await endOtherSessions?.(principal);
        // Fetched after the awaits: an unpinned handle may have been evicted meanwhile.
        const file = this.file(userId);
        file.transaction(() => {
          // Another process (an admin command) may have set a password meanwhile.
          if (stale()) throw invalidCurrentPassword();
          if (newUsername !== undefined) repo.updateProfileUsername(file, newUsername);
          if (newEmail !== undefined) repo.updateProfileEmail(file, newEmail, sameAddress(newEmail, before.email) && before.email_verified === 1);
          if (newPasswordHash !== undefined) repo.updateProfilePasswordHash(file, newPasswordHash);
        });
      } catch (error) {
        throw conflictError(error) ?? error;
      } finally {
        // The index may be ahead of a profile that was not written: derived from the file again.
        if (indexAhead) await this.settleIndexEntry(userId);
      }
    });
    if (newEmail === undefined || sameAddress(newEmail, before.email)) return undefined;
    return { userId, username: newUsername ?? before.username, previousEmail: before.email, email: newEmail };
  }

  /** Tells each listener; one that throws is logged, and neither the others nor the caller are stopped. */
  private announce<T>(listeners: ReadonlySet<(event: T) => void>, event: T, what: string): void {
    for (const listener of listeners) {
      try {
        listener(event);
      } catch (error) {
        this.deps.logger.error({ err: error }, `a listener of ${what} failed`);
      }
    }
  }

  /**
   * Derives the user's index row from their file (the truth, whether or not the profile write
   * landed) and clears its pending mark. If even that fails, the mark stays and the next start
   * derives it; until then the row may name what the file does not.
   */
  private async settleIndexEntry(userId: string): Promise<void> {
    try {
      await rederiveIndexEntry(this.deps.storage, this.deps.cardSources, userId);
    } catch (error) {
      this.deps.logger.error({ err: error, userId }, 'could not derive a directory index entry from its user file; the next start will');
    }
  }

  private async assertAvailable(username: string | null, email: string | null, selfId: string | null): Promise<void> {
    const { directory } = this.deps.storage;
    const byName: IndexedUser | undefined = username === null ? undefined : await directory.findUserByUsername(username);
    if (byName && byName.id !== selfId) throw conflictFor('username');
    const byEmail: IndexedUser | undefined = email === null ? undefined : await directory.findUserByEmail(email);
    if (byEmail && byEmail.id !== selfId) throw conflictFor('email');
  }

  /**
   * The profile row, avatar URL and 2FA state, memoised on the user file until its next write.
   * (The profile's own `totp_enabled` column predates the mfa feature and is never set: mfa's
   * tables are the one source of that fact.)
   */
  private profile(userId: string): { row: repo.ProfileRow; avatarUrl: string | null; totpEnabled: boolean } {
    const file = this.file(userId);
    return this.reading(() =>
      file.memo('profile', () => ({
        row: repo.readProfile(file),
        avatarUrl: this.deps.avatars.urlOf(userId, this.deps.cardSources.avatarHashOf(file)),
        totpEnabled: this.deps.mfa.totpEnabledOf(file),
      })),
    );
  }

  /** A read of the directory, answering a failure a retry can cure with 503 instead of 500. */
  private readingDirectory<T>(read: (directory: Storage['directory']) => Promise<T>): Promise<T> {
    return guardStorage(this.deps.logger, STORAGE_FAILURE.read, () => read(this.deps.storage.directory));
  }

  /** Runs a read, answering a storage failure a retry can cure with 503 instead of 500. */
  private reading<T>(read: () => T): T {
    try {
      return read();
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, STORAGE_FAILURE.read);
    }
  }
}

function invalidCurrentPassword(): AppError {
  return new AppError('invalid_current_password', 'current_password is incorrect', {
    errors: [{ path: 'current_password', message: 'Incorrect password' }],
  });
}

function conflictFor(field: 'username' | 'email'): AppError {
  return new AppError('already_exists', `That ${field} is already taken`, { errors: [{ path: field, message: 'Already taken' }] });
}

function conflictError(error: unknown): AppError | null {
  return error instanceof NameTakenError ? conflictFor(error.field) : null;
}

/** Addresses are unique case-insensitively (the index): two spellings of one are the same address. */
function sameAddress(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase();
}

/** A badge or tier id, or 400 `invalid_input` saying what is wrong with it. */
function validFeatureId(schema: z.ZodType<string>, value: string, what: 'badge' | 'tier'): string {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const message = result.error.issues[0]?.message ?? 'Invalid';
  throw new AppError('invalid_input', `Invalid ${what} ${JSON.stringify(value)}: ${message}`, { errors: [{ path: what, message }] });
}
