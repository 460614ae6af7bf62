import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import sharp from 'sharp';
import { startServer, registerUser, spawnServer, tempDir, Api, type TestServer, type TestUser } from './helpers/server.ts';
import { makeAnimatedGif, makeAnimatedWebp, makeGif, makeJpegWithExif, makeNoisyJpeg, makePng, makePngClaiming, makeWebp } from './helpers/images.ts';
import type { AvatarUploadResponse, ErrorBody, PrivateUser, PublicUser } from '../shared/index.ts';
import { JobQueue } from '../server/avatars/jobs.ts';
import { AppError } from '../server/core/app-error.ts';

let srv: TestServer;
let user: TestUser;
before(async () => {
  srv = await startServer();
  user = await registerUser(srv.api);
});
after(() => srv.close());

function form(bytes: Uint8Array, type = 'application/octet-stream', filename = 'upload.bin', field = 'file'): FormData {
  const data = new FormData();
  data.append(field, new Blob([new Uint8Array(bytes)], { type }), filename);
  return data;
}

async function upload<T = AvatarUploadResponse>(api: Api, token: string, body: FormData) {
  const response = await fetch(`${api.baseUrl}/users/@me/avatar`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body });
  const text = await response.text();
  return { status: response.status, headers: response.headers, body: JSON.parse(text) as T };
}

async function fetchAvatar(url: string, headers: Record<string, string> = {}) {
  const response = await fetch(url, { headers });
  return { status: response.status, headers: response.headers, bytes: Buffer.from(await response.arrayBuffer()) };
}

const avatarUrlPattern = (id: string) => new RegExp(`^${srv.url.replace(/[.]/g, '\\.')}/avatars/users/${id}\\?v=[0-9a-f]{16}$`);

const RED = [255, 0, 0];
const BLUE = [0, 0, 255];
async function pixel(bytes: Buffer, x: number, y: number): Promise<number[]> {
  const { data, info } = await sharp(bytes).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const at = (y * info.width + x) * info.channels;
  return [data[at] as number, data[at + 1] as number, data[at + 2] as number];
}
function near(actual: number[], expected: number[], label: string): void {
  assert.ok(
    actual.every((v, i) => Math.abs(v - (expected[i] as number)) < 40),
    `${label}: ${actual.join(',')} is not ~${expected.join(',')}`,
  );
}

test('PNG, JPEG, WebP, static GIF, animated GIF and animated WebP are stored as 256×256 WebP', async () => {
  const cases: [string, Buffer, boolean][] = [
    ['png', await makePng(), false],
    ['jpeg', await makeJpegWithExif(), false],
    ['webp', await makeWebp(), false],
    ['static gif', await makeGif(), false],
    ['animated gif', await makeAnimatedGif(3), true],
    ['animated webp', await makeAnimatedWebp(4), true],
  ];
  for (const [label, bytes, animated] of cases) {
    // The client's type and name are deliberately wrong: only the bytes decide.
    const res = await upload(srv.api, user.token, form(bytes, 'text/plain', 'notes.txt'));
    assert.equal(res.status, 200, `${label}: ${JSON.stringify(res.body)}`);
    assert.deepEqual(Object.keys(res.body).sort(), ['animated', 'avatar_url', 'height', 'size', 'success', 'width']);
    assert.equal(res.body.success, true);
    assert.equal(res.body.width, 256, label);
    assert.equal(res.body.height, 256, label);
    assert.equal(res.body.animated, animated, label);
    assert.match(res.body.avatar_url, avatarUrlPattern(user.id), label);

    const served = await fetchAvatar(res.body.avatar_url);
    assert.equal(served.status, 200, label);
    assert.equal(served.headers.get('content-type'), 'image/webp', label);
    assert.equal(served.bytes.byteLength, res.body.size, `${label}: size is the stored byte length`);
    const meta = await sharp(served.bytes).metadata();
    assert.equal(meta.format, 'webp', label);
    assert.equal(meta.width, 256, label);
    assert.equal(meta.height, 256, `${label}: one frame is 256 high`);
    assert.equal((meta.pages ?? 1) > 1, animated, label);
    if (label === 'animated gif') {
      assert.equal(meta.pages, 3);
      assert.deepEqual(meta.delay, [100, 200, 300], 'frame delays are kept');
    }
    const me = await srv.api.get<PrivateUser>('/users/@me', { token: user.token });
    assert.equal(me.body.avatar_url, res.body.avatar_url, `${label}: the profile shows the new avatar`);
  }
});

