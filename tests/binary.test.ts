/**
 * The production build and the single executable, run as their users run them: the bundle with
 * plain `node` (what `npm start` does), and the executable copied alone into an empty folder, with
 * no node_modules in reach and no `node` on PATH. Both are built once, by `build/main.ts`, into a
 * temporary folder under dist/ (so that the bundle finds the repository's node_modules).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { promisify } from 'node:util';
import { Api, registerUser, tempDir } from './helpers/server.ts';
import { runToExit, startListening, type ListeningServer } from './helpers/process.ts';
import { makePng } from './helpers/images.ts';
import { notesChannelOf, openDevice, synced, until } from './helpers/sync.ts';
import { insertNote, listNotes, type AvatarUploadResponse, type Message, type PrivateUser } from '../shared/index.ts';
import type { Manifest } from '../build/sea/manifest.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
/** Bundling takes a second; the executable a few more (copying and patching a ~100 MB node). */
const BUILD_TIMEOUT_MS = 180_000;
const START_TIMEOUT_MS = 30_000;

function missingBuildTools(): string | undefined {
  const require = createRequire(import.meta.url);
  const missing = ['esbuild', 'postject/dist/cli.js'].filter((id) => {
    try {
      require.resolve(id);
      return false;
    } catch {
      return true;
    }
  });
  return missing.length === 0 ? undefined : `build tools missing (${missing.join(', ')}; npm ci installs them)`;
}

const skip = missingBuildTools();
let out = '';

before(async () => {
  if (skip !== undefined) return;
  fs.mkdirSync(path.join(ROOT, 'dist'), { recursive: true });
  out = fs.mkdtempSync(path.join(ROOT, 'dist', '.test-'));
  await promisify(execFile)(process.execPath, ['--import', 'tsx', 'build/main.ts', '--binary', '--out', out], { cwd: ROOT, timeout: BUILD_TIMEOUT_MS });
});
after(() => {
  if (out !== '') fs.rmSync(out, { recursive: true, force: true });
});

async function stopsCleanly(server: ListeningServer): Promise<void> {
  const { killed } = await server.stop();
  assert.equal(killed, false, 'exited within the grace period');
  assert.equal(server.child.exitCode, 0, server.tail());
}

