import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, registerUser, type TestServer, type TestUser, type ApiResponse } from './helpers/server.ts';
import type { ErrorBody, PublicUser, Relationship } from '../shared/index.ts';

let srv: TestServer;
before(async () => {
  srv = await startServer();
});
after(() => srv.close());

const put = (user: TestUser, otherId: string, json: unknown): Promise<ApiResponse<Relationship & ErrorBody>> =>
  srv.api.request('PUT', `/users/@me/relationships/${otherId}`, { token: user.token, json });
const remove = (user: TestUser, otherId: string) => srv.api.delete<ErrorBody>(`/users/@me/relationships/${otherId}`, { token: user.token });

/** The caller's relationships as `otherId → type`, checking every entry's shape on the way. */
async function relationsOf(user: TestUser): Promise<Record<string, string>> {
  const res = await srv.api.get<Relationship[]>('/users/@me/relationships', { token: user.token });
  assert.equal(res.status, 200);
  const out: Record<string, string> = {};
  for (const entry of res.body) {
    assert.deepEqual(Object.keys(entry).sort(), ['id', 'type', 'user']);
    assert.equal(entry.user.id, entry.id);
    assert.deepEqual(Object.keys(entry.user).sort(), ['avatar_url', 'badges', 'created_at', 'id', 'username']);
    out[entry.id] = entry.type;
  }
  return out;
}

const refused = {
  error: 'Cannot add friend',
  code: 'cannot_add_friend',
  message: 'You cannot send this user a friend request',
};

test('friend request, then accept: friends on both sides', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  assert.deepEqual(await relationsOf(a), {});

  const sent = await put(a, b.id, { type: 'friend' });
  assert.equal(sent.status, 200);
  const bPublic = await srv.api.get<PublicUser>(`/users/${b.id}`, { token: a.token });
  assert.deepEqual(sent.body, { id: b.id, type: 'outgoing_request', user: bPublic.body });
  assert.deepEqual(await relationsOf(a), { [b.id]: 'outgoing_request' });
  assert.deepEqual(await relationsOf(b), { [a.id]: 'incoming_request' });

  // Asking again changes nothing.
  const again = await put(a, b.id, { type: 'friend' });
  assert.equal(again.body.type, 'outgoing_request');

  const accepted = await put(b, a.id, { type: 'friend' });
  assert.equal(accepted.status, 200);
  assert.equal(accepted.body.type, 'friend');
  assert.equal(accepted.body.user.username, a.username);
  assert.deepEqual(await relationsOf(a), { [b.id]: 'friend' });
  assert.deepEqual(await relationsOf(b), { [a.id]: 'friend' });
  assert.equal((await put(a, b.id, { type: 'friend' })).body.type, 'friend');
});

test('a request can be declined by the recipient and cancelled by the sender', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  await put(a, b.id, { type: 'friend' });
  const declined = await remove(b, a.id);
  assert.equal(declined.status, 204);
  assert.equal(declined.text, '');
  assert.deepEqual(await relationsOf(a), {});
  assert.deepEqual(await relationsOf(b), {});

  await put(a, b.id, { type: 'friend' });
  assert.equal((await remove(a, b.id)).status, 204);
  assert.deepEqual(await relationsOf(a), {});
  assert.deepEqual(await relationsOf(b), {});
  // Nothing left to remove is not an error.
  assert.equal((await remove(a, b.id)).status, 204);
});

test('removing a friend ends the friendship on both sides', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  await put(a, b.id, { type: 'friend' });
  await put(b, a.id, { type: 'friend' });
  assert.equal((await remove(b, a.id)).status, 204);
  assert.deepEqual(await relationsOf(a), {});
  assert.deepEqual(await relationsOf(b), {});
});

test('blocking ends a friendship; the blocked side sees nothing and cannot send requests', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  await put(a, b.id, { type: 'friend' });
  await put(b, a.id, { type: 'friend' });

  const blocked = await put(a, b.id, { type: 'block' });
  assert.equal(blocked.status, 200);
  assert.equal(blocked.body.type, 'block');
  assert.deepEqual(await relationsOf(a), { [b.id]: 'block' });
  assert.deepEqual(await relationsOf(b), {}, 'the blocked user is not told');

  const request = await put(b, a.id, { type: 'friend' });
  assert.equal(request.status, 403);
  assert.deepEqual(request.body, refused);
  assert.deepEqual(await relationsOf(a), { [b.id]: 'block' });
  assert.deepEqual(await relationsOf(b), {});

  // Unblocking clears the block only; the friendship does not come back by itself.
  assert.equal((await remove(a, b.id)).status, 204);
  assert.deepEqual(await relationsOf(a), {});
  assert.deepEqual(await relationsOf(b), {});
  assert.equal((await put(b, a.id, { type: 'friend' })).body.type, 'outgoing_request');
});

test('blocking cancels pending requests either way', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  const c = await registerUser(srv.api);
  await put(a, b.id, { type: 'friend' });
  await put(c, a.id, { type: 'friend' });
  await put(a, b.id, { type: 'block' });
  await put(a, c.id, { type: 'block' });
  assert.deepEqual(await relationsOf(a), { [b.id]: 'block', [c.id]: 'block' });
  assert.deepEqual(await relationsOf(b), {});
  assert.deepEqual(await relationsOf(c), {});
});