test('JPEG: EXIF orientation is applied, then EXIF and GPS are gone', async () => {
  const jpeg = await makeJpegWithExif(400, 200);
  const input = await sharp(jpeg).metadata();
  assert.equal(input.orientation, 6, 'the test input really carries an orientation');
  assert.ok(input.exif?.includes('secret-owner-name'), 'the test input really carries EXIF');
  assert.ok(input.exif?.includes('secret-gps-datum'), 'the test input really carries GPS');

  const res = await upload(srv.api, user.token, form(jpeg, 'image/jpeg', 'photo.jpg'));
  assert.equal(res.status, 200);
  const served = await fetchAvatar(res.body.avatar_url);
  const meta = await sharp(served.bytes).metadata();
  assert.equal(meta.exif, undefined, 'no EXIF block');
  assert.equal(meta.xmp, undefined, 'no XMP block');
  assert.equal(meta.orientation, undefined, 'no orientation left to apply twice');
  assert.ok(!served.bytes.includes('secret-owner-name') && !served.bytes.includes('secret-gps-datum'), 'nothing of the EXIF survives');
  // Stored sideways (red left, blue right); displayed upright the red half is on top.
  near(await pixel(served.bytes, 128, 30), RED, 'top');
  near(await pixel(served.bytes, 128, 225), BLUE, 'bottom');
});

test('a wide image is cropped from its centre', async () => {
  const res = await upload(srv.api, user.token, form(await makePng(600, 200), 'image/png', 'a.png'));
  assert.equal(res.status, 200);
  const served = await fetchAvatar(res.body.avatar_url);
  near(await pixel(served.bytes, 60, 128), RED, 'left');
  near(await pixel(served.bytes, 196, 128), BLUE, 'right');
});

test('anything but PNG/JPEG/WebP/GIF bytes is 400 Invalid file type', async () => {
  const png = await makePng(200, 200);
  const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>');
  const cases: [string, Uint8Array, string][] = [
    ['text labelled image/png', Buffer.from('hello, I am definitely a PNG'), 'image/png'],
    ['SVG', svg, 'image/svg+xml'],
    ['SVG labelled image/png', svg, 'image/png'],
    ['HTML', Buffer.from('<!doctype html><html><body>hi</body></html>'), 'image/png'],
    ['truncated PNG', png.subarray(0, Math.floor(png.length / 2)), 'image/png'],
    ['PNG signature only', png.subarray(0, 8), 'image/png'],
    ['PNG magic followed by junk', Buffer.concat([png.subarray(0, 8), Buffer.alloc(500, 7)]), 'image/png'],
    ['JPEG magic then a PNG', Buffer.concat([Buffer.from([0xff, 0xd8, 0xff]), png]), 'image/jpeg'],
    ['TIFF', await sharp(png).tiff().toBuffer(), 'image/tiff'],
    ['empty file', Buffer.alloc(0), 'image/png'],
  ];
  const before = (await srv.api.get<PrivateUser>('/users/@me', { token: user.token })).body.avatar_url;
  for (const [label, bytes, type] of cases) {
    const res = await upload<ErrorBody>(srv.api, user.token, form(bytes, type, 'avatar.png'));
    assert.equal(res.status, 400, label);
    assert.equal(res.body.error, 'Invalid file type', label);
    assert.equal(res.body.code, 'invalid_file_type', label);
    assert.equal(typeof res.body.message, 'string', label);
  }
  const after = (await srv.api.get<PrivateUser>('/users/@me', { token: user.token })).body.avatar_url;
  assert.equal(after, before, 'a refused upload changes nothing');
});

