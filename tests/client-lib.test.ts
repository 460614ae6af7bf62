import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import WebSocket from 'ws';
import * as Y from 'yjs';
import {
  ApiError,
  MemoryStore,
  PlexichatClient,
  backoffCeiling,
  openFileStore,
  SyncProvider,
  DEFAULT_BACKOFF,
  type WebSocketLike,
  type WebSocketConstructor,
  type LocalStore,
} from '../client-lib/index.ts';
import { startServer, registerUser, tempDir, type TestServer } from './helpers/server.ts';
import { TEST_BACKOFF, WireCounter, clientFor } from './helpers/client.ts';
import { CLOSE_CODES, encodeAck, encodeSyncStep1, encodeSyncStep2, encodeUpdate, readMessage } from '../shared/index.ts';
import { settingsMap } from '../shared/settings-doc.ts';
import { makePng } from './helpers/images.ts';

let srv: TestServer;
let dir: string;
before(async () => {
  srv = await startServer();
  dir = tempDir('plexichat-client-');
});
after(async () => {
  await srv.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const open = (client: PlexichatClient, store: LocalStore = new MemoryStore(), extra: { WebSocket?: WebSocketConstructor; connect?: boolean } = {}) =>
  client.openNotes({ store, WebSocket: extra.WebSocket ?? WebSocket, backoff: TEST_BACKOFF, ...(extra.connect === false ? { connect: false } : {}) });

test('REST: register, me, settings and notes round-trip through the typed client', async () => {
  const client = new PlexichatClient({ baseUrl: srv.url });
  const name = `cl${process.pid}${Date.now() % 100000}`;
  const auth = await client.register({ username: name, email: `${name}@example.com`, password: 'a-good-password' });
  assert.equal(client.token, auth.token);
  const me = await client.me();
  assert.equal(me.username, name);
  assert.deepEqual(await client.updateSettings({ theme: 'dark' }), { theme: 'dark' });
  assert.equal((await client.updateMessagingSettings({ allow_dms_from: 'friends' })).allow_dms_from, 'friends');
  const channel = await client.notesChannel();
  const created = await client.createMessage(channel.id, { content: 'from REST' });
  assert.equal((await client.updateMessage(channel.id, created.id, { content: 'edited' })).content, 'edited');
  assert.deepEqual(
    (await client.listMessages(channel.id, { limit: 10 })).map((m) => m.content),
    ['edited'],
  );
  await client.deleteMessage(channel.id, created.id);
  assert.deepEqual(await client.listMessages(channel.id), []);
  const other = await registerUser(srv.api);
  assert.equal((await client.searchUser(other.username)).id, other.id);
  assert.equal((await client.putRelationship(other.id, { type: 'friend' })).type, 'outgoing_request');
  assert.equal((await client.openDm({ recipient_id: other.id })).recipient_id, other.id);
  assert.equal((await client.listChannels()).length, 1);
  assert.equal((await client.listRelationships())[0]?.id, other.id);
  await client.deleteRelationship(other.id);
  assert.deepEqual(await client.listRelationships(), []);

  const uploaded = await client.uploadAvatar(await makePng(64, 64), 'me.png');
  assert.deepEqual({ width: uploaded.width, height: uploaded.height }, { width: 256, height: 256 });
  assert.equal((await client.me()).avatar_url, uploaded.avatar_url);
  const image = await client.getAvatar(me.id);
  assert.equal(image.contentType, 'image/webp');
  assert.equal(image.bytes.byteLength, uploaded.size);
  await client.deleteAvatar();
  await assert.rejects(client.getAvatar(me.id), (e: unknown) => e instanceof ApiError && e.status === 404 && e.code === 'avatar_not_found');
  const notImage = await client.uploadAvatar(new TextEncoder().encode('<svg/>'), 'x.svg').then(
    () => assert.fail('text is not an image'),
    (e: unknown) => e,
  );
  assert.ok(notImage instanceof ApiError);
  assert.deepEqual({ status: notImage.status, error: notImage.error }, { status: 400, error: 'Invalid file type' });
  assert.deepEqual(await client.health(), { status: 'ok' });
  await client.logout();
  await assert.rejects(client.me(), (e: unknown) => e instanceof ApiError && e.status === 401 && e.error === 'Unauthorized');
  assert.equal(client.token, undefined);
});

test('ApiError carries the documented text for a 409 and a 404', async () => {
  const { client, user } = await clientFor(srv.api, srv.url);
  const taken = await client.register({ username: user.username, email: `other-${user.email}`, password: 'another-password' }).then(
    () => assert.fail('a taken username must be refused'),
    (error: unknown) => error,
  );
  assert.ok(taken instanceof ApiError);
  assert.equal(taken.status, 409);
  assert.equal(taken.error, 'Already exists');
  assert.equal(taken.code, 'already_exists');

  const missing = await client.getUser('1234567890123').then(
    () => assert.fail('an unknown user must be a 404'),
    (error: unknown) => error,
  );
  assert.ok(missing instanceof ApiError);
  assert.deepEqual({ status: missing.status, error: missing.error, code: missing.code }, { status: 404, error: 'User not found', code: 'user_not_found' });
});

test('a wrong request body does not compile, and the server refuses it anyway', async () => {
  const { client } = await clientFor(srv.api, srv.url);
  const channel = await client.notesChannel();
  // @ts-expect-error: `content` is required and `text` is not a field of the body.
  const sent = client.createMessage(channel.id, { text: 'hello' });
  const error = await sent.then(
    () => assert.fail('must be refused'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof ApiError);
  assert.deepEqual({ status: error.status, error: error.error, code: error.code }, { status: 400, error: 'Invalid input', code: 'invalid_input' });
  // @ts-expect-error: allow_dms_from is one of everyone | friends | none.
  await assert.rejects(client.updateMessagingSettings({ allow_dms_from: 'nobody' }), ApiError);
});

test('two devices edit live and converge; pending drops to 0 once the server stores the edits', async () => {
  const { client } = await clientFor(srv.api, srv.url);
  const a = await open(client);
  const b = await open(client);
  try {
    await Promise.all([a.whenSynced(), b.whenSynced()]);
    const id = a.add('hello');
    assert.ok(a.pending > 0);
    await a.whenSynced();
    assert.equal(a.pending, 0);
    await b.waitFor(() => b.get(id)?.content === 'hello', 'note on B');
    b.edit(id, (text) => text.insert(text.length, ' world'));
    await a.waitFor(() => a.get(id)?.content === 'hello world', 'edit on A');
    assert.notEqual(a.get(id)?.edited_at, null);
    a.setText(id, 'HELLO world');
    await b.waitFor(() => b.get(id)?.content === 'HELLO world', 'setText on B');
    // REST sees the same document.
    const rest = await client.listMessages(a.channelId);
    assert.deepEqual(
      rest.map((m) => [m.id, m.content]),
      [[id, 'HELLO world']],
    );
    assert.equal(b.remove(id), true);
    await a.waitFor(() => a.get(id) === null, 'removal on A');
    assert.throws(() => a.add('   '), /white space/);
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
});

test('without a WebSocket option the global one is used (browsers, React Native, Node 22)', async () => {
  const { client } = await clientFor(srv.api, srv.url);
  const holder = globalThis as { WebSocket?: unknown };
  const saved = holder.WebSocket;
  holder.WebSocket = WebSocket;
  try {
    const notes = await client.openNotes({ store: new MemoryStore(), backoff: TEST_BACKOFF });
    notes.add('through the global WebSocket');
    await notes.whenSynced();
    assert.equal((await client.listMessages(notes.channelId))[0]?.content, 'through the global WebSocket');
    await notes.close();
    holder.WebSocket = undefined;
    await assert.rejects(client.openNotes({ store: new MemoryStore() }), TypeError);
  } finally {
    holder.WebSocket = saved;
  }
});

test('offline edits survive an app restart (file store) and are sent when the connection returns', async () => {
  const { client } = await clientFor(srv.api, srv.url);
  const file = path.join(dir, 'restart.sqlite');
  const first = await open(client, await openFileStore(file));
  await first.whenSynced();
  first.disconnect();
  assert.equal(first.status, 'offline');
  const ids = [first.add('written offline 1'), first.add('written offline 2')];
  first.setText(ids[0]!, 'written offline 1, edited');
  assert.equal(first.pending, 3);
  await first.close();

  // The app restarts still offline: everything is there, still pending.
  const second = await open(client, await openFileStore(file), { connect: false });
  assert.deepEqual(
    second.list().map((n) => n.content),
    ['written offline 2', 'written offline 1, edited'],
  );
  assert.equal(second.pending, 3);
  assert.deepEqual(await client.listMessages(second.channelId), []);
  second.connect();
  await second.whenSynced();
  assert.equal(second.pending, 0);
  assert.deepEqual(
    (await client.listMessages(second.channelId)).map((m) => m.content),
    ['written offline 2', 'written offline 1, edited'],
  );
  await second.close();

  // Acknowledged state is remembered too: a restart has nothing pending.
  const third = await open(client, await openFileStore(file), { connect: false });
  assert.equal(third.pending, 0);
  await third.close();
});

test('a device offline for 1,000 edits resyncs with only the difference on the wire', async () => {
  const { client } = await clientFor(srv.api, srv.url);
  const a = await open(client);
  const wire = new WireCounter();
  const b = await open(client, new MemoryStore(), { WebSocket: wire.WebSocket });
  try {
    // A large document both devices already share.
    for (let i = 0; i < 400; i += 1) a.add(`${'lorem ipsum dolor sit amet '.repeat(30)}#${i}`);
    await a.whenSynced();
    await b.waitFor(() => b.list().length === 400, 'B has the document');
    const full = Y.encodeStateAsUpdate(a.doc).byteLength;

    b.disconnect();
    const before = Y.encodeStateVector(b.doc);
    const target = a.add('typed while B was away: ');
    for (let i = 0; i < 1000; i += 1) a.edit(target, (text) => text.insert(text.length, String(i % 10)));
    await a.whenSynced();

    const difference = Y.encodeStateAsUpdate(a.doc, before).byteLength;
    wire.reset();
    b.connect();
    await b.whenSynced();
    await b.waitFor(() => b.get(target)?.content.length === 'typed while B was away: '.length + 1000, 'B has the 1,000 edits');
    assert.deepEqual(b.list(), a.list());
    assert.ok(full > 10 * difference, `the full document (${full} bytes) dwarfs the difference (${difference} bytes)`);
    // The difference, plus a state vector and a few acks: never the document again.
    assert.ok(wire.received < difference + 1_024, `received ${wire.received} bytes; the difference is ${difference}`);
    assert.ok(wire.received < full / 10, `received ${wire.received} bytes for a ${full}-byte document`);
    assert.ok(wire.sent < 1_000, `sent ${wire.sent} bytes (B had nothing new)`);
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
});

test('the file store compacts its own log and keeps unacknowledged edits apart', async () => {
  const { client } = await clientFor(srv.api, srv.url);
  const file = path.join(dir, 'compact.sqlite');
  const store = await openFileStore(file, { maxRecords: 50 });
  const notes = await open(client, store);
  await notes.whenSynced();
  const id = notes.add('x');
  for (let i = 0; i < 300; i += 1) notes.edit(id, (t) => t.insert(t.length, 'y'));
  await notes.whenSynced();
  // Acks arrive in batches, so settled records pile up and get folded into the snapshot.
  notes.add('one more');
  await notes.whenSynced();
  assert.ok(store.recordCount < 100, `${store.recordCount} records left after compaction`);
  notes.disconnect();
  const offline = notes.add('offline, unacknowledged');
  await notes.close();

  const reopened = await openFileStore(file, { maxRecords: 1 });
  const state = await reopened.load();
  assert.ok(
    state.updates.some((r) => r.local && r.seq > state.acked),
    'the pending edit is still its own record',
  );
  await reopened.close();
  const again = await open(client, await openFileStore(file, { maxRecords: 1 }), { connect: false });
  assert.equal(again.get(id)?.content, `x${'y'.repeat(300)}`);
  assert.equal(again.get(offline)?.content, 'offline, unacknowledged');
  assert.equal(again.pending, 1);
  again.connect();
  await again.whenSynced();
  assert.equal((await client.listMessages(again.channelId)).length, 3);
  await again.close();
});

test('a revoked session (4401) stops retrying until the token changes, then resyncs', async () => {
  const { client, user } = await clientFor(srv.api, srv.url);
  const notes = await open(client);
  try {
    await notes.whenSynced();
    const refused = new Promise<number>((resolve) => notes.on('refused', (code) => resolve(code)));
    await srv.api.post('/auth/logout', { token: user.token });
    assert.equal(await refused, CLOSE_CODES.SESSION_REVOKED);
    assert.equal(notes.status, 'offline');
    notes.add('written while signed out');
    assert.equal(notes.status, 'offline', 'no retry with the revoked token');
    await client.login({ login: user.username, password: user.password });
    await notes.whenSynced();
    assert.deepEqual(
      (await client.listMessages(notes.channelId)).map((m) => m.content),
      ['written while signed out'],
    );
  } finally {
    await notes.close();
  }
});

test('a token the server refuses at the upgrade stops retries (after one check) until a new token', async () => {
  const { client, user } = await clientFor(srv.api, srv.url);
  const store = new MemoryStore();
  const first = await open(client, store);
  await first.whenSynced();
  await first.close();
  // Signed out elsewhere while the app was closed: the next start's upgrades get a 401.
  await srv.api.post('/auth/logout', { token: user.token });
  const notes = await open(client, store);
  try {
    const refused = await new Promise<number>((resolve) => notes.on('refused', (code) => resolve(code)));
    assert.equal(refused, CLOSE_CODES.SESSION_REVOKED);
    assert.equal(notes.status, 'offline');
    const id = notes.add('typed while signed out');
    await client.login({ login: user.username, password: user.password });
    await notes.whenSynced();
    assert.equal((await client.listMessages(notes.channelId))[0]?.id, id);
  } finally {
    await notes.close();
  }
});

test('reconnects after a server restart (1012) and keeps pending edits', async () => {
  const dataDir = tempDir();
  let server = await startServer({ dataDir });
  try {
    const { client } = await clientFor(server.api, server.url);
    const notes = await open(client);
    await notes.whenSynced();
    const closed = new Promise<void>((resolve) => {
      const off = notes.on('status', (status) => {
        if (status === 'offline' || status === 'connecting') {
          off();
          resolve();
        }
      });
    });
    await server.close();
    await closed;
    assert.equal(notes.lastClose?.code, CLOSE_CODES.SERVICE_RESTART);
    const id = notes.add('while the server restarts');
    // Same data, new address (a port is not always free again at once after a close).
    server = await startServer({ dataDir });
    client.setBaseUrl(server.url);
    await notes.whenSynced();
    assert.equal((await client.listMessages(notes.channelId))[0]?.id, id);
    await notes.close();
  } finally {
    await server.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('backoff: full jitter under an exponential ceiling that stops at the cap', () => {
  const options = { baseMs: 100, capMs: 5_000 };
  assert.deepEqual(
    [0, 1, 2, 3, 5, 6, 20].map((n) => backoffCeiling(n, options)),
    [100, 200, 400, 800, 3200, 5000, 5000],
  );
});

test('backoff: full-jitter draws after failures, "soon" after 1012/4503, a stop on 4401 until retry()', async () => {
  const delays: number[] = [];
  const closeCodes = [1006, 1006, 1006, 1006, 1006, 1006, 1006, CLOSE_CODES.SERVICE_RESTART, CLOSE_CODES.SLOW_READER, CLOSE_CODES.SESSION_REVOKED];
  let opened = 0;
  let refusedWith = 0;
  let finish = () => {};
  const finished = new Promise<void>((resolve) => (finish = resolve));
  class FailingSocket implements WebSocketLike {
    binaryType = 'arraybuffer';
    onopen: ((event: never) => void) | null = null;
    onmessage: ((event: never) => void) | null = null;
    onclose: ((event: never) => void) | null = null;
    onerror: ((event: never) => void) | null = null;
    constructor() {
      const code = closeCodes[opened] ?? 1006;
      opened += 1;
      queueMicrotask(() => (this.onclose as ((e: { code: number; reason: string }) => void) | null)?.({ code, reason: '' }));
    }
    send(): void {}
    close(): void {}
  }
  let draw = 0;
  const provider = new SyncProvider({
    doc: new Y.Doc(),
    url: () => 'ws://unused',
    token: () => 'pxc_0123456789abcdef',
    WebSocket: FailingSocket,
    currentSeq: () => 0,
    onAck: () => {},
    onStatus: () => {},
    onRefused: (code) => {
      refusedWith = code;
      finish();
    },
    backoff: { baseMs: 100, capMs: 1_000, soonMs: 50 },
    // Alternate near-top and near-bottom draws: both ends of each window show up.
    random: () => (draw++ % 2 === 0 ? 0.999 : 0.001),
    setTimer: (fn, ms) => {
      delays.push(ms);
      setImmediate(fn);
      return 0;
    },
    clearTimer: () => {},
  });
  provider.connect();
  await finished;
  // connect timeouts are set too (DEFAULT_BACKOFF.connectTimeoutMs); keep only the retry delays.
  const retries = delays.filter((ms) => ms !== DEFAULT_BACKOFF.connectTimeoutMs);
  assert.deepEqual(retries, [99, 0, 399, 0, 999, 1, 999, 0, 49]);
  assert.equal(refusedWith, CLOSE_CODES.SESSION_REVOKED);
  assert.equal(provider.refused, true);
  assert.equal(opened, 10);
  provider.retry();
  assert.equal(opened, 11, 'a new token means one new attempt at once');
  provider.disconnect();
});

test('an ack of the sync step 2 covers every local edit made before it, also when the newest seq is remote', async () => {
  // The server's side played by hand over a scripted socket, so the order of events is exact.
  const sockets: ScriptedSocket[] = [];
  class ScriptedSocket implements WebSocketLike {
    binaryType = 'arraybuffer';
    onopen: ((event: never) => void) | null = null;
    onmessage: ((event: never) => void) | null = null;
    onclose: ((event: never) => void) | null = null;
    onerror: ((event: never) => void) | null = null;
    readonly sent: Uint8Array[] = [];
    constructor() {
      sockets.push(this);
    }
    send(data: Uint8Array): void {
      this.sent.push(data.slice());
    }
    close(): void {}
    open(): void {
      (this.onopen as ((event: object) => void) | null)?.({});
    }
    receive(frame: Uint8Array): void {
      (this.onmessage as ((event: { data: unknown }) => void) | null)?.({ data: frame });
    }
  }
  const store = new MemoryStore();
  const client = new PlexichatClient({ baseUrl: 'http://127.0.0.1:9', token: 'pxc_unused_token_1234' });
  const device = await client.openSettings({ store, WebSocket: ScriptedSocket, connect: false });
  const server = new Y.Doc();
  try {
    device.set('offline', 1); // seq 1, local
    device.connect();
    const socket = sockets[0]!;
    socket.open();
    device.set('before.handshake', 2); // seq 2, local: not sent alone, our step 2 carries it
    settingsMap(server).set('remote', 3);
    socket.receive(encodeUpdate(Y.encodeStateAsUpdate(server))); // seq 3, remote: the newest seq
    socket.receive(encodeSyncStep1(server)); // our step 2 answers it
    const step2 = socket.sent.map((frame) => readMessage(frame)).find((message) => message.type === 'sync-step2');
    assert.ok(step2 !== undefined && step2.type === 'sync-step2');
    const received = new Y.Doc();
    Y.applyUpdate(received, Y.encodeStateAsUpdate(server));
    Y.applyUpdate(received, step2.update);
    assert.deepEqual(settingsMap(received).toJSON(), { offline: 1, 'before.handshake': 2, remote: 3 });
    assert.equal(device.pending, 2);
    socket.receive(encodeAck(1));
    assert.equal(device.pending, 0, 'the step 2 is stored: both local edits are acknowledged');

    device.set('live', 4); // seq 4, local, sent on its own as message 2
    assert.equal(device.pending, 1);
    socket.receive(encodeAck(1));
    assert.equal(device.pending, 1, 'an ack of the step 2 alone does not cover a later edit');
    socket.receive(encodeAck(2));
    assert.equal(device.pending, 0);
    socket.receive(encodeSyncStep2(server, Y.encodeStateVector(device.doc)));
    assert.equal(device.status, 'synced');
  } finally {
    await device.close();
    server.destroy();
  }
  const state = await store.load();
  assert.equal(state.acked, 4);
  assert.deepEqual(
    state.updates.filter((r) => r.local && r.seq > state.acked),
    [],
    'nothing is pending after a restart',
  );
});
