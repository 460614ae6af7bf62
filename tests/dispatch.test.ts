/**
 * The dispatcher on its own (server/http/dispatch.ts): a bare uWS app on port 0 with test routes,
 * a stub authenticator and a logger the tests read. The full server's HTTP behaviour is pinned in
 * http.test.ts; this file pins what the route descriptor and the request pipeline promise.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { pino } from 'pino';
import { z } from 'zod';
import { mountRoutes } from '../server/http/dispatch.ts';
import type { InflightTracker } from '../server/http/inflight.ts';
import { createRequestIds } from '../server/http/request-id.ts';
import { AppError } from '../server/core/app-error.ts';
import { Reply, route, type Route } from '../server/http/route.ts';
import { closeAllSockets, createApp, listen, stopListening } from '../server/http/uws.ts';
import { userIdParamSchema } from '../shared/schemas/users.ts';
import type { ErrorBody } from '../shared/index.ts';

const MAX_JSON = 1024;
/** What the dispatcher reads and discards of an unwanted body: the limit again, at least 1 MiB. */
const DRAIN_BOUND = MAX_JSON + 1024 * 1024;

interface LogLine {
  level: number;
  msg: string;
  requestId?: string;
  err?: { message: string };
}

interface Mounted {
  url: string;
  port: number;
  inflight: InflightTracker;
  logs: LogLine[];
  ids: () => string;
  refuseNew(): void;
  close(): void;
}

/** A bare uWS app serving `routes`; tokens: `good` signs in, `full` is a full disk, `broken` a bug. */
async function mount(routes: Route[]): Promise<Mounted> {
  const app = createApp();
  const logs: LogLine[] = [];
  const logger = pino({ level: 'debug', base: undefined }, { write: (line: string) => logs.push(JSON.parse(line) as LogLine) });
  const ids = createRequestIds();
  const http = mountRoutes(app, routes, {
    logger,
    maxJsonBodyBytes: MAX_JSON,
    maxUploadMemoryBytes: 1024 * 1024,
    nextRequestId: ids,
    authenticate: (token) => {
      if (token === 'good') return { userId: '1', sessionId: '1' };
      if (token === 'full') throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
      if (token === 'broken') throw new Error('secret internal detail');
      return null;
    },
  });
  const { socket, port } = await listen(app, '127.0.0.1', 0);
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    inflight: http.inflight,
    logs,
    ids,
    refuseNew: http.refuseNew,
    close() {
      stopListening(socket);
      closeAllSockets(app);
    },
  };
}

const ok = () => ({ ok: true });
const routes: Route[] = [
  route({ method: 'GET', path: '/t/ok', auth: 'none', handler: ok }),
  route({ method: 'DELETE', path: '/t/ok', auth: 'none', handler: ok }),
  route({ method: 'GET', path: '/t/auth', handler: (ctx) => ({ user: ctx.principal.userId }) }),
  route({ method: 'POST', path: '/t/json', auth: 'none', body: z.strictObject({ a: z.string() }), handler: (ctx) => ctx.body }),
  route({ method: 'GET', path: '/t/async', auth: 'none', handler: async () => ({ later: true }) }),
  route({
    method: 'GET',
    path: '/t/throw',
    auth: 'none',
    handler: () => {
      throw new Error('secret internal detail');
    },
  }),
  route({
    method: 'GET',
    path: '/t/reject',
    auth: 'none',
    handler: async () => {
      throw new Error('secret internal detail');
    },
  }),
  route({ method: 'GET', path: '/t/bigint', auth: 'none', handler: () => Reply.json(200, { n: 1n }) }),
  // Path parameters: one schema whose failure has its own code, a plain one, one with a route hook.
  route({ method: 'GET', path: '/p/users/:user_id', auth: 'none', params: userIdParamSchema, handler: (ctx) => ({ id: ctx.params.user_id }) }),
  route({
    method: 'GET',
    path: '/p/plain/:n',
    auth: 'none',
    params: z.object({ n: z.string().regex(/^[0-9]+$/, { message: 'Must be digits' }) }),
    handler: (ctx) => ({ n: ctx.params.n }),
  }),
  route({
    method: 'GET',
    path: '/p/hooked/:n',
    auth: 'none',
    params: z.object({ n: z.string().regex(/^[0-9]+$/) }),
    invalid: (_issues, source) => (source === 'params' ? new AppError('not_found', 'No such thing') : undefined),
    handler: (ctx) => ({ n: ctx.params.n }),
  }),
  route({
    method: 'PUT',
    path: '/p/users/:user_id',
    auth: 'none',
    body: z.strictObject({ type: z.enum(['friend']) }),
    params: userIdParamSchema,
    handler: (ctx) => ({ id: ctx.params.user_id, type: ctx.body.type }),
  }),
];

