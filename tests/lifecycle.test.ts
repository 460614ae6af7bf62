import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { once } from 'node:events';
import { Api, registerUser, runServerToExit, spawnServer, startServer, tempDir } from './helpers/server.ts';
import type { MessagingSettings, PrivateUser } from '../shared/index.ts';

test('bad configuration exits 1 with one line', async () => {
  const { code, output } = await runServerToExit(['--port', 'nope']);
  assert.equal(code, 1);
  assert.equal(output.trim().split('\n').length, 1);
  assert.match(output, /invalid --port/);
});

test('--help prints the commands and every option of serve on stdout and exits 0', async () => {
  const { code, output } = await runServerToExit(['--help']);
  assert.equal(code, 0, output);
  assert.match(output, /^Usage: plexichat \[command\] \[options\]/);
  for (const command of ['serve', 'admin', 'backup', 'restore', 'doctor']) assert.match(output, new RegExp(`\\n  ${command} `));
  for (const flag of ['--port', '--data-dir', '--log-level', '--auth-rate-limit', '--avatar-jobs', '--features-file']) {
    assert.match(output, new RegExp(`\\n  ${flag} <value> .*\\[PLEXICHAT_`));
  }
  // runServerToExit merges the two streams: check separately that all of it was on stdout.
  const streams = spawnSync(process.execPath, ['--import', 'tsx', 'server/main.ts', '--help'], {
    cwd: path.resolve(import.meta.dirname, '..'),
    encoding: 'utf8',
  });
  assert.equal(streams.status, 0);
  assert.equal(streams.stdout, output);
  assert.equal(streams.stderr, '');
});

test('refuses to start on the slow JS fallback of uWebSockets.js', async () => {
  const dir = tempDir();
  try {
    const { code, output } = await runServerToExit(['--port', '0', '--data-dir', dir], { UWS_USE_FALLBACK: '1' });
    assert.equal(code, 1);
    assert.match(output, /JavaScript fallback instead of the native binary .*refusing to start/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`${signal} stops the server cleanly with exit code 0`, async () => {
    const dir = tempDir();
    try {
      const server = await spawnServer(['--port', '0', '--data-dir', dir]);
      assert.match(server.output(), /Plexichat server listening on http:\/\/127\.0\.0\.1:\d+/);
      const api = new Api(server.url);
      await registerUser(api);
      server.child.kill(signal);
      const [code] = await once(server.child, 'exit');
      assert.equal(code, 0);
      assert.match(server.output(), /"msg":"stopped"/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('close() lets a request in flight finish, then refuses connections', async () => {
  const srv = await startServer();
  const user = await registerUser(srv.api);
  const { hostname, port } = new URL(srv.url);
  const socket = net.connect(Number(port), hostname);
  await once(socket, 'connect');
  const body = JSON.stringify({ allow_dms_from: 'none' });
  socket.write(
    `PATCH /users/@me/messaging-settings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${user.token}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`,
  );
  socket.write(body.slice(0, 5));
  // A round trip on another connection: by its answer the server has read our first bytes.
  assert.equal((await srv.api.get('/health')).status, 200);
  const closed = srv.close();
  socket.write(body.slice(5));
  let response = '';
  socket.on('data', (chunk) => (response += chunk.toString()));
  await once(socket, 'close');
  await closed;
  assert.match(response, /^HTTP\/1\.1 200 /);
  assert.match(response, /"allow_dms_from":"none"/);
  await assert.rejects(fetch(`${srv.url}/health`));
});

test('a restart, even after kill -9, keeps every acknowledged write', async () => {
  const dir = tempDir();
  try {
    const first = await spawnServer(['--port', '0', '--data-dir', dir]);
    const api = new Api(first.url);
    const user = await registerUser(api, 'Durable.User');
    await api.patch('/users/@me', { token: user.token, json: { email: 'moved@example.com' } });
    await api.patch('/users/@me/messaging-settings', { token: user.token, json: { allow_dms_from: 'friends' } });
    first.child.kill('SIGKILL');
    await once(first.child, 'exit');

    const second = await spawnServer(['--port', '0', '--data-dir', dir]);
    try {
      const api2 = new Api(second.url);
      const me = await api2.get<PrivateUser>('/users/@me', { token: user.token });
      assert.equal(me.status, 200, 'the session survived');
      assert.equal(me.body.username, 'Durable.User');
      assert.equal(me.body.email, 'moved@example.com');
      const settings = await api2.get<MessagingSettings>('/users/@me/messaging-settings', { token: user.token });
      assert.equal(settings.body.allow_dms_from, 'friends');
      const login = await api2.post('/auth/login', { json: { login: 'moved@example.com', password: user.password } });
      assert.equal(login.status, 200);
    } finally {
      second.child.kill('SIGTERM');
      await once(second.child, 'exit');
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
