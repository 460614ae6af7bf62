import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startServer, registerUser } from './helpers/server.ts';
import { OUTBOX_LINE, outboxMail, startSmtpServer, tokenIn } from './helpers/mail.ts';
import { captureLog } from './fixtures/log.ts';
import { ConfigError, loadConfig } from '../server/config.ts';
import type { ErrorBody, PrivateUser } from '../shared/index.ts';

/** Tests wait for mails and log lines as events: one that never comes fails the test instead of hanging the run. */
const WAITS = { timeout: 30_000 };
const SMTP_READY = 'the SMTP server answered: mails will be sent through it';
const SMTP_FAILED = 'the SMTP server failed the start-up check: mails cannot be sent until it answers';
const NOT_SENT = 'could not send a mail';
const MAIL_NOT_SENT = {
  error: 'Service unavailable',
  code: 'mail_not_sent',
  message: 'The verification mail could not be sent (the mail server or the outbox failed); try again later',
};

test('--smtp-url and --mail-from: flags, environment, one clear line for a bad value', () => {
  const defaults = loadConfig([], {});
  assert.equal(defaults.smtpUrl, undefined);
  assert.equal(defaults.mailFrom, 'noreply@localhost');
  const fromEnv = loadConfig([], { PLEXICHAT_SMTP_URL: 'smtps://user:pw@mail.example.org:465', PLEXICHAT_MAIL_FROM: 'Chat <chat@example.org>' });
  assert.equal(fromEnv.smtpUrl, 'smtps://user:pw@mail.example.org:465');
  assert.equal(fromEnv.mailFrom, 'Chat <chat@example.org>');
  assert.equal(loadConfig(['--smtp-url', 'smtp://mail.example.org:587', '--mail-from', 'chat@example.org'], {}).mailFrom, 'chat@example.org');
  const cases: [string[], RegExp][] = [
    [['--smtp-url', 'http://mail.example.org'], /^invalid --smtp-url \/ PLEXICHAT_SMTP_URL: must be an smtp:\/\/ or smtps:\/\/ URL$/],
    [['--smtp-url', 'not a url'], /--smtp-url/],
    [['--mail-from', 'nobody'], /--mail-from \/ PLEXICHAT_MAIL_FROM/],
    [['--mail-from', 'a@example.org\r\nBcc: victim@example.org'], /--mail-from/],
    [['--mail-from', 'Two <a@example.org> <b@example.org>'], /--mail-from/],
  ];
  for (const [argv, pattern] of cases) {
    assert.throws(
      () => loadConfig(argv, {}),
      (error: unknown) => error instanceof ConfigError && pattern.test(error.message) && !error.message.includes('\n'),
      argv.join(' '),
    );
  }
  // The password of an SMTP URL never ends up in the message of a refused value.
  assert.throws(
    () => loadConfig(['--smtp-url', 'ftp://user:hunter2@mail.example.org'], {}),
    (error: unknown) => error instanceof ConfigError && !error.message.includes('hunter2'),
  );
});

