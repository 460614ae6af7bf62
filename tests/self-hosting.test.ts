/**
 * The reverse-proxy configurations of docs/self-hosting.md, as written there, in a real nginx and a
 * real Caddy in front of a real server: REST through the proxy, `/metrics` kept off it, each
 * client's own address reaching the server (`--trust-proxy`) and a forged one not, an avatar-sized
 * body let through, the env file's `--public-url` in the URLs the API returns (and those leading
 * through the proxy), and a sync round trip of the stock y-websocket client over the proxied
 * WebSocket. Only what cannot be used here is changed (ports, the certificate, Caddy's automatic
 * HTTPS), and each change must find its text, so an edit of the document that these miss fails
 * here. Skipped, one line each, where nginx, Caddy or openssl is not installed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import * as Y from 'yjs';
import WebSocket from 'ws';
import { WebsocketProvider } from 'y-websocket';
import { insertNote, listNotes } from '../shared/index.ts';
import { resolveConfig } from '../server/config.ts';
import { makePng } from './helpers/images.ts';
import { registerUser, startServer, tempDir, type TestServer } from './helpers/server.ts';
import { notesChannelOf, until } from './helpers/sync.ts';

const DOC = fs.readFileSync(path.resolve(import.meta.dirname, '../docs/self-hosting.md'), 'utf8');
const DOMAIN = 'chat.example.org';
const METRICS_TOKEN = 'proxy-test-metrics-token-0123';
/** Where distributions put nginx; a user's PATH may lack the sbin folders. */
const SEARCH_PATH = `${process.env.PATH ?? ''}:/usr/sbin:/usr/local/sbin:/sbin`;

function codeBlock(language: string): string {
  const match = new RegExp('```' + language + '\\n([\\s\\S]*?)```').exec(DOC);
  assert.ok(match?.[1], `docs/self-hosting.md has a ${language} block`);
  return match[1];
}

/** The variables of the service's env file, as the document writes it (comments skipped). */
function envFile(): Record<string, string> {
  const match = /sudo tee \/etc\/plexichat\/plexichat\.env > \/dev\/null <<'EOF'\n([\s\S]*?)\n\s*EOF\n/.exec(DOC);
  assert.ok(match?.[1], 'docs/self-hosting.md writes /etc/plexichat/plexichat.env');
  const vars: Record<string, string> = {};
  for (const line of match[1].split('\n').map((l) => l.trim())) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.indexOf('=');
    vars[line.slice(0, at)] = line.slice(at + 1);
  }
  return vars;
}

/** `text` with `from` replaced by `to`; `from` must be there exactly once. */
function replaceOnce(text: string, from: string, to: string): string {
  assert.equal(text.split(from).length, 2, `expected exactly one ${JSON.stringify(from)} in the documented configuration`);
  return text.replace(from, () => to);
}

