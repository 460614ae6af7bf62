/**
 * A data folder moving from one node to a cluster (docs/cluster.md): its directory (sessions,
 * relationships, DM channels, the users index) is copied into Redis at the first clustered start,
 * served from there by every node, and the stale directory.sqlite is refused from then on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Redis } from 'ioredis';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import { AccountsAdmin } from '../server/admin/accounts.ts';
import { makeConfig } from '../server/config.ts';
import { DIRECTORY_IN_REDIS } from '../server/storage/sqlite-directory.ts';
import { type Api, registerUser, runCommand, startServer, tempDir, type TestServer, type TestUser } from './helpers/server.ts';
import { withCluster } from './helpers/cluster.ts';
import { missingRedis } from './helpers/redis.ts';
import { notesChannelOf, rawSocket } from './helpers/sync.ts';
import { captureLog } from './fixtures/log.ts';
import Database from 'better-sqlite3';
import { DIRECTORY_MIGRATIONS } from '../server/storage/schema.ts';
import type { PrivateUser, PublicUser } from '../shared/index.ts';
import { makePng } from './helpers/images.ts';

const skip = missingRedis();

interface Entry {
  id: string;
  type?: string;
  recipient_id?: string;
}

/** Retries `check` until it holds, for at most `ms`: a bounded wait for what another node does, no sleep. */
async function within(ms: number, label: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${label}`);
}

async function login(api: Api, user: TestUser): Promise<string> {
  const res = await api.post<{ token: string }>('/auth/login', { json: { login: user.username, password: user.password } });
  assert.equal(res.status, 200);
  return res.body.token;
}

test('a folder moving to a cluster keeps its sessions, friends and DM channels; one node and commands without Redis then refuse it', {
  skip,
  timeout: 60_000,
}, async () => {
  await withCluster('plexichat-move-', async ({ dataDir, redis, startNode, stopNodes }) => {
    // One node, as a self-hoster runs it.
    const single = await startServer({ dataDir });
    const alice = await registerUser(single.api);
    const bob = await registerUser(single.api);
    const aliceLaptop = await login(single.api, alice);
    assert.equal((await single.api.request('PUT', `/users/@me/relationships/${bob.id}`, { token: alice.token, json: { type: 'friend' } })).status, 200);
    assert.equal((await single.api.request('PUT', `/users/@me/relationships/${alice.id}`, { token: bob.token, json: { type: 'friend' } })).status, 200);
    const dm = await single.api.post<Entry>('/users/@me/channels', { token: alice.token, json: { recipient_id: bob.id } });
    assert.equal(dm.status, 200);
    await single.close();

    // Two nodes on Redis: the first to start copies the directory; both serve from Redis.
    const a = await startNode('a', 2000);
    const b = await startNode('b', 2000);
    const client = new Redis(redis.url);
    try {
      assert.equal(await client.scard('plexichat:dir:users'), 2, 'the users index is in Redis');
    } finally {
      client.disconnect();
    }
    assert.equal((await b.api.get<{ id: string }>('/users/@me', { token: aliceLaptop })).body.id, alice.id, 'a session started on the single node works');
    const sessions = await a.api.get<Entry[]>('/auth/sessions', { token: alice.token });
    assert.equal(sessions.body.length, 2);
    const friends = await b.api.get<Entry[]>('/users/@me/relationships', { token: alice.token });
    assert.deepEqual(
      friends.body.map((entry) => ({ id: entry.id, type: entry.type })),
      [{ id: bob.id, type: 'friend' }],
    );
    const channels = await a.api.get<Entry[]>('/users/@me/channels', { token: bob.token });
    assert.deepEqual(
      channels.body.map((entry) => ({ id: entry.id, recipient_id: entry.recipient_id })),
      [{ id: dm.body.id, recipient_id: alice.id }],
    );
    // Logging out through one node ends the session on the other (the directory is shared).
    assert.equal((await a.api.post('/auth/logout', { token: aliceLaptop })).status, 204);
    assert.equal((await b.api.get('/users/@me', { token: aliceLaptop })).status, 401);
    // An admin command given the nodes' Redis works on the cluster's directory, and the sessions
    // it ends are closed on every node.
    assert.equal((await b.api.get('/users/@me', { token: bob.token })).status, 200, "bob's session is in b's cache");
    const admin = await AccountsAdmin.open(makeConfig({ dataDir, redisUrl: redis.url, logLevel: 'silent' }), captureLog().logger);
    try {
      assert.deepEqual((await admin.list()).map((account) => account.id).sort(), [alice.id, bob.id].sort());
      assert.equal(await admin.resetPassword(bob.id, 'a brand new passphrase for bob'), 'confirmed');
    } finally {
      await admin.close();
    }
    await within(5_000, "bob's old session refused on b", async () => (await b.api.get('/users/@me', { token: bob.token })).status === 401);
    const listed = await runCommand(['admin', 'user', 'list', '--json', '--data-dir', dataDir, '--redis-url', redis.url]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual((JSON.parse(listed.stdout) as { username: string }[]).map((account) => account.username).sort(), [alice.username, bob.username].sort());
    // doctor compares the user files with the cluster's users index; a backup says the directory
    // is Redis's to keep.
    const doctor = await runCommand(['doctor', '--data-dir', dataDir, '--redis-url', redis.url]);
    assert.equal(doctor.code, 0, doctor.stdout + doctor.stderr);
    const backupDir = tempDir('plexichat-move-backup-');
    try {
      const backup = await runCommand(['backup', `${backupDir}/copy`, '--data-dir', dataDir, '--redis-url', redis.url]);
      assert.equal(backup.code, 0, backup.stderr);
      assert.match(backup.stderr, /the directory \(users index, sessions, relationships, DM channels\) is in the cluster's Redis, not in this backup/);
    } finally {
      fs.rmSync(backupDir, { recursive: true, force: true });
    }
    const refused = await runCommand(['doctor', '--data-dir', dataDir]);
    assert.equal(refused.code, 1);
    assert.ok(refused.stderr.includes(DIRECTORY_IN_REDIS), refused.stderr);
    // A node started later finds the folder moved and copies nothing.
    const c = await startNode('c', 2000);
    assert.equal((await c.api.get<Entry[]>('/auth/sessions', { token: alice.token })).body.length, 1);
    await stopNodes();

    // directory.sqlite is out of date now: one node, or a command without --redis-url, refuses it.
    await assert.rejects(startServer({ dataDir }), (error: Error) => error.message === DIRECTORY_IN_REDIS);
    assert.throws(
      () => new AccountsAdmin(makeConfig({ dataDir, logLevel: 'silent' }), captureLog().logger),
      (error: Error) => error.message === DIRECTORY_IN_REDIS,
    );
  });
});

test('Redis restarted without its data: the nodes derive the users index again from the user files; sessions are to start again', {
  skip,
  timeout: 60_000,
}, async () => {
  await withCluster('plexichat-lost-', async ({ redis, startNode }) => {
    const a = await startNode('a', 2000);
    const b = await startNode('b', 2000);
    const alice = await registerUser(a.api);
    await redis.stop();
    redis.wipe();
    await redis.run();
    // Back, the nodes find the index empty and derive it again: alice can sign in (through either node).
    await within(
      10_000,
      'alice signs in again',
      async () => (await b.api.post('/auth/login', { json: { login: alice.username, password: alice.password } })).status === 200,
    );
    assert.equal((await a.api.get('/auth/sessions', { token: alice.token })).status, 401, 'her old session went with Redis');
    // Her name is still hers: nobody else can register it.
    const taken = await a.api.post('/auth/register', {
      json: { username: alice.username, email: 'someone-else@example.com', password: 'a long enough password' },
    });
    assert.equal(taken.status, 409);
  });
});

test('while Redis hangs, a token not seen lately waits for the directory: a client that gives up meanwhile costs nothing, and the rest is served once Redis answers', {
  skip,
  timeout: 60_000,
}, async () => {
  await withCluster('plexichat-hang-', async ({ redis, startNode }) => {
    const node = await startNode('a', 5000);
    const alice = await registerUser(node.api);
    // A second session: its token has never been checked, so no node has it in its cache.
    const token = await login(node.api, alice);
    const channel = await notesChannelOf(node.api, alice);
    redis.pause();
    try {
      // Upgrades and requests that must read the directory wait (at most the command timeout);
      // their clients give up first. Once /health, asked after them, is answered, the server has
      // read them (their bytes were in before its, and one turn of its loop reads every socket).
      const url = new URL(node.url);
      const waiting = [
        ...[0, 1, 2].map(() => ({
          path: `/sync/${channel}?token=${token}`,
          headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': randomBytes(16).toString('base64') },
        })),
        { path: '/users/@me', headers: { authorization: `Bearer ${token}` } },
      ].map(async ({ path, headers }) => {
        const req = http.request({ host: url.hostname, port: url.port, path, headers });
        req.on('error', () => undefined);
        req.end();
        await once(req, 'finish');
        return req;
      });
      const sent = await Promise.all(waiting);
      assert.equal((await node.api.get('/health')).status, 200);
      for (const req of sent) req.destroy();
    } finally {
      redis.resume();
    }
    // The node is alive, and the same token works once Redis answers again.
    await within(10_000, 'served again', async () => (await node.api.get('/users/@me', { token })).status === 200);
    const { ws, status } = await rawSocket(`${node.url}/sync/${channel}?token=${token}`);
    assert.equal(status, 101);
    ws.close();
  });
});

test('an admin command given --redis-url takes the user from the node serving them: a badge it gives is served at once, without waiting for a poll', {
  skip,
  timeout: 60_000,
}, async () => {
  await withCluster('plexichat-admin-', async ({ dataDir, redis, startNode }) => {
    // The poll pushed far out: only the command's announcement can make the node look.
    const node = await startNode('a', 5000, { externalChangePollMs: 600_000 });
    const alice = await registerUser(node.api);
    assert.deepEqual((await node.api.get<{ badges: string[] }>('/users/@me', { token: alice.token })).body.badges, []);
    const admin = await AccountsAdmin.open(makeConfig({ dataDir, redisUrl: redis.url, logLevel: 'silent' }), captureLog().logger);
    try {
      const { notice } = await admin.change(alice.id, () => admin.users.addBadge(alice.id, 'early_supporter'));
      assert.equal(notice, 'confirmed');
    } finally {
      await admin.close();
    }
    await within(5_000, 'the badge is served', async () => {
      const me = await node.api.get<{ badges: string[] }>('/users/@me', { token: alice.token });
      return me.body.badges.includes('early_supporter');
    });
  });
});

/** A user's public object as their own file makes it (GET /users/@me), for comparing with what others are answered. */
async function publicFromFile(api: Api, user: TestUser): Promise<PublicUser> {
  const me = await api.get<PrivateUser>('/users/@me', { token: user.token });
  assert.equal(me.status, 200);
  const { id, username, avatar_url, created_at, badges } = me.body;
  return { id, username, avatar_url, created_at, badges };
}

const CANNOT_MESSAGE = { error: 'Cannot message', code: 'cannot_message', message: 'You cannot message this user' };

async function openDm(api: Api, sender: TestUser, recipientId: string): Promise<{ status: number; body: unknown }> {
  const res = await api.post('/users/@me/channels', { token: sender.token, json: { recipient_id: recipientId } });
  return { status: res.status, body: res.body };
}

test("a user's card changed through one node is what every node answers: avatar, badges, DM privacy", { skip, timeout: 60_000 }, async () => {
  await withCluster('plexichat-cards-', async ({ dataDir, redis, startNode }) => {
    const a = await startNode('a', 5000);
    const b = await startNode('b', 5000);
    const alice = await registerUser(a.api);
    const bob = await registerUser(b.api);

    const body = new FormData();
    body.append('file', new Blob([new Uint8Array(await makePng())], { type: 'image/png' }), 'avatar.png');
    const upload = await fetch(`${a.url}/users/@me/avatar`, { method: 'POST', headers: { authorization: `Bearer ${alice.token}` }, body });
    assert.equal(upload.status, 200);
    const admin = await AccountsAdmin.open(makeConfig({ dataDir, redisUrl: redis.url, logLevel: 'silent' }), captureLog().logger);
    try {
      await admin.change(alice.id, () => admin.users.addBadge(alice.id, 'vip'));
    } finally {
      await admin.close();
    }
    assert.equal((await a.api.patch('/users/@me/messaging-settings', { token: alice.token, json: { allow_dms_from: 'none' } })).status, 200);

    // Node a's answer to alice herself, from her file; b's to bob, from her card in Redis.
    const alicePublic = await publicFromFile(a.api, alice);
    assert.deepEqual(alicePublic.badges, ['vip']);
    // The avatar's URL starts with the --public-url of the node serving bob (here its own port).
    const withoutOrigin = (user: PublicUser) => ({ ...user, avatar_url: user.avatar_url === null ? null : user.avatar_url.replace(/^http:\/\/[^/]+/, '') });
    assert.notEqual(alicePublic.avatar_url, null);
    for (const node of [a, b]) {
      const seen = await node.api.get<PublicUser>(`/users/${alice.id}`, { token: bob.token });
      assert.equal(seen.status, 200);
      assert.deepEqual(withoutOrigin(seen.body), withoutOrigin(alicePublic));
      assert.deepEqual(await openDm(node.api, bob, alice.id), { status: 403, body: CANNOT_MESSAGE });
    }
    assert.equal((await a.api.patch('/users/@me/messaging-settings', { token: alice.token, json: { allow_dms_from: 'everyone' } })).status, 200);
    assert.equal((await b.api.delete('/users/@me/avatar', { token: alice.token })).status, 204);
    const opened = await openDm(b.api, bob, alice.id);
    assert.equal(opened.status, 200);
    assert.deepEqual((opened.body as { recipient: PublicUser }).recipient, { ...alicePublic, avatar_url: null });
  });
});

test('upgrades in a cluster: an old directory.sqlite moved into Redis, and an old Redis directory, both end with every card derived at start', {
  skip,
  timeout: 60_000,
}, async () => {
  await withCluster('plexichat-card-upgrade-', async ({ dataDir, redis, startNode, stopNodes }) => {
    const single = await startServer({ dataDir });
    const alice = await registerUser(single.api);
    const bob = await registerUser(single.api);
    assert.equal((await single.api.patch('/users/@me/messaging-settings', { token: alice.token, json: { allow_dms_from: 'friends' } })).status, 200);
    const admin = new AccountsAdmin(makeConfig({ dataDir, logLevel: 'silent' }), captureLog().logger);
    try {
      await admin.change(alice.id, () => admin.users.addBadge(alice.id, 'beta_tester'));
    } finally {
      await admin.close();
    }
    const truth = await publicFromFile(single.api, alice);
    await single.close();
    // The previous version's directory.sqlite: no card columns.
    const db = new Database(`${dataDir}/directory.sqlite`);
    try {
      for (const column of ['email', 'avatar_hash', 'badges', 'allow_dms_from']) db.exec(`ALTER TABLE users DROP COLUMN ${column}`);
      db.pragma(`user_version = ${DIRECTORY_MIGRATIONS.length - 1}`);
    } finally {
      db.close();
    }

    const assertCards = async (node: TestServer) => {
      assert.deepEqual((await node.api.get<PublicUser>(`/users/${alice.id}`, { token: bob.token })).body, truth);
      assert.deepEqual(await openDm(node.api, bob, alice.id), { status: 403, body: CANNOT_MESSAGE });
      const doctor = await AccountsAdmin.open(makeConfig({ dataDir, redisUrl: redis.url, logLevel: 'silent' }), captureLog().logger);
      try {
        assert.deepEqual(await doctor.users.checkDirectoryIndex(), []);
      } finally {
        await doctor.close();
      }
    };
    // Migrated on open (rows marked pending), moved into Redis with their marks, derived at start.
    await assertCards(await startNode('a', 2000));
    await stopNodes();

    // A Redis directory of the previous version: rows without their cards, no layout version.
    const client = new Redis(redis.url);
    try {
      for (const id of [alice.id, bob.id]) await client.hdel(`plexichat:dir:user:${id}`, 'email', 'avatar_hash', 'badges', 'allow_dms_from');
      await client.del('plexichat:dir:version');
    } finally {
      client.disconnect();
    }
    const log = captureLog();
    const b = await startNode('b', 2000, { logger: log.logger });
    assert.ok(log.records.some((record) => record.rows === 2 && String(record.msg).startsWith('the directory in Redis was written by an older version')));
    // The session bob started on the single node lives on through both moves.
    await assertCards(b);
  });
});
