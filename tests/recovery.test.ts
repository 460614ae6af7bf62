import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import path from 'node:path';
import Database from 'better-sqlite3';
import { startServer, registerUser, type TestServer, type TestUser } from './helpers/server.ts';
import { outboxMail, tokenIn, type ParsedMail } from './helpers/mail.ts';
import { closeEvent, rawSocket } from './helpers/sync.ts';
import { captureLog, type CapturedLog } from './fixtures/log.ts';
import { CLOSE_CODES, type AuthResponse, type ErrorBody, type PrivateUser } from '../shared/index.ts';
import { ApiError, PlexichatClient } from '../client-lib/index.ts';

/** Tests wait for mails as events (log lines): one that never comes fails the test instead of hanging the run. */
const WAITS = { timeout: 30_000 };
const PUBLIC_URL = 'https://chat.example.org/px';
const MAIL_FROM = 'Example Chat <chat@example.org>';

let srv: TestServer;
let log: CapturedLog;
before(async () => {
  log = captureLog();
  srv = await startServer({ publicUrl: PUBLIC_URL, mailFrom: MAIL_FROM }, { logger: log.logger });
});
after(() => srv.close());

const INVALID_TOKEN = {
  error: 'Invalid input',
  code: 'invalid_mail_token',
  message: 'The token is unknown, expired or already used',
  errors: [{ path: 'token', message: 'Unknown, expired or already used' }],
};

/** Registers a user and reads the verification mail their registration sent. */
async function registered(server = srv, captured = log): Promise<{ user: TestUser; mail: ParsedMail }> {
  const mark = captured.records.length;
  const user = await registerUser(server.api);
  return { user, mail: await outboxMail(captured, mark, user.email, 'verify-email') };
}

/** Asks for a password reset and reads the mail it sends (after the answer: it is awaited here by its log line). */
async function resetMail(email: string, server = srv, captured = log): Promise<ParsedMail> {
  const mark = captured.records.length;
  const res = await server.api.post('/auth/password/forgot', { json: { email } });
  assert.equal(res.status, 204, res.text);
  return outboxMail(captured, mark, email.toLowerCase(), 'reset-password');
}

function me(token: string, server = srv) {
  return server.api.get<PrivateUser>('/users/@me', { token });
}

async function expectError(res: Promise<{ status: number; body: unknown }>, status: number, body: unknown): Promise<void> {
  const answer = await res;
  assert.deepEqual({ status: answer.status, body: answer.body }, { status, body });
}

/** Runs `sql` on the server's directory (another connection, as an operator would). */
function onDirectory(sql: string, ...args: unknown[]): void {
  const db = new Database(path.join(srv.dataDir, 'directory.sqlite'));
  try {
    db.prepare(sql).run(...args);
  } finally {
    db.close();
  }
}

test('registration mails a verification link built from --public-url, in text and HTML, from --mail-from', WAITS, async () => {
  const { user, mail } = await registered();
  assert.equal(mail.to, user.email);
  assert.equal(mail.from, MAIL_FROM);
  assert.equal(mail.subject, 'Confirm your email address for Plexichat');
  const token = tokenIn(mail, 'pxv_');
  assert.match(token, /^pxv_[A-Za-z0-9_-]{43}$/);
  const link = `${PUBLIC_URL}/auth/verify-email#token=${token}`;
  assert.ok(mail.text.includes(link), mail.text);
  assert.ok(mail.html.includes(`<a href="${link}">`), mail.html);
  assert.ok(mail.text.includes(`Hi ${user.username},`));
  assert.ok(mail.text.includes('24 hours'));
  assert.equal((await me(user.token)).body.email_verified, false);
});

