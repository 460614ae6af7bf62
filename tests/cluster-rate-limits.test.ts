/**
 * Cluster mode's rate limits: with `--redis-url`, every node counts attempts in the same Redis
 * (rate-limiter-flexible's Redis store), so an attacker spreading attempts over the nodes behind a
 * load balancer meets the same budgets as against one node. When Redis cannot be asked, the routes
 * that count attempts answer 503 with Retry-After (never 500, never hanging, never letting an
 * attempt through uncounted), and they work again once Redis is back. Each test runs its own real
 * redis-server and two in-process nodes on it sharing one data folder (without `--redis-url` the
 * other suites cover the memory store).
 */
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { REDIS_BACK, REDIS_LOST } from '../server/cluster/redis.ts';
import type { Config } from '../server/config.ts';
import type { AuthResponse, ErrorBody } from '../shared/index.ts';
import { missingRedis, RedisServer } from './helpers/redis.ts';
import { registerUser, startServer, tempDir, type ApiResponse, type TestServer } from './helpers/server.ts';
import { captureLog, type CapturedLog } from './fixtures/log.ts';

const INVALID_CREDENTIALS = { error: 'Invalid credentials', code: 'invalid_credentials', message: 'Wrong login or password' };
const COUNTS_UNREACHABLE = { error: 'Service unavailable', code: 'service_unavailable', message: 'Attempts cannot be counted right now; retry later' };
/** Longer than any command may wait for Redis (2 s) plus a noisy machine's slack. */
const ANSWER_WITHIN_MS = 6000;

interface Node {
  id: string;
  server: TestServer;
  /** What the node logged. */
  log: CapturedLog;
}

interface Cluster {
  redis: RedisServer;
  dataDir: string;
  a: Node;
  b: Node;
}

