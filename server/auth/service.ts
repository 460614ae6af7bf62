import type { Logger } from 'pino';
import type { AuthResponse, LoginBody, RegisterBody } from '../../shared/schemas/auth.ts';
import { AppError } from '../core/app-error.ts';
import type { Principal } from '../core/principal.ts';
import type { Storage } from '../storage/index.ts';
import { isRetryableStorageError } from '../storage/errors.ts';
import type { UsersService } from '../users/service.ts';
import { STORAGE_FAILURE, STORAGE_RETRY_AFTER_S, unavailableOnStorageFailure } from '../core/storage-failure.ts';
import type { PasswordHasher } from './passwords.ts';
import * as repo from './repo.ts';
import { hashSessionToken, newSessionToken } from './tokens.ts';
import { nowSeconds } from '../../shared/time.ts';

/** Sessions are touched at most this often, so authenticating a request is normally a pure read. */
const TOUCH_INTERVAL_S = 3600;
/**
 * Recently seen tokens skip the directory read. Revocations in this process drop entries at once
 * (`forgetSessions`); the TTL bounds how long a session deleted by anything else stays usable.
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
  hasher: PasswordHasher;
  users: UsersService;
  logger: Logger;
  /** Called with the ids of sessions that just ended, so open sockets using them close. */
  onSessionsRevoked: (sessionIds: string[]) => void;
}

export class AuthService {
  private readonly sessionCache = new Map<string, { principal: Principal; expiresAt: number }>();
  /**
   * Sessions signed out whose row could not be deleted yet: refused by `authenticate` although the
   * directory still holds them. An entry stays until the deletion is stored (or the process ends).
   */
  private readonly refused = new Set<string>();
  /** The pending retry of each of those deletions. */
  private readonly retries = new Map<string, NodeJS.Timeout>();

  constructor(private readonly deps: AuthDeps) {}

  async register(body: RegisterBody, userAgent: string | null): Promise<AuthResponse> {
    // The first session is inserted in the transaction that creates the account: a registration
    // that fails leaves neither an account without a session nor a session without an account.
    const { id, result: token } = await this.deps.users.create(body, (user) => {
      const started = this.startSession(user.id, user.passwordHash, userAgent);
      if (started === null) throw new Error(`the password hash of user ${user.id} changed inside its own creation`);
      return started;
    });
    return { token, user: this.deps.users.privateUser(id) };
  }

  /** Same answer and about the same time whether the account is missing or the password wrong. */
  async login(body: LoginBody, userAgent: string | null): Promise<AuthResponse> {
    const user = this.deps.users.findForLogin(body.login);
    const ok = user ? await this.deps.hasher.verify(user.password_hash, body.password) : await this.deps.hasher.verifyDecoy(body.password);
    if (!user || !ok) throw invalidCredentials();
    let token: string | null;
    try {
      token = this.startSession(user.id, user.password_hash, userAgent);
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, STORAGE_FAILURE.login);
    }
    if (token === null) {
      // The password changed while we were verifying the old one: that change signed out every
      // other session, so this login must not outlive it. Same answer as a wrong password.
      this.deps.logger.info({ userId: user.id }, 'login refused: the password changed while it was being verified');
      throw invalidCredentials();
    }
    return { token, user: this.deps.users.privateUser(user.id) };
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
    this.deps.onSessionsRevoked([sessionId]);
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

  /** Drops ended sessions from the cache, so their tokens stop working immediately. */
  forgetSessions(sessionIds: string[]): void {
    const ended = new Set(sessionIds);
    for (const [key, entry] of this.sessionCache) if (ended.has(entry.principal.sessionId)) this.sessionCache.delete(key);
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
   * Inserts a session for a user whose password hash was verified as `verifiedHash`; returns its
   * token, or null when the hash is no longer the user's (changed since it was verified).
   */
  private startSession(userId: string, verifiedHash: string, userAgent: string | null): string | null {
    const token = newSessionToken();
    const inserted = repo.insertSessionIfCredential(
      this.deps.storage.directory,
      {
        id: this.deps.storage.nextId(),
        tokenHash: hashSessionToken(token),
        userId,
        now: nowSeconds(),
        userAgent: userAgent === null ? null : userAgent.slice(0, 256),
      },
      verifiedHash,
    );
    return inserted ? token : null;
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
