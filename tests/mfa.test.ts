import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import { Secret, TOTP } from 'otpauth';
import { startServer, registerUser, type Api, type TestServer, type TestUser } from './helpers/server.ts';
import { ApiError, PlexichatClient } from '../client-lib/index.ts';
import { ConfigError, loadConfig } from '../server/config.ts';
import type { AuthResponse, BackupCodesResponse, ErrorBody, LoginResponse, PrivateUser, TotpSetupResponse } from '../shared/index.ts';

/**
 * Two-factor authentication over real HTTP. Codes are computed here from the secret the server
 * answered, for whatever instant a test needs: the shared server's clock is the test's own
 * (`clock.now`), so a test can stand in the middle of a time step and move a step or five minutes on
 * without waiting. The client-lib test runs on the real clock.
 */
const STEP_MS = 30_000;
/** A fixed instant in the middle of a 30 s step, so ±1 step never straddles a boundary by accident. */
const T0 = Math.floor(Date.UTC(2026, 0, 15) / STEP_MS) * STEP_MS + STEP_MS / 2;

const clock = { now: T0 };
let srv: TestServer;
before(async () => {
  srv = await startServer({ totpAccountRateLimit: 0, totpAddressRateLimit: 0 }, { clock: () => clock.now });
});
after(() => srv.close());

function codeAt(secret: string, ms: number): string {
  return TOTP.generate({ secret: Secret.fromBase32(secret), algorithm: 'SHA1', digits: 6, period: 30, timestamp: ms });
}

/** A 6-digit code that is none of the codes of the steps around `ms` (a wrong code for sure). */
function wrongCodeAt(secret: string, ms: number): string {
  const near = new Set([-2, -1, 0, 1, 2].map((k) => codeAt(secret, ms + k * STEP_MS)));
  for (let n = 0; ; n += 1) {
    const candidate = String(n).padStart(6, '0');
    if (!near.has(candidate)) return candidate;
  }
}

const INVALID_SECOND_FACTOR = {
  error: 'Invalid credentials',
  code: 'invalid_second_factor',
  message: 'Wrong code, or the sign-in ticket is not valid (unknown, used, expired or out of attempts): sign in with the password again if this persists',
};
const INVALID_TOTP_CODE = {
  error: 'Invalid input',
  code: 'invalid_totp_code',
  message: 'code is incorrect, already used, or older than the last code used',
  errors: [{ path: 'code', message: 'Incorrect code' }],
};
const INVALID_PASSWORD = {
  error: 'Invalid input',
  code: 'invalid_password',
  message: 'password is incorrect',
  errors: [{ path: 'password', message: 'Incorrect password' }],
};
const ALREADY_ENABLED = { error: 'Already exists', code: 'totp_already_enabled', message: '2FA is already enabled: disable it first to set up a new secret' };
const NOT_ENABLED = { error: 'Invalid input', code: 'totp_not_enabled', message: '2FA is not enabled on this account' };
const NOT_SET_UP = {
  error: 'Invalid input',
  code: 'totp_not_set_up',
  message: 'There is no 2FA setup to enable: call POST /users/@me/totp/setup first',
};
const INVALID_CREDENTIALS = { error: 'Invalid credentials', code: 'invalid_credentials', message: 'Wrong login or password' };

const BACKUP_CODE = /^[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4}){3}$/;

function answer(res: { status: number; body: unknown }) {
  return { status: res.status, body: res.body };
}

async function setup(api: Api, user: TestUser): Promise<TotpSetupResponse> {
  const res = await api.post<TotpSetupResponse>('/users/@me/totp/setup', { token: user.token, json: { password: user.password } });
  assert.equal(res.status, 200, res.text);
  return res.body;
}

/** Sets up and enables 2FA at the server's current time; the code used is of the current step. */
async function enable(api: Api, user: TestUser, now: number): Promise<{ secret: string; backupCodes: string[] }> {
  const { secret } = await setup(api, user);
  const res = await api.post<BackupCodesResponse>('/users/@me/totp/enable', { token: user.token, json: { code: codeAt(secret, now) } });
  assert.equal(res.status, 200, res.text);
  return { secret, backupCodes: res.body.backup_codes };
}

async function ticketFor(api: Api, user: TestUser): Promise<string> {
  const res = await api.post<LoginResponse>('/auth/login', { json: { login: user.username, password: user.password } });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(Object.keys(res.body).sort(), ['mfa_required', 'ticket'], 'a ticket and nothing else: no token');
  assert.ok('mfa_required' in res.body && res.body.mfa_required === true);
  return res.body.ticket;
}

