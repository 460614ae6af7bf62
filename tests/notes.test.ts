import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as Y from 'yjs';
import { startServer, registerUser, type TestServer } from './helpers/server.ts';
import { openDevice, rawSocket, closeEvent, synced, until, frameOf, whenStored } from './helpers/sync.ts';
import { CLOSE_CODES, type ErrorBody, type Message, type NotesChannel, type UserSettings } from '../shared/index.ts';

let srv: TestServer;
before(async () => {
  srv = await startServer({ maxSyncMessageBytes: 4096 });
});
after(() => srv.close());

test('GET /users/@me/notes: get-or-create, one channel per user even under concurrent calls', async () => {
  const user = await registerUser(srv.api);
  const all = await Promise.all(Array.from({ length: 10 }, () => srv.api.get<NotesChannel>('/users/@me/notes', { token: user.token })));
  const ids = new Set(all.map((r) => r.body.id));
  assert.equal(ids.size, 1);
  assert.deepEqual(all[0]!.body, { id: [...ids][0], type: 'notes', name: 'Personal Notes', last_message_id: null, last_message_at: null });
  const other = await registerUser(srv.api);
  const theirs = await srv.api.get<NotesChannel>('/users/@me/notes', { token: other.token });
  assert.notEqual(theirs.body.id, all[0]!.body.id);
});

test('messages: create, list newest first with limit/before, edit, delete; last_message_* derived', async () => {
  const user = await registerUser(srv.api);
  const channel = (await srv.api.get<NotesChannel>('/users/@me/notes', { token: user.token })).body.id;
  const created: Message[] = [];
  for (let i = 0; i < 5; i += 1) {
    const res = await srv.api.post<Message>(`/channels/${channel}/messages`, { token: user.token, json: { content: `note ${i}` } });
    assert.equal(res.status, 201);
    assert.deepEqual(Object.keys(res.body).sort(), ['channel_id', 'content', 'created_at', 'edited_at', 'id']);
    assert.equal(res.body.channel_id, channel);
    assert.equal(res.body.edited_at, null);
    created.push(res.body);
  }
  const all = await srv.api.get<Message[]>(`/channels/${channel}/messages`, { token: user.token });
  assert.deepEqual(
    all.body.map((m) => m.content),
    ['note 4', 'note 3', 'note 2', 'note 1', 'note 0'],
  );
  const page = await srv.api.get<Message[]>(`/channels/${channel}/messages?limit=2&before=${created[3]!.id}`, { token: user.token });
  assert.deepEqual(
    page.body.map((m) => m.content),
    ['note 2', 'note 1'],
  );

  const info = await srv.api.get<NotesChannel>('/users/@me/notes', { token: user.token });
  assert.equal(info.body.last_message_id, created[4]!.id);
  assert.equal(info.body.last_message_at, created[4]!.created_at);

  const edited = await srv.api.patch<Message>(`/channels/${channel}/messages/${created[0]!.id}`, { token: user.token, json: { content: 'note zero 🙂' } });
  assert.equal(edited.status, 200);
  assert.equal(edited.body.content, 'note zero 🙂');
  assert.equal(typeof edited.body.edited_at, 'number');
  const gone = await srv.api.delete(`/channels/${channel}/messages/${created[4]!.id}`, { token: user.token });
  assert.equal(gone.status, 204);
  const after = await srv.api.get<NotesChannel>('/users/@me/notes', { token: user.token });
  assert.equal(after.body.last_message_id, created[3]!.id);
});

