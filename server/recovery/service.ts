import type { Logger } from 'pino';
import type { ResetPasswordBody } from '../../shared/schemas/recovery.ts';
import { nowSeconds } from '../../shared/time.ts';
import { AppError } from '../core/app-error.ts';
import { STORAGE_FAILURE, guardStorage, unavailableOnStorageFailure } from '../core/storage-failure.ts';
import type { Throttle, Throttles } from '../core/throttle.ts';
import type { AuthService } from '../auth/service.ts';
import type { Mailer, OutgoingMail } from '../mail/mailer.ts';
import type { MailTokenPurpose } from '../storage/directory-store.ts';
import type { Storage } from '../storage/index.ts';
import type { EmailChange, UsersService } from '../users/service.ts';
import { emailChangedMail, passwordResetMail, verificationMail } from './mails.ts';
import { hashMailToken, newMailToken } from './tokens.ts';

/** How long a mailed link works. A reset link is a key to the account: short. */
const VERIFY_EMAIL_TTL_HOURS = 24;
const RESET_PASSWORD_TTL_MINUTES = 30;

/**
 * Per-account budgets (each route also has the per-address one, routes.ts). They bound the mails
 * one account can be sent, so nobody turns the server against someone's mailbox; a budget spent
 * by someone else costs the owner little, since every one of those requests mailed the owner a
 * working link.
 */
const FORGOT_PER_EMAIL = { name: 'forgot-password-account', points: 5, durationSeconds: 3600 };
const RESEND_PER_ACCOUNT = { name: 'resend-verification-account', points: 5, durationSeconds: 3600 };
/** Attempts with one account's valid reset token (e.g. passwords refused as weak). */
const RESET_PER_ACCOUNT = { name: 'reset-password-account', points: 10, durationSeconds: 3600 };

/** What a resend answers when its mail did not go: waiting may help (the mail server comes back). */
const MAIL_RETRY_AFTER_S = 60;

export interface RecoveryDeps {
  storage: Storage;
  users: UsersService;
  auth: Pick<AuthService, 'announceEndedSessions'>;
  mailer: Mailer;
  logger: Logger;
  /** Base of the links in mails (`--public-url`, known once the server listens). */
  publicUrl: () => string;
  /** Where the per-account budgets are counted (app.ts: memory, or Redis in cluster mode). */
  throttles: Throttles;
}

/**
 * Email verification and password reset: the tokens mailed for them (in the directory, hashed,
 * single-use, expiring, bound to the address they were mailed to) and the mails themselves.
 * Users announces registrations and address changes; auth ends the sessions of a reset.
 *
 * Mails the caller did not ask for in so many words (on registration, on an address change, and
 * every password-reset mail) are sent in the background: the request's effect never waits on a
 * mail server, and a mail that fails is logged (`could not send a mail`), not lost silently. A
 * resend is the exception: the mail is all it does, so it waits, and a failure answers 503.
 */
export class RecoveryService {
  /** Background deliveries still running: shutdown waits for them. */
  private readonly pending = new Set<Promise<void>>();
  private readonly forgotPerEmail: Throttle;
  private readonly resendPerAccount: Throttle;
  private readonly resetPerAccount: Throttle;

  constructor(private readonly deps: RecoveryDeps) {
    this.forgotPerEmail = deps.throttles(FORGOT_PER_EMAIL);
    this.resendPerAccount = deps.throttles(RESEND_PER_ACCOUNT);
    this.resetPerAccount = deps.throttles(RESET_PER_ACCOUNT);
    deps.users.onRegistered((user) => this.mailVerificationLater(user.id, user));
    deps.users.onEmailChanged((change) => this.emailChanged(change));
  }

