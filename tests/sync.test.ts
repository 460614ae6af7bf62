import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import v8 from 'node:v8';
import vm from 'node:vm';
import * as Y from 'yjs';
import { readMessage } from '../shared/sync-codec.ts';
import { startServer, registerUser, type TestServer, type TestUser } from './helpers/server.ts';
import { openDevice, synced, until, notesChannelOf, rawSocket, closeEvent, frameOf } from './helpers/sync.ts';
import { CLOSE_CODES, insertNote, listNotes, notesMap, type Message } from '../shared/index.ts';

let srv: TestServer;
before(async () => {
  srv = await startServer({ docUnloadDelayMs: 0 });
});
after(() => srv.close());

const noteText = (doc: Y.Doc, id: string) => listNotes(doc).find((n) => n.id === id)?.content;

test('two devices of one user sync live with the stock y-websocket client', async () => {
  const user = await registerUser(srv.api);
  const channel = await notesChannelOf(srv.api, user);
  const a = openDevice(srv.url, channel, user.token);
  const b = openDevice(srv.url, channel, user.token);
  try {
    await Promise.all([synced(a), synced(b)]);
    a.doc.transact(() => insertNote(a.doc, { id: '1001', content: 'hello from A', created_at: 1 }));
    await until(b.doc, (d) => noteText(d, '1001') === 'hello from A', 'A → B');
    const text = (notesMap(b.doc).get('1001') as Y.Map<unknown>).get('content') as Y.Text;
    text.insert(text.length, ', and B');
    await until(a.doc, (d) => noteText(d, '1001') === 'hello from A, and B', 'B → A');
  } finally {
    a.destroy();
    b.destroy();
  }
});

test('offline edits on two devices to the same note converge exactly after reconnecting', async () => {
  const user = await registerUser(srv.api);
  const channel = await notesChannelOf(srv.api, user);
  const a = openDevice(srv.url, channel, user.token);
  const b = openDevice(srv.url, channel, user.token);
  try {
    await Promise.all([synced(a), synced(b)]);
    a.doc.transact(() => insertNote(a.doc, { id: '2001', content: 'shared note', created_at: 1 }));
    await until(b.doc, (d) => noteText(d, '2001') === 'shared note');
    a.provider.disconnect();
    b.provider.disconnect();
    ((notesMap(a.doc).get('2001') as Y.Map<unknown>).get('content') as Y.Text).insert(0, 'A: ');
    ((notesMap(b.doc).get('2001') as Y.Map<unknown>).get('content') as Y.Text).insert(11, ' (B was here)');
    a.doc.transact(() => insertNote(a.doc, { id: '2002', content: 'only on A', created_at: 2 }));
    b.doc.transact(() => insertNote(b.doc, { id: '2003', content: 'only on B', created_at: 3 }));
    a.provider.connect();
    b.provider.connect();
    const converged = (d: Y.Doc) => listNotes(d).length === 3 && noteText(d, '2001') === 'A: shared note (B was here)';
    await Promise.all([until(a.doc, converged, 'A converged'), until(b.doc, converged, 'B converged')]);
    assert.deepEqual(listNotes(a.doc), listNotes(b.doc));
    assert.deepEqual(Y.encodeStateVector(a.doc), Y.encodeStateVector(b.doc));
  } finally {
    a.destroy();
    b.destroy();
  }
});

test('REST writes reach connected devices and device writes show in REST', async () => {
  const user = await registerUser(srv.api);
  const channel = await notesChannelOf(srv.api, user);
  const device = openDevice(srv.url, channel, user.token);
  try {
    await synced(device);
    const created = await srv.api.post<Message>(`/channels/${channel}/messages`, { token: user.token, json: { content: 'from REST' } });
    assert.equal(created.status, 201);
    await until(device.doc, (d) => noteText(d, created.body.id) === 'from REST', 'REST → device');
    const edited = await srv.api.patch<Message>(`/channels/${channel}/messages/${created.body.id}`, {
      token: user.token,
      json: { content: 'from REST, edited' },
    });
    assert.equal(edited.status, 200);
    await until(device.doc, (d) => noteText(d, created.body.id) === 'from REST, edited', 'REST edit → device');

    device.doc.transact(() => insertNote(device.doc, { id: '999999999999999999', content: 'from device', created_at: 5 }));
    // The server stores before it relays: once another device sees it, REST must too.
    const witness = openDevice(srv.url, channel, user.token);
    try {
      await until(witness.doc, (d) => noteText(d, '999999999999999999') === 'from device', 'device → witness');
    } finally {
      witness.destroy();
    }
    const list = await srv.api.get<Message[]>(`/channels/${channel}/messages`, { token: user.token });
    assert.equal(list.body[0]!.content, 'from device');
    assert.equal(list.body[0]!.channel_id, channel);

    const removed = await srv.api.delete(`/channels/${channel}/messages/${created.body.id}`, { token: user.token });
    assert.equal(removed.status, 204);
    await until(device.doc, (d) => noteText(d, created.body.id) === undefined, 'REST delete → device');
  } finally {
    device.destroy();
  }
});