test('the documented error bodies, exactly', async () => {
  const text = await upload<ErrorBody>(srv.api, user.token, form(Buffer.from('plain text'), 'image/png'));
  assert.deepEqual(text.body, { error: 'Invalid file type', code: 'invalid_file_type', message: 'The file must be a PNG, JPEG, WebP or GIF image' });
  const truncated = await upload<ErrorBody>(srv.api, user.token, form((await makePng(200, 200)).subarray(0, 300), 'image/png'));
  assert.equal(truncated.status, 400);
  assert.equal(truncated.body.error, 'Invalid file type');
  assert.match(truncated.body.message, /PNG .*(corrupt|truncated)/);
});

test('a PNG claiming 30000×30000 pixels is refused in well under a second, without decoding', async () => {
  const bomb = await makePngClaiming(30_000, 30_000);
  assert.ok(bomb.byteLength < 200, 'the file itself is tiny');
  assert.equal((await sharp(bomb, { limitInputPixels: false }).metadata()).width, 30_000, 'the header really claims 30000 wide');
  const rssBefore = process.memoryUsage().rss;
  const started = performance.now();
  const res = await upload<ErrorBody>(srv.api, user.token, form(bomb, 'image/png'));
  const ms = performance.now() - started;
  assert.equal(res.status, 400);
  assert.deepEqual(res.body, {
    error: 'File too large',
    code: 'image_too_large',
    message: 'The image is 30000×30000 pixels; the limit is 40000000 pixels in all',
  });
  assert.ok(ms < 500, `took ${ms.toFixed(0)} ms`);
  // Decoding would need 2.7 GB; the server (in this process) must not have allocated anything like it.
  assert.ok(process.memoryUsage().rss - rssBefore < 100 * 1024 * 1024, 'no decoded pixels were allocated');
  assert.equal((await srv.api.get('/health')).status, 200);
});

test('size, pixel and frame limits follow the config, with their own codes', async () => {
  const small = await startServer({ maxAvatarBytes: 64 * 1024, maxAvatarPixels: 500 * 500, maxAvatarFrames: 2 });
  try {
    const u = await registerUser(small.api);
    // A file over the limit inside a body the server reads whole.
    const big = await makeNoisyJpeg(300, 300, 1);
    assert.ok(big.byteLength > 64 * 1024 && big.byteLength < 128 * 1024, `test image is ${big.byteLength} bytes`);
    const overFile = await upload<ErrorBody>(small.api, u.token, form(big, 'image/jpeg'));
    assert.equal(overFile.status, 400);
    assert.deepEqual(overFile.body, {
      error: 'File too large',
      code: 'file_too_large',
      message: `The file is ${big.byteLength} bytes; the limit is 65536`,
    });
    // A body past limit + multipart overhead is refused from its Content-Length, unread.
    const huge = await upload<ErrorBody>(small.api, u.token, form(Buffer.alloc(200 * 1024, 1), 'image/png'));
    assert.equal(huge.status, 400);
    assert.deepEqual(huge.body, { error: 'File too large', code: 'file_too_large', message: 'The upload exceeds the 65536-byte file limit' });

    const pixels = await upload<ErrorBody>(small.api, u.token, form(await makePng(600, 500), 'image/png'));
    assert.equal(pixels.status, 400);
    assert.deepEqual(pixels.body, {
      error: 'File too large',
      code: 'image_too_large',
      message: 'The image is 600×500 pixels; the limit is 250000 pixels in all',
    });
    const frames = await upload<ErrorBody>(small.api, u.token, form(await makeAnimatedGif(3, 40, 40), 'image/gif'));
    assert.equal(frames.status, 400);
    assert.deepEqual(frames.body, { error: 'File too large', code: 'too_many_frames', message: 'The animation has 3 frames; the limit is 2' });
    // Every frame counts towards the pixel limit: 2 frames of 400×400 = 320000 pixels.
    const allFrames = await upload<ErrorBody>(small.api, u.token, form(await makeAnimatedGif(2, 400, 400), 'image/gif'));
    assert.equal(allFrames.status, 400);
    assert.equal(allFrames.body.code, 'image_too_large');
    assert.match(allFrames.body.message, /400×400 pixels × 2 frames/);

    const ok = await upload(small.api, u.token, form(await makeAnimatedGif(2, 40, 40), 'image/gif'));
    assert.equal(ok.status, 200);
    assert.equal(ok.body.animated, true);
  } finally {
    await small.close();
  }
});