function missing(command: string, args: string[]): string | undefined {
  try {
    execFileSync(command, args, { stdio: 'ignore', env: { ...process.env, PATH: SEARCH_PATH } });
    return undefined;
  } catch {
    return `${command} is not installed`;
  }
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

/** Runs a proxy until `ready` matches a line it prints; stopped with `signal`. */
async function runProxy(command: string, args: string[], ready: RegExp, env: NodeJS.ProcessEnv = {}): Promise<{ child: ChildProcess; stop(): Promise<void> }> {
  const child = spawn(command, args, { env: { ...process.env, PATH: SEARCH_PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  let output = '';
  await new Promise<void>((resolve, reject) => {
    for (const stream of [child.stdout, child.stderr]) {
      stream?.on('data', (chunk: Buffer) => {
        output += chunk.toString();
        if (ready.test(output)) resolve();
      });
    }
    child.once('exit', (code) => reject(new Error(`${command} exited with ${code} before it was ready:\n${output}`)));
  });
  return {
    child,
    async stop() {
      process.removeListener('exit', killOnExit);
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      await exited;
    },
  };
}

interface Proxied {
  /** http://127.0.0.1:<port> or https://127.0.0.1:<port> */
  base: string;
  /** For https: the certificate to trust. */
  ca?: Buffer;
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

/** One request through the proxy, from the given local address (a different client), as the domain. */
function request(
  proxy: Proxied,
  method: string,
  pathname: string,
  options: { from?: string; headers?: Record<string, string>; body?: Buffer } = {},
): Promise<Answer> {
  const url = new URL(pathname, proxy.base);
  const client = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = client.request(
      url,
      {
        method,
        localAddress: options.from,
        headers: { host: DOMAIN, ...options.headers, ...(options.body === undefined ? {} : { 'content-length': String(options.body.byteLength) }) },
        ...(proxy.ca === undefined ? {} : { ca: proxy.ca, servername: DOMAIN }),
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString() }));
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

function register(proxy: Proxied, from: string, name: string, headers: Record<string, string> = {}): Promise<Answer> {
  const body = Buffer.from(JSON.stringify({ username: name, email: `${name}@example.com`, password: `pw-${name}-secret` }));
  return request(proxy, 'POST', '/auth/register', { from, body, headers: { 'content-type': 'application/json', ...headers } });
}

/** What every proxy must do, checked against a server started for it (`--trust-proxy 127.0.0.1`, one registration a minute per address). */
async function checkProxy(srv: TestServer, proxy: Proxied): Promise<void> {
  const health = await request(proxy, 'GET', '/health');
  assert.equal(health.status, 200, health.text);
  assert.deepEqual(JSON.parse(health.text), { status: 'ok' });

  // The server serves metrics on this port (with a token); the proxy keeps them off the site.
  assert.equal((await srv.api.get('/metrics', { headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).status, 200);
  assert.equal((await request(proxy, 'GET', '/metrics', { headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).status, 404);

  // Each client's own address reaches the server: one registration a minute each, not one for all.
  const run = Date.now().toString(36);
  assert.equal((await register(proxy, '127.0.0.2', `a${run}`)).status, 201);
  assert.equal((await register(proxy, '127.0.0.2', `b${run}`)).status, 429, 'the same client: its budget is spent');
  assert.equal((await register(proxy, '127.0.0.3', `c${run}`)).status, 201, 'another client: a budget of its own');
  const forged = await register(proxy, '127.0.0.3', `d${run}`, { 'x-forwarded-for': '198.51.100.7' });
  assert.equal(forged.status, 429, 'an address a client writes itself is not believed');

  // A body of avatar size goes through the proxy: the server judges it (junk: not an image).
  const user = await registerUser(srv.api);
  const boundary = 'proxy-test-boundary';
  const upload = Buffer.concat([
    Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n`),
    Buffer.alloc(8_000_000, 7),
    Buffer.from(`\r\n--${boundary}--\r\n`),
  ]);
  const uploaded = await request(proxy, 'POST', '/users/@me/avatar', {
    body: upload,
    headers: { authorization: `Bearer ${user.token}`, 'content-type': `multipart/form-data; boundary=${boundary}` },
  });
  assert.equal(uploaded.status, 400, uploaded.text.slice(0, 200));
  assert.equal((JSON.parse(uploaded.text) as { code: string }).code, 'invalid_file_type');

  // --public-url: the URL the API returns is the site's, and it leads to the image through the proxy.
  const png = await makePng();
  const avatar = await request(proxy, 'POST', '/users/@me/avatar', {
    body: Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n`),
      png,
      Buffer.from(`\r\n--${boundary}--\r\n`),
    ]),
    headers: { authorization: `Bearer ${user.token}`, 'content-type': `multipart/form-data; boundary=${boundary}` },
  });
  assert.equal(avatar.status, 200, avatar.text.slice(0, 200));
  const avatarUrl = new URL((JSON.parse(avatar.text) as { avatar_url: string }).avatar_url);
  assert.equal(avatarUrl.origin, `https://${DOMAIN}`);
  const image = await request(proxy, 'GET', avatarUrl.pathname + avatarUrl.search);
  assert.equal(image.status, 200);
  assert.match(String(image.headers['content-type']), /^image\//);

  // The sync channel through the proxy: the stock client, a note written on one device, read on another.
  const channel = await notesChannelOf(srv.api, user);
  const ca = proxy.ca;
  class ProxiedWebSocket extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      // As a browser at https://chat.example.org would: the proxy serves the site by its name.
      super(url, protocols, { headers: { host: DOMAIN }, ...(ca === undefined ? {} : { ca }) });
    }
  }
  const devices = [new Y.Doc(), new Y.Doc()].map(
    (doc) =>
      new WebsocketProvider(`${proxy.base.replace(/^http/, 'ws')}/sync`, channel, doc, {
        params: { token: user.token },
        WebSocketPolyfill: ProxiedWebSocket as unknown as typeof globalThis.WebSocket,
        disableBc: true,
      }),
  );
  try {
    const [writer, reader] = devices as [WebsocketProvider, WebsocketProvider];
    writer.doc.transact(() => insertNote(writer.doc, { id: '1001', content: 'through the proxy', created_at: 1 }));
    await until(reader.doc, (doc) => listNotes(doc).some((note) => note.content === 'through the proxy'), 'writer → proxy → server → proxy → reader');
  } finally {
    for (const device of devices) {
      device.destroy();
      // The provider's awareness keeps an interval running until its document is destroyed.
      device.doc.destroy();
    }
  }
}

/**
 * A server with the env file's --public-url and --trust-proxy (its metrics port aside: here the
 * token puts /metrics on the API's port, which the proxies must keep off the site), and one
 * registration a minute per client address, to tell clients apart.
 */
function startProxiedServer(): Promise<TestServer> {
  const vars = envFile();
  assert.equal(vars.PLEXICHAT_PUBLIC_URL, `https://${DOMAIN}`);
  const documented = resolveConfig({}, { PLEXICHAT_PUBLIC_URL: vars.PLEXICHAT_PUBLIC_URL, PLEXICHAT_TRUST_PROXY: vars.PLEXICHAT_TRUST_PROXY });
  return startServer({ publicUrl: documented.publicUrl, trustProxy: documented.trustProxy, authRateLimit: 1, metricsToken: METRICS_TOKEN });
}

const nginxMissing = missing('nginx', ['-v']) ?? missing('openssl', ['version']);

test('docs/self-hosting.md: the nginx configuration passes REST, client addresses and the sync WebSocket', {
  skip: nginxMissing,
  timeout: 60_000,
}, async () => {
  const dir = tempDir('plexichat-nginx-');
  const srv = await startProxiedServer();
  let nginx: Awaited<ReturnType<typeof runProxy>> | undefined;
  try {
    const cert = path.join(dir, 'cert.pem');
    const key = path.join(dir, 'key.pem');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-days',
        '1',
        '-subj',
        `/CN=${DOMAIN}`,
        '-addext',
        `subjectAltName=DNS:${DOMAIN},IP:127.0.0.1`,
        '-keyout',
        key,
        '-out',
        cert,
      ],
      {
        stdio: 'ignore',
      },
    );
    const [httpPort, httpsPort] = [await freePort(), await freePort()];
    let site = codeBlock('nginx');
    site = replaceOnce(site, 'server 127.0.0.1:8080;', `server 127.0.0.1:${srv.server.port};`);
    site = replaceOnce(site, 'listen 80;\n    listen [::]:80;', `listen 127.0.0.1:${httpPort};`);
    site = replaceOnce(site, 'listen 443 ssl;\n    listen [::]:443 ssl;', `listen 127.0.0.1:${httpsPort} ssl;`);
    site = replaceOnce(site, `/etc/letsencrypt/live/${DOMAIN}/fullchain.pem`, cert);
    site = replaceOnce(site, `/etc/letsencrypt/live/${DOMAIN}/privkey.pem`, key);
    // What a distribution's nginx.conf puts around a site file (it is included inside `http`).
    const conf = path.join(dir, 'nginx.conf');
    fs.writeFileSync(
      conf,
      [
        // As root, nginx's workers would run as nobody, who cannot enter this private folder.
        process.getuid?.() === 0 ? `user ${os.userInfo().username};` : '',
        'daemon off;',
        'worker_processes 1;',
        `pid ${dir}/nginx.pid;`,
        'error_log stderr notice;',
        'events { worker_connections 256; }',
        'http {',
        '  access_log off;',
        ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((kind) => `  ${kind}_temp_path ${dir}/${kind}_temp;`),
        site,
        '}',
      ].join('\n'),
    );
    execFileSync('nginx', ['-t', '-p', dir, '-c', conf], { stdio: 'pipe', env: { ...process.env, PATH: SEARCH_PATH } });
    nginx = await runProxy('nginx', ['-p', dir, '-c', conf], /start worker process/);

    const redirect = await request({ base: `http://127.0.0.1:${httpPort}` }, 'GET', '/health');
    assert.equal(redirect.status, 301);
    assert.equal(redirect.headers.location, `https://${DOMAIN}/health`);
    await checkProxy(srv, { base: `https://127.0.0.1:${httpsPort}`, ca: fs.readFileSync(cert) });
  } finally {
    await nginx?.stop();
    await srv.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

const caddyMissing = missing('caddy', ['version']);

test('docs/self-hosting.md: the Caddy configuration passes REST, client addresses and the sync WebSocket', {
  skip: caddyMissing,
  timeout: 60_000,
}, async () => {
  const dir = tempDir('plexichat-caddy-');
  const srv = await startProxiedServer();
  let caddy: Awaited<ReturnType<typeof runProxy>> | undefined;
  try {
    const port = await freePort();
    let site = codeBlock('caddy');
    // Plain HTTP on a free port: certificates are Caddy's business, the rest of the site is as written.
    site = replaceOnce(site, `${DOMAIN} {`, `http://${DOMAIN}:${port} {\n\tbind 127.0.0.1`);
    site = replaceOnce(site, 'reverse_proxy 127.0.0.1:8080', `reverse_proxy 127.0.0.1:${srv.server.port}`);
    const caddyfile = path.join(dir, 'Caddyfile');
    fs.writeFileSync(caddyfile, `{\n\tadmin off\n}\n\n${site}`);
    // Caddy keeps its state under these; a test must not touch the user's own.
    const env = { HOME: dir, XDG_DATA_HOME: dir, XDG_CONFIG_HOME: dir };
    execFileSync('caddy', ['validate', '--config', caddyfile, '--adapter', 'caddyfile'], { stdio: 'pipe', env: { ...process.env, ...env } });
    caddy = await runProxy('caddy', ['run', '--config', caddyfile, '--adapter', 'caddyfile'], /serving initial configuration/, env);
    await checkProxy(srv, { base: `http://127.0.0.1:${port}` });
  } finally {
    await caddy?.stop();
    await srv.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
