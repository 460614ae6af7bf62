import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import * as Y from 'yjs';
import WebSocket from 'ws';
import { readMessage } from '../shared/sync-codec.ts';
import { PassThrough } from 'node:stream';
import { resolveConfig } from '../server/config.ts';
import { runCli } from '../server/cli/index.ts';
import { registerUser, spawnServer, startServer, tempDir, type TestServer } from './helpers/server.ts';
import { closeEvent, frameOf, notesChannelOf } from './helpers/sync.ts';
import { captureLog } from './fixtures/log.ts';

const TOKEN = 'metrics-test-token-0123456789';
/** The documented answer to a scrape without the metrics token, or with another. */
const UNAUTHORIZED = { error: 'Unauthorized', code: 'unauthorized', message: 'A valid metrics token is required' };

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

/** The CLI in this process, for help and settings errors (no server is started). */
async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | undefined; stdout: string; stderr: string }> {
  const [stdout, stderr] = [new PassThrough(), new PassThrough()];
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  stdout.on('data', (chunk: Buffer) => out.push(chunk));
  stderr.on('data', (chunk: Buffer) => err.push(chunk));
  const code = await runCli(args, { stdout, stderr, stdin: new PassThrough(), env });
  return { code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
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
    const response = await srv.api.get('/metrics', { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(response.status, 404);
    assert.deepEqual(response.body, { error: 'Not found', code: 'not_found', message: 'No route for GET /metrics' });
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
      const response = await srv.api.get('/metrics', { headers });
      assert.equal(response.status, 401, JSON.stringify(headers));
      assert.deepEqual(response.body, UNAUTHORIZED);
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
    const onApi = await srv.api.get('/metrics');
    assert.equal(onApi.status, 404);
    assert.deepEqual(onApi.body, { error: 'Not found', code: 'not_found', message: 'No route for GET /metrics' });
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
    assert.equal(refused.headers.get('www-authenticate'), 'Bearer');
    assert.deepEqual(await refused.json(), UNAUTHORIZED);
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

test('metrics settings: serve flags with their help and environment variables, validated, off by default', async () => {
  const defaults = resolveConfig({}, {});
  assert.equal(defaults.metricsPort, undefined);
  assert.equal(defaults.metricsToken, undefined);
  const set = resolveConfig({ metricsPort: '9464' }, { PLEXICHAT_METRICS_TOKEN: TOKEN, PLEXICHAT_METRICS_PORT: '9000' });
  assert.equal(set.metricsPort, 9464, 'the flag wins over the environment');
  assert.equal(set.metricsToken, TOKEN);
  assert.equal(resolveConfig({ port: '0', metricsPort: '0' }, {}).metricsPort, 0, 'two "any free port"s are two ports');

  const help = await cli(['serve', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /\n {2}--metrics-port <value> +serve GET \/metrics .*\[PLEXICHAT_METRICS_PORT, default \(none\)\]\n/);
  assert.match(help.stdout, /\n {2}--metrics-token <value> +serve GET \/metrics .*\[PLEXICHAT_METRICS_TOKEN, default \(none\)\]\n/);

  const invalid = 'must be 16 to 512 characters of A-Z a-z 0-9 . _ ~ + / = -';
  const cases: [string[], NodeJS.ProcessEnv, string][] = [
    [['serve', '--metrics-token', 'short'], {}, `invalid --metrics-token / PLEXICHAT_METRICS_TOKEN: ${invalid}`],
    [['serve'], { PLEXICHAT_METRICS_TOKEN: 'has spaces in it, sixteen+' }, `invalid --metrics-token / PLEXICHAT_METRICS_TOKEN: ${invalid}`],
    [['serve', '--metrics-port', '70000'], {}, 'invalid --metrics-port / PLEXICHAT_METRICS_PORT: Too big: expected number to be <=65535'],
    [['serve', '--metrics-port', '8080'], {}, 'invalid --metrics-port / PLEXICHAT_METRICS_PORT: must differ from --port'],
  ];
  for (const [args, env, message] of cases) {
    const { code, stdout, stderr } = await cli(args, env);
    assert.deepEqual({ code, stdout, stderr }, { code: 1, stdout: '', stderr: `plexichat: ${message}\n` }, args.join(' '));
  }
});

test('serve --metrics-port: the server process serves the metrics there and says where', async () => {
  const dir = tempDir();
  try {
    const server = await spawnServer(['serve', '--port', '0', '--metrics-port', '0', '--data-dir', dir], { PLEXICHAT_METRICS_TOKEN: TOKEN });
    try {
      const url = /serving metrics at (http:\/\/\S+\/metrics)"/.exec(server.output())?.[1];
      assert.ok(url !== undefined && new URL(url).port !== String(server.port), server.tail());
      assert.equal((await fetch(url)).status, 401, 'the token from the environment is asked for');
      assert.equal((await fetch(`${server.url}/health`)).status, 200);
      assert.equal((await scrape(url)).value('plexichat_http_requests_total', { method: 'GET', route: '/health', status: '200' }), 1);
    } finally {
      assert.equal((await server.stop()).killed, false);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
