import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { registerUser, runCommand, startServer, tempDir, type TestServer, type TestUser } from './helpers/server.ts';
import { closeEvent, notesChannelOf, rawSocket } from './helpers/sync.ts';
import { captureLog } from './fixtures/log.ts';
import { CLOSE_CODES, type AuthResponse, type ErrorBody, type Message, type PrivateUser, type PublicUser, type UserFeatures } from '../shared/index.ts';
import { AccountsAdmin } from '../server/admin/accounts.ts';
import { makeConfig } from '../server/config.ts';
import { openStorage, UserFileDeletedError } from '../server/storage/index.ts';
import { watchExternalChanges } from '../server/storage/coordination.ts';

/**
 * The admin commands as self-hosters run them: real processes (`node --import tsx server/main.ts
 * admin …`) against the data folder of a running server, each change seen by the server's very next
 * answer (the command tells the server before it exits: storage/coordination.ts).
 */

const UNAUTHORIZED = { error: 'Unauthorized', code: 'unauthorized', message: 'A valid bearer token is required' };

function admin(srv: TestServer, ...args: string[]) {
  return runCommand(['admin', ...args, '--data-dir', srv.dataDir]);
}

async function me(srv: TestServer, user: TestUser): Promise<PrivateUser> {
  const res = await srv.api.get<PrivateUser>('/users/@me', { token: user.token });
  assert.equal(res.status, 200, res.text);
  return res.body;
}

function login(srv: TestServer, user: TestUser, password = user.password) {
  return srv.api.post<AuthResponse>('/auth/login', { json: { login: user.username, password } });
}

test('badges, tier and verification set by the CLI show in the next answer of the running server', async () => {
  const srv = await startServer();
  try {
    const alice = await registerUser(srv.api);
    const bob = await registerUser(srv.api);
    // Read once first: the server now keeps alice's profile in memory (a memo), which the command must invalidate.
    assert.deepEqual((await me(srv, alice)).badges, []);

    const added = await admin(srv, 'badge', 'add', alice.username, 'early_supporter');
    assert.equal(added.code, 0, added.output);
    assert.equal(added.stdout, `${alice.username} (id ${alice.id}): added the badge early_supporter\n`);
    assert.deepEqual((await me(srv, alice)).badges, ['early_supporter'], 'the very next GET /users/@me');
    const seen = await srv.api.get<PublicUser>(`/users/${alice.id}`, { token: bob.token });
    assert.deepEqual(seen.body.badges, ['early_supporter'], 'in the public object too');

    // Three commands at once on one file: SQLite's locks put them one after the other.
    const results = await Promise.all([
      admin(srv, 'tier', 'set', alice.email, 'pro'),
      admin(srv, 'verify-email', alice.id),
      admin(srv, 'age-verify', alice.username),
    ]);
    for (const result of results) assert.equal(result.code, 0, result.output);
    const after = await me(srv, alice);
    assert.equal(after.email_verified, true);
    assert.equal(after.age_verified, true);
    const features = await srv.api.get<UserFeatures>('/users/@me/features', { token: alice.token });
    assert.deepEqual(features.body, { badges: ['early_supporter'], tier: 'pro', flags: {} });

    const again = await admin(srv, 'badge', 'add', alice.username, 'early_supporter');
    assert.equal(again.code, 0);
    assert.match(again.stdout, /already has the badge early_supporter/);
    const [removed, revoked] = await Promise.all([admin(srv, 'badge', 'remove', alice.id, 'early_supporter'), admin(srv, 'age-verify', alice.id, '--revoke')]);
    assert.equal(removed.code, 0, removed.output);
    assert.equal(revoked.code, 0, revoked.output);
    const last = await me(srv, alice);
    assert.deepEqual([last.badges, last.age_verified], [[], false]);

    const listed = await admin(srv, 'user', 'list', '--json');
    assert.equal(listed.code, 0, listed.output);
    const accounts = JSON.parse(listed.stdout) as { id: string; tier: string; email_verified: boolean }[];
    assert.deepEqual(
      accounts.map((account) => account.id),
      [alice.id, bob.id],
    );
    assert.deepEqual([accounts[0]?.tier, accounts[0]?.email_verified], ['pro', true]);
  } finally {
    await srv.close();
  }
});

