import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { z } from 'zod';
import { startServer, registerUser, type TestServer, type TestUser } from './helpers/server.ts';
import { Reply, route, type Route } from '../server/http/route.ts';
import type { ErrorBody } from '../shared/index.ts';

let srv: TestServer;
let user: TestUser;
/** How often the route a smuggled request would reach was actually run. */
let smuggledCalls = 0;
before(async () => {
  srv = await startServer(
    { maxJsonBodyBytes: 64 * 1024 },
    {
      extraRoutes: [
        route({
          method: 'GET',
          path: '/test/explode',
          auth: 'none',
          handler: () => {
            throw new Error('secret internal detail');
          },
        }),
        ...unserialisableRoutes(),
        route({
          method: 'GET',
          path: '/test/smuggled',
          auth: 'none',
          handler: () => {
            smuggledCalls += 1;
            return { smuggled: true };
          },
        }),
      ],
    },
  );
  user = await registerUser(srv.api);
});
after(() => srv.close());

test('GET /health answers without auth', async () => {
  const res = await srv.api.get('/health');
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, { status: 'ok' });
});

test('unknown routes are 404 and wrong methods 405, in the error shape', async () => {
  const missing = await srv.api.get<ErrorBody>('/nope', { token: user.token });
  assert.equal(missing.status, 404);
  assert.equal(missing.body.error, 'Not found');
  assert.equal(missing.body.code, 'not_found');
  const wrongMethod = await srv.api.request<ErrorBody>('PUT', '/users/@me', { token: user.token, json: {} });
  assert.equal(wrongMethod.status, 405);
  assert.equal(wrongMethod.body.error, 'Method not allowed');
  assert.equal(wrongMethod.headers.get('allow'), 'GET, PATCH');
});

test('malformed JSON is 400 Invalid JSON', async () => {
  for (const raw of ['{', '{"username":', 'nul', '{"a":1}}', "{'a':1}", '\u0000', '{"a":1,}']) {
    const res = await srv.api.patch<ErrorBody>('/users/@me', { token: user.token, raw, headers: { 'content-type': 'application/json' } });
    assert.equal(res.status, 400, raw);
    assert.equal(res.body.error, 'Invalid JSON');
    assert.equal(res.body.code, 'invalid_json');
  }
  const badUtf8 = await srv.api.patch<ErrorBody>('/users/@me', {
    token: user.token,
    raw: new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]),
    headers: { 'content-type': 'application/json' },
  });
  assert.equal(badUtf8.status, 400);
  assert.equal(badUtf8.body.error, 'Invalid JSON');
});

test('a non-empty body on a JSON route must be declared application/json, or it is 415', async () => {
  const expected = {
    error: 'Unsupported media type',
    code: 'unsupported_media_type',
    message: 'Send the body as JSON with the header Content-Type: application/json',
  };
  const body = JSON.stringify({ username: 'not-applied' });
  const refused: [string, Record<string, string>, string | Uint8Array][] = [
    ['text/plain (what fetch sends for a string)', {}, body],
    ['no Content-Type at all', {}, new TextEncoder().encode(body)],
    ['a form', { 'content-type': 'application/x-www-form-urlencoded' }, body],
    ['a look-alike type', { 'content-type': 'application/jsonp' }, body],
    ['multipart', { 'content-type': 'multipart/form-data; boundary=x' }, body],
  ];
  for (const [label, headers, raw] of refused) {
    const res = await srv.api.patch<ErrorBody>('/users/@me', { token: user.token, raw, headers });
    assert.equal(res.status, 415, label);
    assert.deepEqual(res.body, expected, label);
  }
  // Unauthenticated too, and before the body is looked at: no JSON error for a non-JSON body.
  const login = await srv.api.post<ErrorBody>('/auth/login', {
    raw: 'login=a&password=b',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
  });
  assert.equal(login.status, 415);
  assert.deepEqual(login.body, expected);
  const me = await srv.api.get<{ username: string }>('/users/@me', { token: user.token });
  assert.equal(me.body.username, user.username, 'no refused body was applied');

  for (const type of ['application/json', 'Application/JSON; charset=UTF-8', 'application/json;charset=utf-8', ' application/json ']) {
    const res = await srv.api.patch('/users/@me', { token: user.token, raw: '{}', headers: { 'content-type': type } });
    assert.equal(res.status, 200, type);
  }
  // An empty body needs no type (fetch sends none); there is nothing to misread.
  const empty = await srv.api.patch('/users/@me', { token: user.token, raw: new Uint8Array(0) });
  assert.equal(empty.status, 200);
  assert.equal((await srv.api.post('/auth/logout', { token: (await registerUser(srv.api)).token })).status, 204);
});