test('verify-email: 204 and email_verified is true; the token works once', WAITS, async () => {
  const { user, mail } = await registered();
  const token = tokenIn(mail, 'pxv_');
  const res = await srv.api.post('/auth/verify-email', { json: { token } });
  assert.equal(res.status, 204);
  assert.equal(res.text, '');
  assert.equal((await me(user.token)).body.email_verified, true);
  await expectError(srv.api.post('/auth/verify-email', { json: { token } }), 400, INVALID_TOKEN);
});

test('unknown, malformed, expired and wrong-kind tokens are all the same 400', WAITS, async () => {
  const { user, mail } = await registered();
  const verifyToken = tokenIn(mail, 'pxv_');
  const resetToken = tokenIn(await resetMail(user.email), 'pxr_');
  for (const token of [`pxv_${'A'.repeat(43)}`, 'x', verifyToken.slice(0, -1), `${verifyToken}A`, resetToken]) {
    await expectError(srv.api.post('/auth/verify-email', { json: { token } }), 400, INVALID_TOKEN);
  }
  await expectError(srv.api.post('/auth/password/reset', { json: { token: verifyToken, password: 'a brand new passphrase' } }), 400, INVALID_TOKEN);
  // A wrong use spends nothing: the verification token still verifies.
  assert.equal((await srv.api.post('/auth/verify-email', { json: { token: verifyToken } })).status, 204);

  // Expired: refused, and nothing changes.
  onDirectory("UPDATE mail_tokens SET expires_at = unixepoch() - 1 WHERE user_id = ? AND purpose = 'reset_password'", user.id);
  await expectError(srv.api.post('/auth/password/reset', { json: { token: resetToken, password: 'a brand new passphrase' } }), 400, INVALID_TOKEN);
  assert.equal((await srv.api.post('/auth/login', { json: { login: user.username, password: user.password } })).status, 200);
  const { user: late, mail: lateMail } = await registered();
  onDirectory('UPDATE mail_tokens SET expires_at = unixepoch() WHERE user_id = ?', late.id);
  await expectError(srv.api.post('/auth/verify-email', { json: { token: tokenIn(lateMail, 'pxv_') } }), 400, INVALID_TOKEN);
  assert.equal((await me(late.token)).body.email_verified, false);
});

test('validation: bodies are checked by their schemas', WAITS, async () => {
  const invalid = async (path: string, json: unknown) => {
    const res = await srv.api.post<ErrorBody>(path, { json });
    assert.equal(res.status, 400, `${path} ${JSON.stringify(json)}`);
    assert.equal(res.body.code, 'invalid_input');
    assert.equal(res.body.error, 'Invalid input');
  };
  await invalid('/auth/verify-email', {});
  await invalid('/auth/verify-email', { token: 'x', extra: 1 });
  await invalid('/auth/verify-email', { token: 'x'.repeat(257) });
  await invalid('/auth/password/forgot', { email: 'not an address' });
  await invalid('/auth/password/forgot', {});
  await invalid('/auth/password/reset', { token: 'x' });
  await invalid('/auth/password/reset', { token: 'x', password: 'p'.repeat(129) });
});

test('tokens are random and only their SHA-256 is stored', WAITS, async () => {
  const { user, mail } = await registered();
  const token = tokenIn(mail, 'pxv_');
  const db = new Database(path.join(srv.dataDir, 'directory.sqlite'), { readonly: true });
  try {
    const rows = db.prepare('SELECT * FROM mail_tokens WHERE user_id = ?').all(user.id) as { token_hash: Buffer }[];
    assert.equal(rows.length, 1);
    assert.deepEqual(rows[0]?.token_hash, createHash('sha256').update(token).digest());
    assert.ok(!JSON.stringify(db.prepare('SELECT * FROM mail_tokens').all()).includes(token.slice(4)));
  } finally {
    db.close();
  }
  const { mail: other } = await registered();
  assert.notEqual(tokenIn(other, 'pxv_'), token);
});

