import type { Logger } from 'pino';
import type { AuthResponse, LoginBody, LoginResponse, MfaRequiredResponse, RegisterBody } from '../../shared/schemas/auth.ts';
import { SESSION_NOT_FOUND_MESSAGE, type Session } from '../../shared/schemas/sessions.ts';
import { AppError } from '../core/app-error.ts';
import type { Principal } from '../core/principal.ts';
import type { Throttles } from '../core/throttle.ts';
import { STORAGE_FAILURE, STORAGE_RETRY_AFTER_S, guardStorage, unavailableOnStorageFailure } from '../core/storage-failure.ts';
import type { NewSession, SessionRow } from '../storage/directory-store.ts';
import type { Storage } from '../storage/index.ts';
import { isRetryableStorageError } from '../storage/errors.ts';
import type { UsersService } from '../users/service.ts';
import { deviceNameFromUserAgent } from './device-name.ts';
import { LoginGuard, type LoginLimits } from './login-guard.ts';
import { hashSessionToken, newSessionToken } from './tokens.ts';

/**
 * Sessions are touched at most this often, so authenticating a request is normally a pure read
 * and `last_used_at` costs at most one write a minute per session.
 */
const TOUCH_INTERVAL_S = 60;
/**
 * Recently seen tokens skip the directory read. Revocations in this process drop entries at once
 * (`sessionsEnded`), those of an admin command beside it when the server is told or looks
 * (`directoryChangedElsewhere`); the TTL bounds how long a session deleted by anything else stays
 * usable. An entry never outlives its session's expiry.
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
/** Expired sessions are deleted this often (and at start), and their sync sockets closed. */
const DEFAULT_SWEEP_INTERVAL_MS = 60 * 60 * 1000;

/** How long a session lasts (`--session-idle-seconds`, `--session-lifetime-seconds`). */
interface SessionLimits {
  /** A session unused this long ends. */
  idleSeconds: number;
  /** A session ends this long after its login, however much it is used. */
  lifetimeSeconds: number;
}

/** What names a new session: the name the client gave, else its User-Agent. */
interface SessionDevice {
  userAgent: string | null;
  deviceName?: string | undefined;
}

/** Who is signing in, as the HTTP edge saw them. */
export interface LoginClient {
  userAgent: string | null;
  /** The client address (`--trust-proxy` decides whether X-Forwarded-For names it). */
  address: string;
}

/**
 * What a login asks once the password is right (server/mfa: TOTP). null: the account has no second
 * factor, the session starts now. Otherwise the answer to give instead (a ticket); `start` starts
 * the session exactly as the login would have, and is called once the second factor is satisfied.
 */
interface SecondFactor {
  challenge(userId: string, start: () => Promise<AuthResponse>): MfaRequiredResponse | null;
}

export interface AuthDeps {
  storage: Storage;
  users: UsersService;
  logger: Logger;
  sessions: SessionLimits;
  login: LoginLimits;
  /** Where login's budgets are counted (app.ts: memory, or Redis in cluster mode). */
  throttles: Throttles;
  /** The time sessions are measured by, in ms since the epoch (default `Date.now`; tests move it on). */
  clock?: () => number;
  /** How often expired sessions are swept (default hourly; tests shorten it). */
  sweepIntervalMs?: number;
  /** Required, not optional: a server wired without it would sign 2FA accounts in on a password. */
  secondFactor: SecondFactor;
}

