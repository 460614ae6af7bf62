/**
 * The direct links between cluster nodes (docs/cluster.md#links-between-nodes): nodes as processes
 * on one data folder and a real redis-server. A link whose other end is killed mid-stream ends
 * what was relayed over it with the documented codes, and the nodes serve again; strangers on the
 * cluster port are dropped without disturbing anything. Then, without Redis, the links of one
 * node in this process against stand-ins: the cluster key, a node that is gone, a node that stops
 * reading.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Redis } from 'ioredis';
import * as decoding from 'lib0/decoding';
import * as encoding from 'lib0/encoding';
import { Api, registerUser, spawnClusterNode, tempDir, type ServerProcess, type TestUser } from './helpers/server.ts';
import { ackingDevice, closeEvent, notesChannelOf, openDevice, rawSocket, synced, until, within } from './helpers/sync.ts';
import { RedisServer, missingRedis } from './helpers/redis.ts';
import { listNotes, type Message } from '../shared/index.ts';
import { readClusterKey } from '../server/cluster/cluster-key.ts';
import { Links, type LinkLoss, type LinkSettings } from '../server/cluster/links.ts';
import pino from 'pino';

const skip = missingRedis();
/**
 * The default: long enough that, after the owner is killed, its lease (and its node key) still
 * stands while the test asks another node for its user, so that node has to try the link.
 */
const LEASE_MS = 5000;
const FAILOVER_BOUND_MS = 10_000;
const PROTOCOL = 'plexichat-link/3';

let redis: RedisServer;
let dataDir: string;
const nodes = new Map<string, ServerProcess>();

function startNode(name: string): Promise<ServerProcess> {
  return spawnClusterNode({ dataDir, redisUrl: redis.url, nodeId: name, leaseMs: LEASE_MS });
}

before(async () => {
  if (skip !== undefined) return;
  redis = await RedisServer.start();
  dataDir = tempDir('plexichat-links-');
  const [a, b] = await Promise.all([startNode('a'), startNode('b')]);
  nodes.set('a', a);
  nodes.set('b', b);
});

