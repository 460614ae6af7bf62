import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { once } from 'node:events';
import { execFileSync } from 'node:child_process';
import { Api, registerUser, spawnServer, startServer, tempDir } from './helpers/server.ts';
import { notesChannelOf, openDevice, rawSocket, synced, until } from './helpers/sync.ts';
import { mountTmpfs } from './fixtures/tmpfs.ts';
import { CLOSE_CODES, insertNote, listNotes, type ErrorBody, type Message } from '../shared/index.ts';

const MiB = 1024 * 1024;

function hasPrlimit(): boolean {
  try {
    execFileSync('prlimit', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

test('out of file descriptors: a request that needs another user file gets 503 with Retry-After, never 500, and it recovers', {
  timeout: 60_000,
}, async (t) => {
  if (process.platform !== 'linux' || !hasPrlimit()) {
    t.skip('needs Linux and prlimit (util-linux) to run the server under a low descriptor limit');
    return;
  }
  const dir = tempDir();
  try {
    // Accounts are made first, by a server without the limit; the limited one starts with no user file open.
    const first = await spawnServer(['--port', '0', '--data-dir', dir, '--log-level', 'warn', '--auth-rate-limit', '0']);
    const firstApi = new Api(first.url);
    const users = [];
    for (let i = 0; i < 32; i += 1) users.push(await registerUser(firstApi));
    first.child.kill('SIGTERM');
    await once(first.child, 'exit');

    // Room for the runtime (tsx starts esbuild) and some users; each user online takes four more.
    const limit = 128;
    const server = await spawnServer(['--port', '0', '--data-dir', dir, '--log-level', 'warn'], {}, ['prlimit', `--nofile=${limit}:${limit}`]);
    t.after(() => server.child.kill('SIGKILL'));
    const { child, url } = server;
    const api = new Api(url);
    const descriptors = () => fs.readdirSync(`/proc/${child.pid}/fd`).length;
    // Each user online holds a socket and its user file (three descriptors): fill up to the limit.
    const online = [];
    let next = 0;
    while (descriptors() < limit - 3 && next < users.length) {
      const { ws, status } = await rawSocket(`${url}/sync/settings?token=${users[next]!.token}`);
      assert.equal(status, 101);
      online.push(ws);
      next += 1;
    }
    assert.ok(next < users.length, 'the limit was reached before every user was online');
    // Over the same (kept-alive) connection, a user whose file is not open: no descriptor for it.
    const refused = await api.get<ErrorBody>('/users/@me/messaging-settings', { token: users[next]!.token });
    assert.equal(refused.status, 503, refused.text);
    assert.equal(refused.body.error, 'Service unavailable');
    assert.equal(refused.body.code, 'service_unavailable');
    assert.ok(Number(refused.headers.get('retry-after')) > 0);
    // Users going offline give their files back: the same request works again.
    for (const ws of online) ws.terminate();
    let answered = 0;
    const deadline = Date.now() + 10_000;
    while (answered !== 200 && Date.now() < deadline) {
      answered = (await api.get('/users/@me/messaging-settings', { token: users[next]!.token })).status;
      assert.ok(answered === 200 || answered === 503, `answered ${answered}`);
    }
    assert.equal(answered, 200);
    assert.doesNotMatch(server.output(), /"level":50/, 'no error was logged (a bug would be)');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a change that cannot be stored (full disk) changes nothing: REST answers 503, devices are closed with 1011 and resend later, compaction never stores it', {
  timeout: 60_000,
}, async (t) => {
  const mount = mountTmpfs({ sizeBytes: 16 * MiB, inodes: 4000 });
  if ('skip' in mount) {
    t.skip(mount.skip);
    return;
  }
  const dataDir = path.join(mount.dir, 'data');
  let srv = await startServer({ dataDir, docUnloadDelayMs: 0, compactAfterUpdates: 2, compactDebounceMs: 0, compactMaxWaitMs: 0 });
  try {
    const user = await registerUser(srv.api);
    const channel = await notesChannelOf(srv.api, user);
    const post = (content: string) => srv.api.post<Message & ErrorBody>(`/channels/${channel}/messages`, { token: user.token, json: { content } });
    assert.equal((await post('kept')).status, 201);
    const device = openDevice(srv.url, channel, user.token);
    const closes: number[] = [];
    let toldFailure: () => void = () => {};
    const failureTold = new Promise<void>((resolve) => (toldFailure = resolve));
    device.provider.on('connection-close', (event: { code: number } | null) => {
      closes.push(event?.code ?? 0);
      if (event?.code === CLOSE_CODES.INTERNAL_ERROR) toldFailure();
    });
    try {
      await synced(device);
      const freeSpace = mount.fillSpace();
      const refused = await post('lost on a full disk');
      assert.equal(refused.status, 503, refused.text);
      assert.equal(refused.body.code, 'service_unavailable');
      assert.ok(refused.headers.get('retry-after'));
      const listed = await srv.api.get<Message[]>(`/channels/${channel}/messages`, { token: user.token });
      assert.deepEqual(
        listed.body.map((m) => m.content),
        ['kept'],
        'what was not stored is not served either',
      );
      // A device's update on the full disk: its socket is closed with 1011, nothing acknowledged.
      device.doc.transact(() => insertNote(device.doc, { id: '8001', content: 'from the device', created_at: 1 }));
      await failureTold;
      freeSpace();
      // The device reconnects on its own and resends by state vector: now it is stored.
      const witness = openDevice(srv.url, channel, user.token);
      try {
        await until(witness.doc, (d) => listNotes(d).some((n) => n.id === '8001'), 'the device edit arrives once there is space');
        assert.ok(!listNotes(witness.doc).some((n) => n.content === 'lost on a full disk'));
      } finally {
        witness.destroy();
      }
      assert.equal((await post('after')).status, 201);
    } finally {
      device.destroy();
    }
    await srv.close();
    srv = await startServer({ dataDir });
    const after = await srv.api.get<Message[]>(`/channels/${channel}/messages`, { token: user.token });
    assert.deepEqual(after.body.map((m) => m.content).sort(), ['after', 'from the device', 'kept'], 'compaction and unload never stored the refused change');
  } finally {
    await srv.close();
    mount.unmount();
  }
});