function loginTotp(api: Api, json: Record<string, unknown>) {
  return api.post<AuthResponse>('/auth/login/totp', { json });
}

async function me(api: Api, token: string): Promise<PrivateUser> {
  const res = await api.get<PrivateUser>('/users/@me', { token });
  assert.equal(res.status, 200, res.text);
  return res.body;
}

test('setup answers a base32 secret and its otpauth URL, pending until enabled; a new setup replaces a pending one', async () => {
  clock.now = T0;
  const user = await registerUser(srv.api);
  const wrong = await srv.api.post('/users/@me/totp/setup', { token: user.token, json: { password: 'not the password' } });
  assert.deepEqual(answer(wrong), { status: 400, body: INVALID_PASSWORD });

  const first = await setup(srv.api, user);
  assert.match(first.secret, /^[A-Z2-7]{32}$/, '160 bits of base32');
  const url = new URL(first.otpauth_url);
  assert.equal(url.protocol, 'otpauth:');
  assert.equal(url.host, 'totp');
  assert.equal(decodeURIComponent(url.pathname), `/Plexichat:${user.username}`);
  assert.deepEqual(Object.fromEntries(url.searchParams), { issuer: 'Plexichat', secret: first.secret, algorithm: 'SHA1', digits: '6', period: '30' });

  assert.equal((await me(srv.api, user.token)).totp_enabled, false, 'pending is not enabled');
  const login = await srv.api.post<AuthResponse>('/auth/login', { json: { login: user.username, password: user.password } });
  assert.equal(login.status, 200);
  assert.equal(typeof login.body.token, 'string', 'a pending setup asks no code at login');

  const second = await setup(srv.api, user);
  assert.notEqual(second.secret, first.secret);
  const stale = await srv.api.post('/users/@me/totp/enable', { token: user.token, json: { code: codeAt(first.secret, clock.now) } });
  assert.deepEqual(answer(stale), { status: 400, body: INVALID_TOTP_CODE }, 'the replaced secret is gone');
  const enabled = await srv.api.post('/users/@me/totp/enable', { token: user.token, json: { code: codeAt(second.secret, clock.now) } });
  assert.equal(enabled.status, 200, enabled.text);
});

test('enable: a wrong code is 400; the right one answers 10 distinct backup codes of 80 bits and turns totp_enabled on', async () => {
  clock.now = T0;
  const user = await registerUser(srv.api);
  const none = await srv.api.post('/users/@me/totp/enable', { token: user.token, json: { code: '123456' } });
  assert.deepEqual(answer(none), { status: 400, body: NOT_SET_UP });

  const { secret } = await setup(srv.api, user);
  for (const code of [wrongCodeAt(secret, clock.now), codeAt(secret, clock.now - 2 * STEP_MS), '12345', 'abcdef', '']) {
    const res = await srv.api.post('/users/@me/totp/enable', { token: user.token, json: { code } });
    assert.deepEqual(answer(res), { status: 400, body: INVALID_TOTP_CODE }, JSON.stringify(code));
  }
  assert.equal((await me(srv.api, user.token)).totp_enabled, false);

  const code = codeAt(secret, clock.now);
  // Authenticator apps show the code as "123 456": the space is allowed.
  const res = await srv.api.post<BackupCodesResponse>('/users/@me/totp/enable', { token: user.token, json: { code: `${code.slice(0, 3)} ${code.slice(3)}` } });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(Object.keys(res.body), ['backup_codes']);
  const codes = res.body.backup_codes;
  assert.equal(codes.length, 10);
  assert.equal(new Set(codes).size, 10, 'distinct');
  // 16 characters of a 32-letter alphabet: 80 bits each.
  for (const backup of codes) assert.match(backup, BACKUP_CODE);

  const after = await me(srv.api, user.token);
  assert.equal(after.totp_enabled, true);
  assert.ok(!JSON.stringify(after).includes(secret), 'the secret is never answered again');
  const again = await srv.api.post('/users/@me/totp/enable', { token: user.token, json: { code: codeAt(secret, clock.now + STEP_MS) } });
  assert.deepEqual(answer(again), { status: 409, body: ALREADY_ENABLED });
  const resetup = await srv.api.post('/users/@me/totp/setup', { token: user.token, json: { password: user.password } });
  assert.deepEqual(answer(resetup), { status: 409, body: ALREADY_ENABLED }, 'no new secret (nor the old one) while 2FA is on');
});

