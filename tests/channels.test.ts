import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, registerUser, tempDir, type TestServer, type TestUser, type ApiResponse } from './helpers/server.ts';
import type { AllowDmsFrom, DmChannel, DmChannelListEntry, ErrorBody, PublicUser } from '../shared/index.ts';
import fs from 'node:fs';

let srv: TestServer;
before(async () => {
  srv = await startServer();
});
after(() => srv.close());

const open = (user: TestUser, json: unknown, server: TestServer = srv): Promise<ApiResponse<DmChannel & ErrorBody>> =>
  server.api.post('/users/@me/channels', { token: user.token, json });
const list = async (user: TestUser, server: TestServer = srv): Promise<DmChannelListEntry[]> => {
  const res = await server.api.get<DmChannelListEntry[]>('/users/@me/channels', { token: user.token });
  assert.equal(res.status, 200);
  return res.body;
};
const relate = (user: TestUser, otherId: string, type: 'friend' | 'block') =>
  srv.api.request('PUT', `/users/@me/relationships/${otherId}`, { token: user.token, json: { type } });
const unrelate = (user: TestUser, otherId: string) => srv.api.delete(`/users/@me/relationships/${otherId}`, { token: user.token });
const allowDmsFrom = async (user: TestUser, value: AllowDmsFrom) => {
  const res = await srv.api.patch('/users/@me/messaging-settings', { token: user.token, json: { allow_dms_from: value } });
  assert.equal(res.status, 200);
};
const befriend = async (a: TestUser, b: TestUser) => {
  await relate(a, b.id, 'friend');
  await relate(b, a.id, 'friend');
};
const publicUser = async (viewer: TestUser, id: string) => (await srv.api.get<PublicUser>(`/users/${id}`, { token: viewer.token })).body;

const CANNOT_MESSAGE = { error: 'Cannot message', code: 'cannot_message', message: 'You cannot message this user' };

test('POST /users/@me/channels creates the DM once and returns the documented body', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  const first = await open(a, { recipient_id: b.id });
  assert.equal(first.status, 200);
  assert.deepEqual(first.body, { id: first.body.id, type: 'dm', recipient_id: b.id, recipient: await publicUser(a, b.id) });
  assert.match(first.body.id, /^[1-9][0-9]{0,18}$/);
  assert.equal(first.body.recipient.username, b.username);
  assert.equal(Object.hasOwn(first.body.recipient, 'email'), false);

  const again = await open(a, { recipient_id: b.id });
  assert.equal(again.status, 200);
  assert.deepEqual(again.body, first.body);
  const fromB = await open(b, { recipient_id: a.id });
  assert.equal(fromB.status, 200);
  assert.deepEqual(fromB.body, { id: first.body.id, type: 'dm', recipient_id: a.id, recipient: await publicUser(b, a.id) });
});

test('GET /users/@me/channels lists each side with the other as recipient, most recent first', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  const c = await registerUser(srv.api);
  assert.deepEqual(await list(a), []);
  const ab = (await open(a, { recipient_id: b.id })).body;
  const ca = (await open(c, { recipient_id: a.id })).body;

  assert.deepEqual(await list(a), [
    { id: ca.id, type: 'dm', recipient_id: c.id, recipient: await publicUser(a, c.id), last_message_id: null },
    { id: ab.id, type: 'dm', recipient_id: b.id, recipient: await publicUser(a, b.id), last_message_id: null },
  ]);
  assert.deepEqual(await list(b), [{ id: ab.id, type: 'dm', recipient_id: a.id, recipient: await publicUser(b, a.id), last_message_id: null }]);
  assert.deepEqual(await list(c), [{ id: ca.id, type: 'dm', recipient_id: a.id, recipient: await publicUser(c, a.id), last_message_id: null }]);

  // A renamed recipient shows under the new name.
  const renamed = await srv.api.patch('/users/@me', { token: b.token, json: { username: `${b.username}x` } });
  assert.equal(renamed.status, 200);
  const [, abEntry] = await list(a);
  assert.equal(abEntry?.recipient.username, `${b.username}x`);
});

test('every documented error, by exact status and body', async () => {
  const a = await registerUser(srv.api);
  const required = { error: 'recipient_id required', code: 'recipient_id_required', message: 'recipient_id is required' };
  for (const json of [{}, { recipient_id: null }, { recipient_id: '' }]) {
    const res = await open(a, json);
    assert.equal(res.status, 400, JSON.stringify(json));
    assert.deepEqual(res.body, required);
  }
  const noBody = await srv.api.post<ErrorBody>('/users/@me/channels', { token: a.token });
  assert.equal(noBody.status, 400);
  assert.deepEqual(noBody.body, required);

  const invalid = { error: 'Invalid recipient ID', code: 'invalid_recipient_id', message: 'recipient_id must be a snowflake id (decimal digits)' };
  for (const recipient_id of ['abc', '0', '0123', '-5', '1e5', ' 12', '99999999999999999999', 12345, true, [], {}]) {
    const res = await open(a, { recipient_id });
    assert.equal(res.status, 400, JSON.stringify(recipient_id));
    assert.deepEqual(res.body, invalid);
  }

  const notFound = await open(a, { recipient_id: '123456789012345678' });
  assert.equal(notFound.status, 404);
  assert.deepEqual(notFound.body, { error: 'User not found', code: 'user_not_found', message: 'No user with that id' });

  const b = await registerUser(srv.api);
  await relate(b, a.id, 'block');
  const blocked = await open(a, { recipient_id: b.id });
  assert.equal(blocked.status, 403);
  assert.deepEqual(blocked.body, CANNOT_MESSAGE);

  const self = await open(a, { recipient_id: a.id });
  assert.equal(self.status, 400);
  assert.deepEqual(self.body, {
    error: 'Invalid recipient ID',
    code: 'cannot_dm_self',
    message: 'You cannot open a DM with yourself; your notes channel is GET /users/@me/notes',
  });

  for (const json of [null, [], 'x', { recipient_id: b.id, extra: true }]) {
    const res = await open(a, json);
    assert.equal(res.status, 400, JSON.stringify(json));
    assert.equal(res.body.error, 'Invalid input');
    assert.equal(res.body.code, 'invalid_input');
  }
  for (const method of ['GET', 'POST'] as const) {
    const res = await srv.api.request<ErrorBody>(method, '/users/@me/channels', { json: method === 'POST' ? { recipient_id: b.id } : undefined });
    assert.equal(res.status, 401);
    assert.equal(res.body.code, 'unauthorized');
  }
  assert.deepEqual(await list(a), [], 'no failed call created a channel');
});

