/**
 * Cluster mode (docs/cluster.md) with a real redis-server: three nodes sharing one data folder,
 * in this process (a node is a whole server: several run side by side), clients reaching any node.
 * The crash and pause cases run nodes as processes: tests/cluster-failover.test.ts.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import * as Y from 'yjs';
import { Api, registerUser, startServer, tempDir, type TestServer } from './helpers/server.ts';
import { closeEvent, notesChannelOf, openDevice, rawSocket, synced, until } from './helpers/sync.ts';
import { RedisServer, missingRedis } from './helpers/redis.ts';
import { insertNote, listNotes, type Message } from '../shared/index.ts';
import { MAX_WORKER_ID, snowflakeTimeMs } from '../shared/snowflake.ts';
import { NO_FREE_WORKER_ID, workerKey, workerUntilKey } from '../server/cluster/worker-ids.ts';
import { nodeKey } from '../server/cluster/leases.ts';
import { CLUSTER_UNREACHABLE } from '../server/core/storage-failure.ts';
import { Redis } from 'ioredis';

const skip = missingRedis();
const METRICS_TOKEN = 'cluster-metrics-token-0123456789';
let redis: RedisServer;
let dataDir: string;
let nodes: TestServer[] = [];

before(async () => {
  if (skip !== undefined) return;
  redis = await RedisServer.start();
  dataDir = tempDir('plexichat-cluster-');
  nodes = [];
  for (const name of ['a', 'b', 'c']) nodes.push(await startServer({ dataDir, redisUrl: redis.url, nodeId: name, leaseMs: 2000, metricsToken: METRICS_TOKEN }));
});

after(async () => {
  if (skip !== undefined) return;
  for (const node of nodes) await node.close();
  await redis.close();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

function node(index: number): TestServer {
  const found = nodes[index];
  if (found === undefined) throw new Error(`no node ${index}`);
  return found;
}

interface Health {
  status: string;
  node: string;
  redis: string;
  owned_users: number;
  worker_id: number | null;
}

test('GET /health names the node, the state of Redis and how many users it owns', { skip, timeout: 30_000 }, async () => {
  const res = await node(1).api.get<Health>('/health');
  assert.equal(res.status, 200);
  assert.deepEqual(Object.keys(res.body).sort(), ['node', 'owned_users', 'redis', 'status', 'worker_id']);
  assert.equal(res.body.status, 'ok');
  assert.equal(res.body.node, 'b');
  assert.equal(res.body.redis, 'up');
  assert.equal(typeof res.body.owned_users, 'number');
  assert.equal(typeof res.body.worker_id, 'number');
});

test('two devices of one user on different nodes converge live, and a third sees it all from another node over REST', { skip, timeout: 30_000 }, async () => {
  const user = await registerUser(node(0).api);
  const channel = await notesChannelOf(node(0).api, user);
  const first = openDevice(node(1).url, channel, user.token);
  const second = openDevice(node(2).url, channel, user.token);
  try {
    await Promise.all([synced(first), synced(second)]);
    first.doc.transact(() => insertNote(first.doc, { id: '1000000000000000001', content: 'from the first device', created_at: 1 }));
    second.doc.transact(() => insertNote(second.doc, { id: '1000000000000000002', content: 'from the second device', created_at: 2 }));
    await until(first.doc, (doc) => listNotes(doc).length === 2, 'the first device has both notes');
    await until(second.doc, (doc) => listNotes(doc).length === 2, 'the second device has both notes');
    // Served by the node that took the user first (the notes channel lookup went through it): the
    // nodes holding the sockets relay them and never load the document.
    assert.ok(node(0).server.stats().loadedDocs >= 1);
    assert.equal(node(1).server.stats().loadedDocs, 0);
    assert.equal(node(2).server.stats().loadedDocs, 0);
    // REST on the node that had no socket at all: relayed to the owner, which has them stored.
    const rest = await node(0).api.get<Message[]>(`/channels/${channel}/messages`, { token: user.token });
    assert.equal(rest.status, 200);
    assert.deepEqual(rest.body.map((m) => m.content).sort(), ['from the first device', 'from the second device']);
    // A note posted over REST through one node reaches the devices on the others.
    const posted = await node(1).api.post<Message>(`/channels/${channel}/messages`, { token: user.token, json: { content: 'over REST' } });
    assert.equal(posted.status, 201);
    await until(first.doc, (doc) => listNotes(doc).some((n) => n.content === 'over REST'), 'the REST note on the first device');
    await until(second.doc, (doc) => listNotes(doc).some((n) => n.content === 'over REST'), 'the REST note on the second device');
  } finally {
    first.destroy();
    second.destroy();
  }
});

test('a device that was offline catches up through another node, and its offline edits reach the rest', { skip, timeout: 30_000 }, async () => {
  const user = await registerUser(node(2).api);
  const channel = await notesChannelOf(node(2).api, user);
  const online = openDevice(node(0).url, channel, user.token);
  await synced(online);
  const offlineDoc = new Y.Doc();
  offlineDoc.transact(() => insertNote(offlineDoc, { id: '1000000000000000011', content: 'written offline', created_at: 1 }));
  online.doc.transact(() => insertNote(online.doc, { id: '1000000000000000012', content: 'written online', created_at: 2 }));
  const returning = openDevice(node(1).url, channel, user.token, { doc: offlineDoc });
  try {
    await until(returning.doc, (doc) => listNotes(doc).length === 2, 'the returning device has both');
    await until(online.doc, (doc) => listNotes(doc).length === 2, 'the online device has the offline edit');
  } finally {
    online.destroy();
    returning.destroy();
  }
});

test('the same username registered on two nodes at once: exactly one 201', { skip, timeout: 30_000 }, async () => {
  const username = `race${process.pid}x${Date.now() % 100000}`;
  const attempts = await Promise.all(
    nodes.map((n, i) => n.api.post('/auth/register', { json: { username, email: `${username}${i}@example.com`, password: 'a long enough password' } })),
  );
  assert.deepEqual(attempts.map((r) => r.status).sort(), [201, 409, 409]);
});

test("a logout through one node closes that session's socket held by another, and its token is refused everywhere", { skip, timeout: 30_000 }, async () => {
  const user = await registerUser(node(0).api);
  const channel = await notesChannelOf(node(0).api, user);
  const { ws, status } = await rawSocket(`${node(2).url}/sync/${channel}?token=${user.token}`);
  assert.equal(status, 101);
  const closed = closeEvent(ws);
  const logout = await node(1).api.post('/auth/logout', { token: user.token });
  assert.equal(logout.status, 204);
  assert.equal((await closed).code, 4401);
  for (const n of nodes) assert.equal((await n.api.get('/users/@me', { token: user.token })).status, 401);
});

test('a user owned by one node: requests through the others are relayed, their errors answered as the owner gives them', {
  skip,
  timeout: 30_000,
}, async () => {
  const user = await registerUser(node(1).api);
  const api = new Api(node(2).url);
  const bad = await api.patch('/users/@me', { token: user.token, json: { username: '' } });
  assert.equal(bad.status, 400);
  assert.equal((bad.body as { code: string }).code, 'invalid_input');
  assert.ok(bad.headers.get('x-request-id'));
  const me = await node(0).api.get<{ id: string }>('/users/@me', { token: user.token });
  assert.equal(me.status, 200);
  assert.equal(me.body.id, user.id);
});

test('a relayed socket gets the close codes of a local one: a malformed frame is 4400 through the edge node', { skip, timeout: 30_000 }, async () => {
  const user = await registerUser(node(0).api);
  const channel = await notesChannelOf(node(0).api, user);
  const { ws, status } = await rawSocket(`${node(1).url}/sync/${channel}?token=${user.token}`);
  assert.equal(status, 101);
  const closed = closeEvent(ws);
  ws.send(new Uint8Array([0, 9, 9, 9]));
  assert.equal((await closed).code, 4400);
});

test("a document that is not the user's: 404 at the upgrade on their owner; through another node, only its form can be checked there, so the owner closes the socket with 4404", {
  skip,
  timeout: 30_000,
}, async () => {
  const user = await registerUser(node(0).api);
  await notesChannelOf(node(0).api, user);
  const other = await registerUser(node(2).api);
  const othersChannel = await notesChannelOf(node(2).api, other);
  // On the owner: refused before the upgrade, as on one node.
  const onOwner = await rawSocket(`${node(0).url}/sync/${othersChannel}?token=${user.token}`);
  assert.equal(onOwner.status, 404);
  // A name no document can have is refused at the upgrade anywhere.
  const malformed = await rawSocket(`${node(1).url}/sync/not-a-document?token=${user.token}`);
  assert.equal(malformed.status, 404);
  // Well-formed, someone else's: accepted by the edge, closed by the owner, never served.
  const relayed = await rawSocket(`${node(1).url}/sync/${othersChannel}?token=${user.token}`);
  assert.equal(relayed.status, 101);
  assert.equal(await relayed.first, undefined, 'not one frame of the document');
  assert.deepEqual(await relayed.closed, { code: 4404, reason: 'No such document' });
});

test("the owner counts a user's sockets on every node: past --max-sync-connections-per-user the next one is 4529 wherever it arrives", {
  skip,
  timeout: 30_000,
}, async () => {
  const user = await registerUser(node(0).api);
  const channel = await notesChannelOf(node(0).api, user);
  const open: { close(): void }[] = [];
  try {
    // The default limit is 32: spread them over the three nodes.
    for (let i = 0; i < 32; i += 1) {
      const { ws, status } = await rawSocket(`${node(i % 3).url}/sync/${channel}?token=${user.token}`);
      assert.equal(status, 101);
      open.push(ws);
    }
    // The relayed ones reach the owner (node 0, which took the user) over their links: wait until it counts all 32.
    while (node(0).server.stats().syncConnections < 32) await new Promise((resolve) => setImmediate(resolve));
    const { ws, status } = await rawSocket(`${node(2).url}/sync/${channel}?token=${user.token}`);
    assert.equal(status, 101);
    assert.equal((await closeEvent(ws)).code, 4529);
  } finally {
    for (const ws of open) ws.close();
  }
});

test('a block made through one node is enforced through every other at once', { skip, timeout: 30_000 }, async () => {
  const a = await registerUser(node(0).api);
  const b = await registerUser(node(1).api);
  const blocked = await node(0).api.request('PUT', `/users/@me/relationships/${b.id}`, { token: a.token, json: { type: 'block' } });
  assert.equal(blocked.status, 200);
  for (const n of nodes) {
    const request = await n.api.request('PUT', `/users/@me/relationships/${a.id}`, { token: b.token, json: { type: 'friend' } });
    assert.equal(request.status, 403);
    assert.equal((request.body as { code: string }).code, 'cannot_add_friend');
  }
});

test("each node's metrics say what it owns and relays", { skip, timeout: 30_000 }, async () => {
  const user = await registerUser(node(0).api);
  const channel = await notesChannelOf(node(0).api, user);
  const { ws, status } = await rawSocket(`${node(1).url}/sync/${channel}?token=${user.token}`);
  assert.equal(status, 101);
  try {
    // The relayed socket reaches the owner over the link: wait until node 0 serves it.
    const gauge = async (index: number, name: string): Promise<number> => {
      const res = await node(index).api.get('/metrics', { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
      assert.equal(res.status, 200);
      const line = res.text.split('\n').find((l) => l.startsWith(`${name} `));
      assert.ok(line, `${name} in the metrics of node ${index}`);
      return Number(line.split(' ')[1]);
    };
    while ((await gauge(0, 'plexichat_cluster_remote_sockets')) < 1) await new Promise((resolve) => setImmediate(resolve));
    assert.ok((await gauge(0, 'plexichat_cluster_owned_users')) >= 1);
    assert.equal(await gauge(1, 'plexichat_cluster_relayed_sockets'), 1);
  } finally {
    ws.close();
  }
});

const workerOf = (id: string) => Number((BigInt(id) >> 12n) & BigInt(MAX_WORKER_ID));

async function workerIdOf(index: number): Promise<number | null> {
  return (await node(index).api.get<Health>('/health')).body.worker_id;
}

/** Holds every free worker id as some other node would (`<holder>|test`, no expiry); returns them. */
async function holdAllFree(admin: Redis, holder: string): Promise<number[]> {
  const taken: number[] = [];
  for (let n = 1; n <= MAX_WORKER_ID; n += 1) if ((await admin.set(workerKey(n), `${holder}|test`, 'NX')) === 'OK') taken.push(n);
  return taken;
}

