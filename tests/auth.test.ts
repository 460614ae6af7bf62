import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startServer, registerUser, type TestServer } from './helpers/server.ts';
import { closeEvent, rawSocket } from './helpers/sync.ts';
import { captureLog } from './fixtures/log.ts';
import { mountTmpfs } from './fixtures/tmpfs.ts';
import { CLOSE_CODES, type AuthResponse, type ErrorBody, type PrivateUser } from '../shared/index.ts';
import { PlexichatClient } from '../client-lib/index.ts';

let srv: TestServer;
before(async () => {
  srv = await startServer();
});
after(() => srv.close());

const PRIVATE_KEYS = ['age_verified', 'avatar_url', 'badges', 'created_at', 'email', 'email_verified', 'id', 'totp_enabled', 'username'];

test('register returns 201 with a token and the full private user', async () => {
  const res = await srv.api.post<AuthResponse>('/auth/register', {
    json: { username: 'Alice.Smith', email: 'Alice@Example.com', password: 'a good passphrase' },
  });
  assert.equal(res.status, 201);
  assert.match(res.body.token, /^pxc_[A-Za-z0-9_-]{43}$/);
  assert.deepEqual(Object.keys(res.body.user).sort(), PRIVATE_KEYS);
  const { id, created_at, ...rest } = res.body.user;
  assert.match(id, /^[1-9][0-9]+$/);
  assert.ok(Math.abs(created_at - Date.now() / 1000) < 60);
  assert.deepEqual(rest, {
    username: 'Alice.Smith',
    email: 'Alice@Example.com',
    avatar_url: null,
    email_verified: false,
    totp_enabled: false,
    age_verified: false,
    badges: [],
  });
  assert.ok(!res.text.includes('argon2'), 'no password hash in the response');
});

test('register validates every field with the documented errors', async () => {
  const cases: [unknown, string, string][] = [
    [{ username: 'ab', email: 'x1@example.com', password: 'longenough1' }, 'Invalid input', 'invalid_input'],
    [{ username: 'a'.repeat(33), email: 'x2@example.com', password: 'longenough1' }, 'Invalid input', 'invalid_input'],
    [{ username: 'bad name', email: 'x3@example.com', password: 'longenough1' }, 'Invalid input', 'invalid_input'],
    [{ username: 'bad\u0000nul', email: 'x3@example.com', password: 'longenough1' }, 'Invalid input', 'invalid_input'],
    [{ username: 'goodname1', email: 'not-an-email', password: 'longenough1' }, 'Invalid input', 'invalid_input'],
    [{ username: 'goodname2', email: 'x4@example.com' }, 'Invalid input', 'invalid_input'],
    [{ username: 'goodname3', email: 'x5@example.com', password: 'x'.repeat(129) }, 'Invalid input', 'invalid_input'],
    [{ username: 'goodname4', email: 'x6@example.com', password: 'longenough1', admin: true }, 'Invalid input', 'invalid_input'],
    [{ username: 'goodname5', email: 'x7@example.com', password: 'short' }, 'Weak password', 'weak_password'],
    [{ username: 'goodname6', email: 'x8@example.com', password: 'GOODNAME6' }, 'Weak password', 'weak_password'],
    [{ username: 'goodname7', email: 'x9@example.com', password: 'aaaaaaaaaa' }, 'Weak password', 'weak_password'],
  ];
  for (const [json, error, code] of cases) {
    const res = await srv.api.post<ErrorBody>('/auth/register', { json });
    assert.equal(res.status, 400, JSON.stringify(json));
    assert.equal(res.body.error, error, JSON.stringify(json));
    assert.equal(res.body.code, code);
    assert.equal(typeof res.body.message, 'string');
  }
});

test('register refuses case-variant duplicates of username and email with 409', async () => {
  await registerUser(srv.api, 'TakenName');
  const byName = await srv.api.post<ErrorBody>('/auth/register', {
    json: { username: 'takenNAME', email: 'other1@example.com', password: 'longenough1' },
  });
  assert.equal(byName.status, 409);
  assert.deepEqual(byName.body, {
    error: 'Already exists',
    code: 'already_exists',
    message: 'That username is already taken',
    errors: [{ path: 'username', message: 'Already taken' }],
  });
  const byEmail = await srv.api.post<ErrorBody>('/auth/register', {
    json: { username: 'freshname', email: 'TAKENNAME@example.COM', password: 'longenough1' },
  });
  assert.equal(byEmail.status, 409);
  assert.equal(byEmail.body.error, 'Already exists');
  assert.deepEqual(byEmail.body.errors, [{ path: 'email', message: 'Already taken' }]);
});