/**
 * Sessions: starting them (register, login, with login's brute-force budgets), checking tokens,
 * listing them as devices, and ending them (logout, one by id, all but the caller's, password
 * change, expiry). Auth owns the sessions and their credential epochs in the directory; the
 * password itself is the users feature's, which auth asks to verify it.
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
  private readonly loginGuard: LoginGuard;
  private readonly clock: () => number;
  private sweepTimer: NodeJS.Timeout | undefined;
  /** Sessions some other part of the server is using right now (open sync sockets). */
  private sessionsInUse: () => Iterable<string> = () => [];

  constructor(private readonly deps: AuthDeps) {
    this.loginGuard = new LoginGuard(deps.login, deps.throttles);
    this.clock = deps.clock ?? Date.now;
    // A password change ends every other session of the user: users announces it, auth ends them.
    deps.users.onPasswordChange((principal) => this.endPasswordChangedSessions(principal));
  }

  /**
   * Deletes expired sessions now and every `sweepIntervalMs` (the server; an admin command does
   * not: expiry is measured with the server's limits, which a command does not know).
   */
  startSweeping(): void {
    if (this.sweepTimer !== undefined) return;
    void this.sweepExpired();
    this.sweepTimer = setInterval(() => void this.sweepExpired(), this.deps.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS);
    // The sweep is housekeeping: it must not keep a process alive that has nothing else to do.
    this.sweepTimer.unref();
  }

  /**
   * Another process (an admin command) committed to the directory: sessions it ended must be
   * refused from now on. The cache is dropped whole (it refills with one read per token), and the
   * sync sockets of sessions that no longer exist are closed (4401) through the usual listeners.
   */
  async directoryChangedElsewhere(): Promise<void> {
    this.sessionCache.clear();
    const withSockets = [...this.sessionsInUse()];
    if (withSockets.length === 0) return;
    const existing = await this.deps.storage.directory.existingSessions(withSockets);
    const ended = withSockets.filter((id) => !existing.has(id));
    if (ended.length > 0) this.sessionsEnded(ended);
  }

  /**
   * Subscribes to ended sessions (logout, password change). Listeners get the ids synchronously,
   * right after the end is decided (a logout's even before its deletion is stored), possibly inside
   * the transaction of the change that caused it: they do in-memory work only, such as closing the
   * sessions' sockets. Tokens are already refused by then.
   */
  /**
   * Tells the sweep which sessions are in use without making requests (a device's open sync socket):
   * they count as used now, so the idle timeout does not end them.
   */
  countAsInUse(sessions: () => Iterable<string>): void {
    this.sessionsInUse = sessions;
  }

  onSessionsRevoked(listener: (sessionIds: string[]) => void): void {
    this.revocationListeners.add(listener);
  }

  async register(body: RegisterBody, userAgent: string | null): Promise<AuthResponse> {
    // The first session is inserted in the step that indexes the account: a registration that
    // fails leaves neither an account without a session nor a session without an account.
    let token = '';
    const id = await this.deps.users.create(body, (userId) => {
      const started = this.newSession(userId, { userAgent });
      token = started.token;
      return started.session;
    });
    return { token, user: this.deps.users.privateUser(id) };
  }

  /**
   * Same answer and about the same time whether the account is missing or the password wrong. The
   * attempt is counted against the login's brute-force budgets first (LoginGuard): over one, 429
   * before any password is verified.
   */
  async login(body: LoginBody, client: LoginClient): Promise<LoginResponse> {
    const { users } = this.deps;
    await this.loginGuard.attempt(body.login, client.address);
    const userId = await users.idForLogin(body.login);
    if (userId === undefined) {
      await users.verifyNoAccount(body.password);
      throw invalidCredentials();
    }
    // Read before the password hash is (verifyPassword reads it before its first await): a password
    // change moves the epoch on before it stores the new hash, so whatever change commits after
    // this read makes the insert below refuse the session.
    const epoch = await this.reading(() => this.deps.storage.directory.readCredentialEpoch(userId));
    if (!(await users.verifyPassword(userId, body.password))) throw invalidCredentials();
    await this.loginGuard.succeeded(body.login, client.address);
    // 2FA is asked in the same synchronous step as the session would start, so a second factor
    // turned on while the password was verified is asked for. `start` keeps the epoch read above:
    // a session started after a code, minutes later, still never outlives a password change.
    const device = { userAgent: client.userAgent, deviceName: body.device_name };
    const start = () => this.startLoginSession(userId, epoch, device);
    return this.deps.secondFactor.challenge(userId, start) ?? start();
  }

  /** The account a login names, if any (cluster mode: the node serving it answers the login). */
  accountOfLogin(login: string): Promise<string | undefined> {
    return this.deps.users.idForLogin(login);
  }

  /** The end of a login whose credentials all checked out (at once, or after a second factor). */
  private async startLoginSession(userId: string, epoch: number, device: SessionDevice): Promise<AuthResponse> {
    let token: string | null;
    try {
      token = await this.startSession(userId, epoch, device);
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, STORAGE_FAILURE.login);
    }
    if (token === null) {
      // The password changed while we were verifying the old one (or, with 2FA, before the code
      // came): that change signed out every other session, so this login must not outlive it.
      // Same answer as a wrong password.
      this.deps.logger.info({ userId }, 'login refused: the password changed while it was being verified');
      throw invalidCredentials();
    }
    return { token, user: this.deps.users.privateUser(userId) };
  }

  /**
   * Ends the session. It is refused by this process at once, and its sync sockets closed, whatever
   * the storage does; if the deletion cannot be stored, it is retried in the background and the
   * caller gets a 503 saying so (a restart before it is stored would bring the session back, so
   * the client repeats the logout: 401 or 204 then both mean it is over).
   */
  async logout(principal: Principal): Promise<void> {
    const { sessionId } = principal;
    this.refused.add(sessionId);
    this.sessionsEnded([sessionId]);
    try {
      await this.deps.storage.directory.deleteSession(sessionId);
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

  /**
   * The session a bearer token belongs to, or null: at once for a token seen lately (the cache),
   * else after one read of the directory. An expired session is null like an unknown one, and
   * deleted on the way.
   */
  authenticate(token: string): Principal | null | Promise<Principal | null> {
    const tokenHash = hashSessionToken(token);
    const key = tokenHash.toString('base64');
    const cached = this.sessionCache.get(key);
    const nowMs = this.clock();
    if (cached && cached.expiresAt > nowMs) return cached.principal;
    if (cached) this.sessionCache.delete(key);
    return this.deps.storage.directory.findSessionByTokenHash(tokenHash).then((session) => this.admit(key, session));
  }

  /** A session read for a token: refused, expired, or admitted (its use recorded, and cached). */
  private async admit(key: string, session: SessionRow | undefined): Promise<Principal | null> {
    if (!session || this.refused.has(session.id)) return null;
    const nowMs = this.clock();
    const now = Math.floor(nowMs / 1000);
    if (now >= this.expiresAt(session)) {
      await this.endExpired(session.id);
      return null;
    }
    let lastUsedAt = session.last_used_at;
    if (now - lastUsedAt >= TOUCH_INTERVAL_S) {
      try {
        await this.deps.storage.directory.touchSession(session.id, now);
        lastUsedAt = now;
      } catch (error) {
        // `last_used_at` is informational: a full disk must not turn every request into an error.
        this.deps.logger.warn({ err: error, sessionId: session.id }, 'could not record the use of a session');
      }
    }
    // Ended while this was read (a logout, another node's revocation): not cached, refused.
    if (this.refused.has(session.id)) return null;
    const principal = { userId: session.user_id, sessionId: session.id };
    if (this.sessionCache.size >= SESSION_CACHE_MAX) {
      const oldest = this.sessionCache.keys().next().value;
      if (oldest !== undefined) this.sessionCache.delete(oldest);
    }
    const expiresAtMs = this.expiresAt({ created_at: session.created_at, last_used_at: lastUsedAt }) * 1000;
    this.sessionCache.set(key, { principal, expiresAt: Math.min(nowMs + SESSION_CACHE_TTL_MS, expiresAtMs) });
    return principal;
  }

  /** The caller's sessions (devices), most recently used first; expired ones are not listed. */
  async listSessions(principal: Principal): Promise<Session[]> {
    const rows = await this.reading(() => this.deps.storage.directory.listUserSessions(principal.userId));
    const now = Math.floor(this.clock() / 1000);
    return rows.flatMap((row) => {
      const expiresAt = this.expiresAt(row);
      if (now >= expiresAt || this.refused.has(row.id)) return [];
      return [
        {
          id: row.id,
          device_name: row.device_name ?? deviceNameFromUserAgent(row.user_agent),
          created_at: row.created_at,
          last_used_at: row.last_used_at,
          expires_at: expiresAt,
          current: row.id === principal.sessionId,
        },
      ];
    });
  }

  /**
   * Ends one of the caller's sessions: its token is refused and its sync sockets closed at once. The
   * caller's own session is a logout. Someone else's session, or one that does not exist, is 404.
   */
  async endSession(principal: Principal, sessionId: string): Promise<void> {
    if (sessionId === principal.sessionId) {
      await this.logout(principal);
      return;
    }
    const ended = await this.writing(() => this.deps.storage.directory.deleteUserSession(principal.userId, sessionId));
    // A session already signed out, whose deletion is still being retried, is not listed either.
    if (!ended || this.refused.has(sessionId)) throw new AppError('not_found', SESSION_NOT_FOUND_MESSAGE);
    this.sessionsEnded([sessionId]);
  }

  /**
   * Ends every session of the caller but this one. Unlike a password change it does not move the
   * credential epoch: whoever signs in with the password after this keeps their session.
   */
  async endOtherSessions(principal: Principal): Promise<void> {
    const ended = await this.writing(() => this.deps.storage.directory.deleteOtherSessions(principal.userId, principal.sessionId));
    if (ended.length > 0) this.sessionsEnded(ended);
  }

  /**
   * Shutdown, before storage closes: one last try at every logout still waiting to be stored, and
   * no timer left behind. What still fails is logged: after a restart those sessions work again.
   */
  async close(): Promise<void> {
    clearInterval(this.sweepTimer);
    for (const [sessionId, timer] of this.retries) {
      clearTimeout(timer);
      try {
        await this.deps.storage.directory.deleteSession(sessionId);
        this.refused.delete(sessionId);
      } catch (error) {
        this.deps.logger.error({ err: error, sessionId }, 'shutting down with a logout not stored: that session works again after a restart');
      }
    }
    this.retries.clear();
  }

  /**
   * Password change (users' event, inside the change and before the new hash is stored): in one
   * directory step the user's credential epoch moves on, so logins still verifying the old
   * password get no session, and every other session of the user is deleted.
   */
  private async endPasswordChangedSessions(principal: Principal): Promise<void> {
    const ended = await this.deps.storage.directory.endCredentials(principal.userId, principal.sessionId);
    if (ended.length > 0) this.sessionsEnded(ended);
  }

  /**
   * Ends every session of the user (an administrator's password reset: whoever knew the old
   * password is out): in one directory step the credential epoch moves on, so logins still
   * verifying the old password get no session, and every session is deleted; their sockets are
   * closed with 4401.
   */
  async endAllSessions(userId: string): Promise<void> {
    const ended = await this.deps.storage.directory.endCredentials(userId, null);
    if (ended.length > 0) this.sessionsEnded(ended);
  }

  /**
   * Sessions that another part ended in the directory (a password reset spending its token, an
   * account deletion): they stop working at once, as this service's own.
   */
  announceEndedSessions(sessionIds: string[]): void {
    if (sessionIds.length > 0) this.sessionsEnded(sessionIds);
  }

  /** Ended sessions stop working at once: out of the cache first, then every listener is told. */
  private sessionsEnded(sessionIds: string[]): void {
    this.sessionsEndedElsewhere(sessionIds);
    for (const listener of this.revocationListeners) listener(sessionIds);
  }

  /**
   * Cluster mode: sessions another node ended (it announced them once the end was decided). Their
   * cached tokens are dropped, so this node reads the directory again and refuses them; the caller
   * closes their sockets. The listeners are not called: the ending node told everyone already.
   */
  /**
   * Cluster mode: whether a session still exists, read from the directory (not the cache). The
   * owner asks before it serves a socket another node accepted: the session may have ended on the
   * way, after the revocation reached the owner.
   */
  async sessionExists(sessionId: string): Promise<boolean> {
    if (this.refused.has(sessionId)) return false;
    return (await this.deps.storage.directory.existingSessions([sessionId])).has(sessionId) && !this.refused.has(sessionId);
  }

  sessionsEndedElsewhere(sessionIds: string[]): void {
    const ended = new Set(sessionIds);
    for (const [key, entry] of this.sessionCache) if (ended.has(entry.principal.sessionId)) this.sessionCache.delete(key);
  }

  /** When a session ends unless it is used again: the idle timeout, capped by the lifetime. */
  private expiresAt(session: { created_at: number; last_used_at: number }): number {
    const { idleSeconds, lifetimeSeconds } = this.deps.sessions;
    return Math.min(session.last_used_at + idleSeconds, session.created_at + lifetimeSeconds);
  }

  /** An expired session met by a token check: deleted (or left to the sweep if that fails), and ended. */
  private async endExpired(sessionId: string): Promise<void> {
    try {
      await this.deps.storage.directory.deleteSession(sessionId);
    } catch (error) {
      this.deps.logger.warn({ err: error, sessionId }, 'could not delete an expired session; the sweep will');
    }
    this.sessionsEnded([sessionId]);
  }

  /** Deletes every expired session and closes their sync sockets; a failure waits for the next sweep. */
  private async sweepExpired(): Promise<void> {
    const now = Math.floor(this.clock() / 1000);
    const { idleSeconds, lifetimeSeconds } = this.deps.sessions;
    let ended: string[];
    try {
      // A session whose sync socket stayed open all along is in use, REST calls or not: recorded
      // first, so the idle timeout never ends a connected device (the lifetime still does).
      ended = await this.deps.storage.directory.sweepSessions([...this.sessionsInUse()], now, now - idleSeconds, now - lifetimeSeconds);
    } catch (error) {
      this.deps.logger.warn({ err: error }, 'could not delete expired sessions; retrying at the next sweep');
      return;
    }
    if (ended.length === 0) return;
    this.deps.logger.info({ sessions: ended.length }, 'deleted expired sessions');
    this.sessionsEnded(ended);
  }

  /**
   * Inserts a session for a user whose password was verified after `epoch` was read; returns its
   * token, or null when a password change has moved the epoch on since.
   */
  private async startSession(userId: string, epoch: number, device: SessionDevice): Promise<string | null> {
    const { token, session } = this.newSession(userId, device);
    return (await this.deps.storage.directory.insertSessionIfEpoch(session, epoch)) ? token : null;
  }

  /** A new session's token, and the row that keeps its hash. */
  private newSession(userId: string, device: SessionDevice): { token: string; session: NewSession } {
    const token = newSessionToken();
    const session = {
      id: this.deps.storage.nextId(),
      tokenHash: hashSessionToken(token),
      userId,
      now: Math.floor(this.clock() / 1000),
      userAgent: device.userAgent === null ? null : device.userAgent.slice(0, 256),
      deviceName: device.deviceName ?? deviceNameFromUserAgent(device.userAgent),
    };
    return { token, session };
  }

  /** A read: a storage failure a retry can cure answers 503, like the users' reads. */
  private reading<T>(read: () => Promise<T>): Promise<T> {
    return guardStorage(this.deps.logger, STORAGE_FAILURE.read, read);
  }

  /** A write: a storage failure a retry can cure answers 503 saying nothing changed. */
  private writing<T>(write: () => Promise<T>): Promise<T> {
    return guardStorage(this.deps.logger, STORAGE_FAILURE.write, write);
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
      this.deps.storage.directory.deleteSession(sessionId).then(
        () => {
          this.retries.delete(sessionId);
          this.refused.delete(sessionId);
          this.deps.logger.info({ sessionId, attempts: attempt + 1 }, 'stored a logout that had failed');
        },
        (error: unknown) => {
          this.deps.logger.debug({ err: error, sessionId, attempt: attempt + 1 }, 'storing a logout failed again');
          this.scheduleDeletion(sessionId, attempt + 1);
        },
      );
    }, delay);
    // A pending retry must not keep a process alive that has nothing else to do.
    timer.unref();
    this.retries.set(sessionId, timer);
  }
}

function invalidCredentials(): AppError {
  return new AppError('invalid_credentials', 'Wrong login or password');
}