test('resend: a new link (earlier ones work until one is used), five an hour per account, 409 once verified', WAITS, async () => {
  const { user, mail } = await registered();
  const first = tokenIn(mail, 'pxv_');
  const mark = log.records.length;
  const res = await srv.api.post('/auth/verify-email/resend', { token: user.token });
  assert.equal(res.status, 204);
  // The mail is written before the answer: it is in the outbox already.
  assert.equal(log.records.slice(mark).filter((r) => r.msg === 'mail written to the outbox' && r.to === user.email).length, 1);
  const second = tokenIn(await outboxMail(log, mark, user.email, 'verify-email'), 'pxv_');
  assert.notEqual(second, first);
  assert.equal((await srv.api.post('/auth/verify-email', { json: { token: first } })).status, 204);
  await expectError(srv.api.post('/auth/verify-email', { json: { token: second } }), 400, INVALID_TOKEN);
  await expectError(srv.api.post('/auth/verify-email/resend', { token: user.token }), 409, {
    error: 'Already exists',
    code: 'email_already_verified',
    message: 'The email address is already verified',
  });
  await expectError(srv.api.post('/auth/verify-email/resend'), 401, {
    error: 'Unauthorized',
    code: 'unauthorized',
    message: 'A valid bearer token is required',
  });

  // Five resends an hour per account (the 409 above was the second); the sixth is refused.
  const { user: eager } = await registered();
  for (let i = 0; i < 5; i += 1) assert.equal((await srv.api.post('/auth/verify-email/resend', { token: eager.token })).status, 204);
  const refused = await srv.api.post<ErrorBody>('/auth/verify-email/resend', { token: eager.token });
  assert.equal(refused.status, 429);
  assert.equal(refused.body.code, 'too_many_requests');
  assert.equal(refused.body.error, 'Too many requests');
  assert.ok(Number(refused.headers.get('retry-after')) > 3000, 'about an hour');
  assert.equal(refused.headers.get('x-ratelimit-limit'), '5');
  assert.equal(refused.headers.get('x-ratelimit-remaining'), '0');
  const other = await srv.api.post('/auth/verify-email/resend', { token: (await registered()).user.token });
  assert.equal(other.status, 204, 'another account from the same address is not affected');
});

test('an email change mails the new address a link and the old one a notice; links to the old address stop working', WAITS, async () => {
  const { user, mail } = await registered();
  const oldToken = tokenIn(mail, 'pxv_');
  const oldReset = tokenIn(await resetMail(user.email), 'pxr_');
  const newEmail = `New.${user.email}`;
  const mark = log.records.length;
  const res = await srv.api.patch<PrivateUser>('/users/@me', { token: user.token, json: { email: newEmail } });
  assert.equal(res.status, 200);
  assert.equal(res.body.email_verified, false);

  const notice = await outboxMail(log, mark, user.email, 'email-changed');
  assert.equal(notice.subject, 'Your Plexichat email address was changed');
  assert.ok(notice.text.includes(`changed to N***@${newEmail.split('@')[1]}`), notice.text);
  assert.ok(!notice.raw.includes(newEmail), 'the new address is not handed to whoever reads the old mailbox');
  assert.ok(!/pxv_|pxr_/.test(notice.text), 'no token in the notice');
  const verification = await outboxMail(log, mark, newEmail, 'verify-email');
  const newToken = tokenIn(verification, 'pxv_');

  await expectError(srv.api.post('/auth/verify-email', { json: { token: oldToken } }), 400, INVALID_TOKEN);
  await expectError(srv.api.post('/auth/password/reset', { json: { token: oldReset, password: 'a brand new passphrase' } }), 400, INVALID_TOKEN);
  assert.equal((await srv.api.post('/auth/verify-email', { json: { token: newToken } })).status, 204);
  const after = await me(user.token);
  assert.equal(after.body.email, newEmail);
  assert.equal(after.body.email_verified, true);
  const recased = await srv.api.patch<PrivateUser>('/users/@me', { token: user.token, json: { email: newEmail.toUpperCase() } });
  assert.equal(recased.body.email_verified, true, 'the same address in another case stays verified');
});