test('admin errors are one line on stderr and exit code 1; nothing changes', async () => {
  const srv = await startServer();
  const empty = tempDir();
  try {
    const alice = await registerUser(srv.api);
    const cases: [string[], RegExp][] = [
      [['admin', 'badge', 'add', 'nobody', 'vip', '--data-dir', srv.dataDir], /^plexichat: No account with the id, username or email "nobody"$/],
      [['admin', 'badge', 'add', alice.username, 'Not A Badge', '--data-dir', srv.dataDir], /^plexichat: Invalid badge "Not A Badge": Must be 1-32 characters/],
      [['admin', 'tier', 'set', alice.username, '--data-dir', srv.dataDir], /^plexichat: missing required argument 'tier'$/],
      [['admin', 'user', 'delete', alice.username, '--data-dir', srv.dataDir], /^plexichat: this deletes the account .* add --yes$/],
      [['admin', 'user', 'list', '--data-dir', path.join(empty, 'nothing')], /^plexichat: no Plexichat data folder at .*: check --data-dir$/],
      [
        ['admin', 'user', 'create', 'x_user', 'x@example.com', '--data-dir', srv.dataDir],
        /^plexichat: no terminal to type the password at: give it on standard input with --password-stdin$/,
      ],
    ];
    const results = await Promise.all(cases.map(([args]) => runCommand(args)));
    for (const [index, result] of results.entries()) {
      const [args, pattern] = cases[index]!;
      assert.equal(result.code, 1, `${args.join(' ')}\n${result.output}`);
      assert.equal(result.stdout, '', args.join(' '));
      assert.equal(result.stderr.split('\n').length, 2, `one line: ${result.stderr}`);
      assert.match(result.stderr.trimEnd(), pattern);
    }
    const unchanged = await me(srv, alice);
    assert.deepEqual(unchanged.badges, []);
    assert.equal(fs.existsSync(path.join(empty, 'nothing')), false, 'a mistyped --data-dir is not created');
  } finally {
    await srv.close();
    fs.rmSync(empty, { recursive: true, force: true });
  }
});

test('user create: the running server signs the account in; a taken name or a weak password is refused', async () => {
  const srv = await startServer();
  try {
    const [created, weak] = await Promise.all([
      runCommand(['admin', 'user', 'create', 'dave', 'dave@example.com', '--password-stdin', '--data-dir', srv.dataDir], {
        input: 'dave has a long passphrase\n',
      }),
      runCommand(['admin', 'user', 'create', 'erin', 'erin@example.com', '--password-stdin', '--data-dir', srv.dataDir], { input: 'short\n' }),
    ]);
    assert.equal(created.code, 0, created.output);
    const id = /^created dave \(id ([0-9]+)\)$/m.exec(created.stdout)?.[1];
    assert.ok(id, created.stdout);
    const signedIn = await srv.api.post<AuthResponse>('/auth/login', { json: { login: 'DAVE', password: 'dave has a long passphrase' } });
    assert.equal(signedIn.status, 200, signedIn.text);
    assert.equal(signedIn.body.user.id, id);
    assert.deepEqual([weak.code, weak.stderr], [1, 'plexichat: Password must be at least 8 characters\n']);

    const taken = await runCommand(['admin', 'user', 'create', 'Dave', 'other@example.com', '--password-stdin', '--data-dir', srv.dataDir], {
      input: 'another long passphrase',
    });
    assert.deepEqual([taken.code, taken.stderr], [1, 'plexichat: That username is already taken\n']);
    assert.equal((await srv.api.post('/auth/login', { json: { login: 'erin@example.com', password: 'short' } })).status, 401);
  } finally {
    await srv.close();
  }
});