test('30+ hostile bodies on every JSON route never produce a 500', async () => {
  const huge = 'x'.repeat(20_000);
  let nested: unknown = {};
  for (let i = 0; i < 2000; i += 1) nested = { a: nested };
  const bodies: unknown[] = [
    null,
    true,
    false,
    0,
    -1,
    1e308,
    'string',
    [],
    [1, 2],
    [{}],
    {},
    { username: null },
    { username: ['a'] },
    { username: { $ne: 1 } },
    { username: huge },
    { username: 'a\u0000b' },
    { email: 123 },
    { email: `${huge}@x.com` },
    { email: 'a@b\u0000.com' },
    { password: null },
    { password: huge },
    { password: {} },
    { current_password: 42 },
    { login: null, password: null },
    { login: huge, password: huge },
    { allow_dms_from: 7 },
    { read_receipts_enabled: 'true' },
    JSON.parse('{"__proto__": {"admin": true}}'),
    { constructor: { prototype: { admin: true } } },
    { 'a.b': 1 },
    nested,
    { username: '💥💥💥' },
    { username: '\ud800' },
    { recipient_id: 1 },
  ];
  const routes: [string, string, string | undefined][] = [
    ['POST', '/auth/register', undefined],
    ['POST', '/auth/login', undefined],
    ['PATCH', '/users/@me', user.token],
    ['PATCH', '/users/@me/messaging-settings', user.token],
  ];
  for (const [method, path, token] of routes) {
    for (const json of bodies) {
      const res = await srv.api.request<ErrorBody>(method, path, { token, json });
      const label = `${method} ${path} ${JSON.stringify(json).slice(0, 60)} → ${res.status}`;
      assert.ok(res.status < 500, label);
      // Only `{}` is a valid (empty) patch; everything else is refused in the error shape.
      if (res.status >= 400) assert.equal(typeof res.body.error, 'string', label);
      else assert.deepEqual(json, {}, label);
    }
  }
  const me = await srv.api.get<{ username: string }>('/users/@me', { token: user.token });
  assert.equal(me.status, 200, 'still serving');
  assert.equal(me.body.username, user.username, 'no hostile body changed anything');
});

test('a body over the limit is 413 whether or not it declares its length', async () => {
  const big = JSON.stringify({ username: 'x'.repeat(100_000) });
  const declared = await srv.api.patch<ErrorBody>('/users/@me', { token: user.token, raw: big });
  assert.equal(declared.status, 413);
  assert.equal(declared.body.error, 'Payload too large');
  assert.equal(declared.body.code, 'payload_too_large');
  // Chunked: the server has to count as it reads.
  const chunked = await rawRequest(
    srv.url,
    `PATCH /users/@me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${user.token}\r\nTransfer-Encoding: chunked\r\n\r\n` +
      `${(40_000).toString(16)}\r\n${'a'.repeat(40_000)}\r\n${(40_000).toString(16)}\r\n${'a'.repeat(40_000)}\r\n0\r\n\r\n`,
  );
  assert.match(chunked, /^HTTP\/1\.1 413 /);
  assert.equal((await srv.api.get('/health')).status, 200);
});

test('an unexpected exception is a 500 without details, and the server keeps serving', async () => {
  const res = await srv.api.get<ErrorBody>('/test/explode');
  assert.equal(res.status, 500);
  assert.equal(res.body.error, 'Internal error');
  assert.equal(res.body.code, 'internal_error');
  assert.ok(!res.text.includes('secret'), 'no detail leaks');
  const requestId = res.headers.get('x-request-id');
  assert.ok(requestId && res.body.message.includes(requestId), 'the message names the request id for support');
  assert.equal((await srv.api.get('/health')).status, 200);
});

