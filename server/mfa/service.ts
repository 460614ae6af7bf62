import type { Logger } from 'pino';
import type { AuthResponse, MfaRequiredResponse } from '../../shared/schemas/auth.ts';
import type { BackupCodesResponse, LoginTotpBody, TotpConfirmBody, TotpEnableBody, TotpSetupBody, TotpSetupResponse } from '../../shared/schemas/mfa.ts';
import { AppError } from '../core/app-error.ts';
import { STORAGE_FAILURE, openUserFile, unavailableOnStorageFailure } from '../core/storage-failure.ts';
import type { Throttle, Throttles } from '../core/throttle.ts';
import type { Storage, UserFile } from '../storage/index.ts';
import { backupCodeDigest, base32Of, matchTotpStep, newBackupCodes, newTotpSecret, otpauthUrlOf } from './codes.ts';
import * as repo from './repo.ts';
import { newTicket, ticketKey } from './tickets.ts';

/** A sign-in ticket lasts this long… */
const TICKET_TTL_MS = 5 * 60_000;
/** …and allows this many codes; the last wrong one spends it. */
const TICKET_ATTEMPTS = 5;
/**
 * Tickets held at once. Each needs a right password, and logins are throttled, so this is only a
 * bound on memory; past it the oldest ticket goes (its owner signs in again).
 */
const MAX_TICKETS = 10_000;
/** The per-account budget of second-factor attempts is counted over this window. */
export const MFA_THROTTLE_WINDOW_S = 600;

/**
 * What mfa needs of accounts, given by app.ts as plain functions: the users feature asks mfa for
 * `totp_enabled`, so mfa must not import users (that would be a cycle).
 */
interface MfaAccounts {
  /** Whether `password` is the user's (Argon2, on the thread pool). */
  verifyPassword(userId: string, password: string): Promise<boolean>;
  /** The name an authenticator app lists the account under. */
  accountName(userId: string): string;
}

export interface MfaDeps {
  storage: Storage;
  logger: Logger;
  accounts: MfaAccounts;
  /** Second-factor attempts (every 2FA route and the second step of a login) per account per window; 0 = no limit. */
  attemptsPerAccount: number;
  /** Where that count is kept (app.ts: memory, or Redis in cluster mode). */
  throttles: Throttles;
  /** Milliseconds since the epoch: TOTP steps and ticket expiry (tests move it). */
  clock: () => number;
}

interface Ticket {
  userId: string;
  /** Starts the session exactly as the password login that issued the ticket would have (auth). */
  start: () => Promise<AuthResponse>;
  expiresAt: number;
  attemptsLeft: number;
}

type CodeCheck = 'accepted' | 'wrong' | 'off';

/**
 * Two-factor authentication: TOTP with backup codes, and the second step of a login. Mfa owns
 * its tables in each user's file; users asks it for `totp_enabled` (`totpEnabledOf`), auth asks it
 * at every login (`challenge`) and hands it the way to start the session once a code is right.
 *
 * The TOTP secret is stored as it is, not encrypted, and never answered again after setup. Why not
 * encrypted: the user file is the unit the server exports, imports and backs up, and it already
 * holds the password hash. A key kept in the data folder would protect only a user file stolen on
 * its own (not the folder, nor a backup of it, which is how these files leak), and a file moved to
 * another server would lose its second factor; a key from outside (a flag) would be one more secret
 * the self-hoster must back up, and losing it would lock every 2FA user out. Protect the data
 * folder and its backups instead; backup codes, which are guessable only if stored readably, are
 * kept as digests.
 */
export class MfaService {
  /** Sign-in tickets by the SHA-256 of the ticket (base64): the ticket itself is never held. */
  private readonly tickets = new Map<string, Ticket>();
  private readonly accountThrottle: Throttle;

  constructor(private readonly deps: MfaDeps) {
    this.accountThrottle = deps.throttles({ name: 'totp-account', points: deps.attemptsPerAccount, durationSeconds: MFA_THROTTLE_WINDOW_S });
  }

  /** `totp_enabled` of the user whose file this is (users asks, for the user object). */
  totpEnabledOf(file: UserFile): boolean {
    return repo.isTotpEnabled(file);
  }

