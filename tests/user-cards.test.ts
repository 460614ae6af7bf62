/**
 * Each user's card in the directory's users index (server/storage/directory-store.ts, UserCard):
 * what other users' requests read of an account — its public object, who may open a DM with it,
 * where its mail goes — instead of its file. Every change of it reaches the card before it is
 * answered; a change that stopped half-way, an upgraded directory and a card that differs from the
 * file are all brought back to what the file says. Answers are the same bytes as when they were
 * read from the file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { AccountsAdmin } from '../server/admin/accounts.ts';
import { makeConfig } from '../server/config.ts';
import { DIRECTORY_MIGRATIONS } from '../server/storage/schema.ts';
import type { AllowDmsFrom, AvatarUploadResponse, ErrorBody, PrivateUser, PublicUser } from '../shared/index.ts';
import { captureLog } from './fixtures/log.ts';
import { makePng } from './helpers/images.ts';
import { outboxMail } from './helpers/mail.ts';
import { registerUser, runCommand, startServer, tempDir, type TestServer, type TestUser } from './helpers/server.ts';

const CANNOT_MESSAGE = { error: 'Cannot message', code: 'cannot_message', message: 'You cannot message this user' };

async function uploadAvatar(srv: TestServer, user: TestUser): Promise<AvatarUploadResponse> {
  const body = new FormData();
  body.append('file', new Blob([new Uint8Array(await makePng())], { type: 'image/png' }), 'avatar.png');
  const response = await fetch(`${srv.url}/users/@me/avatar`, { method: 'POST', headers: { authorization: `Bearer ${user.token}` }, body });
  assert.equal(response.status, 200);
  return (await response.json()) as AvatarUploadResponse;
}

async function allowDmsFrom(srv: TestServer, user: TestUser, value: AllowDmsFrom): Promise<void> {
  const res = await srv.api.patch('/users/@me/messaging-settings', { token: user.token, json: { allow_dms_from: value } });
  assert.equal(res.status, 200);
}

/** The user's public object as their own file makes it: the fields of GET /users/@me that others may see. */
async function publicFromFile(srv: TestServer, user: TestUser): Promise<PublicUser> {
  const me = await srv.api.get<PrivateUser>('/users/@me', { token: user.token });
  assert.equal(me.status, 200);
  const { id, username, avatar_url, created_at, badges } = me.body;
  return { id, username, avatar_url, created_at, badges };
}

/** Runs a change through an admin command (another process's view of the folder), which tells the server. */
async function administer(dataDir: string, userId: string, change: (admin: AccountsAdmin) => Promise<unknown>): Promise<void> {
  const admin = new AccountsAdmin(makeConfig({ dataDir, logLevel: 'silent' }), captureLog().logger);
  try {
    await admin.change(userId, () => change(admin));
  } finally {
    await admin.close();
  }
}

/** How the users index disagrees with the user files (what doctor reports), read by a command. */
async function indexProblems(dataDir: string): Promise<unknown[]> {
  const admin = new AccountsAdmin(makeConfig({ dataDir, logLevel: 'silent' }), captureLog().logger);
  try {
    return await admin.users.checkDirectoryIndex();
  } finally {
    await admin.close();
  }
}