test('each node leases its own snowflake worker id, and ids taken through every node at once never repeat', { skip, timeout: 60_000 }, async () => {
  const workers = await Promise.all(nodes.map((_, i) => workerIdOf(i)));
  assert.equal(new Set(workers).size, 3, `distinct: ${workers.join(', ')}`);
  for (const worker of workers) assert.ok(worker !== null && worker >= 1, 'leased from 1 up: 0 is for processes without Redis');
  // Registrations (user and session ids) through every node at once.
  const users = await Promise.all(Array.from({ length: 9 }, (_, i) => registerUser(node(i % 3).api)));
  for (const [i, user] of users.entries()) assert.equal(workerOf(user.id), workers[i % 3], 'a user id carries the worker id of the node that registered it');
  // DM channels and notes, each taken by whichever node serves the user asking, all at once.
  const taken = await Promise.all(
    users.flatMap((user, i) => {
      const other = users[(i + 1) % users.length] as typeof user;
      return [
        node((i + 1) % 3)
          .api.post<{ id: string }>('/users/@me/channels', { token: user.token, json: { recipient_id: other.id } })
          .then((res) => {
            assert.equal(res.status, 200, res.text);
            return res.body.id;
          }),
        notesChannelOf(node((i + 2) % 3).api, user).then(async (channel) => {
          const res = await node(i % 3).api.post<Message>(`/channels/${channel}/messages`, { token: user.token, json: { content: `note ${i}` } });
          assert.equal(res.status, 201, res.text);
          return [channel, res.body.id];
        }),
      ];
    }),
  );
  const ids = [...users.map((user) => user.id), ...taken.flat()];
  assert.equal(ids.length, 9 + 9 + 18);
  assert.equal(new Set(ids).size, ids.length, 'no id twice');
});