/** Handlers whose result JSON.stringify refuses (a BigInt): the failure is in answering, not in the handler. */
function unserialisableRoutes(): Route[] {
  return [
    route({ method: 'GET', path: '/test/bigint-sync', auth: 'none', handler: () => ({ n: 1n }) }),
    route({ method: 'GET', path: '/test/bigint-async', auth: 'none', handler: async () => ({ n: 1n }) }),
    route({ method: 'GET', path: '/test/bigint-reply', auth: 'none', handler: () => Reply.json(201, { n: 1n }) }),
    route({ method: 'POST', path: '/test/bigint-body', auth: 'none', body: z.object({}), handler: () => ({ n: 1n }) }),
    // A header value uWS refuses to write (it throws half-way through the answer).
    route({ method: 'GET', path: '/test/bad-header', auth: 'none', handler: () => Reply.json(200, {}, { 'X-Count': 1 as unknown as string }) }),
  ];
}

test('a result that cannot be serialised is a 500 on every path, and the server keeps serving', { timeout: 10_000 }, async () => {
  const paths = [
    ['GET', '/test/bigint-sync'],
    ['GET', '/test/bigint-async'],
    ['GET', '/test/bigint-reply'],
    ['POST', '/test/bigint-body'],
  ] as const;
  for (const [method, path] of paths) {
    const res = await srv.api.request<ErrorBody>(method, path, method === 'POST' ? { json: {} } : {});
    assert.equal(res.status, 500, path);
    const requestId = res.headers.get('x-request-id') ?? '';
    const message = `Something went wrong on our side (request ${requestId})`;
    assert.deepEqual(res.body, { error: 'Internal error', code: 'internal_error', message }, path);
    assert.equal((await srv.api.get('/health')).status, 200, `${path}: still serving`);
  }
});

test('an answer uWS refuses half-way drops that connection instead of sending half of it', { timeout: 10_000 }, async () => {
  // The status line is already written when the header is refused: no 500 can follow it.
  await assert.rejects(srv.api.get('/test/bad-header'), (error: unknown) => error instanceof TypeError && error.message === 'fetch failed');
  assert.equal((await srv.api.get('/health')).status, 200);
});

test('a failed answer still ends its request: shutdown does not wait for it', { timeout: 30_000 }, async () => {
  const own = await startServer({}, { extraRoutes: unserialisableRoutes() });
  try {
    assert.equal((await own.api.get('/test/bigint-sync')).status, 500);
    assert.equal((await own.api.get('/test/bigint-async')).status, 500);
    await assert.rejects(own.api.get('/test/bad-header'));
  } finally {
    // A request counted as in flight for ever would hold close() for the whole 10 s drain timeout.
    const started = performance.now();
    await own.close();
    const ms = performance.now() - started;
    assert.ok(ms < 5000, `close took ${ms.toFixed(0)} ms`);
  }
});

test('two Content-Length headers, or one that is not a number, are 400 Bad request and close the connection', { timeout: 10_000 }, async () => {
  const expected = { error: 'Bad request', code: 'bad_request', message: 'A request must not have more than one Content-Length header' };
  for (const lengths of [
    ['3', '5'],
    ['2', '2'],
  ]) {
    const answer = await rawExchange(
      srv.url,
      `POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${lengths.map((n) => `Content-Length: ${n}\r\n`).join('')}\r\n`,
    );
    assert.match(answer, /^HTTP\/1\.1 400 /, lengths.join(' vs '));
    assert.match(answer, /\r\nConnection: close\r\n/i);
    assert.deepEqual(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)), expected);
  }
  // A length uWS lets through although it is not a number.
  const empty = await rawExchange(srv.url, 'POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \r\n\r\n');
  assert.match(empty, /^HTTP\/1\.1 400 /);
  assert.deepEqual(JSON.parse(empty.slice(empty.indexOf('\r\n\r\n') + 4)), {
    error: 'Bad request',
    code: 'bad_request',
    message: 'Content-Length must be a number of bytes',
  });
  // The smuggling shape: by the first length, a second request follows the body; by the second,
  // it is part of the body. Whichever a proxy believed, that request must never be served.
  // Both a route answered synchronously (where uWS would go on to the next request in the same
  // packet) and one answered later.
  const smuggled = 'GET /test/smuggled HTTP/1.1\r\nHost: x\r\n\r\n';
  for (const front of ['GET /health', 'POST /auth/login']) {
    const answer = await rawExchange(
      srv.url,
      `${front} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` + `Content-Length: 2\r\nContent-Length: ${2 + smuggled.length}\r\n\r\n{}${smuggled}`,
    );
    assert.doesNotMatch(answer, /smuggled/, front);
    assert.equal(smuggledCalls, 0, `${front}: the smuggled request never reached a handler`);
  }
  assert.equal((await srv.api.get('/health')).status, 200);
});

