import type { Logger } from 'pino';
import { passwordWeakness } from '../../shared/schemas/common.ts';
import type { PrivateUser, PublicUser, UpdateMeBody } from '../../shared/schemas/users.ts';
import type { RegisterBody } from '../../shared/schemas/auth.ts';
import { isSnowflake } from '../../shared/snowflake.ts';
import { AppError } from '../core/app-error.ts';
import type { Principal } from '../core/principal.ts';
import type { PasswordHasher } from '../auth/passwords.ts';
import type { Storage, UserFile } from '../storage/index.ts';
import * as repo from './repo.ts';
import { STORAGE_FAILURE, openUserFile, unavailableOnStorageFailure } from '../core/storage-failure.ts';
import type { AvatarsService } from '../avatars/service.ts';
import { nowSeconds } from '../../shared/time.ts';

export interface UsersDeps {
  storage: Storage;
  hasher: PasswordHasher;
  logger: Logger;
  /** The avatars feature, which owns avatar images and the URLs that name them. */
  avatars: Pick<AvatarsService, 'urlOf'>;
  /** Called when a password change revoked sessions, so live connections using them can close. */
  onSessionsRevoked: (sessionIds: string[]) => void;
  revokeOtherSessions: (principal: Principal) => string[];
}

export class UsersService {
  constructor(private readonly deps: UsersDeps) {}

