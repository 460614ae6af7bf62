import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import * as Y from 'yjs';
import * as encoding from 'lib0/encoding';
import { Api, registerUser, spawnServer, startServer, tempDir, type TestServer, type TestUser } from './helpers/server.ts';
import { closeEvent, frameOf, notesChannelOf, openDevice, rawSocket, synced, until, whenStored } from './helpers/sync.ts';
import { TRAVERSAL_KEY, countRows, forwardReferenceUpdate, orphanTextUpdate, storeRawUpdates, unknownDeletesUpdate } from './helpers/hostile.ts';
import { readMessage } from '../shared/sync-codec.ts';
import { CLOSE_CODES, insertNote, listNotes, type Message, type NotesChannel, type UserSettings } from '../shared/index.ts';

let srv: TestServer;
before(async () => {
  srv = await startServer({ docUnloadDelayMs: 0 });
});
after(() => srv.close());

const step2 = (update: Uint8Array) => frameOf(0, 1, update);
const noteText = (doc: Y.Doc, id: string) => listNotes(doc).find((n) => n.id === id)?.content;

/** Resolves once the server answered a sync step 1 sent now: everything sent before it was handled. */
function roundTrip(ws: import('ws').WebSocket): Promise<void> {
  return new Promise((resolve, reject) => {
    const onMessage = (data: ArrayBuffer) => {
      if (readMessage(new Uint8Array(data)).type !== 'sync-step2') return;
      ws.off('message', onMessage);
      resolve();
    };
    ws.on('message', onMessage);
    ws.once('close', (code) => reject(new Error(`closed with ${code}`)));
    ws.send(frameOf(0, 0, Y.encodeStateVector(new Y.Doc())));
  });
}

/** Sends one frame on a fresh socket and resolves with the close code it gets. */
async function sendAndClose(url: string, path: string, frame: Uint8Array): Promise<number> {
  const { ws, status } = await rawSocket(url + path);
  assert.equal(status, 101, path);
  const closed = closeEvent(ws);
  ws.send(frame);
  return (await closed).code;
}

test('an update Yjs cannot apply closes only its sender with 4400: nothing stored, the process and the other sockets carry on', async () => {
  const user = await registerUser(srv.api);
  const other = await registerUser(srv.api);
  const channel = await notesChannelOf(srv.api, user);
  const device = openDevice(srv.url, channel, user.token);
  const bystander = openDevice(srv.url, 'settings', other.token);
  try {
    await Promise.all([synced(device), synced(bystander)]);
    device.doc.transact(() => insertNote(device.doc, { id: '7001', content: 'before', created_at: 1 }));
    const code = await sendAndClose(srv.url, `/sync/${channel}?token=${user.token}`, step2(forwardReferenceUpdate()));
    assert.equal(code, CLOSE_CODES.MALFORMED_MESSAGE);
    // The same document keeps syncing for its other socket, and other users never noticed.
    device.doc.transact(() => insertNote(device.doc, { id: '7002', content: 'after', created_at: 2 }));
    bystander.doc.getMap('settings').set('theme', 'dark');
    const fresh = openDevice(srv.url, channel, user.token);
    try {
      await until(fresh.doc, (d) => noteText(d, '7002') === 'after', 'a fresh device sees the later note');
      assert.deepEqual(
        listNotes(fresh.doc).map((n) => n.content),
        ['after', 'before'],
      );
      assert.equal(fresh.doc.getMap('anything').size, 0);
    } finally {
      fresh.destroy();
    }
    await whenStored(srv.url, 'settings', other.token, (d) => d.getMap('settings').get('theme') === 'dark', 'the bystander write is stored');
    const settings = await srv.api.get<UserSettings>('/users/@me/settings', { token: other.token });
    assert.deepEqual(settings.body, { theme: 'dark' });
  } finally {
    device.destroy();
    bystander.destroy();
  }
});