after(async () => {
  if (skip !== undefined) return;
  for (const server of nodes.values()) await server.kill();
  await redis.close();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

function node(name: string): ServerProcess {
  const server = nodes.get(name);
  if (server === undefined) throw new Error(`no node ${name}`);
  return server;
}

const api = (name: string) => new Api(node(name).url);

async function notesThrough(name: string, user: TestUser, channel: string): Promise<string[] | undefined> {
  const res = await api(name).get<Message[]>(`/channels/${channel}/messages?limit=100`, { token: user.token });
  return res.status === 200 ? res.body.map((m) => m.content) : undefined;
}

/** Where a node accepts links, as it advertises it in Redis. */
async function linkAddressOf(name: string): Promise<{ host: string; port: number; instance: string }> {
  const client = new Redis(redis.url);
  try {
    const record = await client.get(`plexichat:node:${name}`);
    assert.ok(record !== null, `node ${name} has a node key`);
    return JSON.parse(record) as { host: string; port: number; instance: string };
  } finally {
    client.disconnect();
  }
}

function framed(payload: Uint8Array): Buffer {
  const frame = Buffer.alloc(4 + payload.byteLength);
  frame.writeUInt32BE(payload.byteLength, 0);
  frame.set(payload, 4);
  return frame;
}

/** A hello's fields as the protocol lays them out (no reply address: port 0). */
function helloFields(e: encoding.Encoder, from: string, to: string, instance: string, nonce: Uint8Array): void {
  encoding.writeVarString(e, from);
  encoding.writeVarString(e, to);
  encoding.writeVarString(e, instance);
  encoding.writeVarUint8Array(e, nonce);
  encoding.writeVarString(e, '');
  encoding.writeVarUint(e, 0);
  encoding.writeVarString(e, '');
}

function hello(from: string, to: string, instance: string, nonce: Uint8Array): Uint8Array {
  const e = encoding.createEncoder();
  encoding.writeVarString(e, PROTOCOL);
  helloFields(e, from, to, instance, nonce);
  return encoding.toUint8Array(e);
}

/** The proof each side of a link gives (docs/cluster.md): HMAC-SHA256 under the cluster key. */
function proofOf(
  role: 'client' | 'server',
  key: Uint8Array,
  from: string,
  to: string,
  instance: string,
  clientNonce: Uint8Array,
  serverNonce: Uint8Array,
): Buffer {
  const e = encoding.createEncoder();
  encoding.writeVarString(e, `${PROTOCOL} ${role}`);
  encoding.writeVarUint8Array(e, serverNonce);
  helloFields(e, from, to, instance, clientNonce);
  return createHmac('sha256', key).update(encoding.toUint8Array(e)).digest();
}

/** A handshake frame of byte strings, each with its length (lib0's varUint8Array). */
function byteStrings(...parts: Uint8Array[]): Uint8Array {
  const e = encoding.createEncoder();
  for (const part of parts) encoding.writeVarUint8Array(e, part);
  return encoding.toUint8Array(e);
}

/** A bare TCP client on a cluster port: what it received, and when the node closed it. */
async function stranger(port: number) {
  const socket = net.connect({ host: '127.0.0.1', port });
  await once(socket, 'connect');
  let received = Buffer.alloc(0);
  const frames: Uint8Array[] = [];
  const waiting: (() => void)[] = [];
  socket.on('data', (chunk: Buffer) => {
    received = Buffer.concat([received, chunk]);
    while (received.length >= 4 && received.length >= 4 + received.readUInt32BE(0)) {
      frames.push(received.subarray(4, 4 + received.readUInt32BE(0)));
      received = received.subarray(4 + received.readUInt32BE(0));
    }
    for (const wake of waiting.splice(0)) wake();
  });
  socket.on('error', () => undefined);
  const closed = once(socket, 'close');
  return {
    socket,
    closed,
    /** The next whole frame the node sent. */
    async frame(): Promise<Uint8Array> {
      while (frames.length === 0) await new Promise<void>((resolve) => waiting.push(resolve));
      return frames.shift() as Uint8Array;
    },
  };
}

test('a link whose other end is killed mid-stream: relayed sockets close with 1013, requests answer 503, and the user is served again', {
  skip,
  timeout: 60_000,
}, async () => {
  const user = await registerUser(api('a'));
  // `a` owns the user; the device on `b` is relayed to it over b's link.
  const channel = await notesChannelOf(api('a'), user);
  const device = await ackingDevice(node('b').url, channel, user);
  await new Promise<void>((resolve, reject) => {
    const timer = setInterval(() => {
      if (device.sent >= 200) {
        clearInterval(timer);
        reject(new Error(`the owner was not killed: ${device.acked} acks`));
        return;
      }
      device.send(`note ${device.sent}`);
      if (device.acked >= 10) {
        clearInterval(timer);
        node('a').kill().then(resolve, reject);
      }
    }, 5);
  });
  const acked = device.acked;
  // The link drops with the process: what was relayed over it ends at once, retry shortly.
  assert.deepEqual(await device.closed, { code: 1013, reason: 'The cluster connection was interrupted; reconnect' });
  // The owner's lease still stands, so `b` relays to it; nothing listens where it did: gone, 503.
  const res = await api('b').get('/users/@me', { token: user.token });
  assert.equal(res.status, 503);
  assert.equal(res.headers.get('retry-after'), '1');
  assert.deepEqual(res.body, { error: 'Service unavailable', code: 'service_unavailable', message: 'The server holding your data is gone; retry' });
  // Once the lease ends, `b` takes the user over, with every acknowledged note.
  const contents = await within(FAILOVER_BOUND_MS, 'the user is served again', () => notesThrough('b', user, channel));
  for (let i = 0; i < acked; i += 1) assert.ok(contents.includes(`note ${i}`), `acknowledged note ${i} of ${acked} is there`);
  // `a` restarted: a new process, linked to anew both ways (a device on `a`, relayed to `b`).
  nodes.set('a', await startNode('a'));
  const again = openDevice(node('a').url, channel, user.token);
  try {
    await synced(again);
    assert.equal(listNotes(again.doc).length, contents.length);
    const posted = await api('b').post<Message>(`/channels/${channel}/messages`, { token: user.token, json: { content: 'after the restart' } });
    assert.equal(posted.status, 201);
    await until(again.doc, (doc) => listNotes(doc).some((note) => note.content === 'after the restart'), 'the relayed device gets the new note');
  } finally {
    again.destroy();
  }
});

test('strangers on the cluster port (garbage, another node id, a wrong proof) are dropped; an authenticated peer sending garbage too; the node serves on', {
  skip,
  timeout: 60_000,
}, async () => {
  const owner = await registerUser(api('b'));
  const channel = await notesChannelOf(api('b'), owner);
  // A device relayed from `a` to `b`, open throughout: the links between the nodes are not disturbed.
  const relayed = openDevice(node('a').url, channel, owner.token);
  await synced(relayed);
  const { host, port, instance } = await linkAddressOf('b');
  assert.equal(host, '127.0.0.1');

  // An HTTP client at the wrong port: its first bytes read as a length far over the handshake's.
  const http = await stranger(port);
  http.socket.write('GET / HTTP/1.1\r\nHost: example\r\n\r\n');
  await http.closed;

  // A frame of the right size that is no hello.
  const noise = await stranger(port);
  noise.socket.write(framed(randomBytes(64)));
  await noise.closed;

  // A hello for a node that is not this one, or for a former process of it.
  for (const [to, meant] of [
    ['c', instance],
    ['b', 'a-previous-process'],
  ] as const) {
    const misdirected = await stranger(port);
    misdirected.socket.write(framed(hello('intruder', to, meant, randomBytes(32))));
    await misdirected.closed;
  }

  // A hello whose return address names no port there can be (past 65535): malformed, dropped.
  const badReturn = await stranger(port);
  const bad = encoding.createEncoder();
  encoding.writeVarString(bad, PROTOCOL);
  encoding.writeVarString(bad, 'intruder');
  encoding.writeVarString(bad, 'b');
  encoding.writeVarString(bad, instance);
  encoding.writeVarUint8Array(bad, randomBytes(32));
  encoding.writeVarString(bad, '127.0.0.1');
  encoding.writeVarUint(bad, 70_000);
  encoding.writeVarString(bad, 'x');
  badReturn.socket.write(framed(encoding.toUint8Array(bad)));
  await badReturn.closed;

  // The right hello, then a proof made without the cluster key: challenged, then dropped.
  const guesser = await stranger(port);
  guesser.socket.write(framed(hello('intruder', 'b', instance, randomBytes(32))));
  const challenge = decoding.createDecoder(await guesser.frame());
  assert.equal(decoding.readVarUint8Array(challenge).byteLength, 32, 'a nonce');
  assert.equal(decoding.readVarUint8Array(challenge).byteLength, 32, "the node's own proof");
  guesser.socket.write(framed(byteStrings(randomBytes(32))));
  await guesser.closed;

  // With the key from the data folder the link is admitted and its frames are read (here: a
  // session ended elsewhere, which closes that session's socket on the node), until one is
  // garbage, which drops the link.
  const other = await registerUser(api('b'));
  const sessions = await api('b').get<{ id: string; current: boolean }[]>('/auth/sessions', { token: other.token });
  const sessionId = sessions.body.find((session) => session.current)?.id ?? '';
  const otherChannel = await notesChannelOf(api('b'), other);
  const { ws, status } = await rawSocket(`${node('b').url}/sync/${otherChannel}?token=${other.token}`);
  assert.equal(status, 101);
  const revoked = closeEvent(ws);
  const key = fs.readFileSync(path.join(dataDir, 'cluster.key'));
  const peer = await stranger(port);
  const nonce = randomBytes(32);
  peer.socket.write(framed(hello('intruder', 'b', instance, nonce)));
  const serverNonce = decoding.readVarUint8Array(decoding.createDecoder(await peer.frame()));
  peer.socket.write(framed(byteStrings(proofOf('client', key, 'intruder', 'b', instance, nonce, serverNonce))));
  const ended = encoding.createEncoder();
  encoding.writeVarUint(ended, 8); // sessions-ended
  encoding.writeVarString(ended, 'intruder');
  encoding.writeVarUint(ended, 1);
  encoding.writeVarString(ended, sessionId);
  peer.socket.write(framed(encoding.toUint8Array(ended)));
  assert.equal((await revoked).code, 4401);
  peer.socket.write(framed(Uint8Array.of(99, 1, 2, 3)));
  await peer.closed;

  // Through all that, the node served on: a note posted through `a` is relayed to `b`, stored, and
  // reaches the relayed device, whose socket stayed open.
  const posted = await api('a').post<Message>(`/channels/${channel}/messages`, { token: owner.token, json: { content: 'still here' } });
  assert.equal(posted.status, 201);
  await until(relayed.doc, (doc) => listNotes(doc).some((note) => note.content === 'still here'), 'the relayed device gets the note');
  relayed.destroy();
});

test('the cluster key: made by the first start (mode 0600, no draft left), the same for every later one; a file too short to be a secret is refused', () => {
  const folder = tempDir('plexichat-key-');
  try {
    const key = readClusterKey(folder);
    assert.equal(key.length, 32);
    assert.equal(fs.statSync(path.join(folder, 'cluster.key')).mode & 0o777, 0o600);
    assert.deepEqual(fs.readdirSync(folder), ['cluster.key']);
    assert.deepEqual(readClusterKey(folder), key);
    fs.writeFileSync(path.join(folder, 'cluster.key'), 'short');
    assert.throws(() => readClusterKey(folder), { message: `${path.join(folder, 'cluster.key')} holds 5 bytes, too few for the cluster key (at least 16)` });
  } finally {
    fs.rmSync(folder, { recursive: true, force: true });
  }
});

/** A node's links, in this process, with a silent log; `locate` says where the other node is. */
async function linksOf(nodeId: string, key: Uint8Array, locate: LinkSettings['locate'], lost: (node: string, loss: LinkLoss) => void): Promise<Links> {
  const links = await Links.listen(
    { nodeId, instance: `${nodeId}-1`, key, host: '127.0.0.1', port: 0, maxFrameBytes: 1024 * 1024, maxQueuedBytes: 1024 * 1024, locate },
    pino({ level: 'silent' }),
  );
  links.serve({ onFrame: () => undefined, onInterrupted: () => undefined, onLost: lost });
  return links;
}

/** A frame of `bytes` zeros, its length in front, as the bus hands them to the links. */
function zeros(bytes: number): Uint8Array {
  const frame = new Uint8Array(4 + bytes);
  new DataView(frame.buffer).setUint32(0, bytes);
  return frame;
}

test('a node with no node key, or with nothing listening where it said, is reported gone', async () => {
  const key = randomBytes(32);
  const losses: [string, LinkLoss][] = [];
  const closed = net.createServer();
  closed.listen(0, '127.0.0.1');
  await once(closed, 'listening');
  const { port } = closed.address() as net.AddressInfo;
  closed.close();
  await once(closed, 'close');
  let reported: () => void = () => undefined;
  const links = await linksOf(
    'a',
    key,
    async (node) => (node === 'nobody' ? undefined : { host: '127.0.0.1', port, instance: 'x' }),
    (node, loss) => {
      losses.push([node, loss]);
      if (losses.length === 2) reported();
    },
  );
  try {
    const both = new Promise<void>((resolve) => (reported = resolve));
    links.send('nobody', [zeros(10), zeros(10)]);
    links.send('vanished', [zeros(10)]);
    await both;
    assert.deepEqual(losses.sort(), [
      ['nobody', 'gone'],
      ['vanished', 'gone'],
    ]);
  } finally {
    await links.close();
  }
});

test('a node that does not read what it is sent is given up past the bound, as a lost link, instead of buffered', async () => {
  const key = randomBytes(32);
  // The other node: a real handshake, then it stops reading.
  const stalled = net.createServer((socket) => {
    socket.once('data', (chunk: Buffer) => {
      const hello = decoding.createDecoder(chunk.subarray(4, 4 + chunk.readUInt32BE(0)));
      decoding.readVarString(hello);
      const [from, to, instance] = [decoding.readVarString(hello), decoding.readVarString(hello), decoding.readVarString(hello)];
      const clientNonce = decoding.readVarUint8Array(hello);
      const serverNonce = randomBytes(32);
      socket.write(framed(byteStrings(serverNonce, proofOf('server', key, from, to, instance, clientNonce, serverNonce))));
      socket.pause();
    });
  });
  stalled.listen(0, '127.0.0.1');
  await once(stalled, 'listening');
  const { port } = stalled.address() as net.AddressInfo;
  let lost: (loss: LinkLoss) => void = () => undefined;
  const given = new Promise<LinkLoss>((resolve) => (lost = resolve));
  let over = false;
  const links = await linksOf(
    'a',
    key,
    async () => ({ host: '127.0.0.1', port, instance: 'b-1' }),
    (_node, loss) => {
      over = true;
      lost(loss);
    },
  );
  try {
    // 256 KiB a turn: the kernel's buffers fill, then this node's own, up to its 1 MiB bound.
    let sent = 0;
    while (!over && sent < 256) {
      links.send('b', [zeros(256 * 1024)]);
      sent += 1;
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.equal(await given, 'unreachable');
    assert.ok(sent < 256, `given up after ${sent} frames of 256 KiB`);
  } finally {
    await links.close();
    stalled.close();
    stalled.unref();
  }
});
