import assert from 'node:assert/strict';
import fs from 'node:fs';
import fc from 'fast-check';
import WebSocket from 'ws';
import * as Y from 'yjs';
import { type SyncMessage, readMessage } from '../../shared/sync-codec.ts';
import { CLOSE_CODES } from '../../shared/sync-protocol.ts';
import { ERROR_CATALOGUE, isErrorCode, isSnowflake, type Message, type NotesChannel, type UserSettings } from '../../shared/index.ts';
import { settingValueProblem } from '../../shared/settings-doc.ts';
import { registerUser, startServer, tempDir, type Api, type ApiResponse, type TestServer, type TestUser } from '../helpers/server.ts';
import { frameOf, notesChannelOf } from '../helpers/sync.ts';
import { encodeFrame, frameSpec, updateOf, writeSpec, type FrameSpec } from './arbitraries.ts';

/**
 * The fuzz properties, run briefly with a fixed seed by `npm test` and for as long as asked, with a
 * random seed, by `npm run fuzz`. Each runs against a real server over real sockets and HTTP.
 */
export interface FuzzRun {
  seed: number;
  /** Runs per property; the time limit, if any, may stop it earlier. */
  numRuns: number;
  timeLimitMs?: number;
  /**
   * Cluster mode (docs/cluster.md): the Redis of a two-node cluster on one data folder, for the
   * properties that take it. The hostile client then talks to a node that does not own its user,
   * which relays everything to the owner.
   */
  redisUrl?: string;
}

export const params = (run: FuzzRun): fc.Parameters<unknown> => ({
  seed: run.seed,
  numRuns: run.numRuns,
  endOnFailure: true,
  includeErrorInReport: true,
  ...(run.timeLimitMs === undefined ? {} : { plugins: [fc.interruptAfterTimeLimit(run.timeLimitMs)] }),
});

/** A sync step 1 with an empty state vector: the server answers with its whole document. */
const STEP1 = Uint8Array.of(0, 0, 1, 0);

/** Close codes a hostile frame may earn; anything else (1006, 1011) means the server broke. */
const REFUSALS: readonly number[] = [CLOSE_CODES.MALFORMED_MESSAGE, CLOSE_CODES.MESSAGE_TOO_BIG];

/** A sync socket with acknowledgements, and what happened on it. */
class Probe {
  acked = 0;
  /** Sync step 2 messages received: the answers to our sync step 1s. */
  answers = 0;
  closed: number | null = null;
  private waiters: (() => void)[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.binaryType = 'arraybuffer';
    ws.on('message', (data: ArrayBuffer) => {
      const message = readMessage(new Uint8Array(data));
      if (message.type === 'ack') this.acked = message.count;
      if (message.type === 'sync-step2') this.answers += 1;
      this.wake();
    });
    ws.on('close', (code) => {
      this.closed = code;
      this.wake();
    });
  }

  static async open(url: string): Promise<Probe> {
    const ws = new WebSocket(url.replace(/^http/, 'ws'));
    const probe = new Probe(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade answered ${res.statusCode}`)));
      ws.once('error', reject);
    });
    return probe;
  }

  /** Resolves when `done()` holds, re-checked on every message and on close; fails after 10 s. */
  until(done: () => boolean, what: string): Promise<void> {
    if (done()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer from the server: ${what}`)), 10_000);
      const check = () => {
        if (!done()) return void this.waiters.push(check);
        clearTimeout(timer);
        resolve();
      };
      this.waiters.push(check);
    });
  }

  private wake(): void {
    for (const waiter of this.waiters.splice(0)) waiter();
  }
}

/**
 * Property: whatever frames a signed-in client sends, each one is accepted (and then stored and
 * acknowledged) or its socket is closed with a documented refusal code; the process stays up;
 * another user's document is untouched; and after a restart the document holds every update that
 * was acknowledged.
 */
