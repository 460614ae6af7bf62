import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import WebSocket from 'ws';
import * as Y from 'yjs';
import { MemoryStore, PlexichatClient, openFileStore, type LocalStore, type Settings, type SettingsChange } from '../client-lib/index.ts';
import { settingsMap } from '../shared/settings-doc.ts';
import { SETTINGS_MAX_KEYS, SETTINGS_TOTAL_MAX_BYTES, SETTINGS_VALUE_MAX_BYTES } from '../shared/schemas/settings.ts';
import { startServer, tempDir, type TestServer } from './helpers/server.ts';
import { TEST_BACKOFF, clientFor, convergedBy } from './helpers/client.ts';

let srv: TestServer;
let dir: string;
before(async () => {
  srv = await startServer();
  dir = tempDir('plexichat-client-settings-');
});
after(async () => {
  await srv.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const open = (client: PlexichatClient, store: LocalStore = new MemoryStore(), connect = true) =>
  client.openSettings({ store, WebSocket, backoff: TEST_BACKOFF, connect });

/** Waits until every handle holds the same settings. */
const converged = (handles: Settings[]) => convergedBy(handles, (h) => JSON.stringify(sorted(h.all())), 10_000);

const sorted = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)));

test('two devices converge: different keys merge, the same key ends with one value everywhere, removals travel', async () => {
  const { client } = await clientFor(srv.api, srv.url);
  const a = await open(client);
  const b = await open(client);
  try {
    await Promise.all([a.whenSynced(), b.whenSynced()]);
    const seenByB: SettingsChange[] = [];
    b.on('change', (change) => seenByB.push(change));

    a.set('theme', 'dark');
    a.set('editor.font', { family: 'mono', size: 13 });
    await b.waitFor(() => b.get('theme') === 'dark' && b.get('editor.font') !== undefined, 'B sees A');
    assert.deepEqual(b.get('editor.font'), { family: 'mono', size: 13 });
    assert.ok(seenByB.some((c) => !c.local && c.keys.includes('theme')));

    // Concurrent writes while both are offline: each key resolves the same way on both devices.
    a.disconnect();
    b.disconnect();
    a.set('locale', 'fr');
    b.set('locale', 'de');
    b.set('notifications', false);
    assert.equal(a.pending, 1);
    assert.equal(b.pending, 2);
    a.connect();
    b.connect();
    await converged([a, b]);
    await Promise.all([a.whenSynced(), b.whenSynced()]);
    assert.ok(['fr', 'de'].includes(a.get('locale') as string));
    assert.equal(a.get('notifications'), false);
    assert.deepEqual(sorted(a.all()), sorted(await client.getSettings()));

    assert.equal(b.remove('theme'), true);
    assert.equal(b.remove('theme'), false);
    await a.waitFor(() => a.get('theme') === undefined, 'A sees the removal');
    assert.equal((await client.getSettings()).theme, undefined);
  } finally {
    await a.close();
    await b.close();
  }
});

test('an offline set survives a restart from a file store and reaches the other device after reconnect', async () => {
  const { client } = await clientFor(srv.api, srv.url);
  const file = path.join(dir, 'restart.sqlite');
  const other = await open(client);
  const first = await open(client, await openFileStore(file));
  try {
    await first.whenSynced();
    first.disconnect();
    first.set('theme', 'solarized');
    first.set('sidebar.width', 280);
    assert.equal(first.pending, 2);
    assert.equal(first.status, 'offline');
    await first.close();

    // Restarted, still offline: the values are there and still pending; the server has none.
    const second = await open(client, await openFileStore(file), false);
    try {
      assert.deepEqual(second.all(), { theme: 'solarized', 'sidebar.width': 280 });
      assert.equal(second.pending, 2);
      assert.deepEqual(await client.getSettings(), {});
      second.connect();
      await second.whenSynced();
      assert.equal(second.pending, 0);
      await other.waitFor(() => other.get('theme') === 'solarized' && other.get('sidebar.width') === 280, 'the other device has them');
    } finally {
      await second.close();
    }

    // The acknowledgement was stored too: the next start has nothing pending.
    const third = await open(client, await openFileStore(file), false);
    assert.equal(third.pending, 0);
    assert.equal(third.status, 'offline');
    await third.close();
  } finally {
    await other.close();
  }
});

