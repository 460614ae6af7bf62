import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Transporter } from 'nodemailer';
import type SMTPTransport from 'nodemailer/lib/smtp-transport';
import type StreamTransport from 'nodemailer/lib/stream-transport';
import type { Logger } from 'pino';

/** One mail, as a feature writes it: the sender is the mailer's (`--mail-from`). */
export interface OutgoingMail {
  to: string;
  subject: string;
  text: string;
  html: string;
  /** What the mail is for (`verify-email`, `reset-password`…): named in the log line, never sent. */
  kind: string;
}

/**
 * Where mails go: an SMTP server (`--smtp-url`), or, without one, `.eml` files in the outbox
 * folder, so that a self-hoster without a mail server still has every mail (and can forward it).
 */
export interface Mailer {
  /** Hands the mail over (accepted by the SMTP server, or the whole file in the outbox); rejects if that failed. */
  send(mail: OutgoingMail): Promise<void>;
  /**
   * At start: whether mails can go where they go, said in one log line (an error line when not).
   * Never rejects: a mail server that is down must not keep the chat server from starting.
   */
  check(): Promise<void>;
  close(): void;
}

export interface MailerOptions {
  /** `smtp://` or `smtps://`; undefined writes mails to `outboxDir`. */
  smtpUrl: string | undefined;
  /** `--mail-from`. */
  from: string;
  outboxDir: string;
  logger: Logger;
}

/**
 * Bounds on each SMTP exchange (nodemailer's defaults are 2 and 10 minutes): a resend waits for
 * its mail, and shutdown waits for mails in flight, so a mail server that stopped answering must
 * fail them in seconds.
 */
const SMTP_TIMEOUTS = { connectionTimeout: 10_000, greetingTimeout: 10_000, socketTimeout: 30_000 } as const;

/**
 * nodemailer is loaded when a mailer first needs it, not with the server: without `--smtp-url` that
 * is the first mail, which many servers never send, and its modules hold ~3 MB for as long as the
 * process runs.
 */
function loadNodemailer(): Promise<typeof import('nodemailer')> {
  return import('nodemailer');
}

export function createMailer(options: MailerOptions): Mailer {
  return options.smtpUrl === undefined
    ? new OutboxMailer(options.outboxDir, options.from, options.logger)
    : new SmtpMailer(options.smtpUrl, options.from, options.logger);
}

/** What the log may say of an SMTP URL: everything but the credentials. */
function smtpUrlForLog(url: string): string {
  const parsed = new URL(url);
  parsed.username = '';
  parsed.password = '';
  return parsed.toString();
}

class SmtpMailer implements Mailer {
  /** Made at once: the start-up check needs it. */
  private readonly transport: Promise<Transporter<SMTPTransport.SentMessageInfo>>;
  private readonly where: string;

  constructor(
    url: string,
    from: string,
    private readonly logger: Logger,
  ) {
    // Mail content is ours, but nothing in it may make nodemailer read a file or fetch a URL.
    this.transport = loadNodemailer().then(({ createTransport }) =>
      createTransport({ url, ...SMTP_TIMEOUTS, disableFileAccess: true, disableUrlAccess: true }, { from }),
    );
    this.where = smtpUrlForLog(url);
  }

  async send(mail: OutgoingMail): Promise<void> {
    const info = await (await this.transport).sendMail(messageOf(mail));
    this.logger.info({ kind: mail.kind, to: mail.to, messageId: info.messageId }, 'mail sent');
  }

  async check(): Promise<void> {
    try {
      await (await this.transport).verify();
      this.logger.info({ smtp: this.where }, 'the SMTP server answered: mails will be sent through it');
    } catch (error) {
      this.logger.error({ smtp: this.where, reason: reasonOf(error) }, 'the SMTP server failed the start-up check: mails cannot be sent until it answers');
    }
  }

  close(): void {
    // A transport that could not be made has nothing to close (send and check said why).
    this.transport.then(
      (transport) => transport.close(),
      () => undefined,
    );
  }
}

class OutboxMailer implements Mailer {
  /** nodemailer builds the message (MIME, headers, encodings) exactly as it would for SMTP; made with the first mail. */
  private composer: Promise<Transporter<StreamTransport.SentMessageInfo>> | undefined;

  constructor(
    private readonly dir: string,
    private readonly from: string,
    private readonly logger: Logger,
  ) {
    // Made now, with the data folder: a mail later needs only its own file. Only the owner may read
    // it: the mails carry tokens that sign in to accounts.
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  async send(mail: OutgoingMail): Promise<void> {
    this.composer ??= loadNodemailer().then(({ createTransport }) =>
      createTransport({ streamTransport: true, buffer: true, newline: 'windows' }, { from: this.from }),
    );
    const info = await (await this.composer).sendMail(messageOf(mail));
    if (!Buffer.isBuffer(info.message)) throw new Error('the mail composer returned a stream instead of the whole message');
    // Sortable by time; the random part keeps two mails of one millisecond apart.
    const name = `${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(4).toString('hex')}.eml`;
    const file = path.join(this.dir, name);
    // Again, in case someone removed the folder while the server runs (a no-op otherwise).
    await fs.promises.mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeAtomically(file, info.message);
    this.logger.info({ kind: mail.kind, to: mail.to, subject: mail.subject, file }, 'mail written to the outbox');
  }

  async check(): Promise<void> {
    try {
      await fs.promises.access(this.dir, fs.constants.W_OK);
      this.logger.info({ outbox: this.dir }, 'no SMTP server set (--smtp-url): mails are written to the outbox');
    } catch (error) {
      this.logger.error({ outbox: this.dir, reason: reasonOf(error) }, 'no SMTP server set and the outbox cannot be written: mails cannot be sent');
    }
  }

  close(): void {
    this.composer?.then(
      (composer) => composer.close(),
      () => undefined,
    );
  }
}

/** RFC 5322's bound on a line; a 7bit body may use all of it. */
const MAX_LINE = 998;

/**
 * What nodemailer is given. The plain-text body goes as it is (7bit) whenever it can: nodemailer
 * would otherwise encode any body with a line over 76 characters (every link is one) as
 * quoted-printable, which breaks links and codes over several lines, and a self-hoster reading
 * the outbox with `less` or `grep` would see them broken. Text that is not ASCII is left to it.
 */
function messageOf(mail: OutgoingMail) {
  const lines = mail.text.split('\n');
  const plain = /^[\x20-\x7e\n]*$/.test(mail.text) && lines.every((line) => line.length <= MAX_LINE);
  const text = plain ? { raw: `Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n${lines.join('\r\n')}` } : mail.text;
  return { to: mail.to, subject: mail.subject, text, html: mail.html };
}

/**
 * Written under a hidden temporary name, flushed, then renamed into place: whoever reads the
 * outbox (a person, a script forwarding mails) sees a whole mail or none, never half of one.
 */
async function writeAtomically(file: string, bytes: Buffer): Promise<void> {
  const temporary = path.join(path.dirname(file), `.${path.basename(file)}.tmp`);
  try {
    const handle = await fs.promises.open(temporary, 'wx', 0o600);
    try {
      await handle.writeFile(bytes);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.promises.rename(temporary, file);
  } catch (error) {
    await fs.promises.rm(temporary, { force: true });
    throw error;
  }
}

function reasonOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