let srv: Mounted;
before(async () => {
  srv = await mount(routes);
});
after(() => srv.close());

async function get(path: string, init: RequestInit = {}) {
  const response = await fetch(srv.url + path, init);
  const text = await response.text();
  return { status: response.status, headers: response.headers, text, body: (text === '' ? undefined : JSON.parse(text)) as ErrorBody };
}

/** Resolves once `condition` holds, re-checked on every event-loop turn; fails after 5 s. */
async function waitFor(condition: () => boolean, what: string): Promise<void> {
  const deadline = performance.now() + 5000;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/**
 * Whether no request is in flight, by the tracker's own answer: `idle()` resolves at once (in a
 * microtask) exactly when its count is 0, before any setImmediate callback. A count left above 0
 * (a request never ended) or below it (one ended twice) both read as busy.
 */
async function isIdle(inflight: InflightTracker): Promise<boolean> {
  return Promise.race([inflight.idle(60_000).then(() => true), new Promise<boolean>((resolve) => setImmediate(() => resolve(false)))]);
}

test('path parameters: typed and validated by the route, an id failure answered with its own code and message', async () => {
  const good = await get('/p/users/123456789012345678');
  assert.equal(good.status, 200);
  assert.deepEqual(good.body, { id: '123456789012345678' });
  const invalid = { error: 'Invalid user ID', code: 'invalid_user_id', message: 'user_id must be a snowflake id (decimal digits)' };
  for (const id of ['abc', '0', '01', '-1', '99999999999999999999', '%20', '%E0%A4%A']) {
    const res = await get(`/p/users/${id}`);
    assert.equal(res.status, 400, id);
    assert.deepEqual(res.body, invalid, id);
  }
  // Without a code of its own, a failure is invalid_input with a field error at the parameter.
  const plain = await get('/p/plain/x');
  assert.equal(plain.status, 400);
  assert.deepEqual(plain.body, {
    error: 'Invalid input',
    code: 'invalid_input',
    message: 'Validation failed',
    errors: [{ path: 'n', message: 'Must be digits' }],
  });
  // The route's own hook decides first, and is told the failure is in the params.
  const hooked = await get('/p/hooked/x');
  assert.equal(hooked.status, 404);
  assert.deepEqual(hooked.body, { error: 'Not found', code: 'not_found', message: 'No such thing' });
  assert.equal((await get('/p/hooked/7')).status, 200);
});

test('path parameters are checked after the body, as handlers used to: a bad body wins over a bad id', async () => {
  const put = (id: string, body: unknown) =>
    get(`/p/users/${id}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const both = await put('abc', { type: 'enemy' });
  assert.equal(both.status, 400);
  assert.equal(both.body.code, 'invalid_input');
  const idOnly = await put('abc', { type: 'friend' });
  assert.deepEqual(idOnly.body, { error: 'Invalid user ID', code: 'invalid_user_id', message: 'user_id must be a snowflake id (decimal digits)' });
  const fine = await put('42', { type: 'friend' });
  assert.deepEqual(fine.body, { id: '42', type: 'friend' });
});

test('a params schema naming a parameter its path lacks is refused when the route is declared', () => {
  assert.throws(
    () => route({ method: 'GET', path: '/x/:id', params: userIdParamSchema, handler: ok }),
    (error: unknown) => error instanceof Error && error.message === 'route GET /x/:id: its params schema names :user_id, which the path lacks',
  );
});

test('placeBy on a route that requires a session is refused when the route is declared: such a route is served where its caller is', () => {
  assert.throws(
    () => route({ method: 'POST', path: '/x', placeBy: () => '42', handler: ok }),
    (error: unknown) =>
      error instanceof Error && error.message === 'route POST /x: placeBy is for routes without a session (a signed-in one is served where its caller is)',
  );
  assert.doesNotThrow(() => route({ method: 'POST', path: '/x', auth: 'none', placeBy: () => '42', handler: ok }));
});

test('request ids come from the source given in the options, so REST and sync upgrades can share one counter', async () => {
  const taken = srv.ids();
  const [boot, counter] = taken.split('-') as [string, string];
  const res = await get('/t/ok');
  assert.equal(res.headers.get('x-request-id'), `${boot}-${(Number.parseInt(counter, 36) + 1).toString(36)}`);
  // Without one, the routes get a source of their own: ids are still unique.
  const own = await mount(routes);
  try {
    const a = (await fetch(`${own.url}/t/ok`)).headers.get('x-request-id');
    const b = (await fetch(`${own.url}/t/ok`)).headers.get('x-request-id');
    assert.match(a ?? '', /^[0-9a-f]{6}-[0-9a-z]+$/);
    assert.notEqual(a, b);
  } finally {
    own.close();
  }
});

test('every exception ends in the one error path: logged with the request id, answered 500 without details', async () => {
  for (const [path, init] of [
    ['/t/throw', {}],
    ['/t/reject', {}],
    ['/t/bigint', {}],
    // Reading the session failed with something that is not a storage failure: a bug as well.
    ['/t/auth', { headers: { authorization: 'Bearer broken' } }],
  ] as const) {
    const logged = srv.logs.length;
    const res = await get(path, init);
    const requestId = res.headers.get('x-request-id') ?? '';
    assert.equal(res.status, 500, path);
    assert.deepEqual(res.body, { error: 'Internal error', code: 'internal_error', message: `Something went wrong on our side (request ${requestId})` }, path);
    const errors = srv.logs.slice(logged).filter((line) => line.level === 50);
    assert.equal(errors.length, 1, path);
    assert.equal(errors[0]?.requestId, requestId, path);
  }
  // A storage failure while reading the session is one a retry can cure: 503, logged as a warning.
  const logged = srv.logs.length;
  const full = await get('/t/auth', { headers: { authorization: 'Bearer full' } });
  assert.equal(full.status, 503);
  assert.equal(full.headers.get('retry-after'), '5');
  assert.deepEqual(full.body, { error: 'Service unavailable', code: 'service_unavailable', message: 'Storage is busy right now; retry later' });
  const warnings = srv.logs.slice(logged).filter((line) => line.level === 40);
  assert.deepEqual(
    warnings.map((line) => [line.msg, line.requestId]),
    [['could not check a token', full.headers.get('x-request-id')]],
  );
  assert.ok(await isIdle(srv.inflight), 'every request ended');
});

/** A raw connection: everything it received so far, and whether the server has closed it. */
function connect(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  const state = { text: '', closed: false };
  socket.on('data', (chunk: Buffer) => (state.text += chunk.toString()));
  socket.on('error', () => {});
  socket.on('close', () => (state.closed = true));
  return { socket, state, ready: once(socket, 'connect') };
}

/** Writes `bytes` chunked bytes in 64 KiB chunks, waiting for the socket to drain (the last chunk not sent). */
async function sendChunks(socket: net.Socket, bytes: number): Promise<void> {
  const chunk = Buffer.alloc(64 * 1024, 0x41);
  for (let sent = 0; sent < bytes; sent += chunk.length) {
    const n = Math.min(chunk.length, bytes - sent);
    if (!socket.write(Buffer.concat([Buffer.from(`${n.toString(16)}\r\n`), chunk.subarray(0, n), Buffer.from('\r\n')]))) await once(socket, 'drain');
  }
}

const answers = (text: string) => text.match(/HTTP\/1\.1 \d{3}/g) ?? [];

test('an answer over a body nobody reads keeps the connection when the body is bounded, and ends it when not', { timeout: 20_000 }, async () => {
  // A route that takes no body, sent a small declared one: uWS discards it, the next request is served.
  const small = connect(srv.port);
  await small.ready;
  small.socket.write('DELETE /t/ok HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello');
  small.socket.write('GET /t/ok HTTP/1.1\r\nHost: x\r\n\r\n');
  await waitFor(() => answers(small.state.text).length === 2, 'both answered');
  assert.doesNotMatch(small.state.text, /Connection: close/i);
  small.socket.destroy();

  // A declared body past the drain bound would be discarded for as long as the client cared to
  // send it: the answer ends the connection instead (only the headers were sent).
  const big = connect(srv.port);
  await big.ready;
  big.socket.write(`DELETE /t/ok HTTP/1.1\r\nHost: x\r\nContent-Length: ${DRAIN_BOUND + 1}\r\n\r\n`);
  await waitFor(() => big.state.closed, 'the connection is closed');
  assert.deepEqual(answers(big.state.text), ['HTTP/1.1 200']);
  assert.match(big.state.text, /Connection: close/i);

  // Chunked, its length is unknown: a route that takes no body reads it to its end first (a
  // refusal the same), then answers on a connection that stays usable.
  for (const [request, status] of [
    ['DELETE /t/ok', 'HTTP/1.1 200'],
    ['GET /t/auth', 'HTTP/1.1 401'],
  ] as const) {
    const chunked = connect(srv.port);
    await chunked.ready;
    chunked.socket.write(`${request} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n`);
    // A round trip on another connection: by its answer the server has seen these headers.
    assert.equal((await get('/t/ok')).status, 200);
    assert.equal(chunked.state.text, '', `${request}: no answer before the body has ended`);
    chunked.socket.write('0\r\n\r\nGET /t/ok HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor(() => answers(chunked.state.text).length === 2, `${request}: both answered`);
    assert.deepEqual(answers(chunked.state.text), [status, 'HTTP/1.1 200']);
    assert.doesNotMatch(chunked.state.text, /Connection: close/i);
    chunked.socket.destroy();
  }

  // One byte past the bound, the rest is not waited for: answered, and the connection ended.
  const endless = connect(srv.port);
  await endless.ready;
  endless.socket.write('DELETE /t/ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n');
  await sendChunks(endless.socket, DRAIN_BOUND + 1);
  await waitFor(() => endless.state.closed, 'the connection is closed');
  assert.deepEqual(answers(endless.state.text), ['HTTP/1.1 200']);
  assert.match(endless.state.text, /Connection: close/i);

  assert.ok(await isIdle(srv.inflight), 'every request ended');
});

test('every request ends exactly once, however it ends: answered, refused, aborted, or at shutdown', { timeout: 20_000 }, async () => {
  const own = await mount(routes);
  try {
    const fetches: [string, RequestInit][] = [
      ['/t/ok', {}],
      ['/t/async', {}],
      ['/t/throw', {}],
      ['/t/reject', {}],
      ['/t/bigint', {}],
      ['/nope', {}],
      ['/t/ok', { method: 'PATCH' }],
      ['/t/ok', { method: 'OPTIONS' }],
      ['/t/auth', {}],
      ['/t/json', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"a":"b"}' }],
      ['/t/json', { method: 'POST', headers: { 'content-type': 'application/json' }, body: 'x'.repeat(MAX_JSON + 1) }],
      ['/p/users/abc', {}],
    ];
    for (const [path, init] of fetches) {
      await fetch(own.url + path, init).then((response) => response.arrayBuffer());
      assert.ok(await isIdle(own.inflight), `${init.method ?? 'GET'} ${path}`);
    }
    // Aborted while its body is being read.
    const aborted = connect(own.port);
    await aborted.ready;
    aborted.socket.write('POST /t/json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a":');
    assert.equal((await fetch(`${own.url}/t/ok`)).status, 200);
    aborted.socket.destroy();
    const deadline = performance.now() + 5000;
    while (!(await isIdle(own.inflight))) assert.ok(performance.now() < deadline, 'the aborted request ends');
    // Framing refused on the next turn of the loop.
    const framing = connect(own.port);
    await framing.ready;
    framing.socket.write('POST /t/json HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}');
    await waitFor(() => framing.state.closed, 'the bad request is answered and closed');
    assert.match(framing.state.text, /^HTTP\/1\.1 400 /);
    assert.ok(await isIdle(own.inflight), 'framing');
    // Shutting down: refused with 503, and the answer ends the connection.
    own.refuseNew();
    const late = connect(own.port);
    await late.ready;
    late.socket.write('GET /t/ok HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor(() => late.state.closed, 'the refusal closes the connection');
    assert.match(late.state.text, /^HTTP\/1\.1 503 /);
    assert.match(late.state.text, /Connection: close/i);
    assert.ok(await isIdle(own.inflight), 'shutdown');
  } finally {
    own.close();
  }
});