test('concurrent registrations of one name: exactly one wins', async () => {
  const attempts = await Promise.all(
    Array.from({ length: 6 }, (_, i) =>
      srv.api.post('/auth/register', { json: { username: `Racer${i % 2 ? 'X' : 'x'}`, email: `racer${i}@example.com`, password: 'longenough1' } }),
    ),
  );
  assert.deepEqual(attempts.map((r) => r.status).sort(), [201, 409, 409, 409, 409, 409]);
});

test('login by username or email in any case; wrong password and unknown account look the same', async () => {
  const user = await registerUser(srv.api, 'LoginUser');
  for (const login of ['loginuser', 'LOGINUSER', 'LoginUser@EXAMPLE.com']) {
    const res = await srv.api.post<AuthResponse>('/auth/login', { json: { login, password: user.password } });
    assert.equal(res.status, 200, login);
    assert.equal(res.body.user.id, user.id);
    assert.notEqual(res.body.token, user.token);
  }
  const expected = { error: 'Invalid credentials', code: 'invalid_credentials', message: 'Wrong login or password' };
  const wrong = await srv.api.post('/auth/login', { json: { login: 'loginuser', password: 'wrong password' } });
  const missing = await srv.api.post('/auth/login', { json: { login: 'nobodyhere', password: 'wrong password' } });
  assert.equal(wrong.status, 401);
  assert.equal(missing.status, 401);
  assert.deepEqual(wrong.body, expected);
  assert.deepEqual(missing.body, expected);
  const bad = await srv.api.post<ErrorBody>('/auth/login', { json: { login: 5, password: 'x' } });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error, 'Invalid input');
});

test('an unknown account costs about as much time as a wrong password', async () => {
  await registerUser(srv.api, 'TimingUser');
  const time = async (login: string) => {
    const started = performance.now();
    await srv.api.post('/auth/login', { json: { login, password: 'wrong password' } });
    return performance.now() - started;
  };
  await time('nobody-warmup'); // the decoy hash is computed on first use
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
  const known: number[] = [];
  const unknown: number[] = [];
  for (let i = 0; i < 5; i += 1) {
    known.push(await time('timinguser'));
    unknown.push(await time(`nobody${i}`));
  }
  const ratio = median(unknown) / median(known);
  // Without the decoy an unknown login answers ~50x faster; allow a wide band for a noisy machine.
  assert.ok(ratio > 0.33 && ratio < 3, `unknown/known login time ratio ${ratio.toFixed(2)}`);
});

test('logout ends only that session, immediately', async () => {
  const user = await registerUser(srv.api);
  const second = await srv.api.post<AuthResponse>('/auth/login', { json: { login: user.username, password: user.password } });
  const out = await srv.api.post('/auth/logout', { token: user.token });
  assert.equal(out.status, 204);
  assert.equal(out.text, '');
  const after = await srv.api.get<ErrorBody>('/users/@me', { token: user.token });
  assert.equal(after.status, 401);
  assert.deepEqual(after.body, { error: 'Unauthorized', code: 'unauthorized', message: 'A valid bearer token is required' });
  assert.equal((await srv.api.get('/users/@me', { token: second.body.token })).status, 200);
  assert.equal((await srv.api.post('/auth/logout', { token: user.token })).status, 401);
});

