/**
 * Cluster mode (docs/cluster.md, Relaying): every request that touches a user's file is served by
 * that user's owner node, those without a session too (a login, its 2FA step, a mailed token, a
 * public avatar), and a new account's file is made by its owner. Proven by what each node opened:
 * after these flows through other nodes, only the owner ever opened the user's file.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { Secret, TOTP } from 'otpauth';
import { registerUser, startServer, tempDir, type TestServer, type TestUser } from './helpers/server.ts';
import { RedisServer, missingRedis } from './helpers/redis.ts';
import { startSmtpServer, tokenIn, type TestSmtpServer } from './helpers/mail.ts';
import { makePng } from './helpers/images.ts';
import { captureLog } from './fixtures/log.ts';
import { KEY_PREFIX } from '../server/cluster/leases.ts';
import { CLUSTER_UNREACHABLE } from '../server/core/storage-failure.ts';
import type { AuthResponse, BackupCodesResponse, LoginResponse, PrivateUser, TotpSetupResponse } from '../shared/index.ts';

const skip = missingRedis();
const METRICS_TOKEN = 'cluster-metrics-token-0123456789';
/**
 * Long enough that no lease lapses on a busy machine (an owner's event loop held up past four
 * fifths of it would give its users up, and the next node to need one would rightly take it).
 */
const LEASE_MS = 10_000;
const NAMES = ['a', 'b', 'c'];
let redis: RedisServer;
let admin: Redis;
let smtp: TestSmtpServer;
let dataDir: string;
let nodes: TestServer[] = [];

function startNode(nodeId: string): Promise<TestServer> {
  return startServer({ dataDir, redisUrl: redis.url, nodeId, leaseMs: LEASE_MS, metricsToken: METRICS_TOKEN, smtpUrl: smtp.url });
}

before(async () => {
  if (skip !== undefined) return;
  redis = await RedisServer.start();
  admin = new Redis(redis.url);
  smtp = await startSmtpServer();
  dataDir = tempDir('plexichat-owner-serves-');
  nodes = [];
  for (const name of NAMES) nodes.push(await startNode(name));
});