test('without --smtp-url: each mail is one .eml file in <data-dir>/outbox, readable by the owner only, and logged', WAITS, async () => {
  const log = captureLog();
  const srv = await startServer({}, { logger: log.logger });
  try {
    const mark = log.records.length;
    const user = await registerUser(srv.api);
    const mail = await outboxMail(log, mark, user.email, 'verify-email');
    const outbox = path.join(srv.dataDir, 'outbox');
    assert.equal(path.dirname(mail.file), outbox);
    assert.match(path.basename(mail.file), /^\d{4}-\d{2}-\d{2}T[\d-]+Z-[0-9a-f]{8}\.eml$/);
    assert.deepEqual(fs.readdirSync(outbox), [path.basename(mail.file)], 'nothing else: no temporary file left');
    assert.equal(fs.statSync(mail.file).mode & 0o777, 0o600);
    assert.equal(fs.statSync(outbox).mode & 0o777, 0o700);
    assert.match(mail.raw, /\r\n\r\n/, 'CRLF line ends, as RFC 5322 wants');
    assert.equal(mail.headers.get('mime-version'), '1.0');
    assert.match(mail.headers.get('content-type') ?? '', /^multipart\/alternative/);
    assert.match(mail.headers.get('message-id') ?? '', /^<.+@localhost>$/);
    assert.ok(mail.text.includes(`${srv.url}/auth/verify-email#token=`), 'links default to the address the server listens on');
    // Read as it is (less, grep), the file has the link and the code whole, each on its line.
    const token = tokenIn(mail, 'pxv_');
    assert.ok(mail.raw.includes(`\r\n${srv.url}/auth/verify-email#token=${token}\r\n`), mail.raw);
    assert.ok(mail.raw.includes(`\r\n    ${token}\r\n`));
    assert.ok(mail.html.includes('<a href='));
    const line = log.records.find((r) => r.msg === OUTBOX_LINE && r.file === mail.file);
    assert.deepEqual(
      { kind: line?.kind, to: line?.to, subject: line?.subject },
      { kind: 'verify-email', to: user.email, subject: 'Confirm your email address for Plexichat' },
    );
    assert.ok(!JSON.stringify(log.records).includes(token), 'no token in the log');
    assert.equal(log.count('no SMTP server set (--smtp-url): mails are written to the outbox'), 1);
  } finally {
    await srv.close();
  }
});

test('an outbox that cannot be written: registration still succeeds (logged), a resend answers 503 mail_not_sent', WAITS, async () => {
  const log = captureLog();
  const srv = await startServer({}, { logger: log.logger });
  try {
    const outbox = path.join(srv.dataDir, 'outbox');
    fs.rmSync(outbox, { recursive: true });
    fs.writeFileSync(outbox, 'a file where the folder should be');
    const failed = log.next(NOT_SENT);
    const user = await registerUser(srv.api);
    const record = await failed;
    assert.deepEqual({ kind: record.kind, userId: record.userId, level: record.level }, { kind: 'verify-email', userId: user.id, level: 50 });
    assert.equal((await srv.api.get('/users/@me', { token: user.token })).status, 200, 'the account exists');

    const res = await srv.api.post<ErrorBody>('/auth/verify-email/resend', { token: user.token });
    assert.deepEqual({ status: res.status, body: res.body }, { status: 503, body: MAIL_NOT_SENT });
    assert.equal(res.headers.get('retry-after'), '60');

    // Once the folder is back, the same request works.
    fs.rmSync(outbox);
    fs.mkdirSync(outbox);
    const mark = log.records.length;
    assert.equal((await srv.api.post('/auth/verify-email/resend', { token: user.token })).status, 204);
    const mail = await outboxMail(log, mark, user.email, 'verify-email');
    assert.equal((await srv.api.post('/auth/verify-email', { json: { token: tokenIn(mail, 'pxv_') } })).status, 204);
  } finally {
    await srv.close();
  }
});

test('with --smtp-url: checked at start (credentials kept out of the log), mails delivered over SMTP with text and HTML', WAITS, async () => {
  const smtp = await startSmtpServer();
  const log = captureLog();
  const ready = log.next(SMTP_READY);
  const smtpUrl = smtp.url.replace('smtp://', 'smtp://mailer:s3cret@');
  const srv = await startServer({ smtpUrl, mailFrom: 'Chat <chat@example.org>' }, { logger: log.logger });
  try {
    const line = await ready;
    assert.equal(line.smtp, smtp.url, 'the URL without its credentials');
    const user = await registerUser(srv.api);
    const message = await smtp.message(0, user.email);
    assert.equal(message.from, 'chat@example.org');
    assert.deepEqual(message.to, [user.email]);
    assert.equal(message.mail.subject, 'Confirm your email address for Plexichat');
    assert.equal(message.mail.from, 'Chat <chat@example.org>');
    const token = tokenIn(message.mail, 'pxv_');
    assert.ok(message.mail.html.includes(`${srv.url}/auth/verify-email#token=${token}`));
    assert.equal((await srv.api.post('/auth/verify-email', { json: { token } })).status, 204);
    assert.equal((await srv.api.get<PrivateUser>('/users/@me', { token: user.token })).body.email_verified, true);
    assert.ok(!JSON.stringify(log.records).includes('s3cret'), 'the SMTP password is never logged');
    assert.equal(fs.existsSync(path.join(srv.dataDir, 'outbox')), false, 'no outbox when mails go over SMTP');
    assert.equal(log.count('no --public-url: links in mails lead to the address the server listens on; set --public-url to the one users reach'), 1);
  } finally {
    await srv.close();
    await smtp.close();
  }
});