test('the production build runs with plain node, and refuses the slow uWS fallback', { skip, timeout: 60_000 }, async () => {
  const bundle = path.join(out, 'plexichat.cjs');
  const dir = tempDir();
  try {
    const server = await startListening({ args: [bundle, '--port', '0', '--data-dir', dir], timeoutMs: START_TIMEOUT_MS });
    const api = new Api(server.url);
    assert.deepEqual((await api.get('/health')).body, { status: 'ok' });
    const user = await registerUser(api);
    assert.equal((await api.get<PrivateUser>('/users/@me', { token: user.token })).body.username, user.username);
    await stopsCleanly(server);
    assert.match(fs.readdirSync(path.join(dir, 'outbox')).join(), /^[^,]+\.eml$/, 'the verification mail (nodemailer is loaded with it)');
    // The other commands are in the bundle too (serve is imported only when it runs).
    const list = await runToExit({ args: [bundle, 'admin', 'user', 'list', '--json', '--data-dir', dir] });
    assert.equal(list.code, 0, list.output);
    assert.match(list.stdout, new RegExp(`"${user.username}"`));
    // A reader that stops early (`--help | head`): `true` reads nothing and is gone before the
    // help is written, which meets a closed pipe; the command still ends quietly with 0.
    const piped = await promisify(execFile)('bash', ['-c', `"${process.execPath}" "${bundle}" --help | true; echo "status \${PIPESTATUS[0]}" >&2`]);
    assert.equal(piped.stderr.trim(), 'status 0');

    const { code, output } = await runToExit({ args: [bundle, '--port', '0', '--data-dir', dir], env: { ...process.env, UWS_USE_FALLBACK: '1' } });
    assert.equal(code, 1);
    assert.match(output, /JavaScript fallback instead of the native binary .*refusing to start/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function sha256(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

async function uploadAvatar(api: Api, token: string): Promise<AvatarUploadResponse> {
  const body = new FormData();
  body.append('file', new Blob([new Uint8Array(await makePng())], { type: 'image/png' }), 'avatar.png');
  const response = await fetch(`${api.baseUrl}/users/@me/avatar`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body });
  assert.equal(response.status, 200, await response.clone().text());
  const uploaded = (await response.json()) as AvatarUploadResponse;
  const image = await fetch(uploaded.avatar_url);
  assert.equal(image.status, 200);
  assert.equal(image.headers.get('content-type'), 'image/webp');
  await image.body?.cancel();
  return uploaded;
}

test('the single executable runs alone in an empty folder, with no node_modules and no node on PATH', { skip, timeout: 120_000 }, async (t) => {
  const home = tempDir('plexichat-binary-');
  try {
    const folder = path.join(home, 'run');
    const data = path.join(home, 'data');
    const cache = path.join(home, 'cache');
    const emptyBin = path.join(home, 'bin');
    for (const dir of [folder, data, emptyBin]) fs.mkdirSync(dir);
    const executable = path.join(folder, 'plexichat');
    fs.copyFileSync(path.join(out, 'plexichat'), executable);
    assert.deepEqual(fs.readdirSync(folder), ['plexichat']);
    // The whole environment: nothing of this process's (no NODE_OPTIONS, no node on PATH).
    const env = { PATH: emptyBin, HOME: home, XDG_CACHE_HOME: cache };
    const start = async () => {
      const started = performance.now();
      const server = await startListening({ executable, args: ['--port', '0', '--data-dir', data], env, cwd: folder, timeoutMs: START_TIMEOUT_MS });
      return { server, ms: performance.now() - started };
    };

    const first = await start();
    const api = new Api(first.server.url);
    assert.deepEqual((await api.get('/health')).body, { status: 'ok' });
    const user = await registerUser(api);
    assert.equal((await api.get<PrivateUser>('/users/@me', { token: user.token })).body.username, user.username);
    const channel = await notesChannelOf(api, user);
    const writer = openDevice(first.server.url, channel, user.token);
    const reader = openDevice(first.server.url, channel, user.token);
    try {
      await Promise.all([synced(writer), synced(reader)]);
      writer.doc.transact(() => insertNote(writer.doc, { id: '1001', content: 'from the binary', created_at: 1 }));
      await until(reader.doc, (doc) => listNotes(doc).some((note) => note.content === 'from the binary'), 'writer → reader');
    } finally {
      writer.destroy();
      reader.destroy();
    }
    await uploadAvatar(api, user.token);
    // The CLI is the same program: an admin command beside the running server, through SQLite,
    // shows in the server's next answer.
    const badge = await runToExit({ executable, args: ['admin', 'badge', 'add', user.username, 'early_supporter', '--data-dir', data], env, cwd: folder });
    assert.equal(badge.code, 0, badge.output);
    assert.deepEqual((await api.get<PrivateUser>('/users/@me', { token: user.token })).body.badges, ['early_supporter']);
    await stopsCleanly(first.server);
    assert.match(fs.readdirSync(path.join(data, 'outbox')).join(), /^[^,]+\.eml$/, 'the verification mail (nodemailer is loaded with it)');

    // Every addon was unpacked as built; now damage one and remove another: the next start puts
    // both back (checked by hash), and sharp, loaded at the first upload, loads from the repair.
    const manifest = JSON.parse(fs.readFileSync(path.join(out, 'sea', 'manifest.json'), 'utf8')) as Manifest;
    const unpacked = path.join(cache, 'plexichat', manifest.id);
    const files = Object.values(manifest.addons).flatMap((addon) => addon.files);
    for (const file of files) assert.equal(sha256(path.join(unpacked, file.path)), file.sha256, file.path);
    const libvips = files.find((file) => file.path.includes('libvips'));
    assert.ok(libvips !== undefined);
    const damaged = fs.openSync(path.join(unpacked, libvips.path), 'r+');
    fs.writeSync(damaged, Buffer.alloc(4096));
    fs.closeSync(damaged);
    fs.rmSync(path.join(unpacked, manifest.addons.uws.main));

    const second = await start();
    const again = new Api(second.server.url);
    for (const file of files) assert.equal(sha256(path.join(unpacked, file.path)), file.sha256, file.path);
    assert.equal((await again.get<PrivateUser>('/users/@me', { token: user.token })).status, 200, 'the session survived the restart');
    const notes = await again.get<Message[]>(`/channels/${channel}/messages`, { token: user.token });
    assert.equal(notes.body[0]?.content, 'from the binary');
    await uploadAvatar(again, user.token);
    await stopsCleanly(second.server);

    // A third start finds every file in place: what a self-hoster sees on every later start.
    const warm = await start();
    // Answered only once main.ts is past its start-up (signal handlers included).
    assert.equal((await new Api(warm.server.url).get('/health')).status, 200);
    await stopsCleanly(warm.server);
    const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`;
    t.diagnostic(
      `executable ${mb(fs.statSync(executable).size)}; to listening: first start ${first.ms.toFixed(0)} ms (unpacks ${mb(files.reduce((sum, f) => sum + f.size, 0))}), ` +
        `with repairs ${second.ms.toFixed(0)} ms, warm ${warm.ms.toFixed(0)} ms`,
    );
  } finally {
    fs.rmSync(home, { recursive: true, force: true });
  }
});
