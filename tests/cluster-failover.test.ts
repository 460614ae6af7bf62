/**
 * Cluster mode when things fail (docs/cluster.md): nodes as processes on one data folder and a real
 * redis-server. The owner of a user killed mid-burst (kill -9), a paused owner (SIGSTOP) that
 * keeps its users' files held and resumes after its leases ended, Redis restarted under running nodes.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Api, registerUser, spawnClusterNode, tempDir, type ServerProcess, type TestUser } from './helpers/server.ts';
import { ackingDevice, closeEvent, notesChannelOf, rawSocket, within } from './helpers/sync.ts';
import { RedisServer, missingRedis } from './helpers/redis.ts';
import type { Message } from '../shared/index.ts';
import { OPEN_ANSWER_TIMEOUT_MS } from '../server/cluster/edge-sockets.ts';

const skip = missingRedis();
/** Short, so that a dead node's users move quickly; the nodes renew every third of it. */
const LEASE_MS = 1500;
/** The bound for a dead owner's user to be served again. */
const FAILOVER_BOUND_MS = 10_000;

let redis: RedisServer;
let dataDir: string;
const nodes = new Map<string, ServerProcess>();

function startNode(name: string): Promise<ServerProcess> {
  return spawnClusterNode({ dataDir, redisUrl: redis.url, nodeId: name, leaseMs: LEASE_MS });
}

before(async () => {
  if (skip !== undefined) return;
  redis = await RedisServer.start();
  dataDir = tempDir('plexichat-failover-');
  const names = ['a', 'b', 'c'];
  const started = await Promise.all(names.map(startNode));
  for (const [i, server] of started.entries()) nodes.set(names[i] as string, server);
});

