/**
 * Admin commands, doctor and backup on a live cluster's data folder (docs/cluster.md, "The shared
 * volume"): the nodes hold their users' files exclusively, so a command given the nodes' Redis
 * takes each user it touches for the moment of its work — the node serving them hands them over —
 * and gives them back. Real redis-server, real nodes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { AccountsAdmin } from '../server/admin/accounts.ts';
import { BACKUP_NEEDS_REDIS, RESTORED_CLUSTER_FOLDER } from '../server/admin/backup.ts';
import { makeConfig } from '../server/config.ts';
import { DIRECTORY_IN_REDIS } from '../server/storage/sqlite-directory.ts';
import type { Message } from '../shared/index.ts';
import { withCluster } from './helpers/cluster.ts';
import { missingRedis } from './helpers/redis.ts';
import { Api, registerUser, runCommand, spawnClusterNode, startServer, tempDir, type TestUser } from './helpers/server.ts';
import { ackingDevice, closeEvent, notesChannelOf, rawSocket, within } from './helpers/sync.ts';
import { captureLog } from './fixtures/log.ts';

const skip = missingRedis();
const MOVING = { error: 'Service unavailable', code: 'service_unavailable', message: 'Your data is moving between servers right now; retry shortly' };

const leaseKey = (userId: string) => `plexichat:lease:${userId}`;

async function redisGet(url: string, key: string): Promise<string | null> {
  const client = new Redis(url);
  try {
    return await client.get(key);
  } finally {
    client.disconnect();
  }
}

async function notes(api: Api, user: TestUser, channel: string): Promise<string[]> {
  const res = await api.get<Message[]>(`/channels/${channel}/messages?limit=100`, { token: user.token });
  assert.equal(res.status, 200, res.text);
  return res.body.map((message) => message.content).sort();
}

test('while a command holds a user, every node answers them 503 "moving" and closes their new sockets with 1013; account commands take and give back; a holder that never lets go ends one with one line', {
  skip,
  timeout: 60_000,
}, async () => {
  await withCluster('plexichat-hold-', async ({ dataDir, redis, startNode }) => {
    const a = await startNode('a', 2000);
    const b = await startNode('b', 2000);
    const alice = await registerUser(a.api);
    const channel = await notesChannelOf(a.api, alice);
    const admin = await AccountsAdmin.open(makeConfig({ dataDir, redisUrl: redis.url, leaseMs: 1000, logLevel: 'silent' }), captureLog().logger);
    try {
      await admin.storage.userFiles.holding(alice.id, async () => {
        assert.match((await redisGet(redis.url, leaseKey(alice.id))) ?? '', /^command:[0-9]+-[0-9a-f]+\|[0-9]+$/, 'the command holds the lease');
        for (const node of [a, b]) {
          const res = await node.api.get('/users/@me', { token: alice.token });
          assert.equal(res.status, 503);
          assert.deepEqual(res.body, MOVING);
          assert.equal(res.headers.get('retry-after'), '1');
        }
        // The upgrade never waits; the socket is closed once the node finds the user held.
        const { ws, status } = await rawSocket(`${b.url}/sync/${channel}?token=${alice.token}`);
        assert.equal(status, 101);
        assert.deepEqual(await closeEvent(ws), { code: 1013, reason: 'Your data is moving between servers; reconnect shortly' });
        // Another command waits for her (three of its leases), then says who holds her.
        const holder = (await redisGet(redis.url, leaseKey(alice.id)))?.split('|')[0];
        const second = await AccountsAdmin.open(makeConfig({ dataDir, redisUrl: redis.url, leaseMs: 1000, logLevel: 'silent' }), captureLog().logger);
        try {
          await assert.rejects(
            second.change(alice.id, () => second.users.setTier(alice.id, 'pro')),
            (error: Error) =>
              error.message ===
              `could not take the account ${alice.username} (id ${alice.id}) within 3 s: another admin command holds it (${holder}); retry when it is done`,
          );
        } finally {
          await second.close();
        }
        assert.equal((await redisGet(redis.url, leaseKey(alice.id)))?.split('|')[0], holder, 'the first still holds her');
      });
      assert.equal(await redisGet(redis.url, leaseKey(alice.id)), null, 'given back: the lease is gone');
      assert.equal((await b.api.get('/users/@me', { token: alice.token })).status, 200);

      // A new account made by a command is its own until made, then given back like any other.
      const { id } = await admin.create('carol', 'carol@example.com', 'carol has a long passphrase');
      assert.equal(await redisGet(redis.url, leaseKey(id)), null);
      assert.deepEqual(
        (await admin.list()).map((account) => account.username),
        [alice.username, 'carol'],
      );

      // Exported, deleted and imported again while a node serves her: each step takes her.
      const exportDir = tempDir('plexichat-hold-export-');
      try {
        const file = path.join(exportDir, 'alice.sqlite');
        assert.equal((await b.api.get('/users/@me', { token: alice.token })).status, 200, 'a node serves alice again');
        await admin.export(alice.id, file);
        await admin.delete(alice.id);
        // Her sessions ended with her account (announced to every node, which drops it from its cache).
        await within(5_000, "alice's session refused on b", async () =>
          (await b.api.get('/users/@me', { token: alice.token })).status === 401 ? true : undefined,
        );
        assert.equal((await admin.import(file)).account.id, alice.id);
        assert.equal(await redisGet(redis.url, leaseKey(alice.id)), null);
        assert.deepEqual(
          (await admin.list()).map((account) => account.username),
          [alice.username, 'carol'],
        );
      } finally {
        fs.rmSync(exportDir, { recursive: true, force: true });
      }

      // A holder that never hands the user over (a name in Redis no process answers to, put in
      // place of the node that served alice last): the command gives up after three of its
      // leases, with one line naming the account.
      const client = new Redis(redis.url);
      try {
        await client.del(leaseKey(alice.id));
        await client.set(leaseKey(alice.id), 'ghost|999999', 'PX', 60_000);
      } finally {
        client.disconnect();
      }
    } finally {
      await admin.close();
    }
    const stubborn = await AccountsAdmin.open(makeConfig({ dataDir, redisUrl: redis.url, leaseMs: 1000, logLevel: 'silent' }), captureLog().logger);
    try {
      await assert.rejects(
        stubborn.change(alice.id, () => stubborn.users.addBadge(alice.id, 'early_supporter')),
        (error: Error) =>
          error.message ===
          `could not take the account ${alice.username} (id ${alice.id}) within 3 s: the node ghost serving it did not hand it over; retry, and if that fails again, look at that node`,
      );
    } finally {
      await stubborn.close();
    }
    assert.equal(await redisGet(redis.url, leaseKey(alice.id)), 'ghost|999999', "a holder's lease is not the command's to delete");
  });
});

test('a badge given by a command to a user a node serves, with a device connected through another node: the node hands the user over (1012), the device reconnects, and the badge is served', {
  skip,
  timeout: 60_000,
}, async () => {
  await withCluster('plexichat-badge-', async ({ dataDir, redis, startNode }) => {
    const a = await startNode('a', 2000);
    const b = await startNode('b', 2000);
    const alice = await registerUser(a.api);
    const channel = await notesChannelOf(a.api, alice);
    // A device on b, relayed to a, which serves alice.
    const device = await ackingDevice(b.url, channel, alice);
    device.send('before the command');
    await within(10_000, 'the note is acknowledged', async () => (device.acked >= 1 ? true : undefined));
    const command = await runCommand(['admin', 'badge', 'add', alice.username, 'early_supporter', '--data-dir', dataDir, '--redis-url', redis.url]);
    assert.equal(command.code, 0, command.stderr);
    assert.equal(command.stdout, `${alice.username} (id ${alice.id}): added the badge early_supporter\n`);
    assert.equal((await device.closed).code, 1012, 'the owner handed alice over: the device is told to reconnect');
    assert.deepEqual(await notes(b.api, alice, channel), ['before the command']);
    // It reconnects (through b again) and goes on.
    const again = await ackingDevice(b.url, channel, alice);
    again.send('after the command');
    await within(10_000, 'the second note is acknowledged', async () => (again.acked >= 1 ? true : undefined));
    const me = await b.api.get<{ badges: string[] }>('/users/@me', { token: alice.token });
    assert.deepEqual(me.body.badges, ['early_supporter']);
    again.ws.close();
  });
});

test('admin user list and doctor on a live cluster: every user is taken in turn; a problem doctor finds, doctor --fix repairs (reading every file)', {
  skip,
  timeout: 90_000,
}, async () => {
  await withCluster('plexichat-doctor-', async ({ dataDir, redis, startNode }) => {
    const a = await startNode('a', 2000);
    const b = await startNode('b', 2000);
    const alice = await registerUser(a.api);
    const bob = await registerUser(b.api);
    const channel = await notesChannelOf(a.api, alice);
    const device = await ackingDevice(b.url, channel, alice);
    const cluster = ['--data-dir', dataDir, '--redis-url', redis.url];

    const list = await runCommand(['admin', 'user', 'list', '--json', ...cluster]);
    assert.equal(list.code, 0, list.stderr);
    assert.deepEqual((JSON.parse(list.stdout) as { username: string }[]).map((account) => account.username).sort(), [alice.username, bob.username].sort());
    assert.equal((await device.closed).code, 1012, 'the list took alice from her node: her device reconnects');

    // Each take of a user draws a new fencing token: doctor takes each user once, for their file's
    // check and their index row's together (an online user's sockets reconnect once per run).
    const fences = new Redis(redis.url);
    const tokens = async () => Promise.all([alice.id, bob.id].map(async (id) => Number(await fences.get(`plexichat:fence:${id}`))));
    const before = await tokens();
    const sound = await runCommand(['doctor', ...cluster]);
    assert.equal(sound.code, 0, sound.stdout + sound.stderr);
    assert.match(sound.stdout, /^checked 4 files \(.+\): 4 sound\nno problem found\n$/);
    try {
      assert.deepEqual(
        await tokens(),
        before.map((token) => token + 1),
        'one take per user',
      );
    } finally {
      fences.disconnect();
    }

    // A change of name that stopped between its two writes leaves a pending mark.
    const client = new Redis(redis.url);
    try {
      await client.sadd('plexichat:dir:pending', bob.id);
    } finally {
      client.disconnect();
    }
    assert.equal((await b.api.get('/users/@me', { token: bob.token })).status, 200, 'bob is served (b owns him again)');
    const found = await runCommand(['doctor', ...cluster]);
    assert.equal(found.code, 1);
    assert.ok(found.stdout.includes(`problem: users/${bob.id}.sqlite: a change stopped between its two writes, or an upgrade marked it`), found.stdout);
    const fixed = await runCommand(['doctor', '--fix', ...cluster]);
    assert.equal(fixed.code, 0, fixed.stdout + fixed.stderr);
    assert.match(fixed.stdout, /fixed: derived the users index again: 2 accounts, 0 rows without a file removed\n/);
    assert.match(fixed.stdout, /no problem found\n$/);
    // Served again, through any node, sessions kept.
    assert.equal((await a.api.get('/users/@me', { token: bob.token })).status, 200);
    assert.equal((await b.api.get('/users/@me', { token: alice.token })).status, 200);
  });
});

test('backup of a live cluster needs its Redis, takes each user for the copy, and restores into a folder its nodes start on', {
  skip,
  timeout: 90_000,
}, async () => {
  await withCluster('plexichat-cluster-backup-', async ({ dataDir, redis, startNode, stopNodes }) => {
    const a = await startNode('a', 2000);
    const b = await startNode('b', 2000);
    const alice = await registerUser(a.api);
    const bob = await registerUser(b.api);
    const channel = await notesChannelOf(a.api, alice);
    const device = await ackingDevice(b.url, channel, alice);
    device.send('kept in the backup');
    await within(10_000, 'the note is acknowledged', async () => (device.acked >= 1 ? true : undefined));
    const folder = tempDir('plexichat-cluster-backup-copy-');
    try {
      const refused = await runCommand(['backup', path.join(folder, 'nothing'), '--data-dir', dataDir]);
      assert.equal(refused.code, 1);
      assert.equal(refused.stderr, `plexichat: ${BACKUP_NEEDS_REDIS}\n`);
      assert.equal(fs.existsSync(path.join(folder, 'nothing')), false, 'nothing was written');
      const unchecked = await runCommand(['doctor', '--data-dir', dataDir]);
      assert.equal(unchecked.code, 1);
      assert.equal(unchecked.stderr, `plexichat: ${DIRECTORY_IN_REDIS}\n`);
      // And the other way round: one node's folder is backed up without Redis.
      const single = await startServer({ dataDir: path.join(folder, 'single') });
      await single.close();
      const mistaken = await runCommand(['backup', path.join(folder, 'nothing'), '--data-dir', path.join(folder, 'single'), '--redis-url', redis.url]);
      assert.equal(mistaken.code, 1);
      assert.equal(
        mistaken.stderr,
        `plexichat: ${path.join(folder, 'single')} is not a cluster's data folder (its directory is in directory.sqlite, not in Redis): back it up without --redis-url\n`,
      );

      const backup = await runCommand(['backup', path.join(folder, 'copy'), '--data-dir', dataDir, '--redis-url', redis.url]);
      assert.equal(backup.code, 0, backup.stderr);
      assert.match(backup.stderr, /backup: each user file was copied while this command held its user; 2 were being served by a node, which handed them over/);
      assert.match(backup.stderr, /the directory \(users index, sessions, relationships, DM channels\) is in the cluster's Redis, not in this backup/);
      assert.match(backup.stdout, /^backed up 2 account\(s\), 4 files/);
      assert.equal((await device.closed).code, 1012);
      // The cluster serves on meanwhile.
      assert.deepEqual(await notes(b.api, alice, channel), ['kept in the backup']);
      await stopNodes();

      // Restored into a new folder (nothing needs to run), the folder's nodes start on the same Redis.
      const restoredDir = path.join(folder, 'restored');
      const restore = await runCommand(['restore', path.join(folder, 'copy'), '--data-dir', restoredDir]);
      assert.equal(restore.code, 0, restore.stderr);
      assert.ok(restore.stderr.endsWith(`restore: ${RESTORED_CLUSTER_FOLDER}\n`), restore.stderr);
      const node = await startServer({ dataDir: restoredDir, redisUrl: redis.url, nodeId: 'c', leaseMs: 2000 });
      try {
        assert.deepEqual(await notes(node.api, alice, channel), ['kept in the backup'], 'her session and notes are there');
        assert.equal((await node.api.get<{ id: string }>('/users/@me', { token: bob.token })).body.id, bob.id);
      } finally {
        await node.close();
      }
    } finally {
      fs.rmSync(folder, { recursive: true, force: true });
    }
  });
});

test('a command cannot take a user whose file a paused node (SIGSTOP) still holds: it fails within its bound with one line naming the account, and works once the node is back', {
  skip,
  timeout: 60_000,
}, async () => {
  await withCluster('plexichat-paused-', async ({ dataDir, redis }) => {
    const node = await spawnClusterNode({ dataDir, redisUrl: redis.url, nodeId: 'a', leaseMs: 1000 });
    try {
      const api = new Api(node.url);
      const alice = await registerUser(api);
      node.child.kill('SIGSTOP');
      const command = ['admin', 'badge', 'add', alice.username, 'early_supporter', '--data-dir', dataDir, '--redis-url', redis.url, '--lease-ms', '1000'];
      const failed = await runCommand(command);
      assert.equal(failed.code, 1);
      assert.equal(
        failed.stderr,
        `plexichat: could not take the account ${alice.username} (id ${alice.id}) within 3 s: its file is still open in another process (a node that stopped answering, paused or cut off?); retry once that node is back or gone\n`,
      );
      assert.equal(await redisGet(redis.url, leaseKey(alice.id)), null, 'the command let go of the lease it had');
      // Woken up, the node finds its lease gone and closes the file.
      node.child.kill('SIGCONT');
      await within(10_000, 'the node let go of alice', async () => (node.output().includes('lost the lease of a user') ? true : undefined));
      const done = await runCommand(command);
      assert.equal(done.code, 0, done.stderr);
      assert.equal((await api.get<{ badges: string[] }>('/users/@me', { token: alice.token })).body.badges[0], 'early_supporter');
    } finally {
      if (node.child.signalCode === 'SIGSTOP') node.child.kill('SIGCONT');
      await node.kill();
    }
  });
});