test('Content-Length with Transfer-Encoding, or a length that is not a number: uWS closes without answering', { timeout: 10_000 }, async () => {
  const requests = [
    'POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n',
    'POST /auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n',
    'POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\n{}',
    'POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}',
  ];
  for (const request of requests) {
    const answer = await rawExchange(srv.url, request);
    assert.equal(answer, '', request);
  }
  assert.equal((await srv.api.get('/health')).status, 200);
});

test('a body refused before it is read leaves the connection usable: the next request is answered', { timeout: 10_000 }, async () => {
  const body = JSON.stringify({ username: 'never-read' });
  const { hostname, port } = new URL(srv.url);
  const socket = net.connect(Number(port), hostname);
  await once(socket, 'connect');
  let text = '';
  socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
  // A 401 (no token) whose body is still on its way, then a second request on the same connection.
  socket.write(`PATCH /users/@me HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`);
  await waitFor(() => /^HTTP\/1\.1 401 /.test(text), 'the 401 is answered before the body is sent');
  socket.write(`${body}GET /health HTTP/1.1\r\nHost: x\r\n\r\n`);
  await waitFor(() => text.includes('{"status":"ok"}'), 'the next request is answered');
  assert.deepEqual(text.match(/HTTP\/1\.1 \d{3}/g), ['HTTP/1.1 401', 'HTTP/1.1 200']);
  assert.doesNotMatch(text, /Connection: close/i);
  socket.destroy();
});

