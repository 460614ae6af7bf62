import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { startServer, registerUser, tempDir, type TestServer } from './helpers/server.ts';
import { closeEvent, rawSocket } from './helpers/sync.ts';
import { mountTmpfs, type Tmpfs } from './fixtures/tmpfs.ts';
import { CLOSE_CODES, type AuthResponse, type ErrorBody, type PrivateUser, type PublicUser } from '../shared/index.ts';
import { DIRECTORY_MIGRATIONS } from '../server/storage/schema.ts';
import { openDatabase } from '../server/storage/sqlite.ts';
import { UserFiles } from '../server/storage/user-files.ts';
import { PasswordHasher } from '../server/users/passwords.ts';
import { hashSessionToken, newSessionToken } from '../server/auth/tokens.ts';

let srv: TestServer;
before(async () => {
  srv = await startServer();
});
after(() => srv.close());

const MiB = 1024 * 1024;
const STORAGE_FAILING = "the server's storage is failing right now (disk full, I/O error or no file handle left); try again later";
const NOT_SAVED = { error: 'Service unavailable', code: 'service_unavailable', message: `The change was not saved: ${STORAGE_FAILING}` };

/** `promise`, or a failure once `ms` have passed: a test whose event never comes fails instead of hanging. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

function login(api: TestServer['api'], login: string, password: string) {
  return api.post<AuthResponse>('/auth/login', { json: { login, password } });
}

test('the directory holds no credentials: the password hash lives only in the user file', async () => {
  const user = await registerUser(srv.api);
  const changed = await srv.api.patch('/users/@me', { token: user.token, json: { password: 'a second passphrase', current_password: user.password } });
  assert.equal(changed.status, 200);
  const directory = new Database(path.join(srv.dataDir, 'directory.sqlite'), { readonly: true });
  try {
    const columns = (directory.prepare("SELECT name FROM pragma_table_info('users')").all() as { name: string }[]).map((c) => c.name);
    assert.ok(!columns.includes('password_hash'), `users index columns: ${columns.join(', ')}`);
    for (const { name } of directory.prepare("SELECT name FROM sqlite_schema WHERE type = 'table'").all() as { name: string }[]) {
      const dump = JSON.stringify(directory.prepare(`SELECT * FROM "${name}"`).all());
      assert.ok(!dump.includes('$argon2'), `table ${name} holds a password hash`);
    }
  } finally {
    directory.close();
  }
  const file = new Database(path.join(srv.dataDir, 'users', `${user.id}.sqlite`), { readonly: true });
  try {
    const { password_hash } = file.prepare('SELECT password_hash FROM profile').get() as { password_hash: string };
    assert.match(password_hash, /^\$argon2id\$/);
  } finally {
    file.close();
  }
});

test("a password change closes the other sessions' sync sockets with 4401; the changing session's stays", async () => {
  const user = await registerUser(srv.api);
  const other = await login(srv.api, user.username, user.password);
  const { ws: ended } = await rawSocket(`${srv.url}/sync/settings?token=${other.body.token}`);
  const { ws: kept } = await rawSocket(`${srv.url}/sync/settings?token=${user.token}`);
  const closed = closeEvent(ended);
  const change = await srv.api.patch('/users/@me', { token: user.token, json: { password: 'a second passphrase', current_password: user.password } });
  assert.equal(change.status, 200);
  assert.equal((await within(closed, 10_000, "the other session's socket closing")).code, CLOSE_CODES.SESSION_REVOKED);
  assert.equal(kept.readyState, kept.OPEN);
  kept.close();
});

/**
 * A server whose directory is on an ordinary disk and whose user files are on a tmpfs we can fill:
 * a change's directory write succeeds and its user-file write fails, the case the write order is for.
 */