test("upgrade refuses a missing or bad token (401) and another user's document (404), never 101", async () => {
  const alice = await registerUser(srv.api);
  const bob = await registerUser(srv.api);
  const channel = await notesChannelOf(srv.api, alice);
  const cases: [string, Record<string, string>, number][] = [
    [`/sync/${channel}`, {}, 401],
    [`/sync/${channel}?token=pxc_nottherealtoken000`, {}, 401],
    [`/sync/${channel}?token=${bob.token}`, {}, 404],
    [`/sync/settings?token=garbage`, {}, 401],
    [`/sync/123?token=${alice.token}`, {}, 404],
    [`/sync/%E0%A4%A?token=${alice.token}`, {}, 404],
    [`/sync/${channel}`, { authorization: `Bearer ${bob.token}` }, 404],
  ];
  for (const [path, headers, status] of cases) {
    const { ws, status: got } = await rawSocket(srv.url + path, { headers });
    assert.equal(got, status, path);
    ws.terminate();
  }
  // The token may also come as a Sec-WebSocket-Protocol entry, and as a header.
  const viaProtocol = await rawSocket(`${srv.url}/sync/${channel}`, {}, ['plexichat', alice.token]);
  assert.equal(viaProtocol.status, 101);
  assert.equal(viaProtocol.ws.protocol, 'plexichat');
  viaProtocol.ws.close();
  const viaHeader = await rawSocket(`${srv.url}/sync/settings`, { headers: { authorization: `Bearer ${alice.token}` } });
  assert.equal(viaHeader.status, 101);
  viaHeader.ws.close();
});

test('garbage and truncated frames close only that socket, and store nothing', async () => {
  const user = await registerUser(srv.api);
  const channel = await notesChannelOf(srv.api, user);
  const good = openDevice(srv.url, channel, user.token);
  try {
    await synced(good);
    good.doc.transact(() => insertNote(good.doc, { id: '3001', content: 'keep me', created_at: 1 }));
    const valid = Y.encodeStateAsUpdate(good.doc);
    const frames: Uint8Array[] = [
      new Uint8Array([0xff, 0xff, 0xff]),
      new Uint8Array([0, 2, 200, 1, 2, 3]), // update whose length runs past the frame
      frameOf(0, 2, valid.slice(0, Math.floor(valid.length / 2))), // truncated update
      frameOf(0, 2, new Uint8Array([5, 200, 200, 200, 200, 1])),
      frameOf(0, 9, new Uint8Array([0, 0])), // unknown sync step
      new Uint8Array([42]), // unknown message type
      frameOf(1, null, new TextEncoder().encode('not awareness')),
    ];
    for (const frame of frames) {
      const { ws, status } = await rawSocket(`${srv.url}/sync/${channel}?token=${user.token}`);
      assert.equal(status, 101);
      const closed = closeEvent(ws);
      ws.send(frame);
      const { code } = await closed;
      assert.equal(code, CLOSE_CODES.MALFORMED_MESSAGE, `frame ${Buffer.from(frame).toString('hex').slice(0, 20)}`);
    }
    // The good device is still connected and in sync; the stored document is intact.
    good.doc.transact(() => insertNote(good.doc, { id: '3002', content: 'still here', created_at: 2 }));
    const fresh = openDevice(srv.url, channel, user.token);
    try {
      await until(fresh.doc, (d) => listNotes(d).length === 2, 'fresh device sees both notes');
      assert.deepEqual(
        listNotes(fresh.doc)
          .map((n) => n.content)
          .sort(),
        ['keep me', 'still here'],
      );
    } finally {
      fresh.destroy();
    }
  } finally {
    good.destroy();
  }
});

test('?ack=1 acknowledges each update once it is stored', async () => {
  const user = await registerUser(srv.api);
  const channel = await notesChannelOf(srv.api, user);
  const { ws, status } = await rawSocket(`${srv.url}/sync/${channel}?token=${user.token}&ack=1`);
  assert.equal(status, 101);
  const doc = new Y.Doc();
  const acks: number[] = [];
  const gotThree = new Promise<void>((resolve) => {
    ws.on('message', (data: ArrayBuffer) => {
      const message = readMessage(new Uint8Array(data));
      if (message.type !== 'ack') return;
      acks.push(message.count);
      if (acks.at(-1) === 3) resolve();
    });
  });
  for (let i = 0; i < 3; i += 1) {
    const before = Y.encodeStateVector(doc);
    doc.getMap('messages').set(`40${i}`, `x${i}`);
    ws.send(frameOf(0, 2, Y.encodeStateAsUpdate(doc, before)));
  }
  await gotThree;
  assert.ok(
    acks.every((n, i) => i === 0 || n > acks[i - 1]!),
    `acks are cumulative: ${acks}`,
  );
  ws.close();
});