test('missing, malformed and unknown bearer tokens are 401 on every protected route', async () => {
  const user = await registerUser(srv.api);
  const variants: Record<string, string>[] = [
    {},
    { authorization: '' },
    { authorization: 'Bearer' },
    { authorization: `Basic ${user.token}` },
    { authorization: `Bearer ${user.token}x` },
    { authorization: `Bearer pxc_${'A'.repeat(43)}` },
    { authorization: `Bearer ${'x'.repeat(600)}` },
    { authorization: `Bearer ${user.token} extra` },
  ];
  const routes: [string, string][] = [
    ['GET', '/users/@me'],
    ['PATCH', '/users/@me'],
    ['GET', '/users/@me/messaging-settings'],
    ['PATCH', '/users/@me/messaging-settings'],
    ['GET', '/users/search?username=x'],
    [`GET`, `/users/${user.id}`],
    ['POST', '/auth/logout'],
    ['GET', '/auth/sessions'],
    ['DELETE', '/auth/sessions/123456789012345678'],
    ['POST', '/auth/sessions/revoke-others'],
  ];
  for (const [method, path] of routes) {
    for (const headers of variants) {
      const res = await srv.api.request<ErrorBody>(method, path, { headers, json: method === 'GET' ? undefined : {} });
      assert.equal(res.status, 401, `${method} ${path} ${JSON.stringify(headers)}`);
      assert.equal(res.body.error, 'Unauthorized');
      assert.equal(res.headers.get('www-authenticate'), 'Bearer');
    }
  }
  const ok = await srv.api.get('/users/@me', { headers: { authorization: `bearer ${user.token}` } });
  assert.equal(ok.status, 200, 'the scheme is case-insensitive');
});

test('login and register are rate limited per client address with 429 and Retry-After', async () => {
  const limited = await startServer({ authRateLimit: 3 });
  try {
    for (let i = 0; i < 3; i += 1) {
      const res = await limited.api.post('/auth/login', { json: { login: 'someone', password: 'whatever1' } });
      assert.equal(res.status, 401);
    }
    const res = await limited.api.post<ErrorBody>('/auth/login', { json: { login: 'someone', password: 'whatever1' } });
    assert.equal(res.status, 429);
    assert.equal(res.body.error, 'Too many requests');
    assert.equal(res.body.code, 'too_many_requests');
    assert.ok(Number(res.headers.get('retry-after')) >= 1);
    const reg = await limited.api.post('/auth/register', { json: { username: 'latecomer', email: 'l@example.com', password: 'longenough1' } });
    assert.equal(reg.status, 429);
  } finally {
    await limited.close();
  }
});

test('tokens are stored only as hashes', async () => {
  const user = await registerUser(srv.api);
  const { default: Database } = await import('better-sqlite3');
  const db = new Database(`${srv.dataDir}/directory.sqlite`, { readonly: true });
  try {
    const rows = db.prepare('SELECT token_hash FROM sessions').all() as { token_hash: Buffer }[];
    assert.ok(rows.length > 0);
    for (const row of rows) assert.equal(row.token_hash.length, 32);
    const dump = JSON.stringify(db.prepare('SELECT * FROM sessions').all());
    assert.ok(!dump.includes(user.token.slice(4)));
  } finally {
    db.close();
  }
});

test('the private user object has exactly the documented fields', async () => {
  const user = await registerUser(srv.api);
  const me = await srv.api.get<PrivateUser>('/users/@me', { token: user.token });
  assert.deepEqual(Object.keys(me.body).sort(), PRIVATE_KEYS);
});

const INVALID_CREDENTIALS = { error: 'Invalid credentials', code: 'invalid_credentials', message: 'Wrong login or password' };
const UNAUTHORIZED = { error: 'Unauthorized', code: 'unauthorized', message: 'A valid bearer token is required' };
const STORAGE_FAILING = "the server's storage is failing right now (disk full, I/O error or no file handle left); try again later";
const MiB = 1024 * 1024;