test('a REST PATCH reaches a device as a remote change, and a device write is what REST reads', async () => {
  const { client } = await clientFor(srv.api, srv.url);
  const device = await open(client);
  try {
    await device.whenSynced();
    const changes: SettingsChange[] = [];
    device.on('change', (change) => changes.push(change));
    await client.updateSettings({ locale: 'pt-BR', 'layout:compact': true });
    await device.waitFor(() => device.get('locale') === 'pt-BR' && device.get('layout:compact') === true, 'the PATCH arrives');
    assert.deepEqual(changes.flatMap((c) => c.keys).sort(), ['layout:compact', 'locale']);
    assert.ok(changes.every((c) => !c.local));

    await client.updateSettings({ locale: null });
    await device.waitFor(() => device.get('locale') === undefined, 'the removal arrives');

    device.set('volume', 0.5);
    await device.whenSynced();
    assert.deepEqual(await client.getSettings(), { 'layout:compact': true, volume: 0.5 });
  } finally {
    await device.close();
  }
});

test('pending counts local writes and drops to 0 once the server acknowledges them', async () => {
  const { client } = await clientFor(srv.api, srv.url);
  const device = await open(client, new MemoryStore(), false);
  try {
    const statuses: [string, number][] = [];
    device.on('status', (status, pending) => statuses.push([status, pending]));
    device.set('a', 1);
    device.update({ b: 2, c: [1, 2, 3] }); // one update for both keys
    device.set('a', 1); // unchanged: nothing to send
    assert.equal(device.pending, 2);
    device.connect();
    await device.whenSynced();
    assert.equal(device.pending, 0);
    assert.deepEqual(statuses.at(-1), ['synced', 0]);
    assert.ok(statuses.some(([, pending]) => pending === 2));
    assert.deepEqual(await client.getSettings(), { a: 1, b: 2, c: [1, 2, 3] });
  } finally {
    await device.close();
  }
});

test('keys and sizes are checked on the device with the server limits, and a refused write changes nothing', async () => {
  // No server at all: opening settings needs none, and every check happens before anything is sent.
  const client = new PlexichatClient({ baseUrl: 'http://127.0.0.1:9', token: 'unused' });
  const device = await open(client, new MemoryStore(), false);
  try {
    const refused = (fn: () => void, pattern: RegExp) => assert.throws(fn, (error: unknown) => error instanceof RangeError && pattern.test(error.message));
    refused(() => device.set('', 1), /Keys are 1-64/);
    refused(() => device.set('has space', 1), /Keys are 1-64/);
    refused(() => device.set('k'.repeat(65), 1), /Keys are 1-64/);
    device.set('k'.repeat(64), 1);
    refused(() => device.set('n', Number.NaN), /Invalid setting "n"/);
    refused(() => device.set('big', 'x'.repeat(SETTINGS_VALUE_MAX_BYTES)), /at most 16384 bytes/);
    device.set('big', 'x'.repeat(SETTINGS_VALUE_MAX_BYTES - 2)); // the quotes count

    // The whole document: at most 200 keys and 256 KiB, checked for the result of the write.
    const many = Object.fromEntries(Array.from({ length: SETTINGS_MAX_KEYS - 2 }, (_, i) => [`key${i}`, i]));
    device.update(many);
    assert.equal(Object.keys(device.all()).length, SETTINGS_MAX_KEYS);
    refused(() => device.set('one.more', 1), /at most 200 keys/);
    device.set('big', null); // null removes, as in the REST PATCH
    device.set('one.more', 1);
    for (let i = 0; i < SETTINGS_MAX_KEYS - 2; i += 1) device.set(`key${i}`, null);
    const chunk = 'y'.repeat(SETTINGS_VALUE_MAX_BYTES - 2);
    const fill = Math.floor(SETTINGS_TOTAL_MAX_BYTES / SETTINGS_VALUE_MAX_BYTES) - 1;
    for (let i = 0; i < fill; i += 1) device.set(`fill${i}`, chunk);
    refused(() => device.set('overflow', chunk), /262144 bytes of JSON/);

    const before = JSON.stringify(device.all());
    const pending = device.pending;
    refused(() => device.update({ fine: 1, 'bad key': 2 }), /Invalid setting "bad key"/);
    assert.equal(JSON.stringify(device.all()), before);
    assert.equal(device.pending, pending);

    // Values are copies both ways: mutating what was set or read does not reach the document.
    const value = { list: [1] };
    device.set('fill0', value);
    value.list.push(2);
    (device.get('fill0') as { list: number[] }).list.push(3);
    assert.deepEqual(device.get('fill0'), { list: [1] });
  } finally {
    await device.close();
  }
  assert.throws(() => device.set('a', 1), /These settings are closed/);
});