test('a 30 MiB body is refused without the server buffering it', { timeout: 60_000 }, async () => {
  const dataDir = tempDir();
  const proc = await spawnServer(['--port', '0', '--data-dir', dataDir, '--auth-rate-limit', '0']);
  try {
    const api = new Api(proc.url);
    const u = await registerUser(api);
    // Warm up the upload path so lazily loaded code does not count as growth.
    assert.equal((await upload(api, u.token, form(await makePng(), 'image/png'))).status, 200);
    const peakBefore = peakRss(proc.child.pid!);

    const size = 30 * 1024 * 1024;
    // Past the limit (8 MiB + 64 KiB of multipart room) the server reads and discards up to the
    // limit again, so that a client still sending can read its answer; one byte more and it stops
    // reading and answers.
    const pauseAfter = 2 * (8 * 1024 * 1024 + 64 * 1024) + 1;
    const declared = await offerUpload(proc.url, u.token, size, false, pauseAfter);
    assert.match(declared, /^HTTP\/1\.1 400 /, 'declared length over the limit: refused');
    assert.match(declared, /"code":"file_too_large"/);
    const chunked = await offerUpload(proc.url, u.token, size, true, pauseAfter);
    assert.match(chunked, /^HTTP\/1\.1 400 /, 'chunked: refused once the discard bound is passed');
    assert.match(chunked, /"code":"file_too_large"/);
    assert.equal((await api.get('/health')).status, 200);

    const grown = peakRss(proc.child.pid!) - peakBefore;
    assert.ok(grown < 20 * 1024 * 1024, `peak memory grew by ${(grown / 1024 / 1024).toFixed(1)} MiB`);
  } finally {
    proc.child.kill('SIGTERM');
    await new Promise((resolve) => proc.child.once('exit', resolve));
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('an upload over the limit gets its documented 400 through fetch(), with or without Content-Length', { timeout: 60_000 }, async () => {
  // Its own process: in this one, client and server share an event loop and take turns, which
  // hides what a real client sees (its write failing with EPIPE on a connection closed under it).
  const dataDir = tempDir();
  const proc = await spawnServer(['--port', '0', '--data-dir', dataDir, '--auth-rate-limit', '0']);
  try {
    const api = new Api(proc.url);
    const u = await registerUser(api);
    const expected = { error: 'File too large', code: 'file_too_large', message: 'The upload exceeds the 8388608-byte file limit' };
    // 12 MiB: over the 8 MiB limit, but within what the server reads and discards before answering.
    const big = new Uint8Array(12 * 1024 * 1024);
    for (let attempt = 1; attempt <= 3; attempt += 1) {
      const declared = await upload<ErrorBody>(api, u.token, form(big, 'image/png'));
      assert.equal(declared.status, 400, `attempt ${attempt}`);
      assert.deepEqual(declared.body, expected);
    }
    // A stream body has no length to declare: fetch sends it chunked.
    const streamed = await fetch(`${proc.url}/users/@me/avatar`, {
      method: 'POST',
      headers: { authorization: `Bearer ${u.token}`, 'content-type': 'multipart/form-data; boundary=b' },
      body: zeroStream(12 * 1024 * 1024),
      duplex: 'half',
    });
    assert.equal(streamed.status, 400);
    assert.deepEqual(await streamed.json(), expected);
    // Refusals decided before the body is read are readable too: a stale token with a photo.
    const stale = await fetch(`${proc.url}/users/@me/avatar`, {
      method: 'POST',
      headers: { authorization: 'Bearer pxc_stale' },
      body: form(big, 'image/png'),
    });
    assert.equal(stale.status, 401);
    assert.deepEqual(await stale.json(), { error: 'Unauthorized', code: 'unauthorized', message: 'A valid bearer token is required' });
    // JSON routes follow the same rule: 1.5 MiB against the 1 MiB limit.
    const json = await api.patch<ErrorBody>('/users/@me', { token: u.token, json: { username: 'x'.repeat(1536 * 1024) } });
    assert.equal(json.status, 413);
    assert.deepEqual(json.body, { error: 'Payload too large', code: 'payload_too_large', message: 'Request body exceeds 1048576 bytes' });
    assert.equal((await api.get('/health')).status, 200);
  } finally {
    proc.child.kill('SIGTERM');
    await once(proc.child, 'exit');
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

/** `size` zero bytes as a stream of 64 KiB chunks, produced as the reader pulls them. */
function zeroStream(size: number): ReadableStream<Uint8Array> {
  let left = size;
  return new ReadableStream({
    pull(controller) {
      const n = Math.min(left, 64 * 1024);
      left -= n;
      if (n > 0) controller.enqueue(new Uint8Array(n));
      if (left === 0) controller.close();
    },
  });
}

test('20 concurrent uploads all succeed and the server stays responsive', async () => {
  const users = await Promise.all([1, 2, 3, 4].map(() => registerUser(srv.api)));
  const images = await Promise.all(Array.from({ length: 20 }, (_, i) => makeNoisyJpeg(640, 480, i + 10)));
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  let running = true;
  const healthLatencies: number[] = [];
  const poll = (async () => {
    while (running) {
      const started = performance.now();
      assert.equal((await srv.api.get('/health')).status, 200);
      healthLatencies.push(performance.now() - started);
    }
  })();
  const results = await Promise.all(images.map((image, i) => upload(srv.api, (users[i % users.length] as TestUser).token, form(image, 'image/jpeg'))));
  running = false;
  await poll;
  loopDelay.disable();
  for (const res of results) {
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.width, 256);
  }
  // Image work runs on worker threads: requests keep being answered meanwhile. The bound is loose
  // on purpose (2 cores shared with other suites); decoding on the event loop would blow it.
  assert.ok(healthLatencies.length >= 5, `health was answered only ${healthLatencies.length} times during the burst`);
  const worst = Math.max(...healthLatencies);
  const blocked = loopDelay.max / 1e6;
  assert.ok(blocked < 1000, `the event loop was blocked for ${blocked.toFixed(0)} ms (health answered in up to ${worst.toFixed(0)} ms)`);
  // Each user's stored avatar is the last one their uploads wrote, and it is consistent.
  for (const u of users) {
    const me = await srv.api.get<PrivateUser>('/users/@me', { token: u.token });
    const served = await fetchAvatar(me.body.avatar_url ?? '');
    assert.equal(served.status, 200);
    const etag = served.headers.get('etag') ?? '';
    assert.ok(me.body.avatar_url?.endsWith(`?v=${etag.slice(1, 17)}`), 'avatar_url names the stored image');
  }
});

test('image jobs: at most `concurrency` run at once, a bounded number wait, the rest are told to retry', async () => {
  const queue = new JobQueue(2, 3);
  let running = 0;
  let peak = 0;
  const gates: (() => void)[] = [];
  const job = () =>
    new Promise<number>((resolve) => {
      running += 1;
      peak = Math.max(peak, running);
      gates.push(() => {
        running -= 1;
        resolve(1);
      });
    });
  // Lets p-limit start whatever may start (it does so on microtasks).
  const settle = () => new Promise((resolve) => setImmediate(resolve));

  const accepted = Array.from({ length: 5 }, () => queue.run(job));
  await assert.rejects(
    queue.run(job),
    (error: unknown) => error instanceof AppError && error.status === 503 && error.code === 'service_unavailable' && error.headers['Retry-After'] === '2',
  );
  await settle();
  assert.equal(queue.running, 2);
  while (gates.length > 0) {
    gates.shift()!();
    await settle();
  }
  assert.deepEqual(await Promise.all(accepted), [1, 1, 1, 1, 1]);
  assert.equal(peak, 2, 'never more than two at once');
  assert.equal(await queue.run(async () => 7), 7, 'room again once the burst is done');
});

test('GET /avatars/users/{id}: public, ETag, 304, cache headers, 400 and 404', async () => {
  const owner = await registerUser(srv.api);
  const viewer = await registerUser(srv.api);
  const none = await srv.api.get<ErrorBody>(`/avatars/users/${owner.id}`);
  assert.equal(none.status, 404);
  assert.deepEqual(none.body, { error: 'Not found', code: 'avatar_not_found', message: 'This user has no avatar' });
  const unknown = await srv.api.get<ErrorBody>('/avatars/users/123456789012345678');
  assert.equal(unknown.status, 404);
  assert.deepEqual(unknown.body, none.body, 'an unknown user looks the same as one without an avatar');
  for (const bad of ['abc', '12a', '-1', '..%2F..%2Fdirectory', '1'.repeat(40)]) {
    const res = await srv.api.get<ErrorBody>(`/avatars/users/${bad}`);
    assert.equal(res.status, 400, bad);
    assert.deepEqual(res.body, { error: 'Invalid user ID', code: 'invalid_user_id', message: 'user_id must be a snowflake id (decimal digits)' });
  }

  const up = await upload(srv.api, owner.token, form(await makePng(), 'image/png'));
  assert.equal(up.status, 200);
  const publicView = await srv.api.get<PublicUser>(`/users/${owner.id}`, { token: viewer.token });
  assert.equal(publicView.body.avatar_url, up.body.avatar_url, 'other users see the same avatar_url');
  const found = await srv.api.get<PublicUser>(`/users/search?username=${owner.username}`, { token: viewer.token });
  assert.equal(found.body.avatar_url, up.body.avatar_url);

  // No Authorization header: <img> tags load it.
  const plain = await fetchAvatar(`${srv.url}/avatars/users/${owner.id}`);
  assert.equal(plain.status, 200);
  const etag = plain.headers.get('etag') ?? '';
  assert.match(etag, /^"[0-9a-f]{64}"$/);
  assert.ok(up.body.avatar_url.endsWith(`?v=${etag.slice(1, 17)}`), 'the cache-buster is the hash prefix');
  assert.equal(plain.headers.get('cache-control'), 'public, no-cache', 'the unversioned URL revalidates');
  assert.equal(plain.headers.get('x-content-type-options'), 'nosniff');
  const versioned = await fetchAvatar(up.body.avatar_url);
  assert.equal(versioned.headers.get('cache-control'), 'public, max-age=31536000, immutable');
  assert.deepEqual(versioned.bytes, plain.bytes);
  const stale = await fetchAvatar(`${srv.url}/avatars/users/${owner.id}?v=0000000000000000`);
  assert.equal(stale.headers.get('cache-control'), 'public, no-cache', 'a stale version is not cached for good');

  for (const header of [etag, `W/${etag}`, `"nope", ${etag}`, '*']) {
    const notModified = await fetchAvatar(`${srv.url}/avatars/users/${owner.id}`, { 'if-none-match': header });
    assert.equal(notModified.status, 304, header);
    assert.equal(notModified.bytes.byteLength, 0);
    assert.equal(notModified.headers.get('etag'), etag);
  }
  const changed = await fetchAvatar(`${srv.url}/avatars/users/${owner.id}`, { 'if-none-match': '"something-else"' });
  assert.equal(changed.status, 200);
  assert.deepEqual(changed.bytes, plain.bytes);
});

test('replacing an avatar replaces it; DELETE removes it and avatar_url goes back to null', async () => {
  const u = await registerUser(srv.api);
  const first = await upload(srv.api, u.token, form(await makePng(), 'image/png'));
  const firstEtag = (await fetchAvatar(first.body.avatar_url)).headers.get('etag') ?? '';
  const second = await upload(srv.api, u.token, form(await makeAnimatedWebp(), 'image/webp'));
  assert.equal(second.status, 200);
  assert.notEqual(second.body.avatar_url, first.body.avatar_url, 'a new image gets a new cache-buster');
  const now = await fetchAvatar(`${srv.url}/avatars/users/${u.id}`, { 'if-none-match': firstEtag });
  assert.equal(now.status, 200, 'the old ETag no longer matches');
  assert.equal((await sharp(now.bytes).metadata()).pages, 3, 'the new (animated) image is served');
  assert.equal(now.bytes.byteLength, second.body.size);

  const deleted = await srv.api.delete(`/users/@me/avatar`, { token: u.token });
  assert.equal(deleted.status, 204);
  assert.equal(deleted.text, '');
  assert.equal((await srv.api.get<PrivateUser>('/users/@me', { token: u.token })).body.avatar_url, null);
  assert.equal((await srv.api.get(`/avatars/users/${u.id}`)).status, 404);
  assert.equal((await srv.api.delete(`/users/@me/avatar`, { token: u.token })).status, 204, 'deleting nothing is fine');
});

test('upload needs auth, multipart/form-data and a file field', async () => {
  const png = await makePng();
  const noAuth = await fetch(`${srv.url}/users/@me/avatar`, { method: 'POST', body: form(png, 'image/png') });
  assert.equal(noAuth.status, 401);
  assert.equal(((await noAuth.json()) as ErrorBody).code, 'unauthorized');
  assert.equal((await srv.api.delete('/users/@me/avatar')).status, 401);

  const raw = await srv.api.post<ErrorBody>('/users/@me/avatar', { token: user.token, raw: png, headers: { 'content-type': 'image/png' } });
  assert.equal(raw.status, 415);
  assert.deepEqual(raw.body, {
    error: 'Unsupported media type',
    code: 'unsupported_media_type',
    message: 'Send the image as multipart/form-data in a file field named "file"',
  });
  const wrongField = await upload<ErrorBody>(srv.api, user.token, form(png, 'image/png', 'a.png', 'avatar'));
  assert.equal(wrongField.status, 400);
  assert.deepEqual(wrongField.body, {
    error: 'Invalid input',
    code: 'invalid_input',
    message: 'Validation failed',
    errors: [{ path: 'file', message: 'Required: the image, as a multipart file field named "file"' }],
  });
  const garbled = await srv.api.post<ErrorBody>('/users/@me/avatar', {
    token: user.token,
    raw: 'this is not multipart at all',
    headers: { 'content-type': 'multipart/form-data; boundary=xyz' },
  });
  assert.equal(garbled.status, 400);
  assert.equal(garbled.body.code, 'invalid_input');
});

test('multipart parameters as RFC 2046 allows them: a quoted boundary, other parameters, any case', async () => {
  const png = await makePng();
  const cases: [string, string][] = [
    ['quoted', 'multipart/form-data; boundary="plexi-quoted"'],
    ['quoted with a space and specials', `multipart/form-data; boundary="plexi 'quoted' (+_,-./:=?)"`],
    ['after another parameter', 'multipart/form-data; charset=utf-8; boundary=plexi-after'],
    ['before another parameter', 'multipart/form-data; boundary=plexi-before; charset=utf-8'],
    ['any case, no space', 'Multipart/Form-Data;BOUNDARY=plexi-case'],
  ];
  for (const [label, contentType] of cases) {
    const boundary = /boundary="([^"]*)"/i.exec(contentType)?.[1] ?? (/boundary=([^;]*)/i.exec(contentType)?.[1] as string);
    const body = multipartBody(boundary, 'file', png);
    const response = await fetch(`${srv.url}/users/@me/avatar`, {
      method: 'POST',
      headers: { authorization: `Bearer ${user.token}`, 'content-type': contentType },
      body,
    });
    const answer = (await response.json()) as AvatarUploadResponse;
    assert.equal(response.status, 200, `${label}: ${JSON.stringify(answer)}`);
    assert.equal(answer.width, 256, label);
  }
  // Not a boundary RFC 2046 allows (empty, too long, unterminated quote): not multipart at all.
  const refused = ['multipart/form-data; boundary=""', `multipart/form-data; boundary=${'b'.repeat(71)}`, 'multipart/form-data; boundary="open'];
  for (const contentType of refused) {
    const res = await srv.api.post<ErrorBody>('/users/@me/avatar', {
      token: user.token,
      raw: multipartBody('open', 'file', png),
      headers: { 'content-type': contentType },
    });
    assert.equal(res.status, 415, contentType);
    assert.equal(res.body.code, 'unsupported_media_type', contentType);
  }
});

function multipartBody(boundary: string, field: string, bytes: Uint8Array): Uint8Array {
  return Buffer.concat([
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${field}"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n`),
    bytes,
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
}

/** Peak resident memory of a process (VmHWM), in bytes. */
function peakRss(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmHWM:\s+(\d+) kB/m.exec(status);
  if (!match) throw new Error('no VmHWM in /proc status');
  return Number(match[1]) * 1024;
}

/**
 * Offers a `size`-byte avatar upload over a raw socket, declared by Content-Length or chunked.
 * Declared: only the headers are sent, so an answer proves the server refused before reading.
 * Chunked: exactly `pauseAfter` bytes of the body are streamed (with backpressure), more than the
 * server may read, then the client waits for the answer. It does not keep writing into a socket
 * the server is closing: bytes the server never read make its close a reset, which could swallow
 * the answer. A server that kept reading would never answer, and the test would time out.
 */
function offerUpload(url: string, token: string, size: number, chunked: boolean, pauseAfter: number): Promise<string> {
  const { hostname, port } = new URL(url);
  const chunk = Buffer.alloc(64 * 1024, 0x41);
  const framed = Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n')]);
  return new Promise((resolve, reject) => {
    let response = '';
    let failure: Error | undefined;
    const socket = net.connect(Number(port), hostname, () => {
      socket.write(
        `POST /users/@me/avatar HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n` +
          'Content-Type: multipart/form-data; boundary=b\r\n' +
          (chunked ? 'Transfer-Encoding: chunked\r\n\r\n' : `Content-Length: ${size}\r\n\r\n`),
      );
      if (!chunked) return;
      let sent = 0;
      const total = Math.min(size, pauseAfter);
      const pump = () => {
        while (response === '' && sent < total) {
          const n = Math.min(chunk.length, total - sent);
          sent += n;
          const bytes = n === chunk.length ? framed : Buffer.from(`${n.toString(16)}\r\n${'A'.repeat(n)}\r\n`);
          if (!socket.write(bytes)) {
            socket.once('drain', pump);
            return;
          }
        }
      };
      pump();
    });
    socket.on('data', (data: Buffer) => (response += data.toString()));
    socket.on('error', (error) => (failure = error));
    socket.on('close', () => {
      if (response === '' && failure) reject(failure);
      else resolve(response);
    });
  });
}