test('login with 2FA: the password answers a ticket and no token; the ticket and a code answer the session', async () => {
  clock.now = T0;
  const user = await registerUser(srv.api);
  const { secret } = await enable(srv.api, user, clock.now);
  clock.now += STEP_MS;

  const ticket = await ticketFor(srv.api, user);
  // The account's id (which node of a cluster holds it), then 256 random bits.
  assert.match(ticket, new RegExp(`^pxt_${user.id}_[A-Za-z0-9_-]{43}$`));
  const wrongPassword = await srv.api.post('/auth/login', { json: { login: user.username, password: 'not the password' } });
  assert.deepEqual(answer(wrongPassword), { status: 401, body: INVALID_CREDENTIALS }, 'no ticket without the password');

  const res = await loginTotp(srv.api, { ticket, code: codeAt(secret, clock.now) });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(Object.keys(res.body).sort(), ['token', 'user']);
  assert.equal(res.body.user.id, user.id);
  assert.equal(res.body.user.totp_enabled, true);
  assert.equal((await me(srv.api, res.body.token)).id, user.id, 'the token works');

  clock.now += STEP_MS;
  const reused = await loginTotp(srv.api, { ticket, code: codeAt(secret, clock.now) });
  assert.deepEqual(answer(reused), { status: 401, body: INVALID_SECOND_FACTOR }, 'a ticket is single-use');
});

test('codes: the current step ±1 is accepted; older ones, replays and codes older than the last used are refused', async () => {
  clock.now = T0;
  const user = await registerUser(srv.api);
  const { secret } = await enable(srv.api, user, clock.now);
  clock.now += 10 * STEP_MS;
  const t = clock.now;

  // Two steps behind: never used, but out of the window.
  let ticket = await ticketFor(srv.api, user);
  assert.deepEqual(answer(await loginTotp(srv.api, { ticket, code: codeAt(secret, t - 2 * STEP_MS) })), { status: 401, body: INVALID_SECOND_FACTOR });
  assert.deepEqual(answer(await loginTotp(srv.api, { ticket, code: codeAt(secret, t + 2 * STEP_MS) })), { status: 401, body: INVALID_SECOND_FACTOR });
  // One step behind: accepted.
  assert.equal((await loginTotp(srv.api, { ticket, code: codeAt(secret, t - STEP_MS) })).status, 200);

  // The same code again, on a new ticket: a replay.
  ticket = await ticketFor(srv.api, user);
  assert.deepEqual(answer(await loginTotp(srv.api, { ticket, code: codeAt(secret, t - STEP_MS) })), { status: 401, body: INVALID_SECOND_FACTOR });
  // One step ahead: accepted (on the same ticket: the failed attempt left it four).
  assert.equal((await loginTotp(srv.api, { ticket, code: codeAt(secret, t + STEP_MS) })).status, 200);

  // The current step, never used and inside the window, but older than the step just used.
  ticket = await ticketFor(srv.api, user);
  assert.deepEqual(answer(await loginTotp(srv.api, { ticket, code: codeAt(secret, t) })), { status: 401, body: INVALID_SECOND_FACTOR });

  // Time moves on: the new current step is newer than any used, so it is accepted.
  clock.now = t + 2 * STEP_MS;
  assert.equal((await loginTotp(srv.api, { ticket, code: codeAt(secret, clock.now) })).status, 200);

  // The rule is the account's, not the route's: a code used to log in cannot disable 2FA either.
  const disable = await srv.api.post('/users/@me/totp/disable', { token: user.token, json: { password: user.password, code: codeAt(secret, clock.now) } });
  assert.deepEqual(answer(disable), { status: 400, body: INVALID_TOTP_CODE });
  // Nor can the code that enabled 2FA be used to log in (same step, just after enabling).
  clock.now = T0;
  const other = await registerUser(srv.api);
  const otherSecret = (await enable(srv.api, other, clock.now)).secret;
  const otherTicket = await ticketFor(srv.api, other);
  assert.deepEqual(answer(await loginTotp(srv.api, { ticket: otherTicket, code: codeAt(otherSecret, clock.now) })), {
    status: 401,
    body: INVALID_SECOND_FACTOR,
  });
});