test('messages: documented errors (invalid content, bad query, unknown message)', async () => {
  const user = await registerUser(srv.api);
  const channel = (await srv.api.get<NotesChannel>('/users/@me/notes', { token: user.token })).body.id;
  for (const json of [{ content: '' }, { content: '   ' }, { content: 'x'.repeat(4001) }, { content: 5 }, {}, { content: 'ok', extra: 1 }]) {
    const res = await srv.api.post<ErrorBody>(`/channels/${channel}/messages`, { token: user.token, json });
    assert.equal(res.status, 400, JSON.stringify(json).slice(0, 40));
    assert.equal(res.body.error, 'Invalid input');
    assert.equal(res.body.code, 'invalid_input');
  }
  assert.equal((await srv.api.post(`/channels/${channel}/messages`, { token: user.token, json: { content: 'x'.repeat(4000) } })).status, 201);
  for (const query of ['limit=0', 'limit=101', 'limit=abc', 'before=abc', 'before=-1']) {
    const res = await srv.api.get<ErrorBody>(`/channels/${channel}/messages?${query}`, { token: user.token });
    assert.equal(res.status, 400, query);
    assert.equal(res.body.error, 'Invalid input');
  }
  const notFound = { error: 'Not found', code: 'not_found', message: 'No such message' };
  for (const id of ['123456789012345678', 'abc']) {
    const patch = await srv.api.patch(`/channels/${channel}/messages/${id}`, { token: user.token, json: { content: 'x' } });
    assert.equal(patch.status, 404);
    assert.deepEqual(patch.body, notFound);
    const del = await srv.api.delete(`/channels/${channel}/messages/${id}`, { token: user.token });
    assert.equal(del.status, 404);
    assert.deepEqual(del.body, notFound);
  }
});

test("another user's notes channel is a 404 that reveals nothing", async () => {
  const owner = await registerUser(srv.api);
  const intruder = await registerUser(srv.api);
  const channel = (await srv.api.get<NotesChannel>('/users/@me/notes', { token: owner.token })).body.id;
  const note = await srv.api.post<Message>(`/channels/${channel}/messages`, { token: owner.token, json: { content: 'private' } });
  const expected = { error: 'Not found', code: 'not_found', message: 'No such channel' };
  const attempts = [
    await srv.api.get(`/channels/${channel}/messages`, { token: intruder.token }),
    await srv.api.post(`/channels/${channel}/messages`, { token: intruder.token, json: { content: 'hi' } }),
    await srv.api.patch(`/channels/${channel}/messages/${note.body.id}`, { token: intruder.token, json: { content: 'hacked' } }),
    await srv.api.delete(`/channels/${channel}/messages/${note.body.id}`, { token: intruder.token }),
    await srv.api.get(`/channels/123456789012345678/messages`, { token: intruder.token }),
    await srv.api.get(`/channels/nonsense/messages`, { token: intruder.token }),
  ];
  for (const res of attempts) {
    assert.equal(res.status, 404);
    assert.deepEqual(res.body, expected);
  }
  const still = await srv.api.get<Message[]>(`/channels/${channel}/messages`, { token: owner.token });
  assert.deepEqual(
    still.body.map((m) => m.content),
    ['private'],
  );
  assert.equal((await srv.api.get(`/channels/${channel}/messages`)).status, 401);
});

test('settings: REST and /sync/settings are the same document', async () => {
  const user = await registerUser(srv.api);
  const empty = await srv.api.get<UserSettings>('/users/@me/settings', { token: user.token });
  assert.deepEqual(empty.body, {});
  const patched = await srv.api.patch<UserSettings>('/users/@me/settings', {
    token: user.token,
    json: { theme: 'dark', locale: 'fr-FR', 'editor.fontSize': 14, shortcuts: { save: 'mod+s' } },
  });
  assert.equal(patched.status, 200);
  assert.deepEqual(patched.body, { theme: 'dark', locale: 'fr-FR', 'editor.fontSize': 14, shortcuts: { save: 'mod+s' } });
  const device = openDevice(srv.url, 'settings', user.token);
  try {
    await synced(device);
    assert.equal(device.doc.getMap('settings').get('theme'), 'dark');
    device.doc.getMap('settings').set('theme', 'light');
    const witness = openDevice(srv.url, 'settings', user.token);
    await until(witness.doc, (d) => d.getMap('settings').get('theme') === 'light');
    witness.destroy();
    const read = await srv.api.get<UserSettings>('/users/@me/settings', { token: user.token });
    assert.equal(read.body.theme, 'light');
    await srv.api.patch('/users/@me/settings', { token: user.token, json: { locale: null } });
    await until(device.doc, (d) => !d.getMap('settings').has('locale'), 'REST delete reaches the device');
  } finally {
    device.destroy();
  }
});