test('the same address in another case is no change: its pending link keeps working', WAITS, async () => {
  const { user, mail } = await registered();
  const res = await srv.api.patch<PrivateUser>('/users/@me', { token: user.token, json: { email: user.email.toUpperCase() } });
  assert.equal(res.status, 200);
  // An announced change would have deleted the account's links (synchronously, in the PATCH).
  assert.equal((await srv.api.post('/auth/verify-email', { json: { token: tokenIn(mail, 'pxv_') } })).status, 204);
  const after = await me(user.token);
  assert.equal(after.body.email, user.email.toUpperCase());
  assert.equal(after.body.email_verified, true);
});

test('a verification link for an address the account has left verifies nothing', WAITS, async () => {
  const { user, mail } = await registered();
  const token = tokenIn(mail, 'pxv_');
  // Put back by hand what the change deletes: the token alone must not verify the new address.
  const db = new Database(path.join(srv.dataDir, 'directory.sqlite'), { readonly: true });
  const saved = db.prepare('SELECT * FROM mail_tokens WHERE user_id = ?').get(user.id) as Record<string, unknown>;
  db.close();
  const mark = log.records.length;
  assert.equal((await srv.api.patch('/users/@me', { token: user.token, json: { email: `moved-${user.email}` } })).status, 200);
  await outboxMail(log, mark, `moved-${user.email}`, 'verify-email');
  onDirectory(
    'INSERT INTO mail_tokens (token_hash, user_id, purpose, email_lower, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)',
    saved.token_hash,
    saved.user_id,
    saved.purpose,
    saved.email_lower,
    saved.created_at,
    saved.expires_at,
  );
  await expectError(srv.api.post('/auth/verify-email', { json: { token } }), 400, INVALID_TOKEN);
  assert.equal((await me(user.token)).body.email_verified, false);
});

test('forgot-password answers the same for an unknown address, and mails only the account', WAITS, async () => {
  const { user } = await registered();
  const mark = log.records.length;
  const known = await srv.api.post('/auth/password/forgot', { json: { email: user.email.toUpperCase() } });
  const unknown = await srv.api.post('/auth/password/forgot', { json: { email: 'nobody-at-all@example.com' } });
  const visible = (res: typeof known) => ({
    status: res.status,
    text: res.text,
    headers: [...res.headers].filter(([name]) => !['date', 'x-request-id'].includes(name)),
  });
  assert.deepEqual(visible(known), visible(unknown));
  assert.equal(known.status, 204);
  const mail = await outboxMail(log, mark, user.email, 'reset-password');
  assert.equal(mail.subject, 'Reset your Plexichat password');
  const token = tokenIn(mail, 'pxr_');
  assert.ok(mail.text.includes(`${PUBLIC_URL}/auth/password/reset#token=${token}`));
  assert.ok(mail.text.includes('30 minutes'));
  // Both requests' work is done once a later request's is: nothing went to the unknown address.
  await resetMail((await registered()).user.email);
  assert.equal(log.records.filter((r) => r.msg === 'mail written to the outbox' && r.to === 'nobody-at-all@example.com').length, 0);
});