test('mutual blocks are independent: one unblock leaves the other block standing', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  await put(a, b.id, { type: 'block' });
  await put(b, a.id, { type: 'block' });
  assert.deepEqual(await relationsOf(a), { [b.id]: 'block' });
  assert.deepEqual(await relationsOf(b), { [a.id]: 'block' });
  await remove(a, b.id);
  assert.deepEqual(await relationsOf(a), {});
  assert.deepEqual(await relationsOf(b), { [a.id]: 'block' });
  const request = await put(a, b.id, { type: 'friend' });
  assert.equal(request.status, 403);
  assert.deepEqual(request.body, refused);
  // Blocking someone who already blocked you is allowed (it says nothing new).
  assert.equal((await put(a, b.id, { type: 'block' })).status, 200);
  assert.deepEqual(await relationsOf(b), { [a.id]: 'block' });
});

test('sending a friend request to someone you blocked lifts your block', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  await put(a, b.id, { type: 'block' });
  const sent = await put(a, b.id, { type: 'friend' });
  assert.equal(sent.body.type, 'outgoing_request');
  assert.deepEqual(await relationsOf(a), { [b.id]: 'outgoing_request' });
  assert.deepEqual(await relationsOf(b), { [a.id]: 'incoming_request' });
});

test('errors: bad id, unknown user, yourself, bad body, no token', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  const invalidId = { error: 'Invalid user ID', code: 'invalid_user_id', message: 'user_id must be a snowflake id (decimal digits)' };
  for (const id of ['abc', '0', '-1', '1.5', '99999999999999999999', '%20']) {
    const p = await put(a, id, { type: 'friend' });
    assert.equal(p.status, 400, id);
    assert.deepEqual(p.body, invalidId);
    const d = await remove(a, id);
    assert.equal(d.status, 400, id);
    assert.deepEqual(d.body, invalidId);
  }
  const notFound = { error: 'User not found', code: 'user_not_found', message: 'No user with that id' };
  const unknown = '123456789012345678';
  const p = await put(a, unknown, { type: 'friend' });
  assert.equal(p.status, 404);
  assert.deepEqual(p.body, notFound);
  const d = await remove(a, unknown);
  assert.equal(d.status, 404);
  assert.deepEqual(d.body, notFound);

  const self = { error: 'Invalid user ID', code: 'cannot_relate_to_self', message: 'You cannot befriend or block yourself' };
  for (const type of ['friend', 'block']) {
    const res = await put(a, a.id, { type });
    assert.equal(res.status, 400);
    assert.deepEqual(res.body, self);
  }
  const selfDelete = await remove(a, a.id);
  assert.equal(selfDelete.status, 400);
  assert.deepEqual(selfDelete.body, self);

  for (const json of [{}, { type: 'enemy' }, { type: 'incoming_request' }, { type: 'friend', extra: 1 }, null, []]) {
    const res = await put(a, b.id, json);
    assert.equal(res.status, 400, JSON.stringify(json));
    assert.equal(res.body.error, 'Invalid input');
    assert.equal(res.body.code, 'invalid_input');
  }
  const bad = await srv.api.request<ErrorBody>('PUT', `/users/@me/relationships/${b.id}`, {
    token: a.token,
    raw: '{nope',
    headers: { 'content-type': 'application/json' },
  });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.code, 'invalid_json');
  assert.deepEqual(await relationsOf(a), {}, 'no failed call wrote anything');
  assert.deepEqual(await relationsOf(b), {});

  for (const [method, path] of [
    ['GET', '/users/@me/relationships'],
    ['PUT', `/users/@me/relationships/${b.id}`],
    ['DELETE', `/users/@me/relationships/${b.id}`],
  ] as const) {
    const res = await srv.api.request<ErrorBody>(method, path, { json: method === 'PUT' ? { type: 'friend' } : undefined });
    assert.equal(res.status, 401, `${method} ${path}`);
    assert.equal(res.body.code, 'unauthorized');
  }
});

test('GET lists the most recently changed relationship first', async () => {
  const a = await registerUser(srv.api);
  const b = await registerUser(srv.api);
  const c = await registerUser(srv.api);
  const d = await registerUser(srv.api);
  await put(a, b.id, { type: 'friend' });
  await put(c, a.id, { type: 'friend' });
  await put(a, d.id, { type: 'block' });
  const order = async () => (await srv.api.get<Relationship[]>('/users/@me/relationships', { token: a.token })).body.map((r) => [r.id, r.type]);
  assert.deepEqual(await order(), [
    [d.id, 'block'],
    [c.id, 'incoming_request'],
    [b.id, 'outgoing_request'],
  ]);
  // Accepting changes b's entry, which moves it to the top; repeating a request changes nothing.
  await put(b, a.id, { type: 'friend' });
  await put(a, c.id, { type: 'block' });
  await put(a, b.id, { type: 'friend' });
  assert.deepEqual(await order(), [
    [c.id, 'block'],
    [b.id, 'friend'],
    [d.id, 'block'],
  ]);
});