test('allow_dms_from is enforced for friends and non-friends', async () => {
  const recipient = await registerUser(srv.api);
  const friend = await registerUser(srv.api);
  const stranger = await registerUser(srv.api);
  const requester = await registerUser(srv.api);
  await befriend(recipient, friend);
  // A pending request is not a friendship.
  await relate(requester, recipient.id, 'friend');

  const expected: Record<AllowDmsFrom, { friend: number; stranger: number; requester: number }> = {
    everyone: { friend: 200, stranger: 200, requester: 200 },
    friends: { friend: 200, stranger: 403, requester: 403 },
    none: { friend: 403, stranger: 403, requester: 403 },
  };
  for (const setting of ['none', 'friends', 'everyone'] as const) {
    await allowDmsFrom(recipient, setting);
    for (const [name, sender] of [
      ['friend', friend],
      ['stranger', stranger],
      ['requester', requester],
    ] as const) {
      const res = await open(sender, { recipient_id: recipient.id });
      assert.equal(res.status, expected[setting][name], `${setting} / ${name}`);
      if (res.status === 403) assert.deepEqual(res.body, CANNOT_MESSAGE);
      else assert.equal(res.body.recipient_id, recipient.id);
    }
  }
  // Only the recipient's setting counts: "none" does not stop its owner from opening DMs.
  await allowDmsFrom(friend, 'none');
  assert.equal((await open(friend, { recipient_id: stranger.id })).status, 200);
});

test('a block either way refuses the DM both ways, with the same body as "none"; unblock restores', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  await befriend(a, b);
  const channel = (await open(a, { recipient_id: b.id })).body;

  await relate(a, b.id, 'block');
  const blockedRes = await open(b, { recipient_id: a.id });
  const blockerRes = await open(a, { recipient_id: b.id });

  // The same refusal from someone who merely allows nobody.
  const closed = await registerUser(srv.api);
  await allowDmsFrom(closed, 'none');
  const noneRes = await open(b, { recipient_id: closed.id });
  const friendsOnly = await registerUser(srv.api);
  await allowDmsFrom(friendsOnly, 'friends');
  const friendsRes = await open(b, { recipient_id: friendsOnly.id });

  for (const res of [blockedRes, blockerRes, noneRes, friendsRes]) {
    assert.equal(res.status, 403);
    assert.deepEqual(res.body, CANNOT_MESSAGE);
    assert.equal(res.text, noneRes.text, 'byte-identical bodies: nothing tells a block from a setting');
  }

  // The conversation's history stays listed on both sides.
  assert.deepEqual(
    (await list(a)).map((c) => c.id),
    [channel.id],
  );
  assert.deepEqual(
    (await list(b)).map((c) => c.id),
    [channel.id],
  );

  await unrelate(a, b.id);
  const reopened = await open(b, { recipient_id: a.id });
  assert.equal(reopened.status, 200);
  assert.equal(reopened.body.id, channel.id);
  assert.equal((await open(a, { recipient_id: b.id })).status, 200);

  // Blocked by the other side works the same way for the blocked user's own attempts.
  await relate(b, a.id, 'block');
  assert.deepEqual((await open(a, { recipient_id: b.id })).body, CANNOT_MESSAGE);
  assert.deepEqual((await open(b, { recipient_id: a.id })).body, CANNOT_MESSAGE);
});

test('10 concurrent opens of one pair from both sides yield one channel', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  const results = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 === 0 ? open(a, { recipient_id: b.id }) : open(b, { recipient_id: a.id }))));
  for (const res of results) assert.equal(res.status, 200);
  const ids = new Set(results.map((res) => res.body.id));
  assert.equal(ids.size, 1);
  assert.deepEqual(
    (await list(a)).map((c) => c.id),
    [...ids],
  );
  assert.deepEqual(
    (await list(b)).map((c) => c.id),
    [...ids],
  );
});

test('channels and relationships survive a restart', async () => {
  const dataDir = tempDir();
  try {
    const first = await startServer({ dataDir });
    const a = await registerUser(first.api);
    const b = await registerUser(first.api);
    const channel = (await open(a, { recipient_id: b.id }, first)).body;
    await first.api.request('PUT', `/users/@me/relationships/${b.id}`, { token: a.token, json: { type: 'block' } });
    await first.close();

    const second = await startServer({ dataDir });
    try {
      assert.deepEqual(
        (await list(b, second)).map((c) => c.id),
        [channel.id],
      );
      assert.deepEqual((await open(b, { recipient_id: a.id }, second)).body, CANNOT_MESSAGE);
      const rels = await second.api.get<{ id: string; type: string }[]>('/users/@me/relationships', { token: a.token });
      assert.deepEqual(
        rels.body.map((r) => [r.id, r.type]),
        [[b.id, 'block']],
      );
    } finally {
      await second.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