test('settings written over sync must be plain JSON within the limits: anything else is refused whole (4400)', async () => {
  const user = await registerUser(srv.api);
  const path = `/sync/settings?token=${user.token}`;
  let deep: unknown = 'bottom';
  for (let i = 0; i < 4500; i += 1) deep = [deep];
  const writes: [string, (doc: Y.Doc) => void][] = [
    ['a bigint', (d) => d.getMap('settings').set('big', 10n)],
    ['binary', (d) => d.getMap('settings').set('bytes', new Uint8Array([1, 2, 3]))],
    ['a nested Y.Map', (d) => d.getMap('settings').set('nested', new Y.Map())],
    ['a Y.Text', (d) => d.getMap('settings').set('text', new Y.Text('hi'))],
    ['undefined', (d) => d.getMap('settings').set('nothing', undefined)],
    ['NaN', (d) => d.getMap('settings').set('nan', Number.NaN)],
    ['arrays 4,500 deep', (d) => d.getMap('settings').set('deep', deep)],
    ['arrays 33 deep', (d) => d.getMap('settings').set('deep', JSON.parse('['.repeat(33) + ']'.repeat(33)) as unknown)],
    ['a bad key', (d) => d.getMap('settings').set('bad key!', 1)],
    ['a value over 16 KiB', (d) => d.getMap('settings').set('big', 'x'.repeat(17 * 1024))],
    [
      '201 keys',
      (d) => {
        for (let i = 0; i < 201; i += 1) d.getMap('settings').set(`k${i}`, i);
      },
    ],
    ['another root', (d) => d.getText('elsewhere').insert(0, 'x')],
    ['a subdocument', (d) => d.getMap('settings').set('sub', new Y.Doc())],
  ];
  for (const [label, write] of writes) {
    const doc = new Y.Doc();
    doc.transact(() => write(doc));
    assert.equal(await sendAndClose(srv.url, path, step2(Y.encodeStateAsUpdate(doc))), CLOSE_CODES.MALFORMED_MESSAGE, label);
  }
  const read = await srv.api.get<UserSettings>('/users/@me/settings', { token: user.token });
  assert.equal(read.status, 200);
  assert.deepEqual(read.body, {}, 'nothing of any refused update is stored');
  // What is within the rules still goes through, and removing keys is always allowed.
  const device = openDevice(srv.url, 'settings', user.token);
  try {
    await synced(device);
    device.doc.getMap('settings').set('deep', JSON.parse('['.repeat(32) + ']'.repeat(32)) as unknown);
    device.doc.getMap('settings').set('theme', 'dark');
    await whenStored(srv.url, 'settings', user.token, (d) => d.getMap('settings').get('theme') === 'dark', 'the valid writes are stored');
  } finally {
    device.destroy();
  }
});