test("logout closes that session's sockets with 4401; other sessions stay", async () => {
  const user = await registerUser(srv.api);
  const other = await srv.api.post<{ token: string }>('/auth/login', { json: { login: user.username, password: user.password } });
  const { ws } = await rawSocket(`${srv.url}/sync/settings?token=${user.token}`);
  const { ws: keep } = await rawSocket(`${srv.url}/sync/settings?token=${other.body.token}`);
  const closed = closeEvent(ws);
  await srv.api.post('/auth/logout', { token: user.token });
  assert.equal((await closed).code, CLOSE_CODES.SESSION_REVOKED);
  assert.equal(keep.readyState, keep.OPEN);
  keep.close();
});

test('too many sockets for one user: the extra one is closed with 4529', async () => {
  const limited = await startServer({ maxSyncConnectionsPerUser: 2 });
  try {
    const user = await registerUser(limited.api);
    const first = await rawSocket(`${limited.url}/sync/settings?token=${user.token}`);
    const second = await rawSocket(`${limited.url}/sync/settings?token=${user.token}`);
    const third = await rawSocket(`${limited.url}/sync/settings?token=${user.token}`);
    assert.equal((await closeEvent(third.ws)).code, CLOSE_CODES.TOO_MANY_CONNECTIONS);
    assert.equal(first.ws.readyState, first.ws.OPEN);
    first.ws.close();
    second.ws.close();
  } finally {
    await limited.close();
  }
});

test('shutdown closes sync sockets with 1012 so clients reconnect elsewhere', async () => {
  const own = await startServer();
  const user = await registerUser(own.api);
  const { ws } = await rawSocket(`${own.url}/sync/settings?token=${user.token}`);
  const closed = closeEvent(ws);
  await own.close();
  assert.equal((await closed).code, CLOSE_CODES.SERVICE_RESTART);
});

test('documents unload after their last socket leaves; memory returns near baseline after 200 docs', async () => {
  const users: TestUser[] = await Promise.all(Array.from({ length: 100 }, () => registerUser(srv.api)));
  const channels = await Promise.all(users.map((u) => notesChannelOf(srv.api, u)));
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  gc();
  const baseline = process.memoryUsage().heapUsed;
  const devices = users.flatMap((u, i) => [openDevice(srv.url, channels[i]!, u.token), openDevice(srv.url, 'settings', u.token)]);
  await Promise.all(devices.map((d) => synced(d)));
  for (const [i, d] of devices.entries()) d.doc.getMap(i % 2 ? 'settings' : 'messages').set('k', 'x'.repeat(1000));
  assert.ok(srv.server.stats().loadedDocs >= 200);
  for (const d of devices) d.destroy();
  await new Promise<void>((resolve, reject) => {
    const deadline = Date.now() + 20_000;
    const check = () => {
      if (srv.server.stats().loadedDocs === 0) resolve();
      else if (Date.now() > deadline) reject(new Error(`still loaded: ${srv.server.stats().loadedDocs}`));
      else setImmediate(check);
    };
    check();
  });
  gc();
  const grown = process.memoryUsage().heapUsed - baseline;
  assert.ok(grown < 30 * 1024 * 1024, `heap grew by ${(grown / 1048576).toFixed(1)} MiB`);
});

test('a reader that stops reading is disconnected instead of growing server memory', async () => {
  const slowServer = await startServer({ maxSyncBackpressureBytes: 1024 * 1024 });
  try {
    const user = await registerUser(slowServer.api);
    const channel = await notesChannelOf(slowServer.api, user);
    const slow = await rawSocket(`${slowServer.url}/sync/${channel}?token=${user.token}`);
    const slowClosed = closeEvent(slow.ws);
    // Stop reading: the server's unsent bytes for this socket pile up.
    const tcp = (slow.ws as unknown as { _socket: import('node:net').Socket })._socket;
    tcp.pause();
    const writer = openDevice(slowServer.url, channel, user.token);
    try {
      await synced(writer);
      const text = writer.doc.getText('flood');
      // Big updates: the kernel's socket buffers (megabytes on loopback) fill first.
      const chunk = 'x'.repeat(64 * 1024);
      const deadline = Date.now() + 30_000;
      // Write until the server has let go of the slow socket (it counts only the writer then).
      while (slowServer.server.stats().syncConnections > 1) {
        assert.ok(Date.now() < deadline, 'the slow reader was never disconnected');
        text.insert(text.length, chunk);
        await new Promise((resolve) => setImmediate(resolve));
      }
      tcp.resume();
      const { code } = await slowClosed;
      assert.equal(code, CLOSE_CODES.SLOW_READER);
      // The writer was never affected, and its data is all stored.
      const fresh = openDevice(slowServer.url, channel, user.token);
      try {
        await until(fresh.doc, (d) => d.getText('flood').length === text.length, 'fresh device has the flood');
      } finally {
        fresh.destroy();
      }
    } finally {
      writer.destroy();
    }
  } finally {
    await slowServer.close();
  }
});