test('tickets: forged, spent, expired and exhausted ones are refused exactly like a wrong code', async () => {
  clock.now = T0;
  const user = await registerUser(srv.api);
  const { secret } = await enable(srv.api, user, clock.now);
  clock.now += STEP_MS;

  // The account's id in a forged ticket is only where to look: the ticket itself is not there.
  const forgeries = [`pxt_${user.id}_${randomBytes(32).toString('base64url')}`, `pxt_${randomBytes(32).toString('base64url')}`, 'not a ticket', ''];
  for (const forged of forgeries) {
    const res = await loginTotp(srv.api, { ticket: forged, code: codeAt(secret, clock.now) });
    assert.deepEqual(answer(res), { status: 401, body: INVALID_SECOND_FACTOR }, `forged ${forged}`);
  }
  const wrong = await loginTotp(srv.api, { ticket: await ticketFor(srv.api, user), code: wrongCodeAt(secret, clock.now) });
  assert.deepEqual(answer(wrong), { status: 401, body: INVALID_SECOND_FACTOR }, 'a wrong code: the same body');

  // Exhausted: five wrong codes spend the ticket; the right code then gets the same answer, and was
  // not even checked (it still works on a new ticket).
  const exhausted = await ticketFor(srv.api, user);
  for (let attempt = 1; attempt <= 5; attempt += 1) {
    assert.deepEqual(answer(await loginTotp(srv.api, { ticket: exhausted, code: wrongCodeAt(secret, clock.now) })), {
      status: 401,
      body: INVALID_SECOND_FACTOR,
    });
  }
  const right = codeAt(secret, clock.now);
  assert.deepEqual(answer(await loginTotp(srv.api, { ticket: exhausted, code: right })), { status: 401, body: INVALID_SECOND_FACTOR });
  assert.equal((await loginTotp(srv.api, { ticket: await ticketFor(srv.api, user), code: right })).status, 200);

  // Four wrong codes leave one attempt: the fifth, right, works.
  const lastChance = await ticketFor(srv.api, user);
  for (let attempt = 1; attempt <= 4; attempt += 1) {
    assert.equal((await loginTotp(srv.api, { ticket: lastChance, code: wrongCodeAt(secret, clock.now) })).status, 401);
  }
  clock.now += STEP_MS;
  assert.equal((await loginTotp(srv.api, { ticket: lastChance, code: codeAt(secret, clock.now) })).status, 200);

  // Expired: five minutes. One second before, it works; at five minutes it is refused.
  clock.now += STEP_MS;
  const early = await ticketFor(srv.api, user);
  const late = await ticketFor(srv.api, user);
  clock.now += 5 * 60_000 - 1000;
  assert.equal((await loginTotp(srv.api, { ticket: early, code: codeAt(secret, clock.now) })).status, 200, 'still valid at 4:59');
  clock.now += 1000 + STEP_MS;
  const expiredCode = codeAt(secret, clock.now);
  assert.deepEqual(answer(await loginTotp(srv.api, { ticket: late, code: expiredCode })), { status: 401, body: INVALID_SECOND_FACTOR });
  assert.equal((await loginTotp(srv.api, { ticket: await ticketFor(srv.api, user), code: expiredCode })).status, 200, 'the code was not spent on it');
});