  /**
   * Creates the user file and indexes it; 409 if the username or email is taken (race-safe).
   * `inSameTransaction` runs in the directory transaction that indexes the user (registration
   * creates the first session there): if it throws, the account is not created at all.
   */
  async create<T>(
    body: RegisterBody,
    inSameTransaction: (user: { id: string; passwordHash: string }) => T,
  ): Promise<{ id: string; file: UserFile; result: T }> {
    const weakness = passwordWeakness(body.password, body);
    if (weakness) throw new AppError('weak_password', weakness, { errors: [{ path: 'password', message: weakness }] });
    const { directory, userFiles } = this.deps.storage;
    try {
      // Fast answer for the common case; the unique index below settles races.
      this.assertAvailable(body.username, body.email, null);
      const passwordHash = await this.deps.hasher.hash(body.password);
      const id = this.deps.storage.nextId();
      const user = { id, username: body.username, email: body.email, passwordHash, createdAt: nowSeconds() };
      // The user file is written first: the directory entry is what makes the account exist, so a
      // crash in between leaves only an orphan file, never an index entry without data.
      const file = userFiles.create(id, (f) => repo.insertProfile(f, user));
      let result: T;
      try {
        result = directory.transaction(() => {
          repo.indexUser(directory, user);
          return inSameTransaction({ id, passwordHash });
        });
      } catch (error) {
        userFiles.remove(id);
        throw conflictError(error) ?? error;
      }
      this.deps.logger.info({ userId: id }, 'user registered');
      return { id, file, result };
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, STORAGE_FAILURE.register);
    }
  }

  file(userId: string): UserFile {
    return openUserFile(this.deps.storage, this.deps.logger, userId);
  }

  privateUser(userId: string): PrivateUser {
    const { row, avatarUrl } = this.profile(userId);
    return {
      id: row.id,
      username: row.username,
      email: row.email,
      avatar_url: avatarUrl,
      created_at: row.created_at,
      email_verified: row.email_verified === 1,
      totp_enabled: row.totp_enabled === 1,
      age_verified: row.age_verified === 1,
      badges: parseBadges(row.badges),
    };
  }

  /** The public object of an indexed user; 404 for ids that are not accounts. */
  publicUser(userId: string): PublicUser {
    if (!isSnowflake(userId) || !this.reading(() => repo.findIndexedById(this.deps.storage.directory, userId))) {
      throw new AppError('user_not_found', 'No user with that id');
    }
    const { row, avatarUrl } = this.profile(userId);
    return {
      id: row.id,
      username: row.username,
      avatar_url: avatarUrl,
      created_at: row.created_at,
      badges: parseBadges(row.badges),
    };
  }

  findByUsername(username: string): PublicUser {
    const indexed = this.reading(() => repo.findIndexedByUsername(this.deps.storage.directory, username));
    if (!indexed) throw new AppError('user_not_found', 'No user with that username');
    return this.publicUser(indexed.id);
  }

  /** Login lookup: a username, or an email when it contains "@"; any case. */
  findForLogin(login: string): repo.IndexedUser | undefined {
    const { directory } = this.deps.storage;
    return this.reading(() => (login.includes('@') ? repo.findIndexedByEmail(directory, login) : repo.findIndexedByUsername(directory, login)));
  }

  async updateMe(principal: Principal, body: UpdateMeBody): Promise<PrivateUser> {
    try {
      await this.applyUpdate(principal, body);
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, STORAGE_FAILURE.write);
    }
    return this.privateUser(principal.userId);
  }

  private async applyUpdate(principal: Principal, body: UpdateMeBody): Promise<void> {
    const { directory } = this.deps.storage;
    const before = repo.readProfile(this.file(principal.userId));

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
      if (!(await this.deps.hasher.verify(before.password_hash, body.current_password))) throw invalidCurrentPassword();
      newPasswordHash = await this.deps.hasher.hash(body.password);
    }

    const newUsername = body.username !== undefined && body.username !== before.username ? body.username : undefined;
    const newEmail = body.email !== undefined && body.email !== before.email ? body.email : undefined;
    this.assertAvailable(
      newUsername !== undefined && newUsername.toLowerCase() !== before.username.toLowerCase() ? newUsername : null,
      newEmail !== undefined && newEmail.toLowerCase() !== before.email.toLowerCase() ? newEmail : null,
      principal.userId,
    );

    // Fetched after the awaits above: an unpinned handle may have been evicted meanwhile.
    const file = this.file(principal.userId);
    let revoked: string[] = [];
    try {
      // Directory and user file change together: if the user file write fails, the directory
      // transaction around it rolls back too.
      directory.transaction(() => {
        file.transaction(() => {
          if (newUsername !== undefined) {
            repo.reindexUsername(directory, principal.userId, newUsername);
            repo.updateProfileUsername(file, newUsername);
          }
          if (newEmail !== undefined) {
            const sameAddress = newEmail.toLowerCase() === before.email.toLowerCase();
            repo.reindexEmail(directory, principal.userId, newEmail);
            repo.updateProfileEmail(file, newEmail, sameAddress && before.email_verified === 1);
          }
          if (newPasswordHash !== undefined) {
            // current_password was checked against `before` while hashing (no lock held): if a
            // concurrent change committed since, it no longer proves anything. Checked inside the
            // transaction, so of two changes racing from the same old password exactly one wins.
            if (repo.findIndexedById(directory, principal.userId)?.password_hash !== before.password_hash) {
              throw invalidCurrentPassword();
            }
            repo.reindexPasswordHash(directory, principal.userId, newPasswordHash);
            repo.updateProfilePasswordHash(file, newPasswordHash);
            revoked = this.deps.revokeOtherSessions(principal);
          }
        });
      });
    } catch (error) {
      throw conflictError(error) ?? error;
    }
    if (revoked.length > 0) this.deps.onSessionsRevoked(revoked);
  }

  private assertAvailable(username: string | null, email: string | null, selfId: string | null): void {
    const { directory } = this.deps.storage;
    const byName = username === null ? undefined : repo.findIndexedByUsername(directory, username);
    if (byName && byName.id !== selfId) throw conflictFor('username');
    const byEmail = email === null ? undefined : repo.findIndexedByEmail(directory, email);
    if (byEmail && byEmail.id !== selfId) throw conflictFor('email');
  }

  /** The profile row and avatar URL, memoised on the user file until its next write. */
  private profile(userId: string): { row: repo.ProfileRow; avatarUrl: string | null } {
    const file = this.file(userId);
    return this.reading(() => file.memo('profile', () => ({ row: repo.readProfile(file), avatarUrl: this.deps.avatars.urlOf(file) })));
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
  const field = repo.uniqueConflict(error);
  return field ? conflictFor(field) : null;
}

function parseBadges(json: string): string[] {
  const parsed: unknown = JSON.parse(json);
  return Array.isArray(parsed) ? parsed.filter((b): b is string => typeof b === 'string') : [];
}
