import type { Logger } from 'pino';
import type { AuthResponse, LoginBody, RegisterBody } from '../../shared/schemas/auth.ts';
import { AppError } from '../http/app-error.ts';
import type { Principal } from '../http/route.ts';
import type { Storage } from '../storage/index.ts';
import type { UsersService } from '../users/service.ts';
import { STORAGE_FAILURE, unavailableOnStorageFailure } from '../users/storage-failure.ts';
import type { PasswordHasher } from './passwords.ts';
import * as repo from './repo.ts';
import { hashSessionToken, newSessionToken } from './tokens.ts';

/** Sessions are touched at most this often, so authenticating a request is normally a pure read. */
const TOUCH_INTERVAL_S = 3600;
/**
 * Recently seen tokens skip the directory read. Revocations in this process drop entries at once
 * (`forgetSessions`); the TTL bounds how long a session deleted by anything else stays usable.
 */
const SESSION_CACHE_TTL_MS = 30_000;
const SESSION_CACHE_MAX = 10_000;
const nowSeconds = () => Math.floor(Date.now() / 1000);

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

  logout(principal: Principal): void {
    repo.deleteSession(this.deps.storage.directory, principal.sessionId);
    this.deps.onSessionsRevoked([principal.sessionId]);
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
    if (!session) return null;
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
}

function invalidCredentials(): AppError {
  return new AppError('invalid_credentials', 'Wrong login or password');
}