test('reset: new password set, every session and sync socket of the account ended, token spent, address verified', WAITS, async () => {
  const { user } = await registered();
  const second = await srv.api.post<AuthResponse>('/auth/login', { json: { login: user.username, password: user.password } });
  const { ws } = await rawSocket(`${srv.url}/sync/settings?token=${second.body.token}`);
  const closed = closeEvent(ws);
  const token = tokenIn(await resetMail(user.email), 'pxr_');

  const res = await srv.api.post('/auth/password/reset', { json: { token, password: 'a brand new passphrase' } });
  assert.equal(res.status, 204);
  assert.equal(res.text, '');
  assert.equal((await closed).code, CLOSE_CODES.SESSION_REVOKED, 'its sync socket is closed with 4401');
  for (const session of [user.token, second.body.token]) {
    await expectError(me(session), 401, { error: 'Unauthorized', code: 'unauthorized', message: 'A valid bearer token is required' });
  }
  await expectError(srv.api.post('/auth/login', { json: { login: user.username, password: user.password } }), 401, {
    error: 'Invalid credentials',
    code: 'invalid_credentials',
    message: 'Wrong login or password',
  });
  const login = await srv.api.post<AuthResponse>('/auth/login', { json: { login: user.username, password: 'a brand new passphrase' } });
  assert.equal(login.status, 200);
  assert.equal(login.body.user.email_verified, true, 'the reset mail reached the address');
  await expectError(srv.api.post('/auth/password/reset', { json: { token, password: 'yet another passphrase' } }), 400, INVALID_TOKEN);
});

test('reset: a weak password is refused like a change, and spends nothing', WAITS, async () => {
  const { user } = await registered();
  const token = tokenIn(await resetMail(user.email), 'pxr_');
  for (const [password, message] of [
    ['short', 'Password must be at least 8 characters'],
    [user.username, 'Password must not be the username'],
    ['zzzzzzzzzz', 'Password must not be one repeated character'],
  ] as const) {
    await expectError(srv.api.post('/auth/password/reset', { json: { token, password } }), 400, {
      error: 'Weak password',
      code: 'weak_password',
      message,
      errors: [{ path: 'password', message }],
    });
  }
  assert.equal((await me(user.token)).status, 200, 'still signed in');
  assert.equal((await srv.api.post('/auth/password/reset', { json: { token, password: 'a strong passphrase' } })).status, 204);
});

test('reset: one link used spends them all; of two resets racing with one token, exactly one wins', WAITS, async () => {
  const { user } = await registered();
  const older = tokenIn(await resetMail(user.email), 'pxr_');
  const newer = tokenIn(await resetMail(user.email), 'pxr_');
  const answers = await Promise.all(
    ['first passphrase', 'second passphrase', 'third passphrase'].map((password) => srv.api.post('/auth/password/reset', { json: { token: newer, password } })),
  );
  assert.deepEqual(answers.map((a) => a.status).sort(), [204, 400, 400]);
  for (const loser of answers.filter((a) => a.status === 400)) assert.deepEqual(loser.body, INVALID_TOKEN);
  await expectError(srv.api.post('/auth/password/reset', { json: { token: older, password: 'a brand new passphrase' } }), 400, INVALID_TOKEN);
});

test('forgot-password is limited per address asked for, the same whether or not an account has it', WAITS, async () => {
  const { user } = await registered();
  for (const email of [user.email, 'no-such-account@example.com']) {
    for (let i = 0; i < 5; i += 1) assert.equal((await srv.api.post('/auth/password/forgot', { json: { email } })).status, 204, `${email} #${i + 1}`);
    const refused = await srv.api.post<ErrorBody>('/auth/password/forgot', { json: { email: email.toUpperCase() } });
    assert.equal(refused.status, 429, email);
    assert.equal(refused.body.code, 'too_many_requests');
    assert.equal(refused.headers.get('x-ratelimit-limit'), '5');
    assert.ok(Number(refused.headers.get('retry-after')) > 3000);
  }
  assert.equal((await srv.api.post('/auth/password/forgot', { json: { email: 'someone-else@example.com' } })).status, 204);
});

test('a reset token is limited per account: ten tries an hour', WAITS, async () => {
  const { user } = await registered();
  const token = tokenIn(await resetMail(user.email), 'pxr_');
  for (let i = 0; i < 10; i += 1) assert.equal((await srv.api.post('/auth/password/reset', { json: { token, password: 'short' } })).status, 400);
  const refused = await srv.api.post<ErrorBody>('/auth/password/reset', { json: { token, password: 'a strong passphrase' } });
  assert.equal(refused.status, 429);
  assert.equal(refused.headers.get('x-ratelimit-limit'), '10');
});

