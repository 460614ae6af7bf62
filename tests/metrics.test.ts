import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import * as Y from 'yjs';
import WebSocket from 'ws';
import { readMessage } from '../shared/sync-codec.ts';
import { ConfigError, loadConfig } from '../server/config.ts';
import { registerUser, startServer, type TestServer } from './helpers/server.ts';
import { closeEvent, frameOf, notesChannelOf } from './helpers/sync.ts';
import { captureLog } from './fixtures/log.ts';

const TOKEN = 'metrics-test-token-0123456789';

/** One sample of the text format: the metric's name, its labels, its value. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(match, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, name, value] of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[name!] = value!;
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

/** The metrics as a scrape reads them, and one sample's value (0 when the series does not exist yet). */
class Scrape {
  constructor(
    readonly text: string,
    readonly samples: Sample[],
  ) {}

  value(name: string, labels: Record<string, string> = {}): number {
    const found = this.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
    assert.ok(found.length <= 1, `${name} ${JSON.stringify(labels)} names ${found.length} series`);
    return found[0]?.value ?? 0;
  }

  has(name: string): boolean {
    return this.samples.some((s) => s.name === name);
  }
}

async function scrape(url: string, token: string | undefined = TOKEN): Promise<Scrape> {
  const response = await fetch(url, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });
  const text = await response.text();
  assert.equal(response.status, 200, text);
  assert.equal(response.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
  return new Scrape(text, parseMetrics(text));
}

function metricsUrlOf(srv: TestServer): string {
  const url = srv.server.metricsUrl;
  assert.ok(url !== undefined, 'metrics are on');
  return url;
}