/** A fresh Redis, a data folder and two nodes (`a`, `b`) on them, closed when the test ends. */
async function cluster(t: TestContext, overrides: Partial<Config>): Promise<Cluster> {
  const redis = await RedisServer.start();
  t.after(() => redis.close());
  const dataDir = tempDir('plexichat-cluster-rl-');
  t.after(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const node = async (id: string): Promise<Node> => {
    const log = captureLog();
    const server = await startServer({ redisUrl: redis.url, dataDir, nodeId: id, ...overrides }, { logger: log.logger });
    t.after(() => server.close());
    return { id, server, log };
  };
  return { redis, dataDir, a: await node('a'), b: await node('b') };
}

function login(node: Node, login: string, password: string): Promise<ApiResponse<AuthResponse | ErrorBody>> {
  return node.server.api.post<AuthResponse | ErrorBody>('/auth/login', { json: { login, password } });
}

/** The documented 429: its message names the wait its Retry-After gives, with the X-RateLimit-* headers. */
function assertTooMany(res: ApiResponse<unknown>, limit: number, label: string): void {
  assert.equal(res.status, 429, `${label}: ${res.status} ${res.text}`);
  const retryAfter = res.headers.get('retry-after');
  assert.match(retryAfter ?? '', /^[1-9][0-9]*$/, label);
  assert.deepEqual(res.body, { error: 'Too many requests', code: 'too_many_requests', message: `Too many attempts; retry in ${retryAfter} s` }, label);
  assert.equal(res.headers.get('x-ratelimit-limit'), String(limit), label);
  assert.equal(res.headers.get('x-ratelimit-remaining'), '0', label);
  assert.ok(Number(res.headers.get('x-ratelimit-reset')) >= Math.floor(Date.now() / 1000) + Number(retryAfter) - 1, label);
}

/** The documented 503 of a route that counts attempts while Redis cannot be asked. */
function assertCountsUnreachable(res: ApiResponse<unknown>, label: string): void {
  assert.deepEqual({ status: res.status, body: res.body }, { status: 503, body: COUNTS_UNREACHABLE }, label);
  assert.equal(res.headers.get('retry-after'), '5', label);
}

/** How many times the node's own connection to Redis (the one its rate limits use) logged `msg`. */
function connectionLogs(node: Node, msg: string): number {
  return node.log.records.filter((record) => record.msg === msg && record.connection === `plexichat:${node.id}`).length;
}

/** Resolves once the node's own connection has logged `msg` (`count` times in all). */
async function connectionLogged(node: Node, msg: string, count: number): Promise<void> {
  // Checked and subscribed in the same turn: a line logged in between cannot be missed.
  while (connectionLogs(node, msg) < count) await node.log.next(msg);
}

describe('rate limits shared across nodes through Redis', { skip: missingRedis() }, () => {
  test('the per-address budget of login and register is one budget over both nodes', async (t) => {
    const { a, b } = await cluster(t, { authRateLimit: 3 });
    const answers = [await login(a, 'nobody', 'wrong password 1'), await login(b, 'nobody', 'wrong password 2'), await login(a, 'nobody', 'wrong password 3')];
    for (const res of answers) assert.deepEqual({ status: res.status, body: res.body }, { status: 401, body: INVALID_CREDENTIALS });
    // The fourth attempt from this address, at a node that has seen only one of them.
    assertTooMany(await login(b, 'nobody', 'wrong password 4'), 3, 'login at b');
    const register = await b.server.api.post('/auth/register', {
      json: { username: 'newcomer', email: 'newcomer@example.com', password: 'a long passphrase 1' },
    });
    assertTooMany(register, 3, 'register at b');
    assertTooMany(await login(a, 'nobody', 'wrong password 5'), 3, 'login at a');
  });

  test('a budget a service counts (wrong passwords in a row per login name and address) is shared too, and a success at one node clears it on both', async (t) => {
    const { a, b } = await cluster(t, { loginFailureLimit: 2 });
    const owner = await registerUser(a.server.api);
    assert.equal((await login(a, owner.username, 'wrong one')).status, 401);
    assert.equal((await login(a, owner.username, 'wrong two')).status, 401);
    assertTooMany(await login(b, owner.username, 'wrong three'), 2, 'at b');
    // Refused even with the right password, at either node: a refused attempt learns nothing.
    assertTooMany(await login(b, owner.username, owner.password), 2, 'right password at b');
    assertTooMany(await login(a, owner.username, owner.password), 2, 'right password at a');

    const other = await registerUser(a.server.api);
    assert.equal((await login(b, other.username, 'wrong one')).status, 401);
    assert.equal((await login(a, other.username, other.password)).status, 200, 'the right password at a clears the count…');
    assert.equal((await login(b, other.username, 'wrong two')).status, 401);
    assert.equal((await login(b, other.username, 'wrong three')).status, 401, '…which b sees: two more wrong ones are told so');
    assertTooMany(await login(b, other.username, 'wrong four'), 2, 'then refused');
  });

  test("a login relayed to the account's owner is counted once: the address's budget where it arrived, the account's on the owner", async (t) => {
    const { a, b } = await cluster(t, { authRateLimit: 4, loginFailureLimit: 3 });
    // Owned by `a` (it registered the account, one attempt of the address); the logins reach `b`.
    const owner = await registerUser(a.server.api);
    for (const password of ['wrong one', 'wrong two', 'wrong three']) {
      const res = await login(b, owner.username, password);
      assert.deepEqual({ status: res.status, body: res.body }, { status: 401, body: INVALID_CREDENTIALS }, password);
    }
    // Counted twice, the address (4) or the failures (3) would have refused one of those already.
    assertTooMany(await login(b, owner.username, owner.password), 4, 'the address, at b');
  });

  test('Redis frozen or stopped: routes that count attempts answer 503 with Retry-After; Redis back: they work again', { timeout: 60_000 }, async (t) => {
    const { redis, dataDir, a, b } = await cluster(t, { authRateLimit: 100, loginFailureLimit: 10 });
    const owner = await registerUser(a.server.api);
    assert.equal((await login(a, owner.username, owner.password)).status, 200);

    // Frozen: the connection stays open and nothing answers. The attempt is not let through.
    redis.pause();
    const started = Date.now();
    assertCountsUnreachable(await login(a, owner.username, owner.password), 'frozen');
    assert.ok(Date.now() - started < ANSWER_WITHIN_MS, `answered after ${Date.now() - started} ms`);
    redis.resume();
    assert.equal((await login(a, owner.username, owner.password)).status, 200, 'thawed');

    // Stopped: refused at once by both nodes, register too; /health still answers.
    const lost = [connectionLogged(a, REDIS_LOST, 1), connectionLogged(b, REDIS_LOST, 1)];
    await redis.stop();
    await Promise.all(lost);
    assertCountsUnreachable(await login(a, owner.username, owner.password), 'stopped, at a');
    assertCountsUnreachable(await login(b, owner.username, owner.password), 'stopped, at b');
    const register = await b.server.api.post('/auth/register', { json: { username: 'latecomer', email: 'late@example.com', password: 'a long passphrase 2' } });
    assertCountsUnreachable(register, 'register');
    assert.equal((await a.server.api.get('/health')).status, 200);
    // The answer does not say why; the log does, naming the budget.
    const logged = a.log.records.find((record) => record.msg === 'rate-limit counts unreachable in Redis: answered 503');
    assert.equal(logged?.level, 40, 'logged at warn');
    assert.equal(logged?.rule, 'auth-address');
    assert.ok(logged?.err, 'with the cause');

    // A node cannot start without its Redis: one line says why.
    await assert.rejects(startServer({ redisUrl: redis.url, dataDir, nodeId: 'c' }), (error: Error) => {
      assert.equal(error.message, `cannot reach Redis at ${redis.url}: connect ECONNREFUSED 127.0.0.1:${redis.port}`);
      return true;
    });

    const back = [connectionLogged(a, REDIS_BACK, 1), connectionLogged(b, REDIS_BACK, 1)];
    await redis.run();
    // Each node reconnects on its own (at most 2 s between tries), and says so.
    await Promise.all(back);
    assert.equal((await login(a, owner.username, owner.password)).status, 200, 'a, Redis back');
    assert.equal((await login(b, owner.username, owner.password)).status, 200, 'b, Redis back');
    for (const node of [a, b]) {
      // Once each, however many connection attempts failed meanwhile.
      assert.equal(connectionLogs(node, REDIS_LOST), 1, node.id);
      assert.equal(connectionLogs(node, REDIS_BACK), 1, node.id);
    }
  });
});