test('no session obtained with the old password outlives a password change, whatever the interleaving', async () => {
  // Logins keep running back to back while the password changes, so at the moment the change
  // commits there is nearly always a login that has read the old hash and is still verifying it
  // (Argon2, on the thread pool). The server logs each login it refuses for that reason: the loop
  // runs until it has seen a few, so the race is known to have been exercised, not just hoped for.
  const RACED = 'login refused: the password changed while it was being verified';
  const log = captureLog();
  const raced = await startServer({}, { logger: log.logger });
  try {
    for (let round = 1; log.count(RACED) < 3; round += 1) {
      assert.ok(round <= 40, `in 40 rounds only ${log.count(RACED)} logins straddled a password change: the race was not exercised`);
      const user = await registerUser(raced.api);
      const tokens: string[] = [];
      let answered = false;
      const loginsUntilAnswered = async () => {
        while (!answered) {
          const res = await raced.api.post<AuthResponse>('/auth/login', { json: { login: user.username, password: user.password } });
          if (res.status === 200) tokens.push(res.body.token);
          else assert.deepEqual({ status: res.status, body: res.body }, { status: 401, body: INVALID_CREDENTIALS });
        }
      };
      const logins = [loginsUntilAnswered(), loginsUntilAnswered(), loginsUntilAnswered()];
      const change = await raced.api.patch('/users/@me', {
        token: user.token,
        json: { password: 'an entirely new passphrase', current_password: user.password },
      });
      answered = true;
      assert.equal(change.status, 200, change.text);
      await Promise.all(logins);
      for (const token of tokens) {
        const me = await raced.api.get<ErrorBody>('/users/@me', { token });
        assert.equal(me.status, 401, `round ${round}: a session obtained with the old password outlived the change`);
        assert.deepEqual(me.body, UNAUTHORIZED);
      }
      assert.equal((await raced.api.get('/users/@me', { token: user.token })).status, 200, 'the session that changed it stays');
    }
  } finally {
    await raced.close();
  }
});

test('client-lib logout() counts a 401 (token already refused) as signed out', async () => {
  const user = await registerUser(srv.api);
  const client = new PlexichatClient({ baseUrl: srv.url, token: user.token });
  assert.equal((await srv.api.post('/auth/logout', { token: user.token })).status, 204);
  await client.logout();
  assert.equal(client.token, undefined);
});

test('logout on a full disk: refused at once, sockets closed, 503 with Retry-After, stored once there is space', { timeout: 30_000 }, async (t) => {
  const mount = mountTmpfs({ sizeBytes: 8 * MiB, inodes: 2000 });
  if ('skip' in mount) {
    t.skip(mount.skip);
    return;
  }
  const dataDir = path.join(mount.dir, 'data');
  const log = captureLog();
  let full = await startServer({ dataDir }, { logger: log.logger });
  try {
    const user = await registerUser(full.api);
    const other = await full.api.post<AuthResponse>('/auth/login', { json: { login: user.username, password: user.password } });
    const { ws } = await rawSocket(`${full.url}/sync/settings?token=${user.token}`);
    const closed = closeEvent(ws);
    const freeSpace = mount.fillSpace();

    const out = await full.api.post<ErrorBody>('/auth/logout', { token: user.token });
    assert.equal(out.status, 503);
    assert.equal(out.headers.get('retry-after'), '5');
    assert.deepEqual(out.body, {
      error: 'Service unavailable',
      code: 'service_unavailable',
      message:
        'This session is already refused by this server, but the sign-out could not be stored yet (storage failure) and is being ' +
        'retried; repeat the request: 401 or 204 then both mean signed out',
    });
    assert.equal((await closed).code, CLOSE_CODES.SESSION_REVOKED, 'its sync socket is closed');
    const me = await full.api.get<ErrorBody>('/users/@me', { token: user.token });
    assert.deepEqual({ status: me.status, body: me.body }, { status: 401, body: UNAUTHORIZED });
    const upgrade = await rawSocket(`${full.url}/sync/settings?token=${user.token}`);
    assert.equal(upgrade.status, 401, 'no new sync socket either');
    const again = await full.api.post<ErrorBody>('/auth/logout', { token: user.token });
    assert.deepEqual({ status: again.status, body: again.body }, { status: 401, body: UNAUTHORIZED });
    const client = new PlexichatClient({ baseUrl: full.url, token: user.token });
    await client.logout();
    assert.equal(client.token, undefined, 'client-lib takes the 401 as done');
    assert.equal((await full.api.get('/users/@me', { token: other.body.token })).status, 200, 'other sessions stay');

    // Space is back: the background retry stores the deletion, so a restart does not revive it.
    const stored = log.next('stored a logout that had failed');
    freeSpace();
    await stored;
    await full.close();
    full = await startServer({ dataDir });
    const afterRestart = await full.api.get('/users/@me', { token: user.token });
    assert.equal(afterRestart.status, 401, 'the logout was stored');
    assert.equal((await full.api.get('/users/@me', { token: other.body.token })).status, 200);
  } finally {
    await full.close();
    mount.unmount();
  }
});