test('settings: validation and size limits', async () => {
  const user = await registerUser(srv.api);
  const bodies: unknown[] = [
    [],
    'x',
    null,
    { 'bad key!': 1 },
    { '': 1 },
    { ['k'.repeat(65)]: 1 },
    { big: 'x'.repeat(17 * 1024) },
    Object.fromEntries(Array.from({ length: 201 }, (_, i) => [`k${i}`, i])),
  ];
  for (const json of bodies) {
    const res = await srv.api.patch<ErrorBody>('/users/@me/settings', { token: user.token, json });
    assert.equal(res.status, 400, JSON.stringify(json).slice(0, 40));
    assert.equal(res.body.error, 'Invalid input');
  }
  // Within each patch's limits, but over the total: refused, nothing written.
  for (let i = 0; i < 16; i += 1) {
    const res = await srv.api.patch('/users/@me/settings', { token: user.token, json: { [`blob${i}`]: 'y'.repeat(16_300) } });
    assert.equal(res.status, 200);
  }
  const over = await srv.api.patch<ErrorBody>('/users/@me/settings', { token: user.token, json: { blob99: 'y'.repeat(16_000), blob98: 'y'.repeat(16_000) } });
  assert.equal(over.status, 400);
  assert.equal(over.body.code, 'invalid_input');
  const read = await srv.api.get<UserSettings>('/users/@me/settings', { token: user.token });
  assert.ok(!('blob99' in read.body));
  // A sync client is held to the same limits: an update that takes the settings past them is
  // refused whole (4400), and nothing of it is stored.
  const { ws } = await rawSocket(`${srv.url}/sync/settings?token=${user.token}`);
  const closed = closeEvent(ws);
  const doc = new Y.Doc();
  // One more key of 2,000 bytes fits one message and takes the total past 256 KiB.
  doc.getMap('settings').set('sync0', 'z'.repeat(2000));
  ws.send(frameOf(0, 2, Y.encodeStateAsUpdate(doc)));
  assert.equal((await closed).code, CLOSE_CODES.MALFORMED_MESSAGE);
  const after = await srv.api.get<UserSettings>('/users/@me/settings', { token: user.token });
  assert.ok(!('sync0' in after.body), 'nothing of the refused update is stored');
  assert.equal(Object.keys(after.body).length, 16);
  const cleanup = await srv.api.patch<UserSettings>('/users/@me/settings', { token: user.token, json: { blob0: null } });
  assert.equal(cleanup.status, 200, 'a patch that shrinks the document is allowed');
  assert.ok(!('blob0' in cleanup.body));
});

test('a sync message over the size limit closes that socket with 4413', async () => {
  const user = await registerUser(srv.api);
  const { ws } = await rawSocket(`${srv.url}/sync/settings?token=${user.token}`);
  const closed = closeEvent(ws);
  const doc = new Y.Doc();
  doc.getMap('settings').set('huge', 'z'.repeat(5000));
  const update = Y.encodeStateAsUpdate(doc);
  ws.send(frameOf(0, 2, update));
  assert.equal((await closed).code, CLOSE_CODES.MESSAGE_TOO_BIG);
  const read = await srv.api.get<UserSettings>('/users/@me/settings', { token: user.token });
  assert.deepEqual(read.body, {}, 'nothing stored');
});

test('PATCH replaces the text of a note a device formatted or embedded into, exactly', async () => {
  const user = await registerUser(srv.api);
  const channel = (await srv.api.get<NotesChannel>('/users/@me/notes', { token: user.token })).body.id;
  const device = openDevice(srv.url, channel, user.token);
  try {
    await synced(device);
    device.doc.transact(() => {
      const note = new Y.Map<unknown>();
      const text = new Y.Text('hello world');
      note.set('content', text);
      note.set('created_at', 1);
      device.doc.getMap('messages').set('9001', note);
      text.insertEmbed(0, { image: 'cat.png' });
      text.format(1, 5, { bold: true });
    });
    await whenStored(srv.url, channel, user.token, (d) => d.getMap('messages').has('9001'), 'the note is stored');
    const edited = await srv.api.patch<Message>(`/channels/${channel}/messages/9001`, { token: user.token, json: { content: 'hello there' } });
    assert.equal(edited.status, 200);
    assert.equal(edited.body.content, 'hello there');
    await until(
      device.doc,
      (d) => ((d.getMap('messages').get('9001') as Y.Map<unknown>).get('content') as Y.Text).toString() === 'hello there',
      'the device gets exactly the new text',
    );
  } finally {
    device.destroy();
  }
});