test('entries that are not settings read as unset and do not count towards the limits; removing keys is allowed over the limits', async () => {
  // A document as another client may have left it: bad names, values that are not plain JSON, and
  // (two devices' offline writes merged) more keys than the limit. No server: all of it is local.
  const seeded = new Y.Doc();
  const map = settingsMap(seeded);
  seeded.transact(() => {
    map.set('ok', 1);
    map.set('bad key', 2);
    map.set('binary', new Uint8Array(SETTINGS_TOTAL_MAX_BYTES));
    map.set('big', 10n);
    for (let i = 0; i < SETTINGS_MAX_KEYS; i += 1) map.set(`k${i}`, i);
  });
  const store = new MemoryStore();
  await store.append({ seq: 1, local: false, update: Y.encodeStateAsUpdate(seeded) });
  const client = new PlexichatClient({ baseUrl: 'http://127.0.0.1:9', token: 'unused' });
  const device = await open(client, store, false);
  try {
    assert.equal(device.get('ok'), 1);
    assert.equal(device.get('bad key'), undefined);
    assert.equal(device.get('binary'), undefined);
    assert.equal(device.get('big'), undefined);
    const all = device.all();
    assert.equal(Object.keys(all).length, SETTINGS_MAX_KEYS + 1);
    assert.ok(!('bad key' in all) && !('binary' in all) && !('big' in all));

    // Over the key limit: setting is refused, removing is not (the server takes removals too).
    assert.throws(() => device.set('theme', 'dark'), RangeError);
    assert.equal(device.pending, 0);
    for (const key of ['k0', 'k1', 'k2']) assert.equal(device.remove(key), true);
    assert.equal(device.pending, 3);
    // Back within the key limit; the binary entry, still there, would be over the byte limit if it counted.
    device.set('theme', 'dark');
    device.set('big', 1); // replaces a value that is not JSON: a change
    assert.equal(device.get('big'), 1);
    assert.equal(Object.keys(device.all()).length, SETTINGS_MAX_KEYS);
    assert.equal(device.pending, 5);
  } finally {
    await device.close();
  }
});

test('a listener that throws is reported as an error event; the change itself stands', async () => {
  const client = new PlexichatClient({ baseUrl: 'http://127.0.0.1:9', token: 'unused' });
  const device = await open(client, new MemoryStore(), false);
  try {
    const errors: unknown[] = [];
    device.on('error', (error) => errors.push(error));
    device.on('change', () => {
      throw new Error('listener bug');
    });
    device.set('theme', 'dark');
    assert.equal(device.get('theme'), 'dark');
    assert.deepEqual(
      errors.map((e) => (e instanceof Error ? e.message : String(e))),
      ['listener bug'],
    );
  } finally {
    await device.close();
  }
});