export async function fuzzSyncFrames(run: FuzzRun): Promise<void> {
  const dataDir = tempDir('plexichat-fuzz-');
  const tuning = { docUnloadDelayMs: 0, compactAfterUpdates: 20, compactDebounceMs: 0, compactMaxWaitMs: 0 };
  const cluster = (nodeId: string) => (run.redisUrl === undefined ? {} : { redisUrl: run.redisUrl, nodeId });
  let srv = await startServer({ dataDir, ...tuning, ...cluster('fuzz-owner') });
  // One node, or (cluster mode) the node the hostile client reaches, relaying to `srv`, which owns
  // the user from their first request on.
  const edge = run.redisUrl === undefined ? srv : await startServer({ dataDir, ...tuning, ...cluster('fuzz-edge') });
  try {
    const user = await registerUser(srv.api);
    const bystander = await registerUser(srv.api);
    assert.equal((await srv.api.patch('/users/@me/settings', { token: bystander.token, json: { kept: [1, 'two', { three: 3 }] } })).status, 200);
    const channel = await notesChannelOf(srv.api, user);
    const docs = { notes: `/sync/${channel}`, settings: '/sync/settings' } as const;
    const acked: Record<keyof typeof docs, Uint8Array[]> = { notes: [], settings: [] };
    const probes: Partial<Record<keyof typeof docs, Probe>> = {};
    const probeFor = async (doc: keyof typeof docs): Promise<Probe> => {
      const current = probes[doc];
      if (current && current.closed === null) return current;
      const fresh = await Probe.open(`${edge.url}${docs[doc]}?token=${user.token}&ack=1`);
      probes[doc] = fresh;
      return fresh;
    };

    await fc.assert(
      fc.asyncProperty(fc.constantFrom('notes' as const, 'settings' as const), frameSpec, async (doc, spec: FrameSpec) => {
        const probe = await probeFor(doc);
        const frame = encodeFrame(spec);
        let local: SyncMessage | null;
        try {
          local = readMessage(frame);
        } catch {
          local = null;
        }
        const carriesUpdate = local !== null && (local.type === 'sync-step2' || local.type === 'sync-update');
        const ackedBefore = probe.acked;
        probe.ws.send(frame);
        if (carriesUpdate) {
          await probe.until(() => probe.acked > ackedBefore || probe.closed !== null, 'ack or close after an update');
          if (probe.closed === null && (local?.type === 'sync-step2' || local?.type === 'sync-update')) acked[doc].push(local.update.slice());
        } else {
          // Anything else is handled (or refused) before a sync step 1 sent after it is answered.
          const answered = probe.answers;
          probe.ws.send(STEP1);
          await probe.until(() => probe.answers > answered || probe.closed !== null, 'round trip');
        }
        if (probe.closed !== null) assert.ok(REFUSALS.includes(probe.closed), `closed with ${probe.closed}`);
      }),
      params(run),
    );
    for (const probe of Object.values(probes)) probe?.ws.close();

    assert.deepEqual((await srv.api.get<UserSettings>('/users/@me/settings', { token: bystander.token })).body, { kept: [1, 'two', { three: 3 }] });
    // Restarted (one node; of the cluster, whose directory is in Redis), the documents hold
    // everything that was acknowledged.
    if (edge !== srv) await edge.close();
    await srv.close();
    srv = await startServer({ dataDir, ...cluster('fuzz-owner') });
    for (const doc of ['notes', 'settings'] as const) {
      const state = await fetchState(srv, user, docs[doc]);
      const replica = new Y.Doc();
      Y.applyUpdate(replica, state);
      const before = Y.encodeStateAsUpdate(replica);
      for (const update of acked[doc]) Y.applyUpdate(replica, update);
      assert.deepEqual(Y.encodeStateAsUpdate(replica), before, `${doc}: an acknowledged update is missing after the restart`);
    }
  } finally {
    if (edge !== srv) await edge.close();
    await srv.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

/** The whole stored state of one of the user's documents, as a fresh client receives it. */
async function fetchState(srv: TestServer, user: TestUser, path: string): Promise<Uint8Array> {
  const probe = await Probe.open(`${srv.url}${path}?token=${user.token}`);
  const state = await new Promise<Uint8Array>((resolve, reject) => {
    probe.ws.on('message', (data: ArrayBuffer) => {
      const message = readMessage(new Uint8Array(data));
      if (message.type === 'sync-step2') resolve(message.update.slice());
    });
    probe.ws.once('close', (code) => reject(new Error(`closed with ${code}`)));
    probe.ws.send(STEP1);
  });
  probe.ws.close();
  return state;
}

/**
 * Property: whatever shapes a client writes into its notes and settings documents (any value Yjs
 * can carry, at any depth, under any key), every REST read and repair of those documents answers a
 * documented status with a well-formed body.
 */
export async function fuzzDocumentShapes(run: FuzzRun): Promise<void> {
  const srv = await startServer({ docUnloadDelayMs: 0 });
  try {
    let user = await registerUser(srv.api);
    let channel = await notesChannelOf(srv.api, user);
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(writeSpec, { minLength: 1, maxLength: 6 }), fc.integer({ min: 1, max: 2 ** 31 }), async (writes, clientId) => {
        runs += 1;
        if (runs % 10 === 0) {
          user = await registerUser(srv.api);
          channel = await notesChannelOf(srv.api, user);
        }
        const update = updateOf(writes, clientId);
        for (const path of [`/sync/${channel}`, '/sync/settings']) {
          const probe = await Probe.open(`${srv.url}${path}?token=${user.token}&ack=1`);
          probe.ws.send(frameOf(0, 1, update));
          await probe.until(() => probe.acked > 0 || probe.closed !== null, 'ack or close');
          if (probe.closed !== null) assert.ok(REFUSALS.includes(probe.closed), `closed with ${probe.closed}`);
          probe.ws.close();
        }
        await checkReads(srv.api, user, channel);
      }),
      params(run),
    );
  } finally {
    await srv.close();
  }
}

