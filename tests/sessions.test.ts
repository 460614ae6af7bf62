/**
 * Sessions as devices: named at login, listed, ended one by one or all but this one (at once for
 * REST and for open sync sockets), and expiring after an idle timeout or an absolute lifetime.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import Database from 'better-sqlite3';
import { startServer, registerUser, type Api, type TestServer, type TestUser } from './helpers/server.ts';
import { closeEvent, rawSocket } from './helpers/sync.ts';
import { ApiError, PlexichatClient } from '../client-lib/index.ts';
import { CLOSE_CODES, type AuthResponse, type ErrorBody, type Session } from '../shared/index.ts';

const UNAUTHORIZED = { error: 'Unauthorized', code: 'unauthorized', message: 'A valid bearer token is required' };
const NO_SUCH_SESSION = { error: 'Not found', code: 'not_found', message: 'No such session' };
const SESSION_KEYS = ['created_at', 'current', 'device_name', 'expires_at', 'id', 'last_used_at'];
const FIREFOX_LINUX = 'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0';
const SAFARI_IPHONE = 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1';
const DAY = 86_400;

let srv: TestServer;
before(async () => {
  srv = await startServer();
});
after(() => srv.close());

async function login(api: Api, user: TestUser, extra: { device_name?: string; userAgent?: string } = {}): Promise<string> {
  const res = await api.post<AuthResponse>('/auth/login', {
    json: { login: user.username, password: user.password, ...(extra.device_name === undefined ? {} : { device_name: extra.device_name }) },
    headers: extra.userAgent === undefined ? {} : { 'user-agent': extra.userAgent },
  });
  assert.equal(res.status, 200, res.text);
  return res.body.token;
}

async function sessionsOf(api: Api, token: string): Promise<Session[]> {
  const res = await api.get<Session[]>('/auth/sessions', { token });
  assert.equal(res.status, 200, res.text);
  return res.body;
}

/** The rows the directory holds for a user: what "cleaned up" is checked against. */
function storedSessionIds(dataDir: string, userId: string): string[] {
  const db = new Database(path.join(dataDir, 'directory.sqlite'), { readonly: true });
  try {
    return (db.prepare('SELECT id FROM sessions WHERE user_id = ? ORDER BY id').all(userId) as { id: string }[]).map((row) => row.id);
  } finally {
    db.close();
  }
}

function lastUsedAt(dataDir: string, userId: string): number {
  const db = new Database(path.join(dataDir, 'directory.sqlite'), { readonly: true });
  try {
    return (db.prepare('SELECT max(last_used_at) AS t FROM sessions WHERE user_id = ?').get(userId) as { t: number }).t;
  } finally {
    db.close();
  }
}