/** Answers a method `fetch` refuses to send (TRACE: uWS hands it on, unlike a made-up method, which it drops). */
function statusOf(method: string, url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A socket on the user's notes document, once the server has attached it (its first message is our state vector). */
async function openNotesSocket(srv: TestServer, ack = false): Promise<WebSocket> {
  const user = await registerUser(srv.api);
  const channel = await notesChannelOf(srv.api, user);
  const ws = new WebSocket(`${srv.url.replace(/^http/, 'ws')}/sync/${channel}?token=${user.token}${ack ? '&ack=1' : ''}`);
  ws.binaryType = 'arraybuffer';
  // Listening from the start: the first message may come in the same packet as the upgrade.
  await new Promise((resolve, reject) => {
    ws.once('message', resolve);
    ws.once('error', reject);
  });
  return ws;
}

/** Sends one note edit and resolves once the server acknowledges it as stored (the socket opened with ack). */
async function sendStoredUpdate(ws: WebSocket, doc: Y.Doc, key: string): Promise<void> {
  const stored = new Promise<void>((resolve) => {
    const onMessage = (data: ArrayBuffer) => {
      if (readMessage(new Uint8Array(data)).type !== 'ack') return;
      ws.off('message', onMessage);
      resolve();
    };
    ws.on('message', onMessage);
  });
  const before = Y.encodeStateVector(doc);
  doc.getMap('messages').set(key, 'x');
  ws.send(frameOf(0, 2, Y.encodeStateAsUpdate(doc, before)));
  await stored;
}

test('metrics are off by default: /metrics is the normal 404', async () => {
  const srv = await startServer();
  try {
    assert.equal(srv.server.metricsUrl, undefined);
    const response = await srv.api.get<{ code: string }>('/metrics', { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(response.status, 404);
    assert.equal(response.body.code, 'not_found');
  } finally {
    await srv.close();
  }
});

test('with a token, on the API port: a missing or wrong token is 401, the right one reads the metrics', async () => {
  const srv = await startServer({ metricsToken: TOKEN });
  try {
    assert.equal(srv.server.metricsUrl, `${srv.url}/metrics`);
    const user = await registerUser(srv.api);
    const refused: Record<string, string>[] = [{}, { authorization: `Bearer ${TOKEN}x` }, { authorization: `Bearer ${user.token}` }, { authorization: TOKEN }];
    for (const headers of refused) {
      const response = await srv.api.get<{ code: string }>('/metrics', { headers });
      assert.equal(response.status, 401, JSON.stringify(headers));
      assert.equal(response.body.code, 'unauthorized');
      assert.equal(response.headers.get('www-authenticate'), 'Bearer');
    }
    const metrics = await scrape(metricsUrlOf(srv));
    // prom-client's process metrics (memory, event-loop lag) beside ours.
    for (const name of [
      'process_resident_memory_bytes',
      'nodejs_heap_size_used_bytes',
      'nodejs_eventloop_lag_p99_seconds',
      'plexichat_http_requests_total',
      'plexichat_sync_connections',
      'plexichat_sync_documents_loaded',
      'plexichat_sync_updates_stored_total',
      'plexichat_sync_commit_duration_seconds_count',
      'plexichat_sync_compactions_total',
      'plexichat_user_files_open',
    ]) {
      assert.ok(metrics.has(name), name);
    }
    assert.equal(metrics.value('plexichat_user_files_max'), 256);
    // The refused scrapes count like any request.
    assert.equal(metrics.value('plexichat_http_requests_total', { method: 'GET', route: '/metrics', status: '401' }), 4);
  } finally {
    await srv.close();
  }
});

test('requests are counted by route pattern (never the URL), method and status, with their durations', async () => {
  const srv = await startServer({ metricsToken: TOKEN });
  try {
    const user = await registerUser(srv.api);
    const other = await registerUser(srv.api);
    const before = await scrape(metricsUrlOf(srv));
    assert.equal(before.value('plexichat_http_requests_total', { method: 'POST', route: '/auth/register', status: '201' }), 2);

    for (let i = 0; i < 3; i += 1) assert.equal((await srv.api.get('/users/@me', { token: user.token })).status, 200);
    assert.equal((await srv.api.get('/users/@me')).status, 401);
    assert.equal((await srv.api.get(`/users/${other.id}`, { token: user.token })).status, 200);
    assert.equal((await srv.api.get('/no/such/route')).status, 404);
    assert.equal(await statusOf('TRACE', `${srv.url}/coffee`), 404);

    const after = await scrape(metricsUrlOf(srv));
    const delta = (labels: Record<string, string>, name = 'plexichat_http_requests_total') => after.value(name, labels) - before.value(name, labels);
    assert.equal(delta({ method: 'GET', route: '/users/@me', status: '200' }), 3);
    assert.equal(delta({ method: 'GET', route: '/users/@me', status: '401' }), 1);
    assert.equal(delta({ method: 'GET', route: '/users/:user_id', status: '200' }), 1);
    assert.equal(delta({ method: 'GET', route: 'unmatched', status: '404' }), 1);
    assert.equal(delta({ method: 'OTHER', route: 'unmatched', status: '404' }), 1, 'methods beyond the usual ones are not label values');
    assert.ok(!after.text.includes(other.id), 'no URL in a label');
    assert.ok(!after.text.includes('/no/such/route'));

    // The duration histogram: 4 more answers of GET /users/@me, in cumulative buckets ending at +Inf = count.
    const route = { method: 'GET', route: '/users/@me' };
    assert.equal(delta(route, 'plexichat_http_request_duration_seconds_count'), 4);
    assert.ok(after.value('plexichat_http_request_duration_seconds_sum', route) > 0);
    const buckets = after.samples.filter((s) => s.name === 'plexichat_http_request_duration_seconds_bucket' && s.labels.route === '/users/@me');
    assert.equal(buckets.at(-1)?.labels.le, '+Inf');
    assert.equal(buckets.at(-1)?.value, after.value('plexichat_http_request_duration_seconds_count', route));
    assert.ok(
      buckets.every((b, i) => i === 0 || b.value >= buckets[i - 1]!.value),
      'cumulative',
    );
  } finally {
    await srv.close();
  }
});

test('sync: the socket gauge goes up and down; documents loaded, user files open, updates stored and commits counted', async () => {
  const srv = await startServer({ metricsToken: TOKEN });
  try {
    const idle = await scrape(metricsUrlOf(srv));
    assert.equal(idle.value('plexichat_sync_connections'), 0);

    const ws = await openNotesSocket(srv, true);
    const open = await scrape(metricsUrlOf(srv));
    assert.equal(open.value('plexichat_sync_connections'), 1);
    assert.ok(open.value('plexichat_sync_documents_loaded') >= 1);
    assert.ok(open.value('plexichat_user_files_open') >= 1);
    assert.ok(open.value('plexichat_user_files_opened_total') >= 1);

    const doc = new Y.Doc();
    await sendStoredUpdate(ws, doc, '1001');
    await sendStoredUpdate(ws, doc, '1002');
    const stored = await scrape(metricsUrlOf(srv));
    assert.equal(stored.value('plexichat_sync_updates_stored_total') - open.value('plexichat_sync_updates_stored_total'), 2);
    assert.equal(stored.value('plexichat_sync_commit_duration_seconds_count') - open.value('plexichat_sync_commit_duration_seconds_count'), 2);
    assert.ok(stored.value('plexichat_sync_commit_duration_seconds_sum') > 0);

    // The server has run its close handler by the time its close frame reaches us.
    const closed = closeEvent(ws);
    ws.close();
    await closed;
    const gone = await scrape(metricsUrlOf(srv));
    assert.equal(gone.value('plexichat_sync_connections'), 0);
  } finally {
    await srv.close();
  }
});

test('compactions are counted', async () => {
  const log = captureLog('debug');
  const srv = await startServer({ metricsToken: TOKEN, compactAfterUpdates: 1, compactDebounceMs: 0 }, { logger: log.logger });
  try {
    const ws = await openNotesSocket(srv, true);
    const before = await scrape(metricsUrlOf(srv));
    const compacted = log.next('compacted');
    await sendStoredUpdate(ws, new Y.Doc(), '2001');
    await compacted;
    const after = await scrape(metricsUrlOf(srv));
    assert.ok(after.value('plexichat_sync_compactions_total') > before.value('plexichat_sync_compactions_total'));
    assert.equal(after.value('plexichat_sync_compaction_failures_total'), 0);
    ws.close();
  } finally {
    await srv.close();
  }
});

test('on a port of its own: no token needed, only /metrics there, none on the API port, closed with the server', async () => {
  const srv = await startServer({ metricsPort: 0 });
  let closed = false;
  try {
    const url = metricsUrlOf(srv);
    const metricsOrigin = new URL(url).origin;
    assert.notEqual(metricsOrigin, srv.url);
    assert.equal(new URL(url).hostname, '127.0.0.1', 'bound to --host');
    const user = await registerUser(srv.api);
    assert.equal((await srv.api.get('/users/@me', { token: user.token })).status, 200);

    const metrics = await scrape(url, undefined);
    assert.equal(metrics.value('plexichat_http_requests_total', { method: 'GET', route: '/users/@me', status: '200' }), 1);
    // Scrapes on the metrics port are not API requests.
    assert.equal(metrics.value('plexichat_http_requests_total', { route: '/metrics' }), 0);
    assert.equal((await srv.api.get('/metrics')).status, 404);
    const elsewhere = await fetch(`${metricsOrigin}/users/@me`, { headers: { authorization: `Bearer ${user.token}` } });
    assert.equal(elsewhere.status, 404);
    await elsewhere.body?.cancel();

    await srv.close();
    closed = true;
    await assert.rejects(fetch(url), 'nothing listens there any more');
  } finally {
    if (!closed) await srv.close();
  }
});

test('on a port of its own with a token: the token is asked for there', async () => {
  const srv = await startServer({ metricsPort: 0, metricsToken: TOKEN });
  try {
    const url = metricsUrlOf(srv);
    const refused = await fetch(url);
    assert.equal(refused.status, 401);
    assert.equal(((await refused.json()) as { code: string }).code, 'unauthorized');
    await scrape(url, TOKEN);
  } finally {
    await srv.close();
  }
});

test('each server has its own registry: two in one process count apart', async () => {
  const a = await startServer({ metricsToken: TOKEN });
  const b = await startServer({ metricsToken: TOKEN });
  try {
    assert.equal((await a.api.get('/health')).status, 200);
    assert.equal((await a.api.get('/health')).status, 200);
    const labels = { method: 'GET', route: '/health', status: '200' };
    assert.equal((await scrape(metricsUrlOf(a))).value('plexichat_http_requests_total', labels), 2);
    assert.equal((await scrape(metricsUrlOf(b))).value('plexichat_http_requests_total', labels), 0);
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
});

test('metrics settings: flags and environment, validated, off by default', () => {
  const defaults = loadConfig([], {});
  assert.equal(defaults.metricsPort, undefined);
  assert.equal(defaults.metricsToken, undefined);
  const set = loadConfig(['--metrics-port', '9464'], { PLEXICHAT_METRICS_TOKEN: TOKEN, PLEXICHAT_METRICS_PORT: '9000' });
  assert.equal(set.metricsPort, 9464, 'the flag wins over the environment');
  assert.equal(set.metricsToken, TOKEN);
  const cases: [string[], RegExp][] = [
    [['--metrics-token', 'short'], /--metrics-token \/ PLEXICHAT_METRICS_TOKEN/],
    [['--metrics-token', 'has spaces in it, sixteen+'], /--metrics-token/],
    [['--metrics-port', '70000'], /--metrics-port/],
    [['--metrics-port', '8080'], /--metrics-port .*must differ from --port/],
  ];
  for (const [argv, pattern] of cases) {
    assert.throws(
      () => loadConfig(argv, {}),
      (error: unknown) => error instanceof ConfigError && pattern.test(error.message) && !error.message.includes('\n'),
      argv.join(' '),
    );
  }
  assert.equal(loadConfig(['--port', '0', '--metrics-port', '0'], {}).metricsPort, 0, 'two "any free port"s are two ports');
});
