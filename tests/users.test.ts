import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { startServer, registerUser, type TestServer } from './helpers/server.ts';
import { mountTmpfs } from './fixtures/tmpfs.ts';
import type { AuthResponse, ErrorBody, PrivateUser, PublicUser } from '../shared/index.ts';

let srv: TestServer;
before(async () => {
  srv = await startServer();
});
after(() => srv.close());

const PUBLIC_KEYS = ['avatar_url', 'badges', 'created_at', 'id', 'username'];

test('GET /users/@me returns the caller, never anyone else', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  const meA = await srv.api.get<PrivateUser>('/users/@me', { token: a.token });
  const meB = await srv.api.get<PrivateUser>('/users/@me', { token: b.token });
  assert.equal(meA.status, 200);
  assert.equal(meA.body.id, a.id);
  assert.equal(meA.body.email, a.email);
  assert.equal(meB.body.id, b.id);
  assert.equal(meA.headers.get('content-type'), 'application/json; charset=utf-8');
  assert.equal(meA.headers.get('cache-control'), 'no-store');
});

test('PATCH /users/@me changes username, keeping display case, and enforces uniqueness', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  const renamed = await srv.api.patch<PrivateUser>('/users/@me', { token: a.token, json: { username: 'New.Name_1' } });
  assert.equal(renamed.status, 200);
  assert.equal(renamed.body.username, 'New.Name_1');
  assert.equal(renamed.body.id, a.id);
  // Only the case changes: the same account, allowed.
  const recased = await srv.api.patch<PrivateUser>('/users/@me', { token: a.token, json: { username: 'new.name_1' } });
  assert.equal(recased.status, 200);
  assert.equal(recased.body.username, 'new.name_1');
  const taken = await srv.api.patch<ErrorBody>('/users/@me', { token: b.token, json: { username: 'NEW.NAME_1' } });
  assert.equal(taken.status, 409);
  assert.deepEqual(taken.body, {
    error: 'Already exists',
    code: 'already_exists',
    message: 'That username is already taken',
    errors: [{ path: 'username', message: 'Already taken' }],
  });
  // The old name is free again and the new one is searchable.
  const found = await srv.api.get<PublicUser>('/users/search?username=NEW.name_1', { token: b.token });
  assert.equal(found.body.id, a.id);
  const old = await srv.api.get(`/users/search?username=${a.username}`, { token: b.token });
  assert.equal(old.status, 404);
});

test('PATCH /users/@me email: unverifies, enforces case-insensitive uniqueness', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  const changed = await srv.api.patch<PrivateUser>('/users/@me', { token: a.token, json: { email: 'Fresh.Address@example.org' } });
  assert.equal(changed.status, 200);
  assert.equal(changed.body.email, 'Fresh.Address@example.org');
  assert.equal(changed.body.email_verified, false);
  const taken = await srv.api.patch<ErrorBody>('/users/@me', { token: b.token, json: { email: 'fresh.address@EXAMPLE.org' } });
  assert.equal(taken.status, 409);
  assert.equal(taken.body.error, 'Already exists');
  assert.deepEqual(taken.body.errors, [{ path: 'email', message: 'Already taken' }]);
  const login = await srv.api.post('/auth/login', { json: { login: 'FRESH.address@example.org', password: a.password } });
  assert.equal(login.status, 200);
});

test('PATCH /users/@me password: every documented error, then other sessions are revoked', async () => {
  const a = await registerUser(srv.api);
  const other = await srv.api.post<AuthResponse>('/auth/login', { json: { login: a.username, password: a.password } });

  const missing = await srv.api.patch<ErrorBody>('/users/@me', { token: a.token, json: { password: 'brand new secret' } });
  assert.equal(missing.status, 400);
  assert.deepEqual(missing.body, {
    error: 'Missing current_password',
    code: 'missing_current_password',
    message: 'current_password is required to change the password',
    errors: [{ path: 'current_password', message: 'Required when changing password' }],
  });
  const weak = await srv.api.patch<ErrorBody>('/users/@me', { token: a.token, json: { password: 'short', current_password: a.password } });
  assert.equal(weak.status, 400);
  assert.equal(weak.body.error, 'Weak password');
  assert.equal(weak.body.code, 'weak_password');
  const wrong = await srv.api.patch<ErrorBody>('/users/@me', {
    token: a.token,
    json: { password: 'brand new secret', current_password: 'not my password' },
  });
  assert.equal(wrong.status, 400, 'a wrong current password is a 400, not a 401');
  assert.deepEqual(wrong.body, {
    error: 'Invalid input',
    code: 'invalid_current_password',
    message: 'current_password is incorrect',
    errors: [{ path: 'current_password', message: 'Incorrect password' }],
  });
  assert.equal((await srv.api.get('/users/@me', { token: other.body.token })).status, 200, 'failed attempts revoke nothing');

  const ok = await srv.api.patch<PrivateUser>('/users/@me', {
    token: a.token,
    json: { password: 'brand new secret', current_password: a.password },
  });
  assert.equal(ok.status, 200);
  assert.equal(ok.body.id, a.id);
  assert.equal((await srv.api.get('/users/@me', { token: a.token })).status, 200, 'the current session stays');
  assert.equal((await srv.api.get('/users/@me', { token: other.body.token })).status, 401, 'other sessions end');
  assert.equal((await srv.api.post('/auth/login', { json: { login: a.username, password: a.password } })).status, 401);
  assert.equal((await srv.api.post('/auth/login', { json: { login: a.username, password: 'brand new secret' } })).status, 200);
});

