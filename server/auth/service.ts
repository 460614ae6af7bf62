import type { Logger } from 'pino';
import type { AuthResponse, LoginBody, RegisterBody } from '../../shared/schemas/auth.ts';
import { nowSeconds } from '../../shared/time.ts';
import { AppError } from '../core/app-error.ts';
import type { Principal } from '../core/principal.ts';
import { STORAGE_FAILURE, STORAGE_RETRY_AFTER_S, unavailableOnStorageFailure } from '../core/storage-failure.ts';
import type { Storage } from '../storage/index.ts';
import { isRetryableStorageError } from '../storage/errors.ts';
import type { UsersService } from '../users/service.ts';
import * as repo from './repo.ts';
import { hashSessionToken, newSessionToken } from './tokens.ts';

/** Sessions are touched at most this often, so authenticating a request is normally a pure read. */
const TOUCH_INTERVAL_S = 3600;
/**
 * Recently seen tokens skip the directory read. Revocations in this process drop entries at once
 * (`sessionsEnded`); the TTL bounds how long a session deleted by anything else stays usable.
 */
const SESSION_CACHE_TTL_MS = 30_000;
const SESSION_CACHE_MAX = 10_000;
/**
 * A logout whose deletion could not be stored is retried with these delays (doubling from the
 * first, capped), at most this many times: about ten minutes in all. Long enough to outlast a
 * full disk someone is cleaning up, bounded so a dead disk does not mean a timer per logout forever.
 */
const LOGOUT_RETRY_FIRST_MS = 100;
const LOGOUT_RETRY_MAX_MS = 10_000;
const LOGOUT_RETRY_ATTEMPTS = 70;

export interface AuthDeps {
  storage: Storage;
  users: UsersService;
  logger: Logger;
}

/**
 * Sessions: starting them (register, login), checking tokens, and ending them (logout, password
 * change). Auth owns the sessions and their credential epochs in the directory; the password itself
 * is the users feature's, which auth asks to verify it.
 */
export class AuthService {
  private readonly sessionCache = new Map<string, { principal: Principal; expiresAt: number }>();
  /**
   * Sessions signed out whose row could not be deleted yet: refused by `authenticate` although the
   * directory still holds them. An entry stays until the deletion is stored (or the process ends).
   */
  private readonly refused = new Set<string>();
  /** The pending retry of each of those deletions. */
  private readonly retries = new Map<string, NodeJS.Timeout>();
  private readonly revocationListeners = new Set<(sessionIds: string[]) => void>();

  constructor(private readonly deps: AuthDeps) {
    // A password change ends every other session of the user: users announces it, auth ends them.
    deps.users.onPasswordChange((principal) => this.endOtherSessions(principal));
  }

  /**
   * Subscribes to ended sessions (logout, password change). Listeners get the ids synchronously,
   * right after the end is decided (a logout's even before its deletion is stored), possibly inside
   * the transaction of the change that caused it: they do in-memory work only, such as closing the
   * sessions' sockets. Tokens are already refused by then.
   */
  onSessionsRevoked(listener: (sessionIds: string[]) => void): void {
    this.revocationListeners.add(listener);
  }

  async register(body: RegisterBody, userAgent: string | null): Promise<AuthResponse> {
    const { directory } = this.deps.storage;
    // The first session is inserted in the transaction that creates the account: a registration
    // that fails leaves neither an account without a session nor a session without an account.
    const { id, result: token } = await this.deps.users.create(body, (user) => {
      const started = this.startSession(user.id, repo.readCredentialEpoch(directory, user.id), userAgent);
      if (started === null) throw new Error(`the credential epoch of user ${user.id} changed inside its own creation`);
      return started;
    });
    return { token, user: this.deps.users.privateUser(id) };
  }