/** Resolves once the sweep (every few ms here) has recorded a use of the user's session at `seconds` or later. */
async function sweptAt(dataDir: string, userId: string, seconds: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (lastUsedAt(dataDir, userId) < seconds) {
    assert.ok(Date.now() < deadline, 'the sweep never recorded the open socket as a use');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

test('each login is a device: named by the client, else from its User-Agent; the list marks the current one', async () => {
  const user = await registerUser(srv.api);
  const named = await login(srv.api, user, { device_name: '  Work laptop  ', userAgent: FIREFOX_LINUX });
  await login(srv.api, user, { userAgent: SAFARI_IPHONE });
  await login(srv.api, user, { userAgent: 'curl/8.5.0' });
  await login(srv.api, user, { userAgent: '' });

  const sessions = await sessionsOf(srv.api, named);
  assert.equal(sessions.length, 5);
  for (const session of sessions) {
    assert.deepEqual(Object.keys(session).sort(), SESSION_KEYS);
    assert.match(session.id, /^[1-9][0-9]+$/);
    assert.ok(Math.abs(session.created_at - Date.now() / 1000) < 60);
    assert.equal(session.last_used_at, session.created_at, 'nothing but the login has used them within the minute');
    assert.equal(session.expires_at, session.last_used_at + 30 * DAY, 'the default idle timeout, sooner than the lifetime');
  }
  // Node's fetch says "node"; the registration's session is named from it.
  assert.deepEqual(sessions.map((s) => s.device_name).sort(), ['Safari on iOS', 'Unknown device', 'Work laptop', 'curl', 'node'].sort());
  assert.deepEqual(
    sessions.filter((s) => s.current).map((s) => s.device_name),
    ['Work laptop'],
  );
  const ids = sessions.map((s) => s.id);
  assert.deepEqual(
    ids,
    [...ids].sort((a, b) => (BigInt(b) > BigInt(a) ? 1 : -1)),
    'most recently used first',
  );
});

test('device_name is validated: 1-64 characters once trimmed, no control characters', async () => {
  const user = await registerUser(srv.api);
  const cases: [unknown, string][] = [
    ['', 'Must not be empty'],
    ['   ', 'Must not be empty'],
    ['x'.repeat(65), 'Must be at most 64 characters'],
    ['line\nbreak', 'Must not contain control characters'],
    ['bell\u0007', 'Must not contain control characters'],
    [42, 'Invalid input: expected string, received number'],
  ];
  for (const [deviceName, message] of cases) {
    const res = await srv.api.post<ErrorBody>('/auth/login', { json: { login: user.username, password: user.password, device_name: deviceName } });
    assert.equal(res.status, 400, JSON.stringify(deviceName));
    assert.deepEqual(res.body, { error: 'Invalid input', code: 'invalid_input', message: 'Validation failed', errors: [{ path: 'device_name', message }] });
  }
  const longest = await login(srv.api, user, { device_name: 'ü'.repeat(64) });
  const listed = (await sessionsOf(srv.api, longest)).find((s) => s.current);
  assert.equal(listed?.device_name, 'ü'.repeat(64));
});

test('sessions created before devices were named get their name from the stored User-Agent', async () => {
  const user = await registerUser(srv.api);
  const token = await login(srv.api, user, { device_name: 'to be forgotten', userAgent: FIREFOX_LINUX });
  const db = new Database(path.join(srv.dataDir, 'directory.sqlite'));
  try {
    db.prepare('UPDATE sessions SET device_name = NULL WHERE user_id = ?').run(user.id);
  } finally {
    db.close();
  }
  const names = (await sessionsOf(srv.api, token)).map((s) => s.device_name).sort();
  assert.deepEqual(names, ['Firefox on Linux', 'node']);
});

test('deleting a session: 204, its token is refused at once and its sync socket closed with 4401; other sessions stay', async () => {
  const user = await registerUser(srv.api);
  const phone = await login(srv.api, user, { device_name: 'Phone' });
  const { ws, status } = await rawSocket(`${srv.url}/sync/settings?token=${phone}`);
  assert.equal(status, 101);
  const closed = closeEvent(ws);
  assert.equal((await srv.api.get('/users/@me', { token: phone })).status, 200, 'the phone session is cached as valid');

  const phoneId = (await sessionsOf(srv.api, user.token)).find((s) => s.device_name === 'Phone')?.id;
  assert.ok(phoneId);
  const res = await srv.api.delete(`/auth/sessions/${phoneId}`, { token: user.token });
  assert.equal(res.status, 204);
  assert.equal(res.text, '');
  assert.deepEqual(await closed, { code: CLOSE_CODES.SESSION_REVOKED, reason: 'Session revoked' });
  const me = await srv.api.get<ErrorBody>('/users/@me', { token: phone });
  assert.deepEqual({ status: me.status, body: me.body }, { status: 401, body: UNAUTHORIZED });
  assert.equal((await rawSocket(`${srv.url}/sync/settings?token=${phone}`)).status, 401, 'no new socket either');
  assert.deepEqual(
    (await sessionsOf(srv.api, user.token)).map((s) => s.current),
    [true],
  );
  const again = await srv.api.delete<ErrorBody>(`/auth/sessions/${phoneId}`, { token: user.token });
  assert.deepEqual({ status: again.status, body: again.body }, { status: 404, body: NO_SUCH_SESSION });
});

test("someone else's session is 404 like one that does not exist, and stays signed in", async () => {
  const owner = await registerUser(srv.api);
  const intruder = await registerUser(srv.api);
  const ownerSession = (await sessionsOf(srv.api, owner.token))[0]?.id;
  assert.ok(ownerSession);
  for (const id of [ownerSession, '123456789012345678', 'abc', '0', '99999999999999999999']) {
    const res = await srv.api.delete<ErrorBody>(`/auth/sessions/${id}`, { token: intruder.token });
    assert.deepEqual({ status: res.status, body: res.body }, { status: 404, body: NO_SUCH_SESSION }, id);
  }
  assert.equal((await srv.api.get('/users/@me', { token: owner.token })).status, 200);
  assert.equal((await sessionsOf(srv.api, owner.token)).length, 1);
});

test('deleting the current session signs it out, like logout', async () => {
  const user = await registerUser(srv.api);
  const other = await login(srv.api, user);
  const current = (await sessionsOf(srv.api, user.token)).find((s) => s.current)?.id;
  assert.equal((await srv.api.delete(`/auth/sessions/${current}`, { token: user.token })).status, 204);
  const me = await srv.api.get<ErrorBody>('/users/@me', { token: user.token });
  assert.deepEqual({ status: me.status, body: me.body }, { status: 401, body: UNAUTHORIZED });
  assert.equal((await srv.api.get('/users/@me', { token: other })).status, 200);
});

test('revoke-others: 204, every other token refused at once and their sockets closed with 4401; this one stays', async () => {
  const user = await registerUser(srv.api);
  const others = [await login(srv.api, user), await login(srv.api, user), await login(srv.api, user)];
  const sockets = await Promise.all(others.map((token) => rawSocket(`${srv.url}/sync/settings?token=${token}`)));
  const closes = sockets.map(({ ws }) => closeEvent(ws));
  const own = await rawSocket(`${srv.url}/sync/settings?token=${user.token}`);
  for (const token of others) assert.equal((await srv.api.get('/users/@me', { token })).status, 200);

  const res = await srv.api.post('/auth/sessions/revoke-others', { token: user.token });
  assert.equal(res.status, 204);
  assert.equal(res.text, '');
  for (const closed of await Promise.all(closes)) assert.equal(closed.code, CLOSE_CODES.SESSION_REVOKED);
  for (const token of others) {
    const me = await srv.api.get<ErrorBody>('/users/@me', { token });
    assert.deepEqual({ status: me.status, body: me.body }, { status: 401, body: UNAUTHORIZED });
  }
  assert.equal(own.ws.readyState, own.ws.OPEN, "this session's socket stays open");
  own.ws.close();
  assert.equal((await srv.api.get('/users/@me', { token: user.token })).status, 200);
  assert.deepEqual(
    (await sessionsOf(srv.api, user.token)).map((s) => s.current),
    [true],
  );
  assert.equal((await srv.api.post('/auth/sessions/revoke-others', { token: user.token })).status, 204, 'nothing left to end is fine');
  assert.equal(storedSessionIds(srv.dataDir, user.id).length, 1, 'the rows are gone');
});

test('revoke-others does not touch other accounts, and a later login with the password still works', async () => {
  const user = await registerUser(srv.api);
  const bystander = await registerUser(srv.api);
  await srv.api.post('/auth/sessions/revoke-others', { token: user.token });
  assert.equal((await srv.api.get('/users/@me', { token: bystander.token })).status, 200);
  const fresh = await login(srv.api, user);
  assert.equal((await srv.api.get('/users/@me', { token: fresh })).status, 200);
});

test('the session routes need a valid token; a route that exists with another method is 405', async () => {
  for (const [method, path] of [
    ['GET', '/auth/sessions'],
    ['DELETE', '/auth/sessions/123456789012345678'],
    ['POST', '/auth/sessions/revoke-others'],
  ] as const) {
    const res = await srv.api.request<ErrorBody>(method, path, { token: 'pxc_nope' });
    assert.deepEqual({ status: res.status, body: res.body }, { status: 401, body: UNAUTHORIZED }, `${method} ${path}`);
    assert.equal(res.headers.get('www-authenticate'), 'Bearer');
  }
  const user = await registerUser(srv.api);
  const wrong = await srv.api.delete<ErrorBody>('/auth/sessions/revoke-others', { token: user.token });
  assert.equal(wrong.status, 405);
  assert.equal(wrong.headers.get('allow'), 'POST');
});

/** A server whose session clock the test moves; sessions last `idle` unused and `lifetime` at most. */
async function clockedServer(limits: { idle: number; lifetime: number }, sweepIntervalMs?: number) {
  const clock = { now: Date.now() };
  const server = await startServer(
    { sessionIdleSeconds: limits.idle, sessionLifetimeSeconds: limits.lifetime },
    { clock: () => clock.now, ...(sweepIntervalMs === undefined ? {} : { sessionSweepIntervalMs: sweepIntervalMs }) },
  );
  return {
    server,
    seconds: () => Math.floor(clock.now / 1000),
    advance(seconds: number) {
      clock.now += seconds * 1000;
    },
  };
}

test('last_used_at is recorded at most once a minute, and expires_at follows it', async () => {
  const { server, seconds, advance } = await clockedServer({ idle: 3600, lifetime: 10 * DAY });
  try {
    const user = await registerUser(server.api);
    const started = seconds();
    advance(30);
    let [session] = await sessionsOf(server.api, user.token);
    assert.equal(session?.last_used_at, started, 'used again within the minute: nothing written');
    assert.equal(session?.expires_at, started + 3600);
    advance(45);
    [session] = await sessionsOf(server.api, user.token);
    assert.equal(session?.last_used_at, started + 75, 'over a minute later: the use is recorded');
    assert.equal(session?.expires_at, started + 75 + 3600);
    assert.equal(session?.created_at, started);
  } finally {
    await server.close();
  }
});

test('idle timeout: a session unused for longer answers 401 like an unknown token, and its row is deleted', async () => {
  const { server, advance } = await clockedServer({ idle: 3600, lifetime: 10 * DAY });
  try {
    const user = await registerUser(server.api);
    const kept = await login(server.api, user);
    advance(3000);
    assert.equal((await server.api.get('/users/@me', { token: kept })).status, 200, 'used before the timeout: it goes on');
    advance(601);
    const me = await server.api.get<ErrorBody>('/users/@me', { token: user.token });
    assert.deepEqual({ status: me.status, body: me.body }, { status: 401, body: UNAUTHORIZED });
    assert.equal((await rawSocket(`${server.url}/sync/settings?token=${user.token}`)).status, 401);
    assert.equal(storedSessionIds(server.dataDir, user.id).length, 1, 'the expired row is cleaned up');
    assert.equal((await server.api.get('/users/@me', { token: kept })).status, 200, 'the one used 601 s ago lives on');
    const [listed] = await sessionsOf(server.api, kept);
    assert.equal(listed?.current, true);
  } finally {
    await server.close();
  }
});

test('absolute lifetime: a session in constant use still ends, and expires_at says when', async () => {
  const { server, seconds, advance } = await clockedServer({ idle: 3600, lifetime: 7200 });
  try {
    const user = await registerUser(server.api);
    const created = seconds();
    advance(3000);
    assert.equal((await sessionsOf(server.api, user.token))[0]?.expires_at, created + 3000 + 3600);
    advance(3000);
    assert.equal((await sessionsOf(server.api, user.token))[0]?.expires_at, created + 7200, 'the lifetime comes first now');
    // Cached as valid a moment ago: the cache never outlives the session.
    advance(1200);
    const me = await server.api.get<ErrorBody>('/users/@me', { token: user.token });
    assert.deepEqual({ status: me.status, body: me.body }, { status: 401, body: UNAUTHORIZED });
    assert.deepEqual(storedSessionIds(server.dataDir, user.id), []);
  } finally {
    await server.close();
  }
});

test('expired sessions are swept: their rows deleted and their open sync sockets closed with 4401', async () => {
  const { server, advance, seconds } = await clockedServer({ idle: 3600, lifetime: 7200 }, 20);
  try {
    const user = await registerUser(server.api);
    const other = await registerUser(server.api);
    const { ws, status } = await rawSocket(`${server.url}/sync/settings?token=${user.token}`);
    assert.equal(status, 101);
    const closed = closeEvent(ws);
    advance(3000);
    assert.equal((await server.api.get('/users/@me', { token: other.token })).status, 200, 'used: the other session lives on');
    // An open socket is use: past the idle timeout the connected session lives on...
    advance(601);
    await sweptAt(server.dataDir, user.id, seconds());
    assert.equal((await server.api.get('/users/@me', { token: user.token })).status, 200, 'the connected device was kept');
    // ...but not past its lifetime, however it is used.
    advance(3600);
    assert.deepEqual(await closed, { code: CLOSE_CODES.SESSION_REVOKED, reason: 'Session revoked' });
    assert.deepEqual(storedSessionIds(server.dataDir, user.id), []);
    assert.deepEqual(storedSessionIds(server.dataDir, other.id), [], 'the other one too');
  } finally {
    await server.close();
  }
});

test('a device whose sync socket stays open is in use: the idle timeout does not sign it out', async () => {
  const { server, advance, seconds } = await clockedServer({ idle: 3600, lifetime: 365 * 86400 }, 20);
  try {
    const user = await registerUser(server.api);
    const idle = await registerUser(server.api);
    const { ws } = await rawSocket(`${server.url}/sync/settings?token=${user.token}`);
    // Three idle periods with no REST call from the connected device: each sweep records its use.
    for (let i = 0; i < 3; i += 1) {
      advance(3000);
      await sweptAt(server.dataDir, user.id, seconds());
    }
    assert.equal(ws.readyState, ws.OPEN);
    assert.equal((await server.api.get('/users/@me', { token: user.token })).status, 200);
    assert.equal((await server.api.get('/users/@me', { token: idle.token })).status, 401, 'a session with no socket and no use ended');
    ws.close();
  } finally {
    await server.close();
  }
});

test('a server starting after sessions expired deletes them before anything asks', async () => {
  const first = await startServer();
  const dataDir = first.dataDir;
  const user = await registerUser(first.api);
  await first.server.close();
  const later = await startServer({ dataDir, sessionIdleSeconds: 3600 }, { clock: () => Date.now() + 3601 * 1000 });
  try {
    assert.deepEqual(storedSessionIds(dataDir, user.id), []);
  } finally {
    await later.close();
    await first.close();
  }
});

test('client-lib: login with a device name, listSessions, deleteSession, revokeOtherSessions', async () => {
  const user = await registerUser(srv.api);
  const laptop = new PlexichatClient({ baseUrl: srv.url });
  await laptop.login({ login: user.username, password: user.password, device_name: 'Laptop' });
  const phone = new PlexichatClient({ baseUrl: srv.url });
  await phone.login({ login: user.email, password: user.password, device_name: 'Phone' });

  const sessions = await laptop.listSessions();
  assert.deepEqual(sessions.map((s) => [s.device_name, s.current]).sort(), [
    ['Laptop', true],
    ['Phone', false],
    ['node', false],
  ]);
  const phoneId = sessions.find((s) => s.device_name === 'Phone')?.id ?? '';
  await laptop.deleteSession(phoneId);
  await assert.rejects(phone.me(), (error: unknown) => error instanceof ApiError && error.status === 401 && error.code === 'unauthorized');
  await assert.rejects(
    laptop.deleteSession(phoneId),
    (error: unknown) => error instanceof ApiError && error.status === 404 && error.code === 'not_found' && error.message === 'No such session',
  );
  await laptop.revokeOtherSessions();
  assert.deepEqual(
    (await laptop.listSessions()).map((s) => s.device_name),
    ['Laptop'],
  );
  assert.equal((await srv.api.get('/users/@me', { token: user.token })).status, 401);
});