test('PATCH /users/@me refuses unknown fields and bad values with Invalid input', async () => {
  const a = await registerUser(srv.api);
  const bodies: unknown[] = [
    { email_verified: true },
    { id: '1' },
    { username: 'x' },
    { username: 'has space' },
    { username: 42 },
    { email: 'nope' },
    { email: null },
    { password: 123, current_password: a.password },
    { password: 'p'.repeat(129), current_password: a.password },
    [],
    'text',
    42,
    null,
  ];
  for (const json of bodies) {
    const res = await srv.api.patch<ErrorBody>('/users/@me', { token: a.token, json });
    assert.equal(res.status, 400, JSON.stringify(json));
    assert.equal(res.body.error, 'Invalid input', JSON.stringify(json));
  }
  const me = await srv.api.get<PrivateUser>('/users/@me', { token: a.token });
  assert.equal(me.body.username, a.username, 'nothing was written');
  assert.equal(me.body.email_verified, false);
});

test('GET /users/search: exact, case-insensitive, public fields only, documented errors', async () => {
  const a = await registerUser(srv.api, 'Search.Me');
  const b = await registerUser(srv.api);
  const found = await srv.api.get<PublicUser>('/users/search?username=sEARCH.me', { token: b.token });
  assert.equal(found.status, 200);
  assert.deepEqual(found.body, { id: a.id, username: 'Search.Me', avatar_url: null, created_at: found.body.created_at, badges: [] });
  assert.deepEqual(Object.keys(found.body).sort(), PUBLIC_KEYS);

  const usernameRequired = { error: 'Username required', code: 'username_required', message: 'The username query parameter is required' };
  for (const query of ['', '?username=', '?username=%20%20', '?other=x']) {
    const res = await srv.api.get(`/users/search${query}`, { token: b.token });
    assert.equal(res.status, 400, query);
    assert.deepEqual(res.body, usernameRequired);
  }
  const notFound = { error: 'User not found', code: 'user_not_found', message: 'No user with that username' };
  for (const name of ['search', 'search.me.too', 'x', 'a'.repeat(5000), '%00', 'Search.Me%00']) {
    const res = await srv.api.get(`/users/search?username=${name}`, { token: b.token });
    assert.equal(res.status, 404, name.slice(0, 20));
    assert.deepEqual(res.body, notFound);
  }
});

test('GET /users/{user_id}: public object, documented errors', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  const res = await srv.api.get<PublicUser>(`/users/${a.id}`, { token: b.token });
  assert.equal(res.status, 200);
  assert.deepEqual(Object.keys(res.body).sort(), PUBLIC_KEYS);
  assert.equal(res.body.username, a.username);
  assert.ok(!res.text.includes(a.email), 'no email leaks');

  const invalid = { error: 'Invalid user ID', code: 'invalid_user_id', message: 'user_id must be a snowflake id (decimal digits)' };
  for (const id of ['abc', '-1', '0', '01', '1.5', '12a', '99999999999999999999', '9223372036854775808', '%20', 'null']) {
    const r = await srv.api.get(`/users/${id}`, { token: b.token });
    assert.equal(r.status, 400, id);
    assert.deepEqual(r.body, invalid);
  }
  const missing = await srv.api.get(`/users/123456789012345678`, { token: b.token });
  assert.equal(missing.status, 404);
  assert.deepEqual(missing.body, { error: 'User not found', code: 'user_not_found', message: 'No user with that id' });
});

test("users never see each other's private fields anywhere", async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  const views = [
    await srv.api.get(`/users/${a.id}`, { token: b.token }),
    await srv.api.get(`/users/search?username=${a.username}`, { token: b.token }),
    await srv.api.get('/users/@me', { token: b.token }),
    await srv.api.get('/users/@me/messaging-settings', { token: b.token }),
  ];
  for (const view of views) {
    assert.ok(!view.text.includes(a.email), view.text);
    assert.ok(!view.text.includes('email_verified') || !view.text.includes(a.id), view.text);
  }
});