test('a backup code works once, in any case and without hyphens; regenerating replaces them all', async () => {
  clock.now = T0;
  const user = await registerUser(srv.api);
  const { secret, backupCodes } = await enable(srv.api, user, clock.now);
  const [first, second, third] = backupCodes as [string, string, string];

  const used = await loginTotp(srv.api, { ticket: await ticketFor(srv.api, user), backup_code: first });
  assert.equal(used.status, 200, used.text);
  assert.equal(used.body.user.id, user.id);
  const again = await loginTotp(srv.api, { ticket: await ticketFor(srv.api, user), backup_code: first });
  assert.deepEqual(answer(again), { status: 401, body: INVALID_SECOND_FACTOR }, 'used once, gone');
  const loose = await loginTotp(srv.api, { ticket: await ticketFor(srv.api, user), backup_code: ` ${second.replaceAll('-', '').toUpperCase()} ` });
  assert.equal(loose.status, 200, 'case, spaces and hyphens do not matter');
  const asTotp = await loginTotp(srv.api, { ticket: await ticketFor(srv.api, user), code: third });
  assert.deepEqual(answer(asTotp), { status: 401, body: INVALID_SECOND_FACTOR }, '`code` is a TOTP code; a backup code goes in `backup_code`');

  // Regenerate: the password and a code (a TOTP code here).
  const wrongPassword = await srv.api.post('/users/@me/totp/backup-codes', {
    token: user.token,
    json: { password: 'nope nope', code: codeAt(secret, clock.now) },
  });
  assert.deepEqual(answer(wrongPassword), { status: 400, body: INVALID_PASSWORD });
  const wrongCode = await srv.api.post('/users/@me/totp/backup-codes', {
    token: user.token,
    json: { password: user.password, code: wrongCodeAt(secret, clock.now) },
  });
  assert.deepEqual(answer(wrongCode), { status: 400, body: INVALID_TOTP_CODE });
  clock.now += STEP_MS;
  const fresh = await srv.api.post<BackupCodesResponse>('/users/@me/totp/backup-codes', {
    token: user.token,
    json: { password: user.password, code: codeAt(secret, clock.now) },
  });
  assert.equal(fresh.status, 200, fresh.text);
  assert.equal(new Set(fresh.body.backup_codes).size, 10);
  for (const code of fresh.body.backup_codes) {
    assert.match(code, BACKUP_CODE);
    assert.ok(!backupCodes.includes(code));
  }
  const old = await loginTotp(srv.api, { ticket: await ticketFor(srv.api, user), backup_code: third });
  assert.deepEqual(answer(old), { status: 401, body: INVALID_SECOND_FACTOR }, 'the old set is gone');
  const [newFirst, newSecond] = fresh.body.backup_codes as [string, string];
  assert.equal((await loginTotp(srv.api, { ticket: await ticketFor(srv.api, user), backup_code: newFirst })).status, 200);
  // A backup code also confirms a regeneration (and is spent by it).
  const byBackup = await srv.api.post<BackupCodesResponse>('/users/@me/totp/backup-codes', {
    token: user.token,
    json: { password: user.password, code: newSecond },
  });
  assert.equal(byBackup.status, 200, byBackup.text);
});

test('disable: the password and a TOTP or backup code; then login asks the password only and totp_enabled is false', async () => {
  clock.now = T0;
  const user = await registerUser(srv.api);
  const { secret, backupCodes } = await enable(srv.api, user, clock.now);
  clock.now += STEP_MS;
  const pendingTicket = await ticketFor(srv.api, user);

  const wrongPassword = await srv.api.post('/users/@me/totp/disable', { token: user.token, json: { password: 'nope nope', code: codeAt(secret, clock.now) } });
  assert.deepEqual(answer(wrongPassword), { status: 400, body: INVALID_PASSWORD });
  for (const code of [wrongCodeAt(secret, clock.now), 'aaaa-bbbb-cccc-dddd', '']) {
    const res = await srv.api.post('/users/@me/totp/disable', { token: user.token, json: { password: user.password, code } });
    assert.deepEqual(answer(res), { status: 400, body: INVALID_TOTP_CODE }, code);
  }
  assert.equal((await me(srv.api, user.token)).totp_enabled, true, 'nothing changed');

  clock.now += STEP_MS;
  const disabled = await srv.api.post('/users/@me/totp/disable', { token: user.token, json: { password: user.password, code: codeAt(secret, clock.now) } });
  assert.equal(disabled.status, 204, disabled.text);
  assert.equal(disabled.text, '');
  assert.equal((await me(srv.api, user.token)).totp_enabled, false);
  const login = await srv.api.post<AuthResponse>('/auth/login', { json: { login: user.username, password: user.password } });
  assert.equal(login.status, 200);
  assert.equal(login.body.user.totp_enabled, false);
  assert.equal(typeof login.body.token, 'string');
  const stale = await loginTotp(srv.api, { ticket: pendingTicket, code: codeAt(secret, clock.now) });
  assert.deepEqual(answer(stale), { status: 401, body: INVALID_SECOND_FACTOR }, 'a ticket from before cannot be finished with the old secret');

  const twice = await srv.api.post('/users/@me/totp/disable', { token: user.token, json: { password: user.password, code: codeAt(secret, clock.now) } });
  assert.deepEqual(answer(twice), { status: 400, body: NOT_ENABLED });
  const regenerate = await srv.api.post('/users/@me/totp/backup-codes', { token: user.token, json: { password: user.password, code: '123456' } });
  assert.deepEqual(answer(regenerate), { status: 400, body: NOT_ENABLED });

  // And on again, with a new secret: the old one and its codes are gone for good.
  const renewed = await enable(srv.api, user, clock.now);
  assert.notEqual(renewed.secret, secret);
  const oldCode = await loginTotp(srv.api, { ticket: await ticketFor(srv.api, user), backup_code: backupCodes[1] });
  assert.deepEqual(answer(oldCode), { status: 401, body: INVALID_SECOND_FACTOR });
});