function withDirectory<T>(dataDir: string, fn: (db: Database.Database) => T): T {
  const db = new Database(path.join(dataDir, 'directory.sqlite'));
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

/**
 * Everything `viewer` reads of `owner` through other users' routes, with exact bodies: the public
 * profile, the search, the relationship (`type` on the viewer's side), the DM channel.
 */
async function assertSeenAs(srv: TestServer, viewer: TestUser, owner: PublicUser, relationship: string, dm: string): Promise<void> {
  const profile = await srv.api.get<PublicUser>(`/users/${owner.id}`, { token: viewer.token });
  assert.deepEqual({ status: profile.status, body: profile.body }, { status: 200, body: owner });
  assert.equal(profile.text, JSON.stringify(owner), 'the same bytes, keys in the same order');
  const found = await srv.api.get<PublicUser>(`/users/search?username=${owner.username.toUpperCase()}`, { token: viewer.token });
  assert.deepEqual({ status: found.status, body: found.body }, { status: 200, body: owner });
  const relationships = await srv.api.get('/users/@me/relationships', { token: viewer.token });
  assert.deepEqual(relationships.body, [{ id: owner.id, type: relationship, user: owner }]);
  const channels = await srv.api.get('/users/@me/channels', { token: viewer.token });
  assert.deepEqual(channels.body, [{ id: dm, type: 'dm', recipient_id: owner.id, recipient: owner, last_message_id: null }]);
}

async function openDm(srv: TestServer, sender: TestUser, recipientId: string) {
  const res = await srv.api.post<unknown>('/users/@me/channels', { token: sender.token, json: { recipient_id: recipientId } });
  return { status: res.status, body: res.body };
}

test("another user sees alice's avatar, badges and DM privacy change at once, in every answer that shows her; none of it reads a user file", {
  timeout: 60_000,
}, async () => {
  const dataDir = tempDir();
  const log = captureLog();
  let srv = await startServer({ dataDir }, { logger: log.logger });
  try {
    const alice = await registerUser(srv.api, `Alice.Card.${process.pid}`);
    const bob = await registerUser(srv.api);
    assert.equal((await srv.api.request('PUT', `/users/@me/relationships/${alice.id}`, { token: bob.token, json: { type: 'friend' } })).status, 200);
    const dm = await srv.api.post<{ id: string }>('/users/@me/channels', { token: bob.token, json: { recipient_id: alice.id } });
    assert.equal(dm.status, 200);
    await assertSeenAs(srv, bob, await publicFromFile(srv, alice), 'outgoing_request', dm.body.id);

    const avatar = await uploadAvatar(srv, alice);
    const withAvatar = await publicFromFile(srv, alice);
    assert.equal(withAvatar.avatar_url, avatar.avatar_url);
    await assertSeenAs(srv, bob, withAvatar, 'outgoing_request', dm.body.id);

    await administer(dataDir, alice.id, (admin) => admin.users.addBadge(alice.id, 'vip'));
    await administer(dataDir, alice.id, (admin) => admin.users.addBadge(alice.id, 'early_supporter'));
    const withBadges = await publicFromFile(srv, alice);
    assert.deepEqual(withBadges.badges, ['vip', 'early_supporter']);
    await assertSeenAs(srv, bob, withBadges, 'outgoing_request', dm.body.id);

    // Her privacy: refused with the one answer every refusal gets, then let through as it allows.
    await allowDmsFrom(srv, alice, 'none');
    assert.deepEqual(await openDm(srv, bob, alice.id), { status: 403, body: CANNOT_MESSAGE });
    await allowDmsFrom(srv, alice, 'friends');
    assert.deepEqual(await openDm(srv, bob, alice.id), { status: 403, body: CANNOT_MESSAGE }, 'a request is no friendship');
    assert.equal((await srv.api.request('PUT', `/users/@me/relationships/${bob.id}`, { token: alice.token, json: { type: 'friend' } })).status, 200);
    assert.deepEqual(await openDm(srv, bob, alice.id), { status: 200, body: { id: dm.body.id, type: 'dm', recipient_id: alice.id, recipient: withBadges } });
    // A patch that leaves it as it is (and other settings) changes nothing of the card.
    const other = await srv.api.patch('/users/@me/messaging-settings', {
      token: alice.token,
      json: { allow_dms_from: 'friends', read_receipts_enabled: false },
    });
    assert.equal(other.status, 200);

    assert.equal((await srv.api.delete('/users/@me/avatar', { token: alice.token })).status, 204);
    await administer(dataDir, alice.id, (admin) => admin.users.removeBadge(alice.id, 'vip'));
    const after = await publicFromFile(srv, alice);
    assert.deepEqual({ avatar_url: after.avatar_url, badges: after.badges }, { avatar_url: null, badges: ['early_supporter'] });
    await assertSeenAs(srv, bob, after, 'friend', dm.body.id);
    await allowDmsFrom(srv, alice, 'none');
    assert.deepEqual(await indexProblems(dataDir), [], 'every card is what its file says');

    // Restarted, no user file is open: whatever bob asks of alice, and a reset mail to her, opens none.
    await srv.close();
    srv = await startServer({ dataDir }, { logger: log.logger });
    assert.equal(srv.server.stats().openUserFiles, 0);
    await assertSeenAs(srv, bob, after, 'friend', dm.body.id);
    assert.deepEqual(await openDm(srv, bob, alice.id), { status: 403, body: CANNOT_MESSAGE });
    const mark = log.records.length;
    assert.equal((await srv.api.post('/auth/password/forgot', { json: { email: alice.email.toUpperCase() } })).status, 204);
    const mail = await outboxMail(log, mark, alice.email, 'reset-password');
    assert.ok(mail.text.startsWith(`Hi ${alice.username},\n`), mail.text);
    assert.equal(srv.server.stats().openUserFiles, 0, 'no user file was opened: the cards answered everything');
  } finally {
    await srv.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test("a reset mail is written from the card: the account's name and address as its profile spells them now", { timeout: 30_000 }, async () => {
  const log = captureLog();
  const srv = await startServer({}, { logger: log.logger });
  try {
    const user = await registerUser(srv.api);
    const renamed = `Renamed.${user.id.slice(-6)}`;
    const address = `Mixed.Case.${user.id.slice(-6)}@Example.COM`;
    assert.equal((await srv.api.patch('/users/@me', { token: user.token, json: { username: renamed, email: address } })).status, 200);
    const mark = log.records.length;
    assert.equal((await srv.api.post('/auth/password/forgot', { json: { email: address.toLowerCase() } })).status, 204);
    // Found by the address it was sent to, as spelt.
    const mail = await outboxMail(log, mark, address, 'reset-password');
    assert.ok(mail.text.startsWith(`Hi ${renamed},\n`), mail.text);
  } finally {
    await srv.close();
  }
});

test('a card change that stopped between its two writes is derived again from the user file at the next start', { timeout: 30_000 }, async () => {
  const dataDir = tempDir();
  try {
    let srv = await startServer({ dataDir });
    let alice: TestUser;
    let bob: TestUser;
    try {
      alice = await registerUser(srv.api);
      bob = await registerUser(srv.api);
    } finally {
      await srv.close();
    }
    // What a server stopped right after the file write leaves: the mark, and the file ahead of the card.
    withDirectory(dataDir, (db) => db.prepare('INSERT INTO users_index_pending (user_id) VALUES (?)').run(alice.id));
    const file = new Database(path.join(dataDir, 'users', `${alice.id}.sqlite`));
    try {
      file.prepare("UPDATE messaging_settings SET allow_dms_from = 'none'").run();
      file.prepare(`UPDATE profile SET badges = '["vip"]'`).run();
    } finally {
      file.close();
    }

    const log = captureLog();
    srv = await startServer({ dataDir }, { logger: log.logger });
    try {
      const repaired = log.records.find((record) => String(record.msg).startsWith('derived directory index entries again from their user files'));
      assert.equal(repaired?.derived, 1);
      const seen = await srv.api.get<PublicUser>(`/users/${alice.id}`, { token: bob.token });
      assert.deepEqual(seen.body, await publicFromFile(srv, alice));
      assert.deepEqual(seen.body.badges, ['vip']);
      assert.deepEqual(await openDm(srv, bob, alice.id), { status: 403, body: CANNOT_MESSAGE });
      assert.deepEqual(await indexProblems(dataDir), []);
    } finally {
      await srv.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('a directory.sqlite of the previous version (no cards) gets every card from the user files at the first start; sessions stay', {
  timeout: 60_000,
}, async () => {
  const dataDir = tempDir();
  try {
    let srv = await startServer({ dataDir });
    let alice: TestUser;
    let bob: TestUser;
    let before: PublicUser;
    let oldUrl: string;
    try {
      oldUrl = srv.url;
      alice = await registerUser(srv.api);
      bob = await registerUser(srv.api);
      await uploadAvatar(srv, alice);
      await allowDmsFrom(srv, alice, 'friends');
      await administer(dataDir, alice.id, (admin) => admin.users.addBadge(alice.id, 'beta_tester'));
      before = await publicFromFile(srv, alice);
      assert.notEqual(before.avatar_url, null);
    } finally {
      await srv.close();
    }
    // The previous version's directory: the same rows without the card's columns, at its schema version.
    withDirectory(dataDir, (db) => {
      for (const column of ['email', 'avatar_hash', 'badges', 'allow_dms_from']) db.exec(`ALTER TABLE users DROP COLUMN ${column}`);
      db.exec('DELETE FROM users_index_pending');
      db.pragma(`user_version = ${DIRECTORY_MIGRATIONS.length - 1}`);
    });

    srv = await startServer({ dataDir });
    try {
      const seen = await srv.api.get<PublicUser>(`/users/${alice.id}`, { token: bob.token });
      // The same, but for the port the restarted server listens on.
      const expected = { ...before, avatar_url: before.avatar_url?.replace(oldUrl, srv.url) ?? null };
      assert.deepEqual({ status: seen.status, body: seen.body }, { status: 200, body: expected }, "bob's session survived, and alice is who she was");
      assert.deepEqual(seen.body, await publicFromFile(srv, alice));
      assert.deepEqual(await openDm(srv, bob, alice.id), { status: 403, body: CANNOT_MESSAGE }, 'her privacy came along');
      assert.deepEqual(await indexProblems(dataDir), []);
      assert.equal(
        withDirectory(dataDir, (db) => db.pragma('user_version', { simple: true })),
        DIRECTORY_MIGRATIONS.length,
      );
    } finally {
      await srv.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('doctor reports a card that differs from its user file, and --fix derives it again', { timeout: 60_000 }, async () => {
  const dataDir = tempDir();
  try {
    let srv = await startServer({ dataDir });
    let alice: TestUser;
    let bob: TestUser;
    let truth: PublicUser;
    try {
      alice = await registerUser(srv.api);
      bob = await registerUser(srv.api);
      await allowDmsFrom(srv, alice, 'none');
      await administer(dataDir, alice.id, (admin) => admin.users.addBadge(alice.id, 'vip'));
      truth = await publicFromFile(srv, alice);
    } finally {
      await srv.close();
    }
    const forged = 'f'.repeat(64);
    withDirectory(dataDir, (db) =>
      db
        .prepare(`UPDATE users SET email = upper(email), avatar_hash = ?, badges = '["forged","vip"]', allow_dms_from = 'everyone' WHERE id = ?`)
        .run(forged, alice.id),
    );

    const found = await runCommand(['doctor', '--data-dir', dataDir]);
    assert.equal(found.code, 1, found.output);
    const file = `users/${alice.id}.sqlite`;
    const problems = found.stdout.split('\n').filter((line) => line.startsWith('problem: '));
    assert.deepEqual(problems, [
      `problem: ${file}: the index says email ${JSON.stringify(alice.email.toUpperCase())}, the file says ${JSON.stringify(alice.email)}`,
      `problem: ${file}: the index says avatar "${forged}", the file says "none"`,
      `problem: ${file}: the index says badges "forged, vip", the file says "vip"`,
      `problem: ${file}: the index says allow_dms_from "everyone", the file says "none"`,
    ]);
    const fixed = await runCommand(['doctor', '--fix', '--data-dir', dataDir]);
    assert.equal(fixed.code, 0, fixed.output);
    assert.match(fixed.stdout, /no problem found\n$/);

    srv = await startServer({ dataDir });
    try {
      const seen = await srv.api.get<PublicUser>(`/users/${alice.id}`, { token: bob.token });
      assert.deepEqual(seen.body, truth);
      assert.deepEqual(await openDm(srv, bob, alice.id), { status: 403, body: CANNOT_MESSAGE });
    } finally {
      await srv.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('a row left without a card (its file unreadable since the upgrade) answers 503 for that user, and the others are served', {
  timeout: 30_000,
}, async () => {
  const dataDir = tempDir();
  try {
    let srv = await startServer({ dataDir });
    let alice: TestUser;
    let bob: TestUser;
    try {
      alice = await registerUser(srv.api);
      bob = await registerUser(srv.api);
    } finally {
      await srv.close();
    }
    // No card, and no mark that would have a start derive one: what a failed derivation leaves.
    withDirectory(dataDir, (db) => db.prepare('UPDATE users SET badges = NULL WHERE id = ?').run(alice.id));
    const log = captureLog();
    srv = await startServer({ dataDir }, { logger: log.logger });
    try {
      const seen = await srv.api.get<ErrorBody>(`/users/${alice.id}`, { token: bob.token });
      assert.deepEqual(
        { status: seen.status, retryAfter: seen.headers.get('retry-after'), body: seen.body },
        {
          status: 503,
          retryAfter: '5',
          body: {
            error: 'Service unavailable',
            code: 'service_unavailable',
            message: "Could not read: the server's storage is failing right now (disk full, I/O error or no file handle left); try again later",
          },
        },
      );
      assert.ok(log.records.some((record) => record.userId === alice.id && String(record.msg).startsWith('an index row has no card yet')));
      assert.equal((await srv.api.get(`/users/${bob.id}`, { token: alice.token })).status, 200);
    } finally {
      await srv.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});