  /** Same answer and about the same time whether the account is missing or the password wrong. */
  async login(body: LoginBody, userAgent: string | null): Promise<AuthResponse> {
    const { users } = this.deps;
    const userId = users.idForLogin(body.login);
    if (userId === undefined) {
      await users.verifyNoAccount(body.password);
      throw invalidCredentials();
    }
    // Read before the password hash is (verifyPassword reads it before its first await): a password
    // change moves the epoch on before it stores the new hash, so whatever change commits after
    // this read makes the insert below refuse the session.
    const epoch = this.readingForLogin(() => repo.readCredentialEpoch(this.deps.storage.directory, userId));
    if (!(await users.verifyPassword(userId, body.password))) throw invalidCredentials();
    let token: string | null;
    try {
      token = this.startSession(userId, epoch, userAgent);
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, STORAGE_FAILURE.login);
    }
    if (token === null) {
      // The password changed while we were verifying the old one: that change signed out every
      // other session, so this login must not outlive it. Same answer as a wrong password.
      this.deps.logger.info({ userId }, 'login refused: the password changed while it was being verified');
      throw invalidCredentials();
    }
    return { token, user: users.privateUser(userId) };
  }

  /**
   * Ends the session. It is refused by this process at once, and its sync sockets closed, whatever
   * the storage does; if the deletion cannot be stored, it is retried in the background and the
   * caller gets a 503 saying so (a restart before it is stored would bring the session back, so
   * the client repeats the logout: 401 or 204 then both mean it is over).
   */
  logout(principal: Principal): void {
    const { sessionId } = principal;
    this.refused.add(sessionId);
    this.sessionsEnded([sessionId]);
    try {
      repo.deleteSession(this.deps.storage.directory, sessionId);
    } catch (error) {
      this.deps.logger.warn({ err: error, sessionId }, 'could not store a logout; the session is refused and the deletion retried');
      this.scheduleDeletion(sessionId, 0);
      if (!isRetryableStorageError(error)) throw error;
      throw new AppError(
        'service_unavailable',
        'This session is already refused by this server, but the sign-out could not be stored yet (storage failure) and is being ' +
          'retried; repeat the request: 401 or 204 then both mean signed out',
        { headers: { 'Retry-After': String(STORAGE_RETRY_AFTER_S) } },
      );
    }
    this.refused.delete(sessionId);
  }

  /** The session a bearer token belongs to, or null. Synchronous: one indexed read. */
  authenticate(token: string): Principal | null {
    const tokenHash = hashSessionToken(token);
    const key = tokenHash.toString('base64');
    const cached = this.sessionCache.get(key);
    const nowMs = Date.now();
    if (cached && cached.expiresAt > nowMs) return cached.principal;
    if (cached) this.sessionCache.delete(key);
    const { directory } = this.deps.storage;
    const session = repo.findSessionByTokenHash(directory, tokenHash);
    if (!session || this.refused.has(session.id)) return null;
    const now = nowSeconds();
    if (now - session.last_used_at >= TOUCH_INTERVAL_S) {
      try {
        repo.touchSession(directory, session.id, now);
      } catch (error) {
        // `last_used_at` is informational: a full disk must not turn every request into an error.
        this.deps.logger.warn({ err: error, sessionId: session.id }, 'could not record the use of a session');
      }
    }
    const principal = { userId: session.user_id, sessionId: session.id };
    if (this.sessionCache.size >= SESSION_CACHE_MAX) {
      const oldest = this.sessionCache.keys().next().value;
      if (oldest !== undefined) this.sessionCache.delete(oldest);
    }
    this.sessionCache.set(key, { principal, expiresAt: nowMs + SESSION_CACHE_TTL_MS });
    return principal;
  }

  /**
   * Shutdown, before storage closes: one last try at every logout still waiting to be stored, and
   * no timer left behind. What still fails is logged: after a restart those sessions work again.
   */
  close(): void {
    for (const [sessionId, timer] of this.retries) {
      clearTimeout(timer);
      try {
        repo.deleteSession(this.deps.storage.directory, sessionId);
        this.refused.delete(sessionId);
      } catch (error) {
        this.deps.logger.error({ err: error, sessionId }, 'shutting down with a logout not stored: that session works again after a restart');
      }
    }
    this.retries.clear();
  }

  /**
   * Password change (users' event, inside the change and before the new hash is stored): in one
   * directory transaction the user's credential epoch moves on, so logins still verifying the old
   * password get no session, and every other session of the user is deleted.
   */
  private endOtherSessions(principal: Principal): void {
    const { directory } = this.deps.storage;
    const ended = directory.transaction(() => {
      repo.advanceCredentialEpoch(directory, principal.userId);
      return repo.deleteOtherSessions(directory, principal.userId, principal.sessionId);
    });
    if (ended.length > 0) this.sessionsEnded(ended);
  }

  /**
   * Ends every session of the user (a password reset: whoever knew the old password is out): in
   * one directory transaction the credential epoch moves on, so logins still verifying the old
   * password get no session, and every session is deleted; their sockets are closed with 4401.
   * Inside a caller's directory transaction it is part of it (a savepoint).
   */
  endAllSessions(userId: string): void {
    const { directory } = this.deps.storage;
    const ended = directory.transaction(() => {
      repo.advanceCredentialEpoch(directory, userId);
      // No session has the empty id: all of them go.
      return repo.deleteOtherSessions(directory, userId, '');
    });
    if (ended.length > 0) this.sessionsEnded(ended);
  }

  /** Ended sessions stop working at once: out of the cache first, then every listener is told. */
  private sessionsEnded(sessionIds: string[]): void {
    const ended = new Set(sessionIds);
    for (const [key, entry] of this.sessionCache) if (ended.has(entry.principal.sessionId)) this.sessionCache.delete(key);
    for (const listener of this.revocationListeners) listener(sessionIds);
  }

  /**
   * Inserts a session for a user whose password was verified after `epoch` was read; returns its
   * token, or null when a password change has moved the epoch on since.
   */
  private startSession(userId: string, epoch: number, userAgent: string | null): string | null {
    const token = newSessionToken();
    const inserted = repo.insertSessionIfEpoch(
      this.deps.storage.directory,
      {
        id: this.deps.storage.nextId(),
        tokenHash: hashSessionToken(token),
        userId,
        now: nowSeconds(),
        userAgent: userAgent === null ? null : userAgent.slice(0, 256),
      },
      epoch,
    );
    return inserted ? token : null;
  }

  /** A read for a login: a storage failure a retry can cure answers 503, like the users' reads. */
  private readingForLogin<T>(read: () => T): T {
    try {
      return read();
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, STORAGE_FAILURE.read);
    }
  }

  private scheduleDeletion(sessionId: string, attempt: number): void {
    if (attempt >= LOGOUT_RETRY_ATTEMPTS) {
      this.retries.delete(sessionId);
      this.deps.logger.error(
        { sessionId, attempts: attempt },
        'gave up storing a logout: the session stays refused by this process, but works again after a restart',
      );
      return;
    }
    clearTimeout(this.retries.get(sessionId));
    const delay = Math.min(LOGOUT_RETRY_FIRST_MS * 2 ** attempt, LOGOUT_RETRY_MAX_MS);
    const timer = setTimeout(() => {
      try {
        repo.deleteSession(this.deps.storage.directory, sessionId);
      } catch (error) {
        this.deps.logger.debug({ err: error, sessionId, attempt: attempt + 1 }, 'storing a logout failed again');
        this.scheduleDeletion(sessionId, attempt + 1);
        return;
      }
      this.retries.delete(sessionId);
      this.refused.delete(sessionId);
      this.deps.logger.info({ sessionId, attempts: attempt + 1 }, 'stored a logout that had failed');
    }, delay);
    // A pending retry must not keep a process alive that has nothing else to do.
    timer.unref();
    this.retries.set(sessionId, timer);
  }
}

function invalidCredentials(): AppError {
  return new AppError('invalid_credentials', 'Wrong login or password');
}