test('no session outlives a password change made between the password and the code', async () => {
  clock.now = T0;
  const user = await registerUser(srv.api);
  const { secret } = await enable(srv.api, user, clock.now);
  clock.now += STEP_MS;
  const ticket = await ticketFor(srv.api, user);
  const change = await srv.api.patch('/users/@me', { token: user.token, json: { password: 'a brand new passphrase', current_password: user.password } });
  assert.equal(change.status, 200, change.text);

  const sessionsBefore = countSessions(srv.dataDir, user.id);
  const res = await loginTotp(srv.api, { ticket, code: codeAt(secret, clock.now) });
  assert.deepEqual(answer(res), { status: 401, body: INVALID_CREDENTIALS }, 'the password the ticket proved is no longer the password');
  assert.equal(countSessions(srv.dataDir, user.id), sessionsBefore, 'no session was stored');
  clock.now += STEP_MS;
  const after = await loginTotp(srv.api, { ticket, code: codeAt(secret, clock.now) });
  assert.deepEqual(answer(after), { status: 401, body: INVALID_SECOND_FACTOR }, 'and the ticket is over');
});

function countSessions(dataDir: string, userId: string): number {
  const db = new Database(path.join(dataDir, 'directory.sqlite'), { readonly: true });
  try {
    return (db.prepare('SELECT count(*) AS n FROM sessions WHERE user_id = ?').get(userId) as { n: number }).n;
  } finally {
    db.close();
  }
}

test('backup codes are stored only as digests; the user file holds no code', async () => {
  clock.now = T0;
  const user = await registerUser(srv.api);
  const { backupCodes } = await enable(srv.api, user, clock.now);
  const file = path.join(srv.dataDir, 'users', `${user.id}.sqlite`);
  const db = new Database(file, { readonly: true });
  try {
    const rows = db.prepare('SELECT digest FROM totp_backup_codes').all() as { digest: Buffer }[];
    assert.equal(rows.length, 10);
    for (const row of rows) assert.equal(row.digest.length, 32);
  } finally {
    db.close();
  }
  // Every byte the file and its log hold: no code, with or without its hyphens.
  const bytes = Buffer.concat(['', '-wal'].filter((suffix) => fs.existsSync(file + suffix)).map((suffix) => fs.readFileSync(file + suffix)));
  for (const code of backupCodes) {
    assert.ok(!bytes.includes(code), 'a backup code in the clear');
    assert.ok(!bytes.includes(code.replaceAll('-', '')), 'a backup code in the clear');
  }
});

test('every 2FA body is validated with the documented errors; the user routes need a session', async () => {
  clock.now = T0;
  const user = await registerUser(srv.api);
  const cases: [string, unknown, unknown][] = [
    ['/auth/login/totp', { ticket: 'x' }, [{ path: 'code', message: 'Give exactly one of code and backup_code' }]],
    ['/auth/login/totp', { ticket: 'x', code: '123456', backup_code: 'abcd' }, [{ path: 'code', message: 'Give exactly one of code and backup_code' }]],
    ['/auth/login/totp', { code: '123456' }, [{ path: 'ticket', message: 'Invalid input: expected string, received undefined' }]],
    ['/auth/login/totp', { ticket: 'x', code: 123456 }, [{ path: 'code', message: 'Invalid input: expected string, received number' }]],
    ['/users/@me/totp/setup', {}, [{ path: 'password', message: 'Invalid input: expected string, received undefined' }]],
    ['/users/@me/totp/enable', { code: '123456', extra: 1 }, [{ path: 'extra', message: 'Unknown field' }]],
    ['/users/@me/totp/disable', { password: user.password }, [{ path: 'code', message: 'Invalid input: expected string, received undefined' }]],
    ['/users/@me/totp/backup-codes', { password: user.password, code: '1'.repeat(65) }, [{ path: 'code', message: 'Must be at most 64 characters' }]],
  ];
  for (const [route, json, errors] of cases) {
    const res = await srv.api.post(route, { token: user.token, json });
    assert.deepEqual(
      answer(res),
      { status: 400, body: { error: 'Invalid input', code: 'invalid_input', message: 'Validation failed', errors } },
      `${route} ${JSON.stringify(json)}`,
    );
  }
  for (const route of ['/users/@me/totp/setup', '/users/@me/totp/enable', '/users/@me/totp/disable', '/users/@me/totp/backup-codes']) {
    const res = await srv.api.post(route, { json: { password: user.password, code: '123456' } });
    assert.equal(res.status, 401, route);
    assert.deepEqual(res.body, { error: 'Unauthorized', code: 'unauthorized', message: 'A valid bearer token is required' });
  }
});