test('login and register on a full disk answer 503 with Retry-After, not 500; tokens still work', { timeout: 30_000 }, async (t) => {
  const mount = mountTmpfs({ sizeBytes: 8 * MiB, inodes: 2000 });
  if ('skip' in mount) {
    t.skip(mount.skip);
    return;
  }
  const dataDir = path.join(mount.dir, 'data');
  const full = await startServer({ dataDir });
  try {
    const user = await registerUser(full.api);
    const idle = await registerUser(full.api);
    // Unused for two hours: its next request records the use (a write), which a full disk refuses.
    const { default: Database } = await import('better-sqlite3');
    const db = new Database(path.join(dataDir, 'directory.sqlite'));
    try {
      db.prepare('UPDATE sessions SET last_used_at = last_used_at - 7200 WHERE user_id = ?').run(idle.id);
    } finally {
      db.close();
    }
    const freeSpace = mount.fillSpace();
    assert.equal((await full.api.get('/users/@me', { token: idle.token })).status, 200, 'a token check never needs to write');
    const login = await full.api.post<ErrorBody>('/auth/login', { json: { login: user.username, password: user.password } });
    assert.equal(login.status, 503);
    assert.equal(login.headers.get('retry-after'), '5');
    assert.deepEqual(login.body, { error: 'Service unavailable', code: 'service_unavailable', message: `Not signed in: ${STORAGE_FAILING}` });
    const wrong = await full.api.post('/auth/login', { json: { login: user.username, password: 'not the password' } });
    assert.deepEqual({ status: wrong.status, body: wrong.body }, { status: 401, body: INVALID_CREDENTIALS }, 'a wrong password stays a 401');
    const register = await full.api.post<ErrorBody>('/auth/register', {
      json: { username: 'DiskFull', email: 'diskfull@example.com', password: 'a fine passphrase' },
    });
    assert.equal(register.status, 503);
    assert.equal(register.headers.get('retry-after'), '5');
    assert.deepEqual(register.body, {
      error: 'Service unavailable',
      code: 'service_unavailable',
      message: `The account was not created: ${STORAGE_FAILING}`,
    });

    freeSpace();
    assert.equal((await full.api.post('/auth/login', { json: { login: user.username, password: user.password } })).status, 200);
    const retried = await full.api.post('/auth/register', { json: { username: 'DiskFull', email: 'diskfull@example.com', password: 'a fine passphrase' } });
    assert.equal(retried.status, 201, 'the failed registration left nothing that blocks a retry');
  } finally {
    await full.close();
    mount.unmount();
  }
});

test('a registration that cannot create its user file leaves no file behind', { timeout: 30_000 }, async (t) => {
  const mount = mountTmpfs({ sizeBytes: 8 * MiB, inodes: 2000 });
  if ('skip' in mount) {
    t.skip(mount.skip);
    return;
  }
  const dataDir = path.join(mount.dir, 'data');
  const full = await startServer({ dataDir });
  try {
    const user = await registerUser(full.api);
    // A live sync socket pins the only other user file: closing idle files (which gives back
    // their WAL and shared-memory inodes) cannot cure the shortage this time.
    const { ws } = await rawSocket(`${full.url}/sync/settings?token=${user.token}`);
    t.after(() => ws.terminate());
    // Two inodes left: the new user file and its WAL can be created, its shared-memory file not.
    // The directory still has room to grow, so the failure is in the user file alone.
    const freeInodes = mount.fillInodes(2);
    const res = await full.api.post<ErrorBody>('/auth/register', {
      json: { username: 'NoInode', email: 'noinode@example.com', password: 'a fine passphrase' },
    });
    assert.equal(res.status, 503);
    assert.equal(res.body.code, 'service_unavailable');
    const leftovers = fs.readdirSync(path.join(dataDir, 'users')).filter((name) => !name.startsWith(`${user.id}.`));
    assert.deepEqual(leftovers, [], 'files of an account that does not exist');
    freeInodes();
  } finally {
    await full.close();
    mount.unmount();
  }
});