test('a document written before the rules: reads skip what is not valid, PATCH and DELETE repair it, a stored update that cannot be applied is set aside once', async () => {
  const dataDir = tempDir();
  let server = await startServer({ dataDir, docUnloadDelayMs: 0 });
  try {
    const user = await registerUser(server.api);
    const channel = await notesChannelOf(server.api, user);
    await server.close();

    // Three stored updates: a good one, one with values that are not settings, and one too deep
    // for Yjs to apply at all (it exhausts the stack).
    const settings = new Y.Doc();
    const settingsUpdates: Uint8Array[] = [];
    settings.on('update', (update: Uint8Array) => settingsUpdates.push(update));
    settings.getMap('settings').set('theme', 'dark');
    settings.transact(() => {
      const map = settings.getMap('settings');
      map.set('big', 10n);
      map.set('nested', new Y.Map());
      map.set('bad key!', 1);
      map.set('shallow', JSON.parse('['.repeat(40) + ']'.repeat(40)) as unknown);
    });
    let deep: unknown = 1;
    for (let i = 0; i < 4500; i += 1) deep = [deep];
    settings.getMap('settings').set('deep', deep);
    const notes = new Y.Doc();
    notes.transact(() => {
      const map = notes.getMap('messages');
      insertNote(notes, { id: '7101', content: 'a real note', created_at: 5 });
      for (const key of [TRAVERSAL_KEY, '', '1'.repeat(26), '9999999999999999999']) map.set(key, new Y.Map());
      map.set('7102', 'not a map');
      const broken = new Y.Map<unknown>();
      broken.set('content', 42);
      broken.set('created_at', 10n);
      broken.set('edited_at', 'yesterday');
      map.set('7103', broken);
    });
    storeRawUpdates(dataDir, user.id, 'settings', settingsUpdates);
    storeRawUpdates(dataDir, user.id, 'notes', [Y.encodeStateAsUpdate(notes), forwardReferenceUpdate()]);

    server = await startServer({ dataDir, docUnloadDelayMs: 0 });
    const api = server.api;
    const read = await api.get<UserSettings>('/users/@me/settings', { token: user.token });
    assert.equal(read.status, 200);
    assert.deepEqual(read.body, { theme: 'dark' });
    const patched = await api.patch<UserSettings>('/users/@me/settings', { token: user.token, json: { locale: 'fr' } });
    assert.equal(patched.status, 200);
    assert.deepEqual(patched.body, { theme: 'dark', locale: 'fr' });
    const device = openDevice(server.url, 'settings', user.token);
    try {
      await synced(device);
      assert.deepEqual([...device.doc.getMap('settings').keys()].sort(), ['locale', 'theme'], 'the PATCH removed every invalid entry');
    } finally {
      device.destroy();
    }

    const channelInfo = await api.get<NotesChannel>('/users/@me/notes', { token: user.token });
    assert.equal(channelInfo.body.last_message_id, '7103', 'only message ids count, and 7103 is the newest');
    const list = await api.get<Message[]>(`/channels/${channel}/messages`, { token: user.token });
    assert.equal(list.status, 200);
    const snowflakeTime = Math.floor((Number(BigInt('7103') >> 22n) + Date.UTC(2024, 0, 1)) / 1000);
    assert.deepEqual(list.body, [
      { id: '7103', content: '', created_at: snowflakeTime, edited_at: null, channel_id: channel },
      { id: '7101', content: 'a real note', created_at: 5, edited_at: null, channel_id: channel },
    ]);
    assert.equal((await api.delete(`/channels/${channel}/messages/7102`, { token: user.token })).status, 204, 'a non-map entry can be deleted');
    const repaired = await api.patch<Message>(`/channels/${channel}/messages/7103`, { token: user.token, json: { content: 'fixed' } });
    assert.equal(repaired.status, 200);
    assert.equal(repaired.body.content, 'fixed');
    assert.equal(repaired.body.created_at, snowflakeTime);
    assert.equal(typeof repaired.body.edited_at, 'number');
    assert.equal(countRows(dataDir, user.id, "SELECT count(*) AS n FROM doc_quarantine WHERE doc = 'notes'"), 1, 'the unappliable update is set aside');
    assert.equal(countRows(dataDir, user.id, "SELECT count(*) AS n FROM doc_quarantine WHERE doc = 'settings'"), 1);
    await server.close();

    // Loaded again: clean, nothing more to set aside.
    server = await startServer({ dataDir, docUnloadDelayMs: 0 });
    const again = await server.api.get<Message[]>(`/channels/${channel}/messages`, { token: user.token });
    assert.deepEqual(
      again.body.map((m) => [m.id, m.content]),
      [
        ['7103', 'fixed'],
        ['7101', 'a real note'],
      ],
    );
    assert.equal(countRows(dataDir, user.id, "SELECT count(*) AS n FROM doc_quarantine WHERE doc = 'notes'"), 1);
  } finally {
    await server.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('updates that would leave work pending for every later update are refused (4400), and the document stays fast', async () => {
  const user = await registerUser(srv.api);
  const channel = await notesChannelOf(srv.api, user);
  const path = `/sync/${channel}?token=${user.token}`;
  assert.equal(await sendAndClose(srv.url, path, step2(unknownDeletesUpdate(5000))), CLOSE_CODES.MALFORMED_MESSAGE, 'deletes of unknown content');
  assert.equal(await sendAndClose(srv.url, path, step2(orphanTextUpdate(1_200_000))), CLOSE_CODES.MALFORMED_MESSAGE, 'content waiting on missing updates');
  // Under the limits, a little pending content is fine (a client may send an update before the
  // one it builds on), and it does not slow the document down.
  const { ws } = await rawSocket(srv.url + path);
  ws.send(frameOf(0, 2, unknownDeletesUpdate(100)));
  await roundTrip(ws);
  assert.equal(ws.readyState, ws.OPEN, 'within the limit');
  ws.close();
  const device = openDevice(srv.url, channel, user.token);
  try {
    await synced(device);
    for (let i = 0; i < 20; i += 1) device.doc.transact(() => insertNote(device.doc, { id: String(7200 + i), content: `n${i}`, created_at: i }));
    await whenStored(srv.url, channel, user.token, (d) => listNotes(d).length === 20, 'all 20 notes arrive');
  } finally {
    device.destroy();
  }
});

test('deletions of 400,000 unknown clients do not stall other users', async () => {
  const dir = tempDir();
  const server = await spawnServer(['--port', '0', '--data-dir', dir, '--log-level', 'warn', '--auth-rate-limit', '0']);
  try {
    const api = new Api(server.url);
    const attacker = await registerUser(api);
    const victim = await registerUser(api);
    const channel = await notesChannelOf(api, attacker);
    let worst = 0;
    let stop = false;
    const probe = (async () => {
      while (!stop) {
        const started = performance.now();
        assert.equal((await api.get('/users/@me', { token: victim.token })).status, 200);
        worst = Math.max(worst, performance.now() - started);
      }
    })();
    const { ws } = await rawSocket(`${server.url}/sync/${channel}?token=${attacker.token}`);
    const closed = closeEvent(ws);
    ws.send(step2(unknownDeletesUpdate(400_000)));
    assert.equal((await closed).code, CLOSE_CODES.MALFORMED_MESSAGE);
    // The attacker's document still takes tiny updates at once.
    const device = openDevice(server.url, channel, attacker.token);
    try {
      await synced(device);
      for (let i = 0; i < 20; i += 1) device.doc.transact(() => insertNote(device.doc, { id: String(7300 + i), content: 'x', created_at: i }));
      await whenStored(server.url, channel, attacker.token, (d) => listNotes(d).length === 20, 'all 20 notes arrive');
    } finally {
      device.destroy();
    }
    stop = true;
    await probe;
    // Refusing it costs one decode of 2.4 MB; before, each later update cost seconds.
    assert.ok(worst < 1500, `another user's request waited ${worst.toFixed(0)} ms`);
  } finally {
    server.child.kill('SIGTERM');
    await once(server.child, 'exit');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('?ack=1: acknowledgements go only to the sockets whose updates were stored', async () => {
  const user = await registerUser(srv.api);
  const channel = await notesChannelOf(srv.api, user);
  const path = `${srv.url}/sync/${channel}?token=${user.token}&ack=1`;
  const a = await rawSocket(path);
  const b = await rawSocket(path);
  const seen = { a: [] as string[], b: [] as string[] };
  for (const [name, ws] of [
    ['a', a.ws],
    ['b', b.ws],
  ] as const) {
    ws.on('message', (data: ArrayBuffer) => {
      const message = readMessage(new Uint8Array(data));
      seen[name].push(message.type === 'ack' ? `ack ${message.count}` : message.type);
    });
  }
  const doc = new Y.Doc();
  const send = (ws: typeof a.ws, key: string) => {
    const before = Y.encodeStateVector(doc);
    doc.getMap('messages').set(key, key);
    ws.send(frameOf(0, 2, Y.encodeStateAsUpdate(doc, before)));
  };
  send(b.ws, 'b1');
  await new Promise<void>((resolve) => {
    const check = () => (seen.b.includes('ack 1') ? resolve() : setImmediate(check));
    check();
  });
  for (let i = 0; i < 3; i += 1) send(a.ws, `a${i}`);
  await new Promise<void>((resolve) => {
    const check = () => (seen.a.includes('ack 3') && seen.b.filter((t) => t === 'sync-update').length === 3 ? resolve() : setImmediate(check));
    check();
  });
  assert.deepEqual(
    seen.b.filter((t) => t.startsWith('ack')),
    ['ack 1'],
    'b sent nothing more, so it was told nothing more',
  );
  a.ws.close();
  b.ws.close();
});

test('awareness is bounded: a state over 16 KiB is refused (4413), more than 4 states per socket (4400), garbage (4400)', async () => {
  const user = await registerUser(srv.api);
  const path = `/sync/settings?token=${user.token}`;
  const awareness = (states: [number, number, string][]) => {
    const e = encoding.createEncoder();
    encoding.writeVarUint(e, states.length);
    for (const [id, clock, json] of states) {
      encoding.writeVarUint(e, id);
      encoding.writeVarUint(e, clock);
      encoding.writeVarString(e, json);
    }
    return frameOf(1, null, encoding.toUint8Array(e));
  };
  assert.equal(await sendAndClose(srv.url, path, awareness([[1, 1, JSON.stringify({ name: 'x'.repeat(17 * 1024) })]])), CLOSE_CODES.MESSAGE_TOO_BIG);
  assert.equal(
    await sendAndClose(srv.url, path, awareness([1, 2, 3, 4, 5].map((id) => [id, 1, '{}'] as [number, number, string]))),
    CLOSE_CODES.MALFORMED_MESSAGE,
  );
  assert.equal(await sendAndClose(srv.url, path, awareness([[1, 1, '{not json']])), CLOSE_CODES.MALFORMED_MESSAGE);
  // A valid state is relayed to the others, and removed for them when its socket closes.
  const { ws: watcher } = await rawSocket(srv.url + path);
  const { ws: sender } = await rawSocket(srv.url + path);
  const got: string[] = [];
  watcher.on('message', (data: ArrayBuffer) => {
    const message = readMessage(new Uint8Array(data));
    if (message.type === 'awareness') got.push(Buffer.from(message.update).toString('latin1'));
  });
  sender.send(awareness([[9, 1, '{"user":"me"}']]));
  await new Promise<void>((resolve) => {
    const check = () => (got.some((g) => g.includes('"user":"me"')) ? resolve() : setImmediate(check));
    check();
  });
  sender.close();
  await new Promise<void>((resolve) => {
    const check = () => (got.some((g) => g.includes('null')) ? resolve() : setImmediate(check));
    check();
  });
  watcher.close();
});

test('awareness of one document is bounded in all (1 MiB): past it a state is refused with 4413', async () => {
  const user = await registerUser(srv.api);
  const path = `${srv.url}/sync/settings?token=${user.token}`;
  const sockets = [];
  let refusedWith: number | null = null;
  for (let s = 0; s < 20 && refusedWith === null; s += 1) {
    const { ws } = await rawSocket(path);
    sockets.push(ws);
    const closed = closeEvent(ws);
    const e = encoding.createEncoder();
    encoding.writeVarUint(e, 4);
    for (let i = 0; i < 4; i += 1) {
      encoding.writeVarUint(e, s * 10 + i + 1);
      encoding.writeVarUint(e, 1);
      encoding.writeVarString(e, JSON.stringify({ pad: 'p'.repeat(15_000) }));
    }
    ws.send(frameOf(1, null, encoding.toUint8Array(e)));
    // Answered (or refused) before a sync step 1 sent after it.
    refusedWith = await Promise.race([roundTrip(ws).then(() => null), closed.then((c) => c.code)]);
  }
  assert.equal(refusedWith, CLOSE_CODES.MESSAGE_TOO_BIG, 'the document refused states past 1 MiB in all');
  assert.ok(sockets.length > 15, `refused after ${sockets.length} connections`);
  for (const ws of sockets) ws.close();
});

test('a reader that stops reading awareness is disconnected (4503) instead of growing server memory', async () => {
  const own = await startServer({ maxSyncBackpressureBytes: 64 * 1024 });
  try {
    const user = await registerUser(own.api);
    const path = `${own.url}/sync/settings?token=${user.token}`;
    const slow = await rawSocket(path);
    const slowClosed = closeEvent(slow.ws);
    (slow.ws as unknown as { _socket: net.Socket })._socket.pause();
    const { ws: sender } = await rawSocket(path);
    let clock = 0;
    while (own.server.stats().syncConnections > 1) {
      const e = encoding.createEncoder();
      encoding.writeVarUint(e, 1);
      encoding.writeVarUint(e, 5);
      clock += 1;
      encoding.writeVarUint(e, clock);
      encoding.writeVarString(e, JSON.stringify({ cursor: clock, pad: 'p'.repeat(15_000) }));
      sender.send(frameOf(1, null, encoding.toUint8Array(e)));
      await new Promise((resolve) => setImmediate(resolve));
      assert.ok(clock < 100_000, 'the paused reader was never disconnected');
    }
    (slow.ws as unknown as { _socket: net.Socket })._socket.resume();
    assert.equal((await slowClosed).code, CLOSE_CODES.SLOW_READER);
    sender.close();
  } finally {
    await own.close();
  }
});

test('a message far over the limit: uWS cuts the connection, and the next one of that session is told 4413 so stock clients stop', async () => {
  const own = await startServer({ maxSyncMessageBytes: 1024 });
  try {
    const user = await registerUser(own.api);
    const path = `/sync/settings?token=${user.token}`;
    const doc = new Y.Doc();
    doc.getMap('settings').set('huge', 'z'.repeat(5000));
    assert.equal(await sendAndClose(own.url, path, step2(Y.encodeStateAsUpdate(doc))), 1006, 'uWS closes it without a code');
    const { ws } = await rawSocket(own.url + path);
    const { code } = await closeEvent(ws);
    assert.equal(code, CLOSE_CODES.MESSAGE_TOO_BIG);
    // Told once: the connection after that is a normal one.
    const { ws: next } = await rawSocket(own.url + path);
    assert.equal(next.readyState, next.OPEN);
    next.close();
  } finally {
    await own.close();
  }
});

test('upgrade refusals carry WWW-Authenticate, X-Request-Id and CORS; a token offered alone is never echoed back', async () => {
  const user: TestUser = await registerUser(srv.api);
  const upgrade = (path: string, headers: string) => {
    const { hostname, port } = new URL(srv.url);
    return new Promise<string>((resolve, reject) => {
      let data = '';
      const socket = net.connect(Number(port), hostname, () => {
        socket.write(
          `GET ${path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n` +
            `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${headers}\r\n`,
        );
      });
      socket.on('data', (chunk) => {
        data += chunk.toString('latin1');
        if (data.includes('\r\n\r\n')) {
          socket.destroy();
          resolve(data.slice(0, data.indexOf('\r\n\r\n')));
        }
      });
      socket.on('error', reject);
    });
  };
  const unauthorized = await upgrade('/sync/settings', '');
  assert.match(unauthorized, /^HTTP\/1\.1 401 /);
  assert.match(unauthorized, /\r\nWWW-Authenticate: Bearer/i);
  assert.match(unauthorized, /\r\nX-Request-Id: \S+/i);
  assert.match(unauthorized, /\r\nAccess-Control-Allow-Origin: \*/i);
  const notFound = await upgrade(`/sync/123?token=${user.token}`, '');
  assert.match(notFound, /^HTTP\/1\.1 404 /);
  assert.match(notFound, /\r\nX-Request-Id: \S+/i);
  assert.match(notFound, /\r\nAccess-Control-Allow-Origin: \*/i);
  const lone = await upgrade('/sync/settings', `Sec-WebSocket-Protocol: ${user.token}\r\n`);
  assert.match(lone, /^HTTP\/1\.1 101 /);
  assert.ok(!lone.includes(user.token), 'the token is not in the response');
  const withName = await upgrade('/sync/settings', `Sec-WebSocket-Protocol: plexichat, ${user.token}\r\n`);
  assert.match(withName, /\r\nSec-WebSocket-Protocol: plexichat\r?$/im);
  assert.ok(!withName.includes(user.token));
});

test('the open-file cap holds under many users: at most the cap open, every answer 200 or 503 with Retry-After', async () => {
  const cap = 8;
  const own = await startServer({ maxOpenUserFiles: cap, docUnloadDelayMs: 5000 });
  try {
    const users = await Promise.all(Array.from({ length: 40 }, () => registerUser(own.api)));
    const channels = await Promise.all(users.map((u) => notesChannelOf(own.api, u)));
    let most = 0;
    let sampling = true;
    const sample = () => {
      most = Math.max(most, own.server.stats().openUserFiles);
      if (sampling) setImmediate(sample);
    };
    sample();
    // Three devices online hold three files; everyone else reads their notes and profile at once.
    const online = users.slice(0, 3).map((u, i) => openDevice(own.url, channels[i]!, u.token));
    try {
      await Promise.all(online.map((d) => synced(d)));
      const answers = await Promise.all(
        users.flatMap((u, i) => [
          own.api.get(`/channels/${channels[i]}/messages`, { token: u.token }),
          own.api.get('/users/@me', { token: u.token }),
          own.api.get('/users/@me/settings', { token: u.token }),
        ]),
      );
      for (const answer of answers) {
        assert.ok(answer.status === 200 || (answer.status === 503 && answer.headers.get('retry-after') !== null), `${answer.status} ${answer.text}`);
      }
      assert.ok(answers.filter((a) => a.status === 200).length > answers.length / 2, 'most requests are served');
    } finally {
      for (const d of online) d.destroy();
      sampling = false;
    }
    assert.ok(most <= cap, `${most} user files were open at once; the cap is ${cap}`);
  } finally {
    await own.close();
  }
});
