/**
 * The shared volume (docs/cluster.md): a cluster's processes never hold `ids.sqlite` or
 * `directory.sqlite` open, nor open them with shared memory, so the folder needs only whole-file
 * locks (a network filesystem). Nodes and a command as processes of their own, a real
 * redis-server; the test process itself takes the files alone, as one more process would.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { Api, registerUser, spawnClusterNode, startServer, tempDir, runCommand, type ServerProcess } from './helpers/server.ts';
import { RedisServer, missingRedis } from './helpers/redis.ts';

const skip = missingRedis();
const LEASE_MS = 3000;
const SHARED_FILES = ['ids.sqlite', 'directory.sqlite'] as const;

/**
 * Opens `file` as a cluster's process does for a moment: EXCLUSIVE locking mode before the first
 * access, waiting a little for another's moment. It cannot succeed while any other process holds
 * the file open (a connection in WAL mode keeps a lock on it for as long as it is open).
 */
function readAlone<T>(file: string, read: (db: Database.Database) => T): T {
  const db = new Database(file, { fileMustExist: true });
  try {
    db.pragma('locking_mode = EXCLUSIVE');
    db.pragma('busy_timeout = 2000');
    return read(db);
  } finally {
    db.close();
  }
}

const reservedUntil = (dataDir: string) =>
  readAlone(path.join(dataDir, 'ids.sqlite'), (db) => (db.prepare('SELECT reserved_until_ms FROM reservation').pluck().get() as number | undefined) ?? 0);
const movedRecord = (dataDir: string) =>
  readAlone(path.join(dataDir, 'directory.sqlite'), (db) => db.prepare("SELECT value FROM meta WHERE key = 'directory_moved_to_redis_at'").pluck().get());
const sharedMemoryFiles = (dataDir: string) => fs.readdirSync(dataDir).filter((name) => name.endsWith('-shm'));

test('three nodes serving hold neither ids.sqlite nor directory.sqlite open and make no -shm file; a new worker id still raises the floor; a command with --redis-url works beside them', {
  skip,
  timeout: 90_000,
}, async () => {
  const redis = await RedisServer.start();
  const dataDir = tempDir('plexichat-shared-volume-');
  const nodes: ServerProcess[] = [];
  try {
    nodes.push(...(await Promise.all(['a', 'b', 'c'].map((nodeId) => spawnClusterNode({ dataDir, redisUrl: redis.url, nodeId, leaseMs: LEASE_MS })))));
    const [a, b] = nodes as [ServerProcess, ServerProcess, ServerProcess];
    const alice = await registerUser(new Api(a.url), 'alice');
    assert.equal((await new Api(b.url).get('/users/@me', { token: alice.token })).status, 200);

    // Read alone while the nodes serve: no node holds either file.
    assert.ok(movedRecord(dataDir) !== undefined, 'the move to Redis is recorded');
    const mark = reservedUntil(dataDir);
    assert.ok(mark > 0, 'the nodes raised the floor for their worker ids');
    assert.deepEqual(sharedMemoryFiles(dataDir), []);

    // A node taking a worker id raises ids.sqlite's floor past its first range.
    nodes.push(await spawnClusterNode({ dataDir, redisUrl: redis.url, nodeId: 'd', leaseMs: LEASE_MS }));
    assert.ok(reservedUntil(dataDir) > mark, 'the fourth node raised the floor');

    // A command given --redis-url reserves its ids (worker 0) there, a moment at a time.
    const created = await runCommand(
      ['admin', 'user', 'create', 'bob', 'bob@example.com', '--password-stdin', '--data-dir', dataDir, '--redis-url', redis.url],
      {
        input: 'bob has a long passphrase\n',
      },
    );
    assert.equal(created.code, 0, created.output);
    const login = await new Api(b.url).post('/auth/login', { json: { login: 'bob', password: 'bob has a long passphrase' } });
    assert.equal(login.status, 200, login.text);

    for (const file of SHARED_FILES) readAlone(path.join(dataDir, file), (db) => db.pragma('user_version', { simple: true }));
    assert.deepEqual(sharedMemoryFiles(dataDir), []);
  } finally {
    for (const node of nodes) await node.kill();
    await redis.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('one node (no Redis) keeps both files open, in WAL mode with shared memory', async () => {
  const server = await startServer();
  try {
    await registerUser(new Api(server.url), 'carol');
    for (const file of SHARED_FILES) assert.ok(fs.existsSync(path.join(server.dataDir, `${file}-shm`)), `${file} is open with shared memory`);
  } finally {
    await server.close();
  }
});