async function serverWithUserFilesOnTmpfs(t: { skip(message: string): void }): Promise<{ srv: TestServer; mount: Tmpfs; done(): Promise<void> } | null> {
  const mount = mountTmpfs({ sizeBytes: 8 * MiB, inodes: 2000 });
  if ('skip' in mount) {
    t.skip(mount.skip);
    return null;
  }
  const dataDir = tempDir();
  fs.mkdirSync(path.join(mount.dir, 'users'));
  fs.symlinkSync(path.join(mount.dir, 'users'), path.join(dataDir, 'users'));
  const own = await startServer({ dataDir });
  return {
    srv: own,
    mount,
    async done() {
      await own.close();
      mount.unmount();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

test('a password change whose new hash cannot be stored: 503, the other sessions are over, the old password still works', { timeout: 30_000 }, async (t) => {
  const setup = await serverWithUserFilesOnTmpfs(t);
  if (setup === null) return;
  const { srv: own, mount } = setup;
  try {
    const user = await registerUser(own.api);
    const other = await login(own.api, user.username, user.password);
    const { ws } = await rawSocket(`${own.url}/sync/settings?token=${other.body.token}`);
    const closed = closeEvent(ws);

    const freeSpace = mount.fillSpace();
    const change = await own.api.patch<ErrorBody>('/users/@me', {
      token: user.token,
      json: { password: 'a brand new passphrase', current_password: user.password },
    });
    assert.deepEqual({ status: change.status, body: change.body }, { status: 503, body: NOT_SAVED });
    assert.equal(change.headers.get('retry-after'), '5');
    // The sessions ended first (directory), and stay ended although the hash was not stored.
    assert.equal((await own.api.get('/users/@me', { token: other.body.token })).status, 401, 'the other session is over');
    assert.equal((await within(closed, 10_000, 'its socket closing')).code, CLOSE_CODES.SESSION_REVOKED);
    assert.equal((await own.api.get('/users/@me', { token: user.token })).status, 200, 'the session that asked stays');
    assert.equal((await login(own.api, user.username, 'a brand new passphrase')).status, 401, 'the new password was not stored');
    const again = await login(own.api, user.username, user.password);
    assert.equal(again.status, 200, 'the old password still works: nobody is locked out');

    freeSpace();
    const retried = await own.api.patch('/users/@me', {
      token: user.token,
      json: { password: 'a brand new passphrase', current_password: user.password },
    });
    assert.equal(retried.status, 200, retried.text);
    assert.equal((await own.api.get('/users/@me', { token: again.body.token })).status, 401, 'a session from before the change ends with it');
    assert.equal((await login(own.api, user.username, user.password)).status, 401);
    assert.equal((await login(own.api, user.username, 'a brand new passphrase')).status, 200);
  } finally {
    await setup.done();
  }
});

test('a username change whose profile cannot be stored: 503, and the index says what the user file says', { timeout: 30_000 }, async (t) => {
  const setup = await serverWithUserFilesOnTmpfs(t);
  if (setup === null) return;
  const { srv: own, mount } = setup;
  try {
    const user = await registerUser(own.api);
    const viewer = await registerUser(own.api);
    const freeSpace = mount.fillSpace();
    const change = await own.api.patch<ErrorBody>('/users/@me', { token: user.token, json: { username: 'Renamed.Nowhere', email: 'renamed@example.org' } });
    assert.deepEqual({ status: change.status, body: change.body }, { status: 503, body: NOT_SAVED });

    const me = await own.api.get<PrivateUser>('/users/@me', { token: user.token });
    assert.equal(me.body.username, user.username);
    assert.equal(me.body.email, user.email);
    const byNewName = await own.api.get('/users/search?username=renamed.nowhere', { token: viewer.token });
    assert.equal(byNewName.status, 404, 'the index gave the new name back');
    const byOldName = await own.api.get<PublicUser>(`/users/search?username=${user.username}`, { token: viewer.token });
    assert.equal(byOldName.body.id, user.id, 'and holds the old one again');
    assert.equal((await login(own.api, user.email, user.password)).status, 200, 'the old email still signs in');
    assert.equal((await login(own.api, 'renamed@example.org', user.password)).status, 401);
    const directory = new Database(path.join(own.dataDir, 'directory.sqlite'), { readonly: true });
    try {
      assert.deepEqual(directory.prepare('SELECT user_id FROM users_index_pending').all(), [], 'nothing left pending');
    } finally {
      directory.close();
    }

    freeSpace();
    const retried = await own.api.patch<PrivateUser>('/users/@me', { token: user.token, json: { username: 'Renamed.Nowhere' } });
    assert.equal(retried.status, 200, retried.text);
    const found = await own.api.get<PublicUser>('/users/search?username=RENAMED.nowhere', { token: viewer.token });
    assert.equal(found.body.id, user.id);
    assert.equal((await own.api.get(`/users/search?username=${user.username}`, { token: viewer.token })).status, 404);
  } finally {
    await setup.done();
  }
});

test('a data folder of the previous schema keeps working: the hash copy leaves the directory, sessions and passwords stay', async () => {
  const dataDir = tempDir();
  try {
    // What the previous server wrote: the directory at schema 2 (with its password_hash column),
    // and a user file with the same hash in its profile.
    const password = 'an old passphrase';
    const passwordHash = await new PasswordHasher().hash(password);
    const id = '123456789012345678';
    const token = newSessionToken();
    const old = openDatabase(path.join(dataDir, 'directory.sqlite'), { migrations: DIRECTORY_MIGRATIONS.slice(0, 2) });
    old
      .prepare('INSERT INTO users (id, username, username_lower, email_lower, password_hash, created_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(id, 'OldTimer', 'oldtimer', 'old@example.com', passwordHash, 1_700_000_000);
    // Used yesterday: sessions expire after 30 idle days now, and this one is meant to survive.
    const yesterday = Math.floor(Date.now() / 1000) - 86_400;
    old
      .prepare('INSERT INTO sessions (id, token_hash, user_id, created_at, last_used_at, user_agent) VALUES (?, ?, ?, ?, ?, NULL)')
      .run('123456789012345679', hashSessionToken(token), id, yesterday, yesterday);
    old.close();
    const files = new UserFiles(dataDir, 2);
    files.create(id, (file) =>
      file
        .stmt('INSERT INTO profile (id, username, email, password_hash, created_at) VALUES (?, ?, ?, ?, ?)')
        .run(id, 'OldTimer', 'old@example.com', passwordHash, 1_700_000_000),
    );
    files.closeAll();

    const upgraded = await startServer({ dataDir });
    try {
      const me = await upgraded.api.get<PrivateUser>('/users/@me', { token });
      assert.equal(me.status, 200, 'the session survives the upgrade');
      assert.equal(me.body.username, 'OldTimer');
      assert.equal((await login(upgraded.api, 'oldtimer', password)).status, 200);
      assert.equal((await login(upgraded.api, 'OLD@example.com', 'not the passphrase')).status, 401);
      const change = await upgraded.api.patch('/users/@me', { token, json: { password: 'a new passphrase', current_password: password } });
      assert.equal(change.status, 200);
      assert.equal((await login(upgraded.api, 'oldtimer', 'a new passphrase')).status, 200);
    } finally {
      await upgraded.close();
    }
    const directory = new Database(path.join(dataDir, 'directory.sqlite'), { readonly: true });
    try {
      assert.equal(directory.pragma('user_version', { simple: true }), DIRECTORY_MIGRATIONS.length);
      const columns = (directory.prepare("SELECT name FROM pragma_table_info('users')").all() as { name: string }[]).map((c) => c.name);
      assert.ok(!columns.includes('password_hash'));
    } finally {
      directory.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