  /** `POST /auth/verify-email`: the address the token was mailed to is verified, if the account still has it. */
  async verifyEmail(token: string): Promise<void> {
    const { directory } = this.deps.storage;
    const hash = hashMailToken(token);
    const row = await this.reading(() => directory.findLiveMailToken(hash, 'verify_email', nowSeconds()));
    if (row === undefined) throw invalidMailToken();
    let verified: boolean;
    try {
      // The user file first, then the tokens go (storage/schema.ts): stopped in between, the
      // token can only verify the same address again. Verified, the account's other links are
      // spent too; a token for an address the account left goes alone.
      verified = this.deps.users.markEmailVerified(row.user_id, row.email_lower);
      if (verified) await directory.deleteMailTokensOf(row.user_id, 'verify_email');
      else await directory.deleteMailToken(hash);
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, STORAGE_FAILURE.write);
    }
    if (!verified) throw invalidMailToken();
  }

  /**
   * The account a live token of that purpose is for, or undefined (cluster mode: the node serving
   * it answers the token). A read: nothing is spent.
   */
  async accountOfToken(token: string, purpose: MailTokenPurpose): Promise<string | undefined> {
    const row = await this.reading(() => this.deps.storage.directory.findLiveMailToken(hashMailToken(token), purpose, nowSeconds()));
    return row?.user_id;
  }

  /** `POST /auth/verify-email/resend`: a new link, sent before the answer. */
  async resendVerification(userId: string): Promise<void> {
    await this.resendPerAccount.consume(userId);
    const user = this.deps.users.privateUser(userId);
    if (user.email_verified) throw new AppError('email_already_verified', 'The email address is already verified');
    let mail: OutgoingMail;
    try {
      mail = await this.verificationMail(user.id, user);
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, STORAGE_FAILURE.write);
    }
    try {
      await this.deps.mailer.send(mail);
    } catch (error) {
      this.deps.logger.error({ err: error, kind: mail.kind, userId }, 'could not send a mail');
      throw new AppError('mail_not_sent', 'The verification mail could not be sent (the mail server or the outbox failed); try again later', {
        headers: { 'Retry-After': String(MAIL_RETRY_AFTER_S) },
      });
    }
  }

  /**
   * `POST /auth/password/forgot`: the same answer, after the same work, whether or not an account
   * has the address. Only the budget of the address asked for is spent before answering; finding the account,
   * storing a token and mailing it happen after the answer, so neither the answer nor its timing
   * depends on them. A failure there is logged.
   */
  async forgotPassword(email: string): Promise<void> {
    const address = email.toLowerCase();
    await this.forgotPerEmail.consume(address);
    this.later(async () => {
      const userId = await this.deps.users.idForLogin(address);
      if (userId === undefined) {
        this.deps.logger.debug('a password reset was asked for an address no account has');
        return;
      }
      // The account's card (the directory's index) has its name and address as spelt: the mail is
      // written without its file, which may be another node's to open.
      const user = await this.deps.users.cardOf(userId);
      const token = await this.issue(userId, user.email, 'reset_password', RESET_PASSWORD_TTL_MINUTES * 60);
      await this.send(passwordResetMail(user, { publicUrl: this.deps.publicUrl(), token }, RESET_PASSWORD_TTL_MINUTES), userId);
    }, 'a password-reset mail');
  }

  /**
   * `POST /auth/password/reset`: the new password is set, every session of the account ends (its
   * sockets are closed with 4401), and the token is spent with every other reset link of the
   * account. A password refused as weak spends nothing.
   */
  async resetPassword(body: ResetPasswordBody): Promise<void> {
    const { directory } = this.deps.storage;
    const hash = hashMailToken(body.token);
    const row = await this.reading(() => directory.findLiveMailToken(hash, 'reset_password', nowSeconds()));
    if (row === undefined) throw invalidMailToken();
    await this.resetPerAccount.consume(row.user_id);
    let changed: boolean;
    try {
      changed = await this.deps.users.resetPassword(row.user_id, row.email_lower, body.password, async () => {
        // One directory step, before the new hash is stored (storage/schema.ts): the token is
        // taken (of two resets with one token exactly one wins) and every session ends.
        const ended = await directory.spendResetToken(hash, row.user_id, nowSeconds());
        if (ended === null) throw invalidMailToken();
        this.deps.auth.announceEndedSessions(ended);
      });
    } catch (error) {
      throw unavailableOnStorageFailure(this.deps.logger, error, STORAGE_FAILURE.write);
    }
    if (!changed) {
      // Mailed to an address the account has left: it will never work, so it goes.
      await this.bestEffort(() => directory.deleteMailToken(hash));
      throw invalidMailToken();
    }
    this.deps.logger.info({ userId: row.user_id }, 'password reset: every session of the account ended');
  }

  /**
   * Shutdown, before storage closes: waits for background deliveries (each bounded by the
   * mailer's timeouts), at most `timeoutMs`; what is still running then is logged when it fails.
   */
  async close(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
      timer.unref();
    });
    await Promise.race([Promise.allSettled([...this.pending]), timeout]);
    clearTimeout(timer);
  }

  /** Users' announcement: the new address gets a link, the old one a notice; older links stop working. */
  private emailChanged(change: EmailChange): void {
    // Links mailed to the old address prove nothing about the new one (they are bound to their
    // address anyway: this only keeps them from lingering).
    this.deps.storage.directory.deleteMailTokensOf(change.userId).catch((error: unknown) => {
      this.deps.logger.warn({ err: error, userId: change.userId }, 'could not delete the mail tokens of an old address; they stay bound to it');
    });
    this.later(() => this.send(emailChangedMail(change, this.deps.publicUrl()), change.userId), 'an email-change notice');
    this.mailVerificationLater(change.userId, { username: change.username, email: change.email });
  }

  /** A verification link for `to.email`, mailed in the background (storing its token too: a registration is not held up). */
  private mailVerificationLater(userId: string, to: { username: string; email: string }): void {
    this.later(async () => this.send(await this.verificationMail(userId, to), userId), 'a verification mail');
  }

  /** Stores a new verification token for the address and writes its mail. */
  private async verificationMail(userId: string, to: { username: string; email: string }): Promise<OutgoingMail> {
    const token = await this.issue(userId, to.email, 'verify_email', VERIFY_EMAIL_TTL_HOURS * 3600);
    return verificationMail(to, { publicUrl: this.deps.publicUrl(), token }, VERIFY_EMAIL_TTL_HOURS);
  }

  /**
   * A new token of that purpose for the account, bound to `email`. The account's earlier ones keep
   * working until they expire or one of them is used (which spends them all): a mail that could
   * not be sent then never costs a link that was. How many an account can have is bounded by the
   * per-account budgets and the lifetimes. Expired tokens of everyone are swept on the way.
   */
  private async issue(userId: string, email: string, purpose: MailTokenPurpose, lifetimeSeconds: number): Promise<string> {
    const token = newMailToken(purpose);
    const now = nowSeconds();
    await this.deps.storage.directory.insertMailToken(
      { hash: hashMailToken(token), userId, purpose, emailLower: email.toLowerCase(), createdAt: now, expiresAt: now + lifetimeSeconds },
      now,
    );
    return token;
  }

  private async send(mail: OutgoingMail, userId: string): Promise<void> {
    try {
      await this.deps.mailer.send(mail);
    } catch (error) {
      this.deps.logger.error({ err: error, kind: mail.kind, userId }, 'could not send a mail');
    }
  }

  /**
   * Runs `job` after the current request is answered (the next turn of the event loop), and keeps
   * track of it until it ends. A failure is logged: nothing is left to answer.
   */
  private later(job: () => Promise<void>, what: string): void {
    const done = new Promise<void>((resolve) => {
      setImmediate(() => {
        // Through a promise, so that a job throwing before its first await is caught too.
        Promise.resolve()
          .then(job)
          .catch((error: unknown) => this.deps.logger.error({ err: error }, `could not prepare ${what}`))
          .finally(resolve);
      });
    });
    this.pending.add(done);
    void done.finally(() => this.pending.delete(done));
  }

  private async bestEffort(write: () => Promise<void>): Promise<void> {
    try {
      await write();
    } catch (error) {
      this.deps.logger.warn({ err: error }, 'could not delete a mail token that can no longer work');
    }
  }

  /** A read: a storage failure a retry can cure answers 503. */
  private reading<T>(read: () => Promise<T>): Promise<T> {
    return guardStorage(this.deps.logger, STORAGE_FAILURE.read, read);
  }
}

function invalidMailToken(): AppError {
  return new AppError('invalid_mail_token', 'The token is unknown, expired or already used', {
    errors: [{ path: 'token', message: 'Unknown, expired or already used' }],
  });
}