/** Resolves once `condition` holds, re-checked on every event-loop turn; fails after 5 s. */
async function waitFor(condition: () => boolean, what: string): Promise<void> {
  const deadline = performance.now() + 5000;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

test('requests uWS cannot parse (HTTP/1.0, no Host, 49+ headers) get no answer and are closed by its idle timeout', { timeout: 40_000 }, async () => {
  // A limitation of the uWS build we run, pinned here so an upgrade that answers them shows up:
  // its parser asks for more data instead of answering 505/400/431, and nothing reachable from
  // JavaScript sees these requests. The README advises a reverse proxy in front.
  const headers = (n: number) => Array.from({ length: n }, (_, i) => `X-Header-${i}: v\r\n`).join('');
  const dropped = {
    'HTTP/1.0': 'GET /health HTTP/1.0\r\nHost: x\r\n\r\n',
    'HTTP/1.1 without Host': 'GET /health HTTP/1.1\r\n\r\n',
    '49 headers': `GET /health HTTP/1.1\r\nHost: x\r\n${headers(48)}\r\n`,
  };
  const started = performance.now();
  const pending = Object.entries(dropped).map(async ([label, request]) => {
    const text = await rawExchange(srv.url, request, 30_000);
    return { label, text, seconds: (performance.now() - started) / 1000 };
  });
  // Meanwhile everyone else is served, including a request with 48 headers, the most uWS reads.
  for (let i = 0; i < 5; i += 1) assert.equal((await srv.api.get('/health')).status, 200);
  const many = await rawExchange(srv.url, `GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${headers(46)}\r\n`);
  assert.match(many, /^HTTP\/1\.1 200 /);
  for (const result of await Promise.all(pending)) {
    assert.equal(result.text, '', `${result.label}: no answer`);
    // uWS's HTTP idle timeout is 10 s, checked on a 4 s timer.
    assert.ok(result.seconds > 5 && result.seconds < 20, `${result.label}: closed after ${result.seconds.toFixed(1)} s`);
  }
  assert.equal((await srv.api.get('/health')).status, 200);
});

test('CORS: preflight answers and responses allow any origin (bearer auth, no cookies)', async () => {
  const pre = await srv.api.request('OPTIONS', '/users/@me', { headers: { origin: 'https://app.example', 'access-control-request-method': 'PATCH' } });
  assert.equal(pre.status, 204);
  assert.match(pre.headers.get('access-control-allow-methods') ?? '', /PATCH/);
  assert.match(pre.headers.get('access-control-allow-headers') ?? '', /Authorization/);
  const res = await srv.api.get('/health');
  assert.equal(res.headers.get('access-control-allow-origin'), '*');
});

test('a client that disconnects mid-body does not disturb the server', async () => {
  const { hostname, port } = new URL(srv.url);
  await new Promise<void>((resolve) => {
    const socket = net.connect(Number(port), hostname, () => {
      socket.write(`PATCH /users/@me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${user.token}\r\nContent-Length: 1000\r\n\r\n{"user`);
      socket.destroy();
      resolve();
    });
  });
  assert.equal((await srv.api.get('/users/@me', { token: user.token })).status, 200);
});

function rawRequest(url: string, request: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    let data = '';
    const socket = net.connect(Number(port), hostname, () => socket.write(request));
    socket.on('data', (chunk) => {
      data += chunk.toString();
      if (/\r\n\r\n/.test(data) && /Content-Length: (\d+)/i.test(data)) {
        const length = Number(/Content-Length: (\d+)/i.exec(data)![1]);
        if (data.length - data.indexOf('\r\n\r\n') - 4 >= length) socket.destroy();
      }
    });
    socket.on('close', () => resolve(data));
    socket.on('error', (error) => (data ? resolve(data) : reject(error)));
  });
}

/**
 * Writes `request` on a fresh socket and resolves with everything received once the server has
 * closed it (so resolving proves the close). Fails if
 * the server leaves it open for `timeoutMs` (by default 5 s: shorter than uWS's own idle timeout,
 * so a request the server should have answered and closed really hung).
 */
function rawExchange(url: string, request: string, timeoutMs = 5000): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    let text = '';
    const socket = net.connect(Number(port), hostname, () => socket.write(request));
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the server kept the connection open; got ${JSON.stringify(text)}`));
    }, timeoutMs);
    socket.on('data', (chunk) => (text += chunk.toString()));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(text);
    });
  });
}

test('X-Forwarded-For names the client only when the peer is a trusted proxy (--trust-proxy)', async () => {
  const limited = async (trustProxy: string[]) => {
    const own = await startServer({ authRateLimit: 2, trustProxy });
    const attempt = (forwardedFor: string) =>
      own.api.post('/auth/login', { json: { login: 'nobody', password: 'wrong password' }, headers: { 'x-forwarded-for': forwardedFor } });
    // Two attempts use up one address's budget; a third from another forwarded address...
    const statuses = [await attempt('203.0.113.1'), await attempt('203.0.113.1'), await attempt('203.0.113.2'), await attempt('203.0.113.1')].map(
      (r) => r.status,
    );
    const blocked = await attempt('203.0.113.1');
    await own.close();
    return { statuses, blocked };
  };
  // Without trusted proxies the header is ignored: all attempts count against the real peer.
  const ignored = await limited([]);
  assert.deepEqual(ignored.statuses, [401, 401, 429, 429]);
  assert.equal(ignored.blocked.status, 429);
  assert.ok(Number(ignored.blocked.headers.get('retry-after')) > 0);
  assert.equal(ignored.blocked.headers.get('x-ratelimit-limit'), '2');
  assert.equal(ignored.blocked.headers.get('x-ratelimit-remaining'), '0');
  assert.ok(Number(ignored.blocked.headers.get('x-ratelimit-reset')) > Date.now() / 1000);
  // Loopback trusted: each forwarded client has its own budget.
  const believed = await limited(['127.0.0.1']);
  assert.deepEqual(believed.statuses, [401, 401, 401, 429]);
});