after(async () => {
  if (skip !== undefined) return;
  for (const server of nodes.values()) {
    if (server.child.signalCode === 'SIGSTOP') server.child.kill('SIGCONT');
    await server.kill();
  }
  await redis.close();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

function api(name: string): Api {
  const server = nodes.get(name);
  if (server === undefined) throw new Error(`no node ${name}`);
  return new Api(server.url);
}

/** The contents of a user's notes, read over REST through `name` (relayed to the owner). */
async function notesThrough(name: string, user: TestUser, channel: string): Promise<string[] | undefined> {
  const res = await api(name).get<Message[]>(`/channels/${channel}/messages?limit=100`, { token: user.token });
  return res.status === 200 ? res.body.map((m) => m.content) : undefined;
}

test('kill -9 of the owner mid-burst: another node serves the user within 10 s, with every acknowledged update', { skip, timeout: 60_000 }, async () => {
  const user = await registerUser(api('a'));
  // The first request through `a` makes it the owner.
  const channel = await notesChannelOf(api('a'), user);
  // The device talks to `b`, which relays it to `a`.
  const device = await ackingDevice(nodes.get('b')?.url ?? '', channel, user);
  let killedAt = 0;
  await new Promise<void>((resolve, reject) => {
    const timer = setInterval(() => {
      if (device.sent >= 90) {
        clearInterval(timer);
        reject(new Error(`the owner was not killed: ${device.acked} acks`));
        return;
      }
      device.send(`note ${device.sent}`);
      if (killedAt === 0 && device.acked >= 20) {
        killedAt = Date.now();
        nodes
          .get('a')
          ?.kill()
          .then(() => {
            clearInterval(timer);
            resolve();
          }, reject);
      }
    }, 5);
  });
  const acked = device.acked;
  // The device's socket through `b` ends (retryable), as the owner behind it is gone.
  const { code } = await device.closed;
  assert.ok(code === 1012 || code === 1013, `closed with ${code}`);
  const contents = await within(FAILOVER_BOUND_MS, 'the user is served again', () => notesThrough('c', user, channel));
  assert.ok(Date.now() - killedAt < FAILOVER_BOUND_MS + 1000, 'served within the bound');
  for (let i = 0; i < acked; i += 1) assert.ok(contents.includes(`note ${i}`), `acknowledged note ${i} of ${acked} is there`);
  nodes.set('a', await startNode('a'));
});

test('a paused owner (SIGSTOP) keeps its file from every other node, and once resumed after its lease ended cannot write', {
  skip,
  timeout: 60_000,
}, async () => {
  const user = await registerUser(api('b'));
  const channel = await notesChannelOf(api('b'), user);
  const paused = nodes.get('b');
  assert.ok(paused);
  // A device right on the owner: what it sends waits in the kernel while the owner is paused.
  const device = await ackingDevice(paused.url, channel, user);
  device.send('before the pause');
  await within(5000, 'the first note is acknowledged', async () => (device.acked === 1 ? true : undefined));
  paused.child.kill('SIGSTOP');
  let refusals = 0;
  try {
    device.send('sent to the paused owner');
    // Once the paused owner's lease ends, another node may take the lease, but the file is still
    // held (exclusive locking) by the paused process: the open fails at once, nothing is written,
    // and the client is told its data is moving.
    await within(FAILOVER_BOUND_MS, 'another node finds the file held by the paused owner', async () => {
      const res = await api('c').post<Message>(`/channels/${channel}/messages`, { token: user.token, json: { content: 'from the new owner' } });
      assert.notEqual(res.status, 201, 'written while the paused owner held the file');
      if (res.status !== 503 || (res.body as unknown as { message: string }).message !== 'Your data is moving between servers right now; retry shortly')
        return undefined;
      refusals += 1;
      return refusals >= 2 ? true : undefined;
    });
  } finally {
    paused.child.kill('SIGCONT');
  }
  // Resumed, the former owner reads the queued update and tries to store it: its lease ended while
  // it was paused, so nothing is written, and the device is told to reconnect. It then finds the
  // lease gone, closes the file, and another node serves the user.
  const { code } = await device.closed;
  assert.ok([1011, 1012, 1013].includes(code), `closed with ${code}`);
  assert.equal(device.acked, 1, 'the update sent to the paused owner was never acknowledged');
  const posted = await within(FAILOVER_BOUND_MS, 'another node takes the user over', async () => {
    const res = await api('c').post<Message>(`/channels/${channel}/messages`, { token: user.token, json: { content: 'from the new owner' } });
    return res.status === 201 ? res : undefined;
  });
  assert.equal(posted.body.content, 'from the new owner');
  const contents = await within(FAILOVER_BOUND_MS, 'the notes are served', () => notesThrough('a', user, channel));
  assert.deepEqual(contents.sort(), ['before the pause', 'from the new owner']);
});

test('Redis restarted under running nodes: requests that need it answer 503, relayed sockets close with 1013, then service resumes', {
  skip,
  timeout: 90_000,
}, async () => {
  const user = await registerUser(api('c'));
  // A device on `b` relayed to `c`, which owns the user from the channel lookup on.
  const channel = await notesChannelOf(api('c'), user);
  const { ws, status } = await rawSocket(`${nodes.get('b')?.url ?? ''}/sync/${channel}?token=${user.token}`);
  assert.equal(status, 101);
  const relayedClosed = closeEvent(ws);
  await redis.stop();
  try {
    // Without Redis nothing relayed can work: the device is told to retry shortly.
    assert.equal((await relayedClosed).code, 1013);
    // Through a node that does not own the user, the owner cannot be found: 503, retryable.
    const res = await api('a').get('/users/@me', { token: user.token });
    assert.equal(res.status, 503);
    assert.equal(res.headers.get('retry-after'), '1');
    assert.deepEqual(res.body, { error: 'Service unavailable', code: 'service_unavailable', message: 'The cluster cannot be reached right now; retry' });
  } finally {
    await redis.run();
  }
  const me = await within(FAILOVER_BOUND_MS, 'service resumes', async () => {
    const res = await api('a').get<{ id: string }>('/users/@me', { token: user.token });
    return res.status === 200 ? res.body : undefined;
  });
  assert.equal(me.id, user.id);
  // Each node reconnects on its own schedule: the next test counts on every one being back.
  for (const name of nodes.keys()) {
    await within(FAILOVER_BOUND_MS, `${name} reaches Redis again`, async () =>
      (await api(name).get<{ redis: string }>('/health')).body.redis === 'up' ? true : undefined,
    );
  }
  // Relaying works again too: a device on `b`, linked to the owner, is served through it (it may be
  // told to reconnect once more while the nodes settle who owns the user, as a device would be).
  // Each try waits at most for the edge's bound on an owner's silence, after which it is told to reconnect.
  await within(3 * OPEN_ANSWER_TIMEOUT_MS, 'a device relayed through b is served again', async () => {
    const again = await rawSocket(`${nodes.get('b')?.url ?? ''}/sync/${channel}?token=${user.token}`);
    if (again.status !== 101) return undefined;
    // The first frame or the close, listened for since the socket was made: served here, the
    // node's first frame can come with the 101.
    const first = await again.first;
    again.ws.close();
    // The owner answers with a sync message.
    return first?.[0] === 0 ? true : undefined;
  });
});

test('a node shut down with SIGTERM gives its users up at once: the next request through another node is served without waiting for a lease', {
  skip,
  timeout: 60_000,
}, async () => {
  const user = await registerUser(api('c'));
  const channel = await notesChannelOf(api('c'), user);
  const posted = await api('c').post<Message>(`/channels/${channel}/messages`, { token: user.token, json: { content: 'before the deploy' } });
  assert.equal(posted.status, 201);
  const leaving = nodes.get('c');
  assert.ok(leaving);
  const { killed } = await leaving.stop();
  assert.equal(killed, false);
  const started = Date.now();
  const contents = await notesThrough('a', user, channel);
  assert.deepEqual(contents, ['before the deploy']);
  // Served at once: no lease had to expire (it was given back on the way out).
  assert.ok(Date.now() - started < LEASE_MS, `served after ${Date.now() - started} ms`);
  nodes.set('c', await startNode('c'));
});