test('forgot-password is answered before the mail server has accepted the mail, in about the same time for an unknown address', WAITS, async () => {
  // The mail server holds every message unanswered: a request that waited for its mail would hang.
  const smtp = await startSmtpServer({ hold: true });
  const srv = await startServer({ smtpUrl: smtp.url });
  try {
    const users = [await registerUser(srv.api), await registerUser(srv.api), await registerUser(srv.api)];
    await smtp.message(0, users[2]!.email);
    const mark = smtp.received.length;
    const first = await srv.api.post('/auth/password/forgot', { json: { email: users[0]!.email } });
    assert.equal(first.status, 204);
    const held = await smtp.message(mark, users[0]!.email);
    assert.ok(smtp.held >= 1, 'the mail server has not accepted it yet');
    assert.equal(held.mail.subject, 'Reset your Plexichat password');

    const time = async (email: string) => {
      const started = performance.now();
      const res = await srv.api.post('/auth/password/forgot', { json: { email } });
      assert.equal(res.status, 204);
      return performance.now() - started;
    };
    const known: number[] = [];
    const unknown: number[] = [];
    for (let i = 0; i < 12; i += 1) {
      known.push(await time(users[i % 3]!.email));
      unknown.push(await time(`nobody-${i}@example.com`));
    }
    const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
    const ratio = median(known) / median(unknown);
    assert.ok(ratio > 0.33 && ratio < 3, `known/unknown forgot-password time ratio ${ratio.toFixed(2)}`);
    smtp.release();
  } finally {
    smtp.release();
    await srv.close();
    await smtp.close();
  }
});

test('a mail server that refuses: one error line at start, registration and forgot-password still answer, resend answers 503', WAITS, async () => {
  const smtp = await startSmtpServer({ refuse: true });
  const log = captureLog();
  const failedCheck = log.next(SMTP_FAILED);
  const srv = await startServer({ smtpUrl: smtp.url.replace('smtp://', 'smtp://mailer:s3cret@') }, { logger: log.logger });
  try {
    const line = await failedCheck;
    assert.equal(line.level, 50);
    assert.equal(line.smtp, smtp.url);
    assert.match(String(line.reason), /554|not accepting/);
    assert.equal(log.records.filter((r) => r.level >= 50).length, 1, 'exactly one error line at start');

    const registrationFailed = log.next(NOT_SENT);
    const user = await registerUser(srv.api);
    assert.equal((await registrationFailed).kind, 'verify-email');

    const res = await srv.api.post<ErrorBody>('/auth/verify-email/resend', { token: user.token });
    assert.deepEqual({ status: res.status, body: res.body }, { status: 503, body: MAIL_NOT_SENT });
    assert.equal(res.headers.get('retry-after'), '60');

    const resetFailed = log.next(NOT_SENT);
    assert.equal((await srv.api.post('/auth/password/forgot', { json: { email: user.email } })).status, 204);
    const record = await resetFailed;
    assert.deepEqual({ kind: record.kind, userId: record.userId }, { kind: 'reset-password', userId: user.id });
    assert.ok(!JSON.stringify(log.records).includes('s3cret'));
  } finally {
    await srv.close();
    await smtp.close();
  }
});