test('two password changes racing from the same current password: exactly one wins', async () => {
  // Both verify the same current password while hashing (no lock held); the second to commit must
  // not overwrite the first's password and sign out the session that made it.
  for (let round = 0; round < 3; round += 1) {
    const a = await registerUser(srv.api);
    const second = await srv.api.post<AuthResponse>('/auth/login', { json: { login: a.username, password: a.password } });
    const sessions = [a.token, second.body.token];
    const changes = await Promise.all(
      sessions.map((token, i) => srv.api.patch<ErrorBody>('/users/@me', { token, json: { password: `new passphrase ${i}`, current_password: a.password } })),
    );
    assert.deepEqual(changes.map((c) => c.status).sort(), [200, 400], changes.map((c) => c.text).join(' | '));
    const winner = changes.findIndex((c) => c.status === 200);
    assert.deepEqual(changes[1 - winner]!.body, {
      error: 'Invalid input',
      code: 'invalid_current_password',
      message: 'current_password is incorrect',
      errors: [{ path: 'current_password', message: 'Incorrect password' }],
    });
    assert.equal((await srv.api.get('/users/@me', { token: sessions[winner] })).status, 200, 'the winner stays signed in');
    assert.equal((await srv.api.get('/users/@me', { token: sessions[1 - winner] })).status, 401, 'the other session ended');
    const login = (password: string) => srv.api.post('/auth/login', { json: { login: a.username, password } });
    assert.equal((await login(`new passphrase ${winner}`)).status, 200, "the winner's password is the password");
    assert.equal((await login(`new passphrase ${1 - winner}`)).status, 401);
  }
});

const STORAGE_FAILING = "the server's storage is failing right now (disk full, I/O error or no file handle left); try again later";

test('profile reads and writes answer 503 with Retry-After when storage fails, not 500', { timeout: 30_000 }, async (t) => {
  const mount = mountTmpfs({ sizeBytes: 8 * 1024 * 1024, inodes: 2000 });
  if ('skip' in mount) {
    t.skip(mount.skip);
    return;
  }
  // Two open user files at most: the first user's file is closed (and its WAL and shared-memory
  // files removed) once two more users have registered, so reading it must open it again.
  const full = await startServer({ dataDir: path.join(mount.dir, 'data'), maxOpenUserFiles: 2 });
  try {
    const evicted = await registerUser(full.api);
    const user = await registerUser(full.api);
    await registerUser(full.api);
    const publicView = await full.api.get<PublicUser>(`/users/${evicted.id}`, { token: user.token });
    assert.equal(publicView.status, 200);

    const freeSpace = mount.fillSpace();
    const write = await full.api.patch<ErrorBody>('/users/@me', { token: user.token, json: { username: 'Renamed.On.Full.Disk' } });
    assert.equal(write.status, 503);
    assert.equal(write.headers.get('retry-after'), '5');
    assert.deepEqual(write.body, { error: 'Service unavailable', code: 'service_unavailable', message: `The change was not saved: ${STORAGE_FAILING}` });
    const me = await full.api.get<PrivateUser>('/users/@me', { token: user.token });
    assert.equal(me.status, 200, 'reads still work on a full disk');
    assert.equal(me.body.username, user.username, 'nothing was changed');

    // No inode left: the closed user file cannot be opened again (SQLite needs its -wal and -shm).
    const freeInodes = mount.fillInodes();
    const read = await full.api.get<ErrorBody>('/users/@me', { token: evicted.token });
    assert.equal(read.status, 503);
    assert.equal(read.headers.get('retry-after'), '5');
    assert.deepEqual(read.body, { error: 'Service unavailable', code: 'service_unavailable', message: `Could not read: ${STORAGE_FAILING}` });
    // Another user's public profile is their card in the directory, not their file: served as before.
    const lookup = await full.api.get<PublicUser>(`/users/${evicted.id}`, { token: user.token });
    assert.deepEqual({ status: lookup.status, body: lookup.body }, { status: 200, body: publicView.body });

    freeInodes();
    freeSpace();
    assert.equal((await full.api.get('/users/@me', { token: evicted.token })).status, 200);
    const renamed = await full.api.patch<PrivateUser>('/users/@me', { token: user.token, json: { username: 'Renamed.On.Full.Disk' } });
    assert.equal(renamed.status, 200);
    assert.equal(renamed.body.username, 'Renamed.On.Full.Disk');
  } finally {
    await full.close();
    mount.unmount();
  }
});