/** Asserts the documented 429 of a throttle whose budget is `limit`. */
function assertThrottled(res: { status: number; body: unknown; headers: Headers }, limit: number): void {
  assert.equal(res.status, 429);
  const body = res.body as ErrorBody;
  assert.deepEqual({ ...body, message: '' }, { error: 'Too many requests', code: 'too_many_requests', message: '' });
  assert.match(body.message, /^Too many attempts; retry in \d+ s$/);
  const retryAfter = Number(res.headers.get('retry-after'));
  assert.ok(retryAfter >= 1 && retryAfter <= 600, `Retry-After ${retryAfter}`);
  assert.equal(res.headers.get('x-ratelimit-limit'), String(limit));
  assert.equal(res.headers.get('x-ratelimit-remaining'), '0');
  assert.ok(Number(res.headers.get('x-ratelimit-reset')) > Date.now() / 1000);
}

test('second-factor attempts are throttled per account, from whatever address they come', async () => {
  const own = await startServer({ totpAccountRateLimit: 3, totpAddressRateLimit: 0, trustProxy: ['127.0.0.1'] }, { clock: () => T0 });
  try {
    const victim = await registerUser(own.api);
    const bystander = await registerUser(own.api);
    const { secret } = await enable(own.api, victim, T0); // attempt 1 of the victim's budget (setup), 2 (enable)
    const other = await enable(own.api, bystander, T0);
    const from = (address: string) => ({ 'x-forwarded-for': address });
    const ticket = await ticketFor(own.api, victim);
    const guess = (address: string) => own.api.post('/auth/login/totp', { json: { ticket, code: wrongCodeAt(secret, T0) }, headers: from(address) });
    assert.equal((await guess('198.51.100.1')).status, 401, 'attempt 3: within the budget');
    assertThrottled(await guess('198.51.100.2'), 3);
    assertThrottled(await guess('198.51.100.3'), 3);
    // The authenticated routes draw on the same budget.
    const disable = await own.api.post('/users/@me/totp/disable', {
      token: victim.token,
      json: { password: victim.password, code: codeAt(secret, T0 + STEP_MS) },
    });
    assertThrottled(disable, 3);
    const bystanderTicket = await ticketFor(own.api, bystander);
    const fine = await own.api.post('/auth/login/totp', {
      json: { ticket: bystanderTicket, code: codeAt(other.secret, T0 + STEP_MS) },
      headers: from('198.51.100.2'),
    });
    assert.equal(fine.status, 200, 'another account, from the same addresses, is not affected');
  } finally {
    await own.close();
  }
});

test('second-factor attempts are throttled per client address, over every account; X-Forwarded-For counts only from a trusted proxy', async () => {
  const own = await startServer({ totpAccountRateLimit: 0, totpAddressRateLimit: 3, trustProxy: ['127.0.0.1'] }, { clock: () => T0 });
  try {
    const victim = await registerUser(own.api);
    const owner = await registerUser(own.api);
    const attacker = { 'x-forwarded-for': '203.0.113.7' };
    const forged = (headers: Record<string, string>) =>
      own.api.post('/auth/login/totp', { json: { ticket: `pxt_${randomBytes(32).toString('base64url')}`, code: '000000' }, headers });
    for (let i = 0; i < 3; i += 1) assert.deepEqual(answer(await forged(attacker)), { status: 401, body: INVALID_SECOND_FACTOR });
    assertThrottled(await forged(attacker), 3);
    const setupFromAttacker = await own.api.post('/users/@me/totp/setup', { token: victim.token, json: { password: victim.password }, headers: attacker });
    assertThrottled(setupFromAttacker, 3);
    // Another address still has its whole budget: the owners are not locked out.
    const res = await own.api.post('/users/@me/totp/setup', {
      token: owner.token,
      json: { password: owner.password },
      headers: { 'x-forwarded-for': '192.0.2.10' },
    });
    assert.equal(res.status, 200, res.text);
  } finally {
    await own.close();
  }
  const untrusting = await startServer({ totpAccountRateLimit: 0, totpAddressRateLimit: 2 }, { clock: () => T0 });
  try {
    const attempt = (address: string) =>
      untrusting.api.post('/auth/login/totp', { json: { ticket: 'pxt_forged', code: '000000' }, headers: { 'x-forwarded-for': address } });
    assert.equal((await attempt('198.51.100.1')).status, 401);
    assert.equal((await attempt('198.51.100.2')).status, 401);
    assertThrottled(await attempt('198.51.100.3'), 2);
  } finally {
    await untrusting.close();
  }
});

