import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, registerUser, type TestServer } from './helpers/server.ts';
import type { ErrorBody, MessagingSettings } from '../shared/index.ts';

let srv: TestServer;
before(async () => {
  srv = await startServer();
});
after(() => srv.close());

test('defaults are exactly the documented example', async () => {
  const user = await registerUser(srv.api);
  const res = await srv.api.get<MessagingSettings>('/users/@me/messaging-settings', { token: user.token });
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, {
    user_id: user.id,
    read_receipts_enabled: true,
    typing_indicators_enabled: true,
    compact_messages_enabled: true,
    allow_dms_from: 'everyone',
    auto_create_dms: true,
    max_message_length: null,
    max_attachment_size: null,
    max_attachments_per_message: null,
  });
});

test('PATCH changes only the given fields, returns and keeps them', async () => {
  const user = await registerUser(srv.api);
  const other = await registerUser(srv.api);
  const res = await srv.api.patch<MessagingSettings>('/users/@me/messaging-settings', {
    token: user.token,
    json: { read_receipts_enabled: false, allow_dms_from: 'friends' },
  });
  assert.equal(res.status, 200);
  assert.equal(res.body.read_receipts_enabled, false);
  assert.equal(res.body.allow_dms_from, 'friends');
  assert.equal(res.body.typing_indicators_enabled, true);
  const again = await srv.api.patch<MessagingSettings>('/users/@me/messaging-settings', {
    token: user.token,
    json: { typing_indicators_enabled: false, compact_messages_enabled: false, auto_create_dms: false, allow_dms_from: 'none' },
  });
  assert.deepEqual(again.body, {
    user_id: user.id,
    read_receipts_enabled: false,
    typing_indicators_enabled: false,
    compact_messages_enabled: false,
    allow_dms_from: 'none',
    auto_create_dms: false,
    max_message_length: null,
    max_attachment_size: null,
    max_attachments_per_message: null,
  });
  const read = await srv.api.get<MessagingSettings>('/users/@me/messaging-settings', { token: user.token });
  assert.deepEqual(read.body, again.body);
  const untouched = await srv.api.get<MessagingSettings>('/users/@me/messaging-settings', { token: other.token });
  assert.equal(untouched.body.allow_dms_from, 'everyone', 'settings are per user');
  const empty = await srv.api.patch<MessagingSettings>('/users/@me/messaging-settings', { token: user.token, json: {} });
  assert.deepEqual(empty.body, again.body);
});

test('PATCH validates every field', async () => {
  const user = await registerUser(srv.api);
  const bodies: unknown[] = [
    { allow_dms_from: 'strangers' },
    { allow_dms_from: 'EVERYONE' },
    { allow_dms_from: null },
    { read_receipts_enabled: 'yes' },
    { read_receipts_enabled: 1 },
    { typing_indicators_enabled: null },
    { compact_messages_enabled: [] },
    { auto_create_dms: {} },
    { max_message_length: 10 },
    { user_id: '1' },
    [],
    null,
  ];
  for (const json of bodies) {
    const res = await srv.api.patch<ErrorBody>('/users/@me/messaging-settings', { token: user.token, json });
    assert.equal(res.status, 400, JSON.stringify(json));
    assert.equal(res.body.error, 'Invalid input');
    assert.equal(res.body.code, 'invalid_input');
  }
  const res = await srv.api.get<MessagingSettings>('/users/@me/messaging-settings', { token: user.token });
  assert.equal(res.body.allow_dms_from, 'everyone');
});