test('a node whose worker id another took over issues no ids until it holds one again, then starts past its mark', { skip, timeout: 60_000 }, async () => {
  const admin = new Redis(redis.url);
  const held: number[] = [];
  try {
    const lost = await workerIdOf(2);
    assert.ok(lost !== null);
    // Every other worker id is held, and this node's is taken over (as after a pause longer than a lease).
    held.push(...(await holdAllFree(admin, 'elsewhere')));
    await admin.set(workerKey(lost), 'intruder|test');
    held.push(lost);
    // Its next renewal finds the lease gone and no free worker id: it says so, and refuses ids.
    while ((await workerIdOf(2)) !== null) await new Promise((resolve) => setImmediate(resolve));
    const refused = await node(2).api.post('/auth/register', {
      json: { username: 'nolease', email: 'nolease@example.com', password: 'a long enough password' },
    });
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.get('retry-after'), '1');
    assert.deepEqual(refused.body, { error: 'Service unavailable', code: 'service_unavailable', message: CLUSTER_UNREACHABLE });
    // The other nodes issue ids as before.
    await registerUser(node(0).api);
    // A worker id is freed, whose former holder had reserved a minute ahead: the node takes it and starts past that.
    const freed = held.find((n) => n !== lost) ?? 0;
    const mark = Date.now() + 60_000;
    await admin.set(workerUntilKey(freed), String(mark));
    await admin.del(workerKey(freed));
    while ((await workerIdOf(2)) !== freed) await new Promise((resolve) => setImmediate(resolve));
    const user = await registerUser(node(2).api, 'nolease');
    assert.equal(workerOf(user.id), freed);
    assert.ok(snowflakeTimeMs(user.id) >= mark, 'after every id of the former holder');
  } finally {
    if (held.length > 0) await admin.del(...held.map(workerKey));
    admin.disconnect();
  }
});

test('every worker id held: a node is refused at start with one line, and leaves nothing behind', { skip, timeout: 30_000 }, async () => {
  const admin = new Redis(redis.url);
  let held: number[] = [];
  try {
    held = await holdAllFree(admin, 'elsewhere');
    await assert.rejects(startServer({ dataDir, redisUrl: redis.url, nodeId: 'd', leaseMs: 2000 }), (error: Error) => {
      assert.equal(error.message, NO_FREE_WORKER_ID);
      assert.equal(error.message, 'every snowflake worker id (1-1023) is held by a running node: a cluster has at most 1023 nodes');
      return true;
    });
    assert.equal(await admin.exists(nodeKey('d')), 0, 'the node id is given back');
  } finally {
    if (held.length > 0) await admin.del(...held.map(workerKey));
    admin.disconnect();
  }
});