  /**
   * Auth asks this once a login's password is right, in the same synchronous step as it would start
   * the session: null when the account has no second factor (auth starts the session), else the
   * answer to give instead. `start` is kept with the ticket and called once a code is right.
   */
  challenge(userId: string, start: () => Promise<AuthResponse>): MfaRequiredResponse | null {
    const file = this.file(userId);
    if (!this.guarded(STORAGE_FAILURE.login, () => repo.isTotpEnabled(file))) return null;
    const ticket = newTicket(userId);
    this.makeRoomForTicket();
    this.tickets.set(ticketKey(ticket), { userId, start, expiresAt: this.deps.clock() + TICKET_TTL_MS, attemptsLeft: TICKET_ATTEMPTS });
    return { mfa_required: true, ticket };
  }

  /** Second step of a login: a right code for a live ticket starts the session. */
  async completeLogin(body: LoginTotpBody): Promise<AuthResponse> {
    const key = ticketKey(body.ticket);
    const found = this.liveTicket(key);
    if (found === undefined) throw invalidSecondFactor();
    await this.accountThrottle.consume(found.userId);
    // Looked up again after the await: another attempt may have used or spent it meanwhile. From
    // here on everything is synchronous, so no other request sees the ticket half-used.
    const ticket = this.liveTicket(key);
    if (ticket === undefined) throw invalidSecondFactor();
    const file = this.file(ticket.userId);
    const check = this.guarded(STORAGE_FAILURE.login, () =>
      file.transaction(() => (body.backup_code !== undefined ? this.useBackupCode(file, body.backup_code) : this.useTotp(file, body.code ?? ''))),
    );
    if (check !== 'accepted') {
      ticket.attemptsLeft -= 1;
      if (ticket.attemptsLeft <= 0) this.tickets.delete(key);
      throw invalidSecondFactor();
    }
    // The code is spent (user file) before the session is stored (directory): stopped in between,
    // the code cannot be replayed and nothing else happened, the safe order (storage/schema.ts).
    // The ticket is used up before the session is awaited, so no other attempt can use it meanwhile.
    this.tickets.delete(key);
    try {
      return await ticket.start();
    } catch (error) {
      // A failure a retry can cure gives the ticket back (the client retries with the next code:
      // this one is used); anything else (the password changed meanwhile: 401) ends it.
      if (error instanceof AppError && error.code === 'service_unavailable') this.tickets.set(key, ticket);
      throw error;
    }
  }

  /** Starts (or restarts) a setup: a new secret, pending until a code of it enables 2FA. */
  async setup(userId: string, body: TotpSetupBody): Promise<TotpSetupResponse> {
    await this.accountThrottle.consume(userId);
    if (this.enabled(userId)) throw alreadyEnabled();
    await this.checkPassword(userId, body.password);
    const secret = newTotpSecret();
    const file = this.file(userId);
    this.guarded(STORAGE_FAILURE.write, () =>
      file.transaction(() => {
        // 2FA may have been enabled while the password was being checked.
        if (repo.readTotp(file)?.secret) throw alreadyEnabled();
        repo.savePendingSecret(file, secret);
      }),
    );
    return { secret: base32Of(secret), otpauth_url: otpauthUrlOf(secret, this.deps.accounts.accountName(userId)) };
  }

  /** A code of the pending secret turns 2FA on and answers the first set of backup codes. */
  async enable(userId: string, body: TotpEnableBody): Promise<BackupCodesResponse> {
    await this.accountThrottle.consume(userId);
    const codes = newBackupCodes();
    const file = this.file(userId);
    this.guarded(STORAGE_FAILURE.write, () =>
      file.transaction(() => {
        const row = repo.readTotp(file);
        if (row?.secret) throw alreadyEnabled();
        if (!row?.pending_secret) throw new AppError('totp_not_set_up', 'There is no 2FA setup to enable: call POST /users/@me/totp/setup first');
        const step = matchTotpStep(row.pending_secret, body.code, this.deps.clock(), row.last_step);
        if (step === null) throw invalidCode();
        repo.enableTotp(file, step, this.nowSeconds());
        repo.replaceBackupCodes(file, codes.map(digestOf));
      }),
    );
    this.deps.logger.info({ userId }, '2FA enabled');
    return { backup_codes: codes };
  }

  /** Turns 2FA off, given the password and a TOTP or backup code. */
  async disable(userId: string, body: TotpConfirmBody): Promise<void> {
    await this.confirm(userId, body, (file) => repo.deleteTotp(file));
    this.deps.logger.info({ userId }, '2FA disabled');
  }