test('per client address, the four routes share --auth-rate-limit a minute', WAITS, async () => {
  const limited = await startServer({ authRateLimit: 3 });
  try {
    const user = await registerUser(limited.api);
    assert.equal((await limited.api.post('/auth/password/forgot', { json: { email: 'a@example.com' } })).status, 204);
    assert.equal((await limited.api.post('/auth/verify-email', { json: { token: 'x' } })).status, 400);
    assert.equal((await limited.api.post('/auth/password/reset', { json: { token: 'x', password: 'a strong passphrase' } })).status, 400);
    const refused = await limited.api.post<ErrorBody>('/auth/verify-email/resend', { token: user.token });
    assert.equal(refused.status, 429);
    assert.equal(refused.body.code, 'too_many_requests');
    assert.equal(refused.headers.get('x-ratelimit-limit'), '3');
    assert.ok(Number(refused.headers.get('retry-after')) >= 1);
    assert.equal((await limited.api.post('/auth/password/forgot', { json: { email: 'b@example.com' } })).status, 429);
  } finally {
    await limited.close();
  }
});

test('the pages the links open: static HTML whose script the CSP allows by hash; opening one spends nothing', WAITS, async () => {
  const { user, mail } = await registered();
  const token = tokenIn(mail, 'pxv_');
  for (const pagePath of ['/auth/verify-email', '/auth/password/reset']) {
    const res = await srv.api.get(`${pagePath}?token=${token}`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'text/html; charset=utf-8');
    assert.equal(res.headers.get('referrer-policy'), 'no-referrer');
    assert.ok(!res.text.includes(token), 'the page never carries a token');
    const csp = res.headers.get('content-security-policy') ?? '';
    const hashOf = (tag: string) => {
      const content = new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`).exec(res.text)?.[1];
      assert.ok(content !== undefined, `a <${tag}> in ${pagePath}`);
      return `'sha256-${createHash('sha256').update(content).digest('base64')}'`;
    };
    assert.ok(csp.includes(`script-src ${hashOf('script')}`), csp);
    assert.ok(csp.includes(`style-src ${hashOf('style')}`), csp);
    assert.ok(csp.startsWith("default-src 'none'"));
    assert.ok(csp.includes("connect-src 'self'"));
  }
  assert.equal((await srv.api.post('/auth/verify-email', { json: { token } })).status, 204);
  assert.equal((await me(user.token)).body.email_verified, true);
});

test('client-lib: verifyEmail, resendVerification, forgotPassword, resetPassword', WAITS, async () => {
  const { user, mail } = await registered();
  const client = new PlexichatClient({ baseUrl: srv.url, token: user.token });
  await assert.rejects(client.verifyEmail({ token: 'nonsense' }), (error: unknown) => error instanceof ApiError && error.code === 'invalid_mail_token');
  await client.verifyEmail({ token: tokenIn(mail, 'pxv_') });
  assert.equal((await client.me()).email_verified, true);
  await assert.rejects(
    client.resendVerification(),
    (error: unknown) => error instanceof ApiError && error.status === 409 && error.code === 'email_already_verified',
  );

  const anonymous = new PlexichatClient({ baseUrl: srv.url });
  const mark = log.records.length;
  await anonymous.forgotPassword({ email: user.email });
  const token = tokenIn(await outboxMail(log, mark, user.email, 'reset-password'), 'pxr_');
  await anonymous.resetPassword({ token, password: 'set by client-lib' });
  await assert.rejects(client.me(), (error: unknown) => error instanceof ApiError && error.status === 401);
  await anonymous.login({ login: user.email, password: 'set by client-lib' });

  const { user: fresh } = await registered();
  await new PlexichatClient({ baseUrl: srv.url, token: fresh.token }).resendVerification();
});
