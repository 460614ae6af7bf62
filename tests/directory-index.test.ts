import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { startServer, registerUser, tempDir, type TestServer, type TestUser } from './helpers/server.ts';
import { captureLog } from './fixtures/log.ts';
import { compareSnowflakes, type AuthResponse, type PrivateUser, type PublicUser, type Relationship } from '../shared/index.ts';
import { openStorage } from '../server/storage/index.ts';
import { rebuildDirectoryIndex } from '../server/users/directory-index.ts';
import { avatarHashOf } from '../server/avatars/card.ts';
import { allowDmsFromOf } from '../server/settings/messaging-service.ts';

const REBUILT = "rebuilt the directory's users index from the user files (it was empty)";

function login(srv: TestServer, login: string, password: string) {
  return srv.api.post<AuthResponse>('/auth/login', { json: { login, password } });
}

function removeDirectory(dataDir: string): void {
  for (const suffix of ['', '-wal', '-shm']) fs.rmSync(path.join(dataDir, `directory.sqlite${suffix}`), { force: true });
}

/** Runs `fn` on the data folder's directory with a plain SQLite connection (the server stopped). */
function withDirectory<T>(dataDir: string, fn: (db: Database.Database) => T): T {
  const db = new Database(path.join(dataDir, 'directory.sqlite'));
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

test('a lost directory: the next start derives the users index again from the user files', async () => {
  const dataDir = tempDir();
  try {
    let srv = await startServer({ dataDir });
    let alice: TestUser;
    let bob: TestUser;
    try {
      alice = await registerUser(srv.api);
      bob = await registerUser(srv.api);
      assert.equal((await srv.api.patch('/users/@me', { token: alice.token, json: { username: 'Alice.Renamed' } })).status, 200);
      const bobChange = await srv.api.patch('/users/@me', {
        token: bob.token,
        json: { email: 'Bob.New@example.org', password: 'bob has a new passphrase', current_password: bob.password },
      });
      assert.equal(bobChange.status, 200);
    } finally {
      await srv.close();
    }
    removeDirectory(dataDir);

    const log = captureLog();
    srv = await startServer({ dataDir }, { logger: log.logger });
    try {
      const rebuilt = log.records.find((record) => record.msg === REBUILT);
      assert.equal(rebuilt?.indexed, 2);
      const aliceAgain = await login(srv, 'alice.renamed', alice.password);
      assert.equal(aliceAgain.status, 200, 'the renamed user signs in by the name in their file');
      assert.equal(aliceAgain.body.user.id, alice.id);
      assert.equal((await login(srv, alice.username, alice.password)).status, 401, 'the old name is no one');
      assert.equal((await login(srv, 'BOB.NEW@example.org', 'bob has a new passphrase')).status, 200, 'the changed email and password hold');
      assert.equal((await login(srv, bob.username, bob.password)).status, 401, 'the old password is gone');
      const viewer = aliceAgain.body.token;
      const found = await srv.api.get<PublicUser>(`/users/search?username=${bob.username}`, { token: viewer });
      assert.equal(found.body.id, bob.id);
      assert.equal((await srv.api.get<PublicUser>(`/users/${bob.id}`, { token: viewer })).status, 200);
      // Sessions lived only in the directory: they went with it.
      assert.equal((await srv.api.get('/users/@me', { token: alice.token })).status, 401);
      // Names are unique again, and ids go on from where they were (ids.sqlite was not lost).
      const taken = await srv.api.post('/auth/register', { json: { username: 'someone-new', email: 'bob.new@EXAMPLE.org', password: 'a fine passphrase' } });
      assert.equal(taken.status, 409);
      const carol = await registerUser(srv.api);
      assert.ok(compareSnowflakes(carol.id, bob.id) > 0 && compareSnowflakes(carol.id, alice.id) > 0, 'a new id follows the old ones');
    } finally {
      await srv.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('rebuildDirectoryIndex derives a damaged index again; the sessions and relationships of accounts that stay are kept', async () => {
  const dataDir = tempDir();
  try {
    let srv = await startServer({ dataDir });
    const users: TestUser[] = [];
    try {
      for (let i = 0; i < 4; i += 1) users.push(await registerUser(srv.api));
      const request = await srv.api.request('PUT', `/users/@me/relationships/${users[1]!.id}`, { token: users[0]!.token, json: { type: 'friend' } });
      assert.equal(request.status, 200);
    } finally {
      await srv.close();
    }
    const [u0, u1, u2, u3] = users as [TestUser, TestUser, TestUser, TestUser];
    withDirectory(dataDir, (db) => {
      // Swapped names, a wrong email, a row that is missing, a row with no user file, a stale mark.
      db.prepare("UPDATE users SET username_lower = 'swap' WHERE id = ?").run(u0.id);
      db.prepare('UPDATE users SET username_lower = ? WHERE id = ?').run(u0.username.toLowerCase(), u1.id);
      db.prepare('UPDATE users SET username_lower = ? WHERE id = ?').run(u1.username.toLowerCase(), u0.id);
      db.prepare("UPDATE users SET email_lower = 'wrong@example.com' WHERE id = ?").run(u2.id);
      db.prepare('DELETE FROM users WHERE id = ?').run(u3.id);
      db.prepare("INSERT INTO users (id, username, username_lower, email_lower, created_at) VALUES ('999', 'ghost', 'ghost', 'ghost@example.com', 0)").run();
      db.prepare('INSERT INTO users_index_pending (user_id) VALUES (?)').run(u0.id);
    });

    const storage = openStorage({ dataDir, maxOpenUserFiles: 2, workerId: 0 });
    try {
      const report = await rebuildDirectoryIndex(storage, { avatarHashOf, allowDmsFromOf });
      assert.deepEqual(report, { indexed: 4, removed: ['999'], leftOut: [] });
    } finally {
      storage.close();
    }

    srv = await startServer({ dataDir });
    try {
      for (const user of users) {
        const byName = await login(srv, user.username, user.password);
        assert.equal(byName.body.user?.id, user.id, `${user.username} signs in by name`);
        assert.equal((await login(srv, user.email, user.password)).body.user?.id, user.id, `${user.username} signs in by email`);
      }
      assert.equal((await srv.api.get('/users/@me', { token: u0.token })).status, 200, 'a session of an account that stayed');
      const relationships = await srv.api.get<Relationship[]>('/users/@me/relationships', { token: u0.token });
      assert.deepEqual(
        relationships.body.map((r) => [r.id, r.type]),
        [[u1.id, 'outgoing_request']],
      );
      assert.equal((await srv.api.get('/users/999', { token: u0.token })).status, 404, 'the row without a file is gone');
      assert.equal((await srv.api.get('/users/search?username=ghost', { token: u0.token })).status, 404);
      assert.deepEqual(
        withDirectory(dataDir, (db) => db.prepare('SELECT user_id FROM users_index_pending').all()),
        [],
      );
    } finally {
      await srv.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('two user files claiming one username: the newer account keeps it, the other file is left out and reported', async () => {
  const dataDir = tempDir();
  try {
    let srv = await startServer({ dataDir });
    let keeper: TestUser;
    try {
      keeper = await registerUser(srv.api, 'Keeper');
    } finally {
      await srv.close();
    }
    // What a crash in the middle of a registration leaves: a file nobody indexed, here an older
    // one with the same username (the user then registered again, and that completed).
    const orphanId = (BigInt(keeper.id) - 1n).toString();
    fs.copyFileSync(path.join(dataDir, 'users', `${keeper.id}.sqlite`), path.join(dataDir, 'users', `${orphanId}.sqlite`));
    const orphan = new Database(path.join(dataDir, 'users', `${orphanId}.sqlite`));
    orphan.prepare("UPDATE profile SET id = ?, email = 'orphan@example.com'").run(orphanId);
    orphan.close();
    removeDirectory(dataDir);

    const log = captureLog();
    srv = await startServer({ dataDir }, { logger: log.logger });
    try {
      assert.equal(log.records.find((record) => record.msg === REBUILT)?.indexed, 1);
      const leftOut = log.records.filter((record) => record.level === 50);
      assert.deepEqual(
        leftOut.map((record) => [record.id, record.field, record.heldBy]),
        [[orphanId, 'username', keeper.id]],
      );
      const signedIn = await login(srv, 'keeper', keeper.password);
      assert.equal(signedIn.body.user?.id, keeper.id);
      assert.equal((await login(srv, 'orphan@example.com', keeper.password)).status, 401, 'the file left out is no account');
      assert.ok(fs.existsSync(path.join(dataDir, 'users', `${orphanId}.sqlite`)), 'and is left on disk for an operator');
    } finally {
      await srv.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('a change that stopped between its directory and user-file writes is derived again at the next start', async () => {
  const dataDir = tempDir();
  try {
    let srv = await startServer({ dataDir });
    let user: TestUser;
    try {
      user = await registerUser(srv.api);
    } finally {
      await srv.close();
    }
    // The server stopped right after the directory claimed a new name, before the profile had it.
    withDirectory(dataDir, (db) => {
      db.prepare("UPDATE users SET username = 'Never.Stored', username_lower = 'never.stored' WHERE id = ?").run(user.id);
      db.prepare('INSERT INTO users_index_pending (user_id) VALUES (?)').run(user.id);
    });

    srv = await startServer({ dataDir });
    try {
      assert.equal((await srv.api.get('/users/search?username=never.stored', { token: user.token })).status, 404);
      const found = await srv.api.get<PublicUser>(`/users/search?username=${user.username}`, { token: user.token });
      assert.equal(found.body.id, user.id);
      assert.equal((await srv.api.get<PrivateUser>('/users/@me', { token: user.token })).body.username, user.username);
      assert.deepEqual(
        withDirectory(dataDir, (db) => db.prepare('SELECT user_id FROM users_index_pending').all()),
        [],
      );
    } finally {
      await srv.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('a user file that cannot be read stops the rebuild, and the start, changing nothing', async () => {
  const dataDir = tempDir();
  try {
    let srv = await startServer({ dataDir });
    let user: TestUser;
    try {
      user = await registerUser(srv.api);
    } finally {
      await srv.close();
    }
    removeDirectory(dataDir);
    const broken = path.join(dataDir, 'users', '42.sqlite');
    fs.writeFileSync(broken, 'this is not a database, and it is longer than a header would be'.repeat(100));
    await assert.rejects(startServer({ dataDir }), /cannot read the user file .*42\.sqlite: file is not a database/);
    assert.equal(
      withDirectory(dataDir, (db) => (db.prepare('SELECT count(*) AS n FROM users').get() as { n: number }).n),
      0,
    );

    fs.rmSync(broken);
    srv = await startServer({ dataDir });
    try {
      assert.equal((await login(srv, user.username, user.password)).status, 200);
    } finally {
      await srv.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