  /** A new set of backup codes replaces every old one, given the password and a TOTP or backup code. */
  async regenerateBackupCodes(userId: string, body: TotpConfirmBody): Promise<BackupCodesResponse> {
    const codes = newBackupCodes();
    await this.confirm(userId, body, (file) => repo.replaceBackupCodes(file, codes.map(digestOf)));
    return { backup_codes: codes };
  }

  /**
   * The checks of disable and regenerate: the budget, 2FA on, the password, then the code; `change`
   * runs in the transaction that spends the code, so a code is never spent for a change not made.
   */
  private async confirm(userId: string, body: TotpConfirmBody, change: (file: UserFile) => void): Promise<void> {
    await this.accountThrottle.consume(userId);
    if (!this.enabled(userId)) throw notEnabled();
    await this.checkPassword(userId, body.password);
    const file = this.file(userId);
    this.guarded(STORAGE_FAILURE.write, () =>
      file.transaction(() => {
        let check = this.useTotp(file, body.code);
        if (check === 'wrong') check = this.useBackupCode(file, body.code);
        if (check === 'off') throw notEnabled();
        if (check === 'wrong') throw invalidCode();
        change(file);
      }),
    );
  }

  /** Inside a transaction of `file`: accepts a TOTP code at most once, and none older than the last used. */
  private useTotp(file: UserFile, code: string): CodeCheck {
    const row = repo.readTotp(file);
    if (!row?.secret) return 'off';
    const step = matchTotpStep(row.secret, code, this.deps.clock(), row.last_step);
    return step !== null && repo.useTotpStep(file, step) ? 'accepted' : 'wrong';
  }

  /** Inside a transaction of `file`: spends a backup code. */
  private useBackupCode(file: UserFile, code: string): CodeCheck {
    if (!repo.isTotpEnabled(file)) return 'off';
    const digest = backupCodeDigest(code);
    return digest !== null && repo.useBackupCode(file, digest) ? 'accepted' : 'wrong';
  }

  private async checkPassword(userId: string, password: string): Promise<void> {
    if (!(await this.deps.accounts.verifyPassword(userId, password))) {
      throw new AppError('invalid_password', 'password is incorrect', { errors: [{ path: 'password', message: 'Incorrect password' }] });
    }
  }

  private enabled(userId: string): boolean {
    const file = this.file(userId);
    return this.guarded(STORAGE_FAILURE.read, () => repo.isTotpEnabled(file));
  }

  /** The ticket under `key` if it is still usable; an expired one is dropped. */
  private liveTicket(key: string): Ticket | undefined {
    const ticket = this.tickets.get(key);
    if (ticket === undefined) return undefined;
    if (ticket.expiresAt > this.deps.clock()) return ticket;
    this.tickets.delete(key);
    return undefined;
  }

  /** Drops expired tickets when the map is full, then the oldest ones if it still is. */
  private makeRoomForTicket(): void {
    if (this.tickets.size < MAX_TICKETS) return;
    const now = this.deps.clock();
    for (const [key, ticket] of this.tickets) if (ticket.expiresAt <= now) this.tickets.delete(key);
    for (const key of this.tickets.keys()) {
      if (this.tickets.size < MAX_TICKETS) break;
      this.tickets.delete(key);
    }
  }

  private file(userId: string): UserFile {
    return openUserFile(this.deps.storage, this.deps.logger, userId);
  }

  private nowSeconds(): number {
    return Math.floor(this.deps.clock() / 1000);
  }

  /** Runs a storage step; a failure a retry can cure answers 503 saying `message`. */
  private guarded<T>(message: string, step: () => T): T {
    try {
      return step();
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, message);
    }
  }
}

function digestOf(code: string): Buffer {
  const digest = backupCodeDigest(code);
  if (digest === null) throw new Error('a backup code we made does not read as one');
  return digest;
}

function invalidSecondFactor(): AppError {
  return new AppError(
    'invalid_second_factor',
    'Wrong code, or the sign-in ticket is not valid (unknown, used, expired or out of attempts): sign in with the password again if this persists',
  );
}

function invalidCode(): AppError {
  return new AppError('invalid_totp_code', 'code is incorrect, already used, or older than the last code used', {
    errors: [{ path: 'code', message: 'Incorrect code' }],
  });
}

function alreadyEnabled(): AppError {
  return new AppError('totp_already_enabled', '2FA is already enabled: disable it first to set up a new secret');
}

function notEnabled(): AppError {
  return new AppError('totp_not_enabled', '2FA is not enabled on this account');
}