test('client-lib: setupTotp, enableTotp, the mfa_required login, loginTotp, regenerateBackupCodes, disableTotp (real clock)', async () => {
  const real = await startServer({ totpAccountRateLimit: 0, totpAddressRateLimit: 0 });
  try {
    const user = await registerUser(real.api);
    const client = new PlexichatClient({ baseUrl: real.url, token: user.token });
    await assert.rejects(client.setupTotp({ password: 'wrong password' }), (error: unknown) => error instanceof ApiError && error.code === 'invalid_password');
    const { secret, otpauth_url } = await client.setupTotp({ password: user.password });
    assert.ok(otpauth_url.includes(secret));
    // Codes of the real clock, of the current step or the next: a step boundary passing between
    // here and the server turns them into the previous or the current one, both accepted. Each
    // TOTP code used is of a newer step than the last one (the second is of the next step).
    const { backup_codes } = await client.enableTotp({ code: codeAt(secret, Date.now()) });
    assert.equal(backup_codes.length, 10);
    assert.equal((await client.me()).totp_enabled, true);

    const device = new PlexichatClient({ baseUrl: real.url });
    const first = await device.login({ login: user.username, password: user.password });
    assert.ok('mfa_required' in first && first.mfa_required, 'the mfa_required shape');
    assert.equal(device.token, undefined, 'no token is kept without the second step');
    await assert.rejects(device.loginTotp({ ticket: first.ticket, code: wrongCodeAt(secret, Date.now()) }), (error: unknown) => {
      return error instanceof ApiError && error.status === 401 && error.code === 'invalid_second_factor';
    });
    const signedIn = await device.loginTotp({ ticket: first.ticket, code: codeAt(secret, Date.now() + STEP_MS) });
    assert.equal(device.token, signedIn.token);
    assert.equal((await device.me()).id, user.id);

    const second = await device.login({ login: user.username, password: user.password });
    assert.ok('ticket' in second);
    await device.loginTotp({ ticket: second.ticket, backup_code: backup_codes[0] as string });
    const renewed = await client.regenerateBackupCodes({ password: user.password, code: backup_codes[1] as string });
    assert.equal(renewed.backup_codes.length, 10);
    await client.disableTotp({ password: user.password, code: renewed.backup_codes[0] as string });
    assert.equal((await client.me()).totp_enabled, false);
    const plain = await device.login({ login: user.username, password: user.password });
    assert.ok('token' in plain && device.token === plain.token, 'without 2FA, login keeps the token as before');
  } finally {
    await real.close();
  }
});

test('the 2FA budgets: 10 per account and 30 per address by default, set by flag or environment, validated', () => {
  const defaults = loadConfig([], {});
  assert.equal(defaults.totpAccountRateLimit, 10);
  assert.equal(defaults.totpAddressRateLimit, 30);
  const set = loadConfig(['--totp-account-rate-limit', '5'], { PLEXICHAT_TOTP_ACCOUNT_RATE_LIMIT: '7', PLEXICHAT_TOTP_ADDRESS_RATE_LIMIT: '0' });
  assert.equal(set.totpAccountRateLimit, 5, 'the flag wins');
  assert.equal(set.totpAddressRateLimit, 0, 'off');
  for (const argv of [
    ['--totp-account-rate-limit', '-1'],
    ['--totp-address-rate-limit', 'many'],
  ]) {
    assert.throws(
      () => loadConfig(argv, {}),
      (error: unknown) => error instanceof ConfigError && error.message.includes(argv[0] as string),
      argv.join(' '),
    );
  }
});