async function checkReads(api: Api, user: TestUser, channel: string): Promise<void> {
  const auth = { token: user.token };
  const settings = await api.get<UserSettings>('/users/@me/settings', auth);
  assert.equal(settings.status, 200, settings.text);
  assertSettings(settings.body);
  const patched = await api.patch<UserSettings>('/users/@me/settings', { ...auth, json: { 'fuzz.touched': true } });
  assertDocumented(patched, [200, 400]);
  if (patched.status === 200) assertSettings(patched.body);
  const notes = await api.get<NotesChannel>('/users/@me/notes', auth);
  assert.equal(notes.status, 200, notes.text);
  assert.ok(notes.body.last_message_id === null || isSnowflake(notes.body.last_message_id));
  const list = await api.get<Message[]>(`/channels/${channel}/messages?limit=100`, auth);
  assert.equal(list.status, 200, list.text);
  for (const message of list.body) assertMessage(message, channel);
  const first = list.body[0];
  if (first) {
    const edited = await api.patch<Message>(`/channels/${channel}/messages/${first.id}`, { ...auth, json: { content: 'repaired' } });
    assert.equal(edited.status, 200, edited.text);
    assertMessage(edited.body, channel);
    assert.equal(edited.body.content, 'repaired');
    const removed = await api.delete(`/channels/${channel}/messages/${first.id}`, auth);
    assert.equal(removed.status, 204, removed.text);
  }
}

function assertSettings(body: unknown): void {
  assert.ok(typeof body === 'object' && body !== null && !Array.isArray(body), 'settings are an object');
  for (const [key, value] of Object.entries(body)) assert.equal(settingValueProblem(value), null, `setting ${key} is plain JSON`);
}

function assertMessage(message: Message, channel: string): void {
  assert.ok(isSnowflake(message.id), `id ${message.id}`);
  assert.equal(typeof message.content, 'string');
  assert.ok(Number.isSafeInteger(message.created_at) && message.created_at >= 0, `created_at ${message.created_at}`);
  assert.ok(message.edited_at === null || (Number.isSafeInteger(message.edited_at) && message.edited_at >= 0), `edited_at ${message.edited_at}`);
  assert.equal(message.channel_id, channel);
}

/** A documented status, and for an error the documented body: catalogue code, its status and text. */
function assertDocumented(res: ApiResponse, allowed: number[]): void {
  assert.ok(allowed.includes(res.status), `status ${res.status}: ${res.text.slice(0, 200)}`);
  if (res.status < 400) return;
  const body = res.body as { error?: unknown; code?: unknown; message?: unknown };
  assert.ok(isErrorCode(body.code), `code ${String(body.code)}`);
  assert.equal(ERROR_CATALOGUE[body.code].status, res.status);
  assert.equal(body.error, ERROR_CATALOGUE[body.code].error);
  assert.equal(typeof body.message, 'string');
}

/** One route as the fuzzer calls it: path parameters and body drawn at random. */
interface RouteCase {
  method: string;
  path: (ids: { user: string; other: string; channel: string }, param: string) => string;
  allowed: number[];
}