test('reset-password: every session is refused at once and its sync socket closed with 4401; only the new password works', async () => {
  const srv = await startServer();
  try {
    const alice = await registerUser(srv.api);
    const phone = (await login(srv, alice)).body.token;
    const { ws, status } = await rawSocket(`${srv.url}/sync/settings?token=${phone}`);
    assert.equal(status, 101);
    const closed = closeEvent(ws);
    assert.equal((await me(srv, alice)).id, alice.id, 'the session is cached as valid');

    const reset = await runCommand(['admin', 'user', 'reset-password', alice.email, '--password-stdin', '--data-dir', srv.dataDir], {
      input: 'a brand new passphrase\n',
    });
    assert.equal(reset.code, 0, reset.output);
    assert.deepEqual(await closed, { code: CLOSE_CODES.SESSION_REVOKED, reason: 'Session revoked' });
    for (const token of [alice.token, phone]) {
      const res = await srv.api.get<ErrorBody>('/users/@me', { token });
      assert.deepEqual({ status: res.status, body: res.body }, { status: 401, body: UNAUTHORIZED });
    }
    assert.equal((await login(srv, alice)).status, 401, 'the old password');
    assert.equal((await login(srv, alice, 'a brand new passphrase')).status, 200, 'the new one');
  } finally {
    await srv.close();
  }
});

test('user delete while the server has the account loaded: sockets closed 4401, sessions refused, the file gone and never written again', async () => {
  const log = captureLog();
  const srv = await startServer({}, { logger: log.logger });
  try {
    const carol = await registerUser(srv.api);
    const bob = await registerUser(srv.api);
    const channel = await notesChannelOf(srv.api, carol);
    assert.equal((await srv.api.post<Message>(`/channels/${channel}/messages`, { token: carol.token, json: { content: 'mine' } })).status, 201);
    assert.equal((await srv.api.request('PUT', `/users/@me/relationships/${carol.id}`, { token: bob.token, json: { type: 'friend' } })).status, 200);
    assert.equal((await srv.api.post('/users/@me/channels', { token: bob.token, json: { recipient_id: carol.id } })).status, 200);
    // A device keeps carol's notes document loaded and her file pinned.
    const { ws, status } = await rawSocket(`${srv.url}/sync/${channel}?token=${carol.token}`);
    assert.equal(status, 101);
    const closed = closeEvent(ws);
    const loaded = srv.server.stats().loadedDocs;

    const deleted = await runCommand(['admin', 'user', 'delete', carol.username, '--yes', '--data-dir', srv.dataDir]);
    assert.equal(deleted.code, 0, deleted.output);
    assert.equal(deleted.stdout, `deleted ${carol.username} (id ${carol.id})\n`);
    assert.equal((await closed).code, CLOSE_CODES.SESSION_REVOKED);
    assert.ok(log.records.some((record) => record.msg?.startsWith('an account was deleted by another process') && record.userId === carol.id));
    assert.equal(srv.server.stats().loadedDocs, loaded - 1, 'her document was dropped');
    const file = path.join(srv.dataDir, 'users', `${carol.id}.sqlite`);

    // What the server does when it next touches her: no account, no session, nothing of hers.
    assert.equal((await srv.api.get('/users/@me', { token: carol.token })).status, 401);
    assert.equal((await login(srv, carol)).status, 401);
    assert.equal((await srv.api.get<ErrorBody>(`/users/${carol.id}`, { token: bob.token })).body.code, 'user_not_found');
    assert.deepEqual((await srv.api.get('/users/@me/channels', { token: bob.token })).body, []);
    assert.deepEqual((await srv.api.get('/users/@me/relationships', { token: bob.token })).body, []);
    assert.equal((await srv.api.post<ErrorBody>('/users/@me/channels', { token: bob.token, json: { recipient_id: carol.id } })).status, 404);
    assert.equal((await rawSocket(`${srv.url}/sync/${channel}?token=${carol.token}`)).status, 401);
    for (const suffix of ['', '-wal', '-shm']) assert.equal(fs.existsSync(file + suffix), false, `no ${path.basename(file + suffix)} left or made again`);
    // Her username is free again.
    const again = await srv.api.post('/auth/register', { json: { username: carol.username, email: carol.email, password: carol.password } });
    assert.equal(again.status, 201);
  } finally {
    await srv.close();
  }
});

