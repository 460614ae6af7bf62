/**
 * Ids in paths and queries, validated by the routes' schemas (`params`, `query`) against the real
 * server: the answers the handlers used to give, unchanged, and which of two wrong ids wins.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, registerUser, type TestServer } from './helpers/server.ts';
import type { ErrorBody, Message, NotesChannel } from '../shared/index.ts';

let srv: TestServer;
before(async () => {
  srv = await startServer();
});
after(() => srv.close());

const noSuchChannel = { error: 'Not found', code: 'not_found', message: 'No such channel' };
const noSuchMessage = { error: 'Not found', code: 'not_found', message: 'No such message' };

test('a malformed message id in a channel that is not yours is still "No such channel"', async () => {
  const owner = await registerUser(srv.api);
  const intruder = await registerUser(srv.api);
  const channel = (await srv.api.get<NotesChannel>('/users/@me/notes', { token: owner.token })).body.id;
  const mine = (await srv.api.get<NotesChannel>('/users/@me/notes', { token: intruder.token })).body.id;
  for (const [who, channelId, expected] of [
    [intruder, channel, noSuchChannel],
    [intruder, 'nonsense', noSuchChannel],
    [intruder, mine, noSuchMessage],
  ] as const) {
    for (const messageId of ['abc', '0', '99999999999999999999']) {
      const path = `/channels/${channelId}/messages/${messageId}`;
      const patch = await srv.api.patch<ErrorBody>(path, { token: who.token, json: { content: 'x' } });
      assert.equal(patch.status, 404, path);
      assert.deepEqual(patch.body, expected, path);
      const del = await srv.api.delete<ErrorBody>(path, { token: who.token });
      assert.equal(del.status, 404, path);
      assert.deepEqual(del.body, expected, path);
    }
  }
  // A bad body is answered before a bad channel id, as it always was.
  const both = await srv.api.post<ErrorBody>('/channels/nonsense/messages', { token: owner.token, json: { content: '' } });
  assert.equal(both.status, 400);
  assert.equal(both.body.code, 'invalid_input');
  const created = await srv.api.post<ErrorBody>('/channels/nonsense/messages', { token: owner.token, json: { content: 'x' } });
  assert.deepEqual(created.body, noSuchChannel);
});

test('?before= is a snowflake: a malformed or out-of-range id is 400 with a field error', async () => {
  const user = await registerUser(srv.api);
  const channel = (await srv.api.get<NotesChannel>('/users/@me/notes', { token: user.token })).body.id;
  await srv.api.post(`/channels/${channel}/messages`, { token: user.token, json: { content: 'a note' } });
  const expected = {
    error: 'Invalid input',
    code: 'invalid_input',
    message: 'Validation failed',
    errors: [{ path: 'before', message: 'Must be a snowflake id (decimal digits)' }],
  };
  // 2^63 has 19 digits but is past the largest snowflake: it names no message.
  for (const id of ['abc', '-1', '0', '01', '9223372036854775808', '99999999999999999999']) {
    const res = await srv.api.get<ErrorBody>(`/channels/${channel}/messages?before=${id}`, { token: user.token });
    assert.equal(res.status, 400, id);
    assert.deepEqual(res.body, expected, id);
  }
  const newest = await srv.api.get<Message[]>(`/channels/${channel}/messages?before=9223372036854775807`, { token: user.token });
  assert.equal(newest.status, 200);
  assert.deepEqual(
    newest.body.map((m) => m.content),
    ['a note'],
  );
});