const ROUTES: RouteCase[] = [
  { method: 'POST', path: () => '/auth/register', allowed: [201, 400, 409] },
  { method: 'POST', path: () => '/auth/login', allowed: [400, 401] },
  { method: 'POST', path: () => '/auth/verify-email', allowed: [400] },
  { method: 'POST', path: () => '/auth/verify-email/resend', allowed: [204, 429] },
  { method: 'POST', path: () => '/auth/password/forgot', allowed: [204, 400, 429] },
  { method: 'POST', path: () => '/auth/password/reset', allowed: [400] },
  { method: 'PATCH', path: () => '/users/@me', allowed: [200, 400, 409] },
  { method: 'PATCH', path: () => '/users/@me/messaging-settings', allowed: [200, 400] },
  { method: 'PATCH', path: () => '/users/@me/settings', allowed: [200, 400] },
  { method: 'PUT', path: (ids, p) => `/users/@me/relationships/${p || ids.other}`, allowed: [200, 400, 403, 404] },
  { method: 'DELETE', path: (ids, p) => `/users/@me/relationships/${p || ids.other}`, allowed: [204, 400, 404] },
  { method: 'POST', path: () => '/users/@me/channels', allowed: [200, 400, 403, 404] },
  { method: 'POST', path: (ids, p) => `/channels/${p || ids.channel}/messages`, allowed: [201, 400, 404] },
  { method: 'PATCH', path: (ids, p) => `/channels/${ids.channel}/messages/${p}`, allowed: [200, 400, 404] },
  { method: 'DELETE', path: (ids, p) => `/channels/${ids.channel}/messages/${p}`, allowed: [204, 404] },
  { method: 'GET', path: (ids, p) => `/channels/${ids.channel}/messages?limit=${p}&before=${p}`, allowed: [200, 400, 404] },
  { method: 'GET', path: (_ids, p) => `/users/search?username=${p}`, allowed: [200, 400, 404] },
  { method: 'GET', path: (_ids, p) => `/users/${p}`, allowed: [200, 400, 404] },
  { method: 'GET', path: (_ids, p) => `/avatars/users/${p}`, allowed: [200, 400, 404] },
  { method: 'POST', path: () => '/users/@me/totp/setup', allowed: [200, 400, 409] },
  { method: 'POST', path: () => '/users/@me/totp/enable', allowed: [200, 400, 409] },
  { method: 'POST', path: () => '/users/@me/totp/disable', allowed: [204, 400] },
  { method: 'POST', path: () => '/users/@me/totp/backup-codes', allowed: [200, 400] },
  { method: 'POST', path: () => '/auth/login/totp', allowed: [400, 401] },
  { method: 'DELETE', path: (_ids, p) => `/auth/sessions/${p}`, allowed: [404] },
  { method: 'POST', path: () => '/auth/sessions/revoke-others', allowed: [204] },
];

/** Bodies: any JSON, or objects with the routes' own field names holding anything. */
const body = fc.oneof(
  fc.jsonValue({ maxDepth: 4 }),
  fc.dictionary(
    fc.constantFrom(
      'username',
      'email',
      'password',
      'current_password',
      'login',
      'token',
      'type',
      'recipient_id',
      'content',
      'allow_dms_from',
      'read_receipts_enabled',
      'theme',
      'code',
      'backup_code',
      'ticket',
      '__proto__',
    ),
    fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.string(), fc.constantFrom('friend', 'block', 'friends', 'none', 'everyone', 'pw-correct-horse')),
    { maxKeys: 4 },
  ),
);

const pathParam = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.bigInt({ min: 0n, max: 1n << 64n }).map(String),
  fc.constantFrom('', '@me', '..', '%00', '%E0%A4%A', '0', '01'),
);

/**
 * Property: any JSON body (and any path parameter) on every route answers a documented status
 * with the documented error body, never a 500, and the server keeps serving.
 */
export async function fuzzJsonBodies(run: FuzzRun): Promise<void> {
  // Without the 2FA budgets, which would answer 429 to nearly every fuzzed call of those routes.
  const settings = { totpAccountRateLimit: 0, totpAddressRateLimit: 0 };
  const dataDir = tempDir('plexichat-fuzz-');
  const cluster = (nodeId: string) => (run.redisUrl === undefined ? {} : { redisUrl: run.redisUrl, nodeId });
  const srv = await startServer({ dataDir, ...settings, ...cluster('fuzz-owner') });
  // One node, or (cluster mode) a node that relays every signed-in call to `srv`, which owns the user.
  const edge = run.redisUrl === undefined ? srv : await startServer({ dataDir, ...settings, ...cluster('fuzz-edge') });
  try {
    const user = await registerUser(srv.api);
    const other = await registerUser(srv.api);
    const channel = await notesChannelOf(srv.api, user);
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...ROUTES), body, pathParam, async (route, json, param) => {
        const path = route.path({ user: user.id, other: other.id, channel }, encodeURIComponent(param));
        const res = await edge.api.request(route.method, path, { token: user.token, ...(route.method === 'GET' || route.method === 'DELETE' ? {} : { json }) });
        // A parameter such as `..` can make the URL another route's (or none): 404 and 405 are documented too.
        assertDocumented(res, [...route.allowed, 404, 405]);
      }),
      params(run),
    );
    assert.equal((await edge.api.get('/users/@me', { token: user.token })).status, 200, 'still serving, still signed in');
  } finally {
    if (edge !== srv) await edge.close();
    await srv.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}