after(async () => {
  if (skip !== undefined) return;
  for (const node of nodes) await node.close();
  admin.disconnect();
  await smtp.close();
  await redis.close();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

function node(index: number): TestServer {
  const found = nodes[index];
  if (found === undefined) throw new Error(`no node ${index}`);
  return found;
}

/** How many user files the node has opened since it started (`plexichat_user_files_opened_total`). */
async function filesOpened(server: TestServer): Promise<number> {
  const res = await server.api.get('/metrics', { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
  assert.equal(res.status, 200);
  const line = res.text.split('\n').find((l) => l.startsWith('plexichat_user_files_opened_total '));
  assert.ok(line, 'plexichat_user_files_opened_total in the metrics');
  return Number(line.split(' ')[1]);
}

/** Runs `flow` and checks that no node but `owner` opened a user file meanwhile. */
async function onlyOwnerOpens(owner: number, flow: () => Promise<void>): Promise<void> {
  const before = await Promise.all(nodes.map(filesOpened));
  await flow();
  const after = await Promise.all(nodes.map(filesOpened));
  nodes.forEach((_, index) => {
    if (index !== owner) assert.equal(after[index], before[index], `node ${NAMES[index]} (not the owner) opened no user file`);
  });
}

/** The node holding the user's lease, from Redis (`<node>|<token>`). */
async function ownerOf(userId: string): Promise<string | undefined> {
  return (await admin.get(`${KEY_PREFIX}lease:${userId}`))?.split('|')[0];
}

function codeAt(secret: string, ms: number): string {
  return TOTP.generate({ secret: Secret.fromBase32(secret), algorithm: 'SHA1', digits: 6, period: 30, timestamp: ms });
}

/** Turns 2FA on for the user (signed-in requests through `via`, relayed to the owner); returns the secret. */
async function enableTotp(via: TestServer, user: TestUser): Promise<string> {
  const setup = await via.api.post<TotpSetupResponse>('/users/@me/totp/setup', { token: user.token, json: { password: user.password } });
  assert.equal(setup.status, 200, setup.text);
  const enabled = await via.api.post<BackupCodesResponse>('/users/@me/totp/enable', {
    token: user.token,
    json: { code: codeAt(setup.body.secret, Date.now()) },
  });
  assert.equal(enabled.status, 200, enabled.text);
  return setup.body.secret;
}

async function ticketThrough(via: TestServer, user: TestUser): Promise<string> {
  const res = await via.api.post<LoginResponse>('/auth/login', { json: { login: user.username, password: user.password } });
  assert.equal(res.status, 200, res.text);
  assert.ok('ticket' in res.body, 'a 2FA account answers a ticket');
  return res.body.ticket;
}

const INVALID_CREDENTIALS = { error: 'Invalid credentials', code: 'invalid_credentials', message: 'Wrong login or password' };
const INVALID_SECOND_FACTOR = {
  error: 'Invalid credentials',
  code: 'invalid_second_factor',
  message: 'Wrong code, or the sign-in ticket is not valid (unknown, used, expired or out of attempts): sign in with the password again if this persists',
};
const INVALID_MAIL_TOKEN = {
  error: 'Invalid input',
  code: 'invalid_mail_token',
  message: 'The token is unknown, expired or already used',
  errors: [{ path: 'token', message: 'Unknown, expired or already used' }],
};
const NO_AVATAR = { error: 'Not found', code: 'avatar_not_found', message: 'This user has no avatar' };

test('a registration through one node: that node owns the new user, made their file, and serves them for the others', { skip, timeout: 30_000 }, async () => {
  await onlyOwnerOpens(1, async () => {
    const user = await registerUser(node(1).api);
    assert.equal(await ownerOf(user.id), 'b', 'claimed by the node that received the registration');
    // Through the others: relayed to it.
    for (const other of [0, 2]) {
      const me = await node(other).api.get<PrivateUser>('/users/@me', { token: user.token });
      assert.equal(me.status, 200, me.text);
      assert.equal(me.body.id, user.id);
    }
  });
  // Registered through every node at once: each owns its own.
  const many = await Promise.all([0, 1, 2, 0, 1, 2].map((index) => registerUser(node(index).api)));
  assert.deepEqual(await Promise.all(many.map((u) => ownerOf(u.id))), ['a', 'b', 'c', 'a', 'b', 'c']);
});

test('a login through a node that does not own the account is answered by the owner; unknown ones are answered where they arrive', {
  skip,
  timeout: 30_000,
}, async () => {
  const user = await registerUser(node(0).api);
  await onlyOwnerOpens(0, async () => {
    for (const index of [1, 2]) {
      const login = await node(index).api.post<AuthResponse>('/auth/login', { json: { login: user.email.toUpperCase(), password: user.password } });
      assert.equal(login.status, 200, login.text);
      assert.equal(login.body.user.id, user.id);
      const me = await node(index).api.get<PrivateUser>('/users/@me', { token: login.body.token });
      assert.equal(me.status, 200);
      const wrong = await node(index).api.post('/auth/login', { json: { login: user.username, password: 'not the password' } });
      assert.deepEqual({ status: wrong.status, body: wrong.body }, { status: 401, body: INVALID_CREDENTIALS });
    }
  });
  const unknown = await node(1).api.post('/auth/login', { json: { login: `nobody${randomBytes(4).toString('hex')}`, password: 'whatever it is' } });
  assert.deepEqual({ status: unknown.status, body: unknown.body }, { status: 401, body: INVALID_CREDENTIALS });
});

test('2FA: the password through one node, the code through a third; the owner holds the ticket and spends the code', { skip, timeout: 30_000 }, async () => {
  const user = await registerUser(node(0).api);
  const secret = await enableTotp(node(2), user);
  await onlyOwnerOpens(0, async () => {
    const ticket = await ticketThrough(node(1), user);
    assert.match(ticket, new RegExp(`^pxt_${user.id}_[A-Za-z0-9_-]{43}$`));
    // A ticket naming the account that the owner never issued: refused there like any other.
    const forged = `pxt_${user.id}_${randomBytes(32).toString('base64url')}`;
    const refused = await node(2).api.post('/auth/login/totp', { json: { ticket: forged, code: codeAt(secret, Date.now() + 30_000) } });
    assert.deepEqual({ status: refused.status, body: refused.body }, { status: 401, body: INVALID_SECOND_FACTOR });
    // The next step's code: the one enabling 2FA was spent.
    const done = await node(2).api.post<AuthResponse>('/auth/login/totp', { json: { ticket, code: codeAt(secret, Date.now() + 30_000) } });
    assert.equal(done.status, 200, done.text);
    assert.equal(done.body.user.id, user.id);
    assert.equal((await node(1).api.get('/users/@me', { token: done.body.token })).status, 200);
  });
});

test('a ticket whose account moved to another node since is not found there: 401, as an expired one', { skip, timeout: 30_000 }, async () => {
  // A fourth node of its own, shut down once it issued the ticket (it gives its users up).
  const d = await startNode('d');
  let closed = false;
  try {
    const user = await registerUser(d.api);
    const secret = await enableTotp(d, user);
    const ticket = await ticketThrough(node(0), user);
    await d.close();
    closed = true;
    const res = await node(1).api.post('/auth/login/totp', { json: { ticket, code: codeAt(secret, Date.now() + 30_000) } });
    assert.deepEqual({ status: res.status, body: res.body }, { status: 401, body: INVALID_SECOND_FACTOR });
    assert.equal(await ownerOf(user.id), 'b', 'served by the node that took the account over');
    // Signing in again works through the new owner.
    assert.equal((await ticketThrough(node(2), user)).startsWith(`pxt_${user.id}_`), true);
  } finally {
    if (!closed) await d.close();
  }
});

test('email verification and password reset with a mailed token, through nodes that do not own the account', { skip, timeout: 30_000 }, async () => {
  const mark = smtp.received.length;
  const user = await registerUser(node(2).api);
  const verification = tokenIn((await smtp.message(mark, user.email)).mail, 'pxv_');
  await onlyOwnerOpens(2, async () => {
    const verified = await node(0).api.post('/auth/verify-email', { json: { token: verification } });
    assert.equal(verified.status, 204, verified.text);
    const spent = await node(1).api.post('/auth/verify-email', { json: { token: verification } });
    assert.deepEqual({ status: spent.status, body: spent.body }, { status: 400, body: INVALID_MAIL_TOKEN });
    const me = await node(1).api.get<PrivateUser>('/users/@me', { token: user.token });
    assert.equal(me.body.email_verified, true);
  });
  // Asked for through the owner: forgot-password is served where it arrives (it finds the account
  // after answering, which another change moves to the directory).
  const resetMark = smtp.received.length;
  assert.equal((await node(2).api.post('/auth/password/forgot', { json: { email: user.email } })).status, 204);
  const reset = tokenIn((await smtp.message(resetMark, user.email)).mail, 'pxr_');
  await onlyOwnerOpens(2, async () => {
    const done = await node(0).api.post('/auth/password/reset', { json: { token: reset, password: 'a brand new password 42' } });
    assert.equal(done.status, 204, done.text);
    // Through a node that has not seen the token (one that has drops it when the end is announced, within a second).
    assert.equal((await node(0).api.get('/users/@me', { token: user.token })).status, 401, 'every session ended');
    const login = await node(1).api.post('/auth/login', { json: { login: user.username, password: 'a brand new password 42' } });
    assert.equal(login.status, 200, login.text);
    const again = await node(1).api.post('/auth/password/reset', { json: { token: reset, password: 'yet another password 43' } });
    assert.deepEqual({ status: again.status, body: again.body }, { status: 400, body: INVALID_MAIL_TOKEN });
  });
  const unknown = await node(0).api.post('/auth/verify-email', { json: { token: `pxv_${randomBytes(32).toString('base64url')}` } });
  assert.deepEqual({ status: unknown.status, body: unknown.body }, { status: 400, body: INVALID_MAIL_TOKEN });
});

test("a user's avatar fetched through nodes that do not own them; an unknown user's claims nothing", { skip, timeout: 30_000 }, async () => {
  const user = await registerUser(node(1).api);
  const form = new FormData();
  form.append('file', new Blob([new Uint8Array(await makePng())], { type: 'image/png' }), 'me.png');
  const uploaded = await fetch(`${node(0).url}/users/@me/avatar`, { method: 'POST', headers: { authorization: `Bearer ${user.token}` }, body: form });
  assert.equal(uploaded.status, 200, await uploaded.text());
  await onlyOwnerOpens(1, async () => {
    const fetched = await fetch(`${node(2).url}/avatars/users/${user.id}`);
    assert.equal(fetched.status, 200);
    assert.equal(fetched.headers.get('content-type'), 'image/webp');
    const etag = fetched.headers.get('etag');
    assert.ok(etag);
    assert.ok((await fetched.arrayBuffer()).byteLength > 0);
    const cached = await fetch(`${node(0).url}/avatars/users/${user.id}`, { headers: { 'if-none-match': etag } });
    assert.equal(cached.status, 304);
    assert.equal(cached.headers.get('etag'), etag);
  });
  // No such user: answered where it arrives, as one without an avatar, and no lease or fencing
  // counter is left in Redis for an id anyone can make up.
  const unknownId = '123456789012345678';
  const none = await node(2).api.get(`/avatars/users/${unknownId}`);
  assert.deepEqual({ status: none.status, body: none.body }, { status: 404, body: NO_AVATAR });
  assert.equal(await admin.exists(`${KEY_PREFIX}lease:${unknownId}`, `${KEY_PREFIX}fence:${unknownId}`), 0);
});

test('Redis unreachable: an avatar whose owner cannot be found is 503, retryable; so is a signed-in request whose body comes after that is known', {
  skip,
  timeout: 60_000,
}, async () => {
  // A node whose log the test reads, to send a body only once the node found it cannot place the user.
  const log = captureLog('warn');
  const e = await startServer({ dataDir, redisUrl: redis.url, nodeId: 'e', leaseMs: LEASE_MS }, { logger: log.logger });
  const unreachable = { error: 'Service unavailable', code: 'service_unavailable', message: CLUSTER_UNREACHABLE };
  try {
    const user = await registerUser(node(0).api);
    // Its token is known to `e` from now on (cached): nothing more to read in Redis for it.
    assert.equal((await e.api.get('/users/@me', { token: user.token })).status, 200);
    await redis.stop();
    try {
      const res = await node(1).api.get(`/avatars/users/${user.id}`);
      assert.equal(res.status, 503);
      assert.equal(res.headers.get('retry-after'), '1');
      assert.deepEqual(res.body, unreachable);

      // The owner is looked up while the body arrives; the refusal comes first and waits for it.
      const socket = net.connect(e.server.port, '127.0.0.1');
      let text = '';
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => (text += chunk));
      await once(socket, 'connect');
      const refused = log.next('could not look up who serves a user');
      socket.write(
        `PATCH /users/@me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${user.token}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n`,
      );
      await refused;
      socket.write('{}');
      while (!/\r\n\r\n[\s\S]*\}$/.test(text)) await once(socket, 'data');
      socket.destroy();
      assert.match(text, /^HTTP\/1\.1 503 /);
      assert.deepEqual(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)), unreachable);
    } finally {
      await redis.run();
    }
  } finally {
    await e.close();
  }
});