test('a process that still has a deleted account open writes no more to it, and reads what another process committed once it looks', async () => {
  const dataDir = tempDir();
  const config = makeConfig({ dataDir, logLevel: 'silent' });
  const log = captureLog();
  // Two administrations of one data folder: the same as two processes, each with its own connections.
  const server = new AccountsAdmin(config, log.logger);
  const other = new AccountsAdmin(config, log.logger);
  try {
    const { id } = await server.create('frank', 'frank@example.com', 'frank has a passphrase');
    assert.deepEqual(server.users.featuresOf(id), { badges: [], tier: 'free' });
    await other.users.addBadge(id, 'vip');
    assert.deepEqual(server.users.featuresOf(id).badges, [], 'memoised until the process looks');
    assert.deepEqual(server.storage.userFiles.refreshOpen(), []);
    assert.deepEqual(server.users.featuresOf(id).badges, ['vip'], 'after a look: what the other process committed');

    await other.delete(id);
    assert.throws(() => server.users.setTier(id, 'pro'), UserFileDeletedError, 'its open handle refuses the write');
    assert.equal(fs.existsSync(path.join(dataDir, 'users', `${id}.sqlite`)), false);
    assert.deepEqual(server.storage.userFiles.refreshOpen(), [id]);
  } finally {
    await server.close();
    await other.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('a write that meets an account deleted by another process before the server looked is refused (404), and the file is not made again', async () => {
  // The poll is pushed far out: the server has not looked when the request comes.
  const srv = await startServer({}, { externalChangePollMs: 600_000 });
  const admin = new AccountsAdmin(makeConfig({ dataDir: srv.dataDir, logLevel: 'silent' }), captureLog().logger);
  try {
    const hank = await registerUser(srv.api);
    assert.equal((await me(srv, hank)).id, hank.id, "his session and profile are in the server's memory");
    // Deleted as the command does, but no notice is sent.
    await admin.users.deleteAccount(hank.id);
    const write = await srv.api.patch<ErrorBody>('/users/@me/messaging-settings', { token: hank.token, json: { allow_dms_from: 'friends' } });
    assert.deepEqual({ status: write.status, code: write.body.code }, { status: 404, code: 'user_not_found' });
    assert.equal(fs.existsSync(path.join(srv.dataDir, 'users', `${hank.id}.sqlite`)), false);
    assert.equal(await admin.notify(), 'confirmed');
    assert.equal((await srv.api.get('/users/@me', { token: hank.token })).status, 401, 'once told, the session is gone too');
  } finally {
    await admin.close();
    await srv.close();
  }
});

test("a commit whose notice never came is found by the watch's own poll", async () => {
  const dataDir = tempDir();
  const config = makeConfig({ dataDir, logLevel: 'silent' });
  const log = captureLog();
  const server = openStorage({ dataDir, maxOpenUserFiles: 4, workerId: 0 });
  const other = new AccountsAdmin(config, log.logger);
  try {
    let seen!: () => void;
    let deadline: NodeJS.Timeout | undefined;
    // The watch's timer does not keep a process alive; the deadline does, and bounds the wait.
    const directoryChanged = new Promise<void>((resolve, reject) => {
      seen = resolve;
      deadline = setTimeout(() => reject(new Error('the watch never saw the commit')), 10_000);
    });
    const watch = watchExternalChanges(server, { directoryChanged: () => seen(), accountDeleted: () => {}, failed: (error) => assert.fail(String(error)) }, 5);
    try {
      const { id } = await other.create('grace', 'grace@example.com', 'grace has a passphrase');
      // No notice is sent (nothing listens): the watch finds the commit on its own.
      await directoryChanged;
      assert.ok(id);
    } finally {
      clearTimeout(deadline);
      watch.close();
    }
  } finally {
    server.close();
    await other.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('an admin command issues ids with worker id 0 whatever --worker-id says: cluster nodes never lease it', async () => {
  const dataDir = tempDir();
  const admin = new AccountsAdmin(makeConfig({ dataDir, logLevel: 'silent', workerId: 5 }), captureLog().logger);
  try {
    const { id } = await admin.create('olga', 'olga@example.com', 'olga has a passphrase');
    assert.equal((BigInt(id) >> 12n) & 1023n, 0n);
  } finally {
    await admin.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('two processes taking ids from one data folder with one worker id never repeat one', () => {
  const dataDir = tempDir();
  let now = Date.UTC(2030, 0, 1);
  const clock = () => now;
  const server = openStorage({ dataDir, maxOpenUserFiles: 2, workerId: 0, clock });
  const ids: string[] = [];
  try {
    for (let i = 0; i < 5; i += 1) ids.push(server.nextId());
    // An admin command starts while the server runs, in the same millisecond, with the same worker id.
    const command = openStorage({ dataDir, maxOpenUserFiles: 2, workerId: 0, clock });
    const commandIds: string[] = [];
    try {
      for (let i = 0; i < 5; i += 1) {
        commandIds.push(command.nextId());
        ids.push(server.nextId());
      }
      // The server's lease runs out: the command's reservation lies past it, so its ids go on after that.
      now += 1000;
      for (let i = 0; i < 5; i += 1) {
        ids.push(server.nextId());
        commandIds.push(command.nextId());
      }
    } finally {
      command.close();
    }
    const all = [...ids, ...commandIds];
    assert.equal(new Set(all).size, all.length, 'no id twice');
    const increasing = (list: string[]) => list.every((id, index) => index === 0 || BigInt(id) > BigInt(list[index - 1] ?? '0'));
    assert.ok(increasing(ids) && increasing(commandIds), 'each process keeps its ids increasing');
  } finally {
    server.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('export and import move an account between two running instances; a clash is refused and leaves nothing', async () => {
  const from = await startServer();
  const to = await startServer();
  const scratch = tempDir();
  try {
    const erin = await registerUser(from.api);
    const channel = await notesChannelOf(from.api, erin);
    assert.equal((await from.api.post(`/channels/${channel}/messages`, { token: erin.token, json: { content: 'travels along' } })).status, 201);
    const clashing = await registerUser(from.api);
    await registerUser(to.api, clashing.username);
    const exported = path.join(scratch, 'erin.sqlite');
    const exportedClash = path.join(scratch, 'clash.sqlite');
    const exports = await Promise.all([
      runCommand(['admin', 'user', 'export', erin.username, exported, '--data-dir', from.dataDir]),
      runCommand(['admin', 'user', 'export', clashing.id, exportedClash, '--data-dir', from.dataDir]),
    ]);
    for (const result of exports) assert.equal(result.code, 0, result.output);

    const imported = await runCommand(['admin', 'user', 'import', exported, '--data-dir', to.dataDir]);
    assert.equal(imported.code, 0, imported.output);
    const signedIn = await to.api.post<AuthResponse>('/auth/login', { json: { login: erin.email, password: erin.password } });
    assert.equal(signedIn.status, 200, 'the same password, from the file');
    assert.equal(signedIn.body.user.id, erin.id, 'the same id');
    const token = signedIn.body.token;
    assert.equal((await to.api.get('/users/@me', { token: erin.token })).status, 401, 'sessions do not travel');
    const notes = await to.api.get<Message[]>(`/channels/${channel}/messages`, { token });
    assert.deepEqual(
      notes.body.map((note) => note.content),
      ['travels along'],
    );

    const notUserFile = path.join(from.dataDir, 'directory.sqlite');
    const [twice, clash, wrongKind] = await Promise.all([
      runCommand(['admin', 'user', 'import', exported, '--data-dir', to.dataDir]),
      runCommand(['admin', 'user', 'import', exportedClash, '--data-dir', to.dataDir]),
      runCommand(['admin', 'user', 'import', notUserFile, '--data-dir', to.dataDir]),
    ]);
    assert.deepEqual([twice.code, twice.stderr], [1, `plexichat: An account with the id ${erin.id} exists here already\n`]);
    assert.deepEqual([clash.code, clash.stderr], [1, 'plexichat: That username is already taken\n']);
    assert.deepEqual([wrongKind.code, wrongKind.stderr], [1, `plexichat: ${notUserFile} is not a Plexichat user file (no such table: profile)\n`]);
    assert.deepEqual(
      fs.readdirSync(path.join(to.dataDir, 'users')).filter((name) => name.includes(clashing.id) || name.startsWith('.import')),
      [],
      'nothing left behind',
    );
  } finally {
    await from.close();
    await to.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  }
});
