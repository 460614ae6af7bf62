/**
 * The directory's contract (server/storage/directory-store.ts), one suite run against every store:
 * what one store does, the other must do too, so a service behaves the same on one node (SQLite)
 * and in a cluster (Redis). Written against the interface only; a store is one entry of STORES.
 * Then a few things only the Redis store has: a Redis that cannot be reached, a Redis that forgot
 * its scripts.
 */
import { after, describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import type { Redis } from 'ioredis';
import { connectRedis } from '../server/cluster/redis.ts';
import { RedisDirectory } from '../server/cluster/redis-directory.ts';
import {
  type DirectoryStore,
  type IndexEntry,
  NameTakenError,
  type NewMailToken,
  type NewSession,
  type StoredIndexRow,
  type UserCard,
} from '../server/storage/directory-store.ts';
import { isRetryableStorageError } from '../server/storage/errors.ts';
import { SqliteDirectory } from '../server/storage/sqlite-directory.ts';
import { DIRECTORY_MIGRATIONS } from '../server/storage/schema.ts';
import { openDatabase } from '../server/storage/sqlite.ts';
import { missingRedis, RedisServer } from './helpers/redis.ts';

interface OpenedStore {
  store: DirectoryStore;
  close(): Promise<void>;
}

interface StoreUnderTest {
  name: string;
  /** Why it cannot run on this machine, if it cannot. */
  skip: string | undefined;
  /** A new, empty store. */
  open(): Promise<OpenedStore>;
}

/** One Redis for the whole file (started on first use); each store opened on it starts from an empty database. */
const sharedRedis = (() => {
  let started: Promise<RedisServer> | undefined;
  after(async () => {
    if (started !== undefined) await (await started).close();
  });
  return () => {
    started ??= RedisServer.start();
    return started;
  };
})();

const quiet = pino({ level: 'silent' });

async function connectTo(server: RedisServer): Promise<Redis> {
  // The node's own connection settings (no offline queue, command timeout), as in cluster mode.
  return connectRedis(server.url, quiet, 'directory-contract');
}

async function openRedis(): Promise<OpenedStore> {
  const redis = await connectTo(await sharedRedis());
  await redis.flushdb();
  const store = new RedisDirectory(redis);
  return {
    store,
    async close() {
      await store.close();
      await redis.quit();
    },
  };
}

async function openSqlite(): Promise<OpenedStore> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'plexichat-directory-'));
  const store = new SqliteDirectory(dataDir);
  return {
    store,
    async close() {
      await store.close();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

const STORES: StoreUnderTest[] = [
  { name: 'SQLite', skip: undefined, open: openSqlite },
  { name: 'Redis', skip: missingRedis(), open: openRedis },
];

// Fixtures. Ids are snowflake-like decimal strings; some differ in length on purpose, since
// snowflakes compare as numbers (a shorter one is smaller) and as strings the other way round.

/** An entry whose card is a new account's (no avatar, no badges, DMs from everyone) unless `card` says otherwise. */
function entry(id: string, username: string, email = `${username.toLowerCase()}@example.test`, createdAt = 1000, card: Partial<UserCard> = {}): IndexEntry {
  return { id, username, email, createdAt, avatarHash: null, badges: [], allowDmsFrom: 'everyone', ...card };
}

/** The row an entry is stored as. */
function stored({ id, username, email, createdAt, avatarHash, badges, allowDmsFrom }: IndexEntry): StoredIndexRow {
  return { id, username, email_lower: email.toLowerCase(), created_at: createdAt, card: { email, avatarHash, badges, allowDmsFrom } };
}

const AVATAR = `${'c0ffee'.repeat(10)}abcd`;

function tokenHash(name: string): Buffer {
  return createHash('sha256').update(name).digest();
}

function session(id: string, userId: string, now = 1000, device: Partial<Pick<NewSession, 'userAgent' | 'deviceName'>> = {}): NewSession {
  return { id, tokenHash: tokenHash(`session ${id}`), userId, now, userAgent: device.userAgent ?? null, deviceName: device.deviceName ?? `device ${id}` };
}

function mailToken(name: string, userId: string, purpose: NewMailToken['purpose'], expiresAt = 2000): NewMailToken {
  return { hash: tokenHash(`mail ${name}`), userId, purpose, emailLower: `${userId}@example.test`, createdAt: 1000, expiresAt };
}

const sorted = (ids: Iterable<string>) => [...ids].sort();

async function assertNameTaken(promise: Promise<unknown>, field: 'username' | 'email'): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof NameTakenError, `expected NameTakenError, got ${String(error)}`);
    assert.equal(error.field, field);
    return true;
  });
}

/** Exactly one of these settled fulfilled; the others rejected with NameTakenError on `field`. */
function assertOneWinner(results: PromiseSettledResult<unknown>[], field: 'username' | 'email'): void {
  assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1, JSON.stringify(results));
  for (const r of results) if (r.status === 'rejected') assert.ok(r.reason instanceof NameTakenError && r.reason.field === field, String(r.reason));
}

for (const kind of STORES) {
  describe(`directory contract: ${kind.name}`, { skip: kind.skip }, () => {
    async function fresh(t: TestContext): Promise<DirectoryStore> {
      const opened = await kind.open();
      t.after(() => opened.close());
      return opened.store;
    }

    /** Alice (1), Bob (2) and Carol (30) indexed. */
    async function threeUsers(t: TestContext): Promise<DirectoryStore> {
      const store = await fresh(t);
      await store.indexUser(entry('1', 'Alice'));
      await store.indexUser(entry('2', 'Bob'));
      await store.indexUser(entry('30', 'Carol'));
      return store;
    }

    describe('the users index', () => {
      test('an indexed user is found by username and email in any case, and by id', async (t) => {
        const store = await fresh(t);
        await store.indexUser(entry('1', 'Alice', 'Alice@Example.TEST', 1234));
        for (const name of ['Alice', 'alice', 'ALICE']) assert.deepEqual(await store.findUserByUsername(name), { id: '1', username: 'Alice' });
        for (const email of ['alice@example.test', 'ALICE@EXAMPLE.test']) assert.deepEqual(await store.findUserByEmail(email), { id: '1', username: 'Alice' });
        assert.deepEqual(await store.findUserById('1'), { id: '1', username: 'Alice' });
        assert.equal(await store.findUserByUsername('bob'), undefined);
        assert.equal(await store.findUserByEmail('bob@example.test'), undefined);
        assert.equal(await store.findUserById('2'), undefined);
        assert.equal(await store.countUsers(), 1);
        assert.deepEqual(await store.listUsers(), [stored(entry('1', 'Alice', 'Alice@Example.TEST', 1234))]);
      });

      test('a username or email another account holds, in any case, is refused with NameTakenError and changes nothing', async (t) => {
        const store = await fresh(t);
        await store.indexUser(entry('1', 'Alice', 'alice@example.test'));
        await assertNameTaken(store.indexUser(entry('2', 'ALICE', 'other@example.test')), 'username');
        await assertNameTaken(store.indexUser(entry('2', 'Other', 'Alice@Example.Test')), 'email');
        await assertNameTaken(store.indexUser(entry('2', 'alice', 'other@example.test'), session('s', '2')), 'username');
        assert.equal(await store.countUsers(), 1);
        assert.equal(await store.findUserById('2'), undefined);
        assert.equal(await store.findUserByUsername('other'), undefined);
        assert.equal(await store.findUserByEmail('other@example.test'), undefined);
        assert.equal(await store.findSessionByTokenHash(tokenHash('session s')), undefined);
        assert.deepEqual(await store.listUserSessions('2'), []);
        // The names are still free for anyone else.
        await store.indexUser(entry('2', 'Other', 'other@example.test'));
      });

      test('indexing an id indexed already is a refused misuse, never NameTakenError (even with its own names), and changes nothing', async (t) => {
        const store = await threeUsers(t);
        const misuse = (error: unknown) => !(error instanceof NameTakenError) && !isRetryableStorageError(error);
        await assert.rejects(store.indexUser(entry('1', 'Alice')), misuse);
        await assert.rejects(store.indexUser(entry('1', 'Bob')), misuse);
        await assert.rejects(store.indexUser(entry('1', 'Other'), session('s', '1')), misuse);
        assert.deepEqual(await store.findUserById('1'), { id: '1', username: 'Alice' });
        assert.equal(await store.findUserByUsername('other'), undefined);
        assert.equal(await store.findSessionByTokenHash(tokenHash('session s')), undefined);
        assert.equal(await store.countUsers(), 3);
      });

      test('when both names are taken, the one named is the same in every store (what a 409 says)', async (t) => {
        const store = await threeUsers(t);
        await assertNameTaken(store.indexUser(entry('4', 'bob', 'CAROL@example.test'), session('s', '4')), 'email');
        await assertNameTaken(store.settleUser(entry('1', 'bob', 'carol@example.test')), 'email');
        await assertNameTaken(store.settleUser(entry('4', 'bob', 'carol@example.test')), 'email');
        await assertNameTaken(store.claimNames('1', { username: 'BOB', email: 'carol@example.test' }), 'username');
        assert.equal(await store.countUsers(), 3);
        assert.equal(await store.findSessionByTokenHash(tokenHash('session s')), undefined);
        assert.deepEqual(await store.findUserByUsername('alice'), { id: '1', username: 'Alice' });
        assert.deepEqual(await store.listPendingUsers(), []);
      });

      test('of many concurrent registrations of one username (any case), exactly one is indexed', async (t) => {
        const store = await fresh(t);
        const names = ['dave', 'Dave', 'DAVE', 'dAvE'];
        const results = await Promise.allSettled(
          Array.from({ length: 24 }, (_, i) =>
            store.indexUser(entry(String(100 + i), names[i % names.length]!, `dave${i}@example.test`), session(`s${i}`, String(100 + i))),
          ),
        );
        assertOneWinner(results, 'username');
        assert.equal(await store.countUsers(), 1);
        const winner = await store.findUserByUsername('dave');
        assert.ok(winner);
        // Only the winner's first session exists.
        const sessions = await store.existingSessions(Array.from({ length: 24 }, (_, i) => `s${i}`));
        assert.deepEqual([...sessions], [`s${Number(winner.id) - 100}`]);
      });

      test('of many concurrent registrations of one email (any case), exactly one is indexed', async (t) => {
        const store = await fresh(t);
        const results = await Promise.allSettled(
          Array.from({ length: 24 }, (_, i) => store.indexUser(entry(String(100 + i), `user${i}`, i % 2 === 0 ? 'same@example.test' : 'SAME@Example.Test'))),
        );
        assertOneWinner(results, 'email');
        assert.equal(await store.countUsers(), 1);
      });

      test('listUsers answers every row by id as a number (shorter ids first)', async (t) => {
        const store = await fresh(t);
        for (const [id, name] of [
          ['100', 'c'],
          ['9', 'a'],
          ['11', 'b'],
          ['1000', 'd'],
        ] as const)
          await store.indexUser(entry(id, name.toUpperCase(), `${name}@Example.test`, Number(id)));
        assert.deepEqual(
          await store.listUsers(),
          [
            ['9', 'a'],
            ['11', 'b'],
            ['100', 'c'],
            ['1000', 'd'],
          ].map(([id, name]) => stored(entry(id!, name!.toUpperCase(), `${name}@Example.test`, Number(id)))),
        );
        assert.equal(await store.countUsers(), 4);
      });

      test('indexUser with a first session starts it at epoch 0', async (t) => {
        const store = await fresh(t);
        await store.indexUser(entry('1', 'Alice'), session('s1', '1', 1500, { userAgent: 'curl/8', deviceName: 'laptop' }));
        assert.equal(await store.readCredentialEpoch('1'), 0);
        assert.deepEqual(await store.findSessionByTokenHash(tokenHash('session s1')), { id: 's1', user_id: '1', created_at: 1500, last_used_at: 1500 });
        assert.deepEqual(await store.listUserSessions('1'), [{ id: 's1', device_name: 'laptop', user_agent: 'curl/8', created_at: 1500, last_used_at: 1500 }]);
      });

      test("a row keeps the entry's card as given, read back whole by findUserRow and listUsers", async (t) => {
        const store = await fresh(t);
        const alice = entry('1', 'Alice', 'Alice@Example.TEST', 1234, { avatarHash: AVATAR, badges: ['vip', 'beta_tester'], allowDmsFrom: 'none' });
        const bob = entry('2', 'Bob', 'bob@example.test', 1500, { allowDmsFrom: 'friends' });
        await store.indexUser(alice);
        await store.indexUser(bob, session('s', '2'));
        assert.deepEqual(await store.findUserRow('1'), {
          id: '1',
          username: 'Alice',
          email_lower: 'alice@example.test',
          created_at: 1234,
          card: { email: 'Alice@Example.TEST', avatarHash: AVATAR, badges: ['vip', 'beta_tester'], allowDmsFrom: 'none' },
        });
        assert.deepEqual(await store.findUserRow('2'), stored(bob));
        assert.equal(await store.findUserRow('3'), undefined);
        assert.deepEqual(await store.listUsers(), [stored(alice), stored(bob)]);
        // settleUser and replaceUsers write the card with the rest of the row, in any order of badges.
        const settled = entry('1', 'Alice', 'alice@EXAMPLE.test', 1234, { avatarHash: null, badges: ['zz', 'aa'], allowDmsFrom: 'everyone' });
        await store.settleUser(settled);
        assert.deepEqual(await store.findUserRow('1'), stored(settled));
        const replaced = entry('2', 'Bob', 'Bob@example.test', 1500, { avatarHash: AVATAR, badges: ['x'], allowDmsFrom: 'none' });
        await store.replaceUsers([settled, replaced]);
        assert.deepEqual(await store.listUsers(), [stored(settled), stored(replaced)]);
        assert.deepEqual(await store.findUserRow('2'), stored(replaced));
      });

      test('claimNames of an email keeps the address as spelt in the card, and nothing else of the card changes', async (t) => {
        const store = await fresh(t);
        await store.indexUser(entry('1', 'Alice', 'alice@example.test', 1000, { avatarHash: AVATAR, badges: ['vip'], allowDmsFrom: 'friends' }));
        await store.claimNames('1', { email: 'Alice.New@Example.test' });
        assert.deepEqual(await store.findUserRow('1'), {
          id: '1',
          username: 'Alice',
          email_lower: 'alice.new@example.test',
          created_at: 1000,
          card: { email: 'Alice.New@Example.test', avatarHash: AVATAR, badges: ['vip'], allowDmsFrom: 'friends' },
        });
        await store.claimNames('1', { username: 'Alicia' });
        assert.equal((await store.findUserRow('1'))?.card?.email, 'Alice.New@Example.test');
      });

      test('markPending marks an indexed row and changes nothing else; a user not indexed is not marked', async (t) => {
        const store = await threeUsers(t);
        const before = await store.listUsers();
        assert.equal(await store.markPending('2'), true);
        assert.equal(await store.markPending('2'), true, 'marked twice is marked');
        assert.deepEqual(await store.listPendingUsers(), ['2']);
        assert.deepEqual(await store.listUsers(), before);
        assert.equal(await store.markPending('404'), false);
        assert.deepEqual(await store.listPendingUsers(), ['2']);
        // The card written after the file: the mark goes.
        await store.settleUser(entry('2', 'Bob', 'bob@example.test', 1000, { badges: ['vip'] }));
        assert.deepEqual(await store.listPendingUsers(), []);
        assert.deepEqual((await store.findUserRow('2'))?.card?.badges, ['vip']);
        // A deleted account takes its mark with it.
        await store.markPending('30');
        await store.deleteUser('30');
        assert.deepEqual(await store.listPendingUsers(), []);
        assert.equal(await store.markPending('30'), false);
      });

      test('claimNames moves the row to the new names, frees the old ones and marks it pending', async (t) => {
        const store = await threeUsers(t);
        await store.claimNames('1', { username: 'Alicia' });
        assert.deepEqual(await store.findUserByUsername('ALICIA'), { id: '1', username: 'Alicia' });
        assert.equal(await store.findUserByUsername('alice'), undefined);
        assert.deepEqual(await store.listPendingUsers(), ['1']);
        await store.claimNames('2', { email: 'Robert@Example.test' });
        assert.deepEqual(await store.findUserByEmail('robert@example.test'), { id: '2', username: 'Bob' });
        assert.equal(await store.findUserByEmail('bob@example.test'), undefined);
        await store.claimNames('30', { username: 'Caroline', email: 'caroline@example.test' });
        assert.deepEqual(await store.findUserByUsername('caroline'), { id: '30', username: 'Caroline' });
        assert.deepEqual(await store.findUserByEmail('caroline@example.test'), { id: '30', username: 'Caroline' });
        assert.deepEqual(sorted(await store.listPendingUsers()), ['1', '2', '30']);
        // The freed names can be anyone's now.
        await store.indexUser(entry('4', 'alice', 'bob@example.test'));
        assert.deepEqual(
          (await store.listUsers()).map((row) => [row.id, row.username, row.email_lower]),
          [
            ['1', 'Alicia', 'alice@example.test'],
            ['2', 'Bob', 'robert@example.test'],
            ['4', 'alice', 'bob@example.test'],
            ['30', 'Caroline', 'caroline@example.test'],
          ],
        );
      });

      test('claimNames of its own name in another case changes only the display', async (t) => {
        const store = await threeUsers(t);
        await store.claimNames('1', { username: 'ALICE', email: 'ALICE@example.test' });
        assert.deepEqual(await store.findUserByUsername('alice'), { id: '1', username: 'ALICE' });
        assert.deepEqual(await store.findUserByEmail('alice@example.test'), { id: '1', username: 'ALICE' });
      });

      test('claimNames of a name another account holds is refused with NameTakenError and changes nothing', async (t) => {
        const store = await threeUsers(t);
        await assertNameTaken(store.claimNames('1', { username: 'BOB' }), 'username');
        await assertNameTaken(store.claimNames('1', { email: 'Bob@example.test' }), 'email');
        await assertNameTaken(store.claimNames('1', { username: 'Alicia', email: 'carol@EXAMPLE.test' }), 'email');
        assert.deepEqual(await store.findUserByUsername('alice'), { id: '1', username: 'Alice' });
        assert.equal(await store.findUserByUsername('alicia'), undefined);
        assert.deepEqual(await store.findUserByEmail('alice@example.test'), { id: '1', username: 'Alice' });
        assert.deepEqual(await store.listPendingUsers(), []);
      });

      test('of two concurrent claims of one name, exactly one wins', async (t) => {
        const store = await threeUsers(t);
        const results = await Promise.allSettled([store.claimNames('1', { username: 'zed' }), store.claimNames('2', { username: 'ZED' })]);
        assertOneWinner(results, 'username');
        const holder = await store.findUserByUsername('zed');
        assert.ok(holder);
        assert.deepEqual(await store.listPendingUsers(), [holder.id]);
      });

      test('settleUser writes the row as given, whatever it held, and clears its pending mark', async (t) => {
        const store = await threeUsers(t);
        await store.claimNames('1', { username: 'Alicia', email: 'alicia@example.test' });
        await store.claimNames('2', { username: 'Robert' });
        // The user file kept the old names (the change stopped half-way): the row comes back to them.
        await store.settleUser(entry('1', 'Alice', 'Alice@example.test', 1000));
        assert.deepEqual(await store.findUserByUsername('alice'), { id: '1', username: 'Alice' });
        assert.equal(await store.findUserByUsername('alicia'), undefined);
        assert.equal(await store.findUserByEmail('alicia@example.test'), undefined);
        assert.deepEqual(await store.listPendingUsers(), ['2']);
        await store.settleUser(entry('2', 'Robert', 'bob@example.test', 2000));
        assert.deepEqual(await store.listPendingUsers(), []);
        assert.deepEqual(
          (await store.listUsers()).find((row) => row.id === '2'),
          stored(entry('2', 'Robert', 'bob@example.test', 2000)),
        );
        assert.equal(await store.findUserByUsername('bob'), undefined);
        // A row that is not there is written.
        await store.settleUser(entry('5', 'Eve'));
        assert.deepEqual(await store.findUserByUsername('eve'), { id: '5', username: 'Eve' });
        assert.equal(await store.countUsers(), 4);
      });

      test('settleUser with a name another account holds is refused with NameTakenError and changes nothing', async (t) => {
        const store = await threeUsers(t);
        await store.claimNames('1', { username: 'Alicia' });
        await assertNameTaken(store.settleUser(entry('1', 'bob', 'alice@example.test')), 'username');
        await assertNameTaken(store.settleUser(entry('1', 'Alice', 'CAROL@example.test')), 'email');
        assert.deepEqual(await store.findUserByUsername('alicia'), { id: '1', username: 'Alicia' });
        assert.deepEqual(await store.findUserByUsername('bob'), { id: '2', username: 'Bob' });
        assert.deepEqual(await store.findUserByEmail('carol@example.test'), { id: '30', username: 'Carol' });
        assert.deepEqual(await store.listPendingUsers(), ['1']);
      });

      test('settleUser keeps the rest of the account: sessions, relationships, DM channels', async (t) => {
        const store = await threeUsers(t);
        await store.insertSessionIfEpoch(session('s1', '1'), 0);
        await store.replaceRelationshipPair('1', '2', { mine: undefined, theirs: undefined }, { mine: 'friend', theirs: 'friend' }, '50');
        const dm = await store.openDmChannel('1', '2', '60', 1000);
        await store.claimNames('1', { username: 'Alicia' });
        await store.settleUser(entry('1', 'Alicia'));
        assert.deepEqual([...(await store.existingSessions(['s1']))], ['s1']);
        assert.deepEqual(await store.listRelationships('1'), [{ other_id: '2', type: 'friend' }]);
        assert.deepEqual(await store.listDmChannels('1'), [{ id: dm, recipient_id: '2', last_message_id: null }]);
      });

      test('replaceUsers with entries repeating a username or an email (any case) is a refused misuse and changes nothing', async (t) => {
        const store = await threeUsers(t);
        await store.claimNames('2', { username: 'Robert' });
        const misuse = (error: unknown) => !(error instanceof NameTakenError) && !isRetryableStorageError(error);
        await assert.rejects(store.replaceUsers([entry('1', 'Alice', 'one@example.test'), entry('2', 'ALICE', 'two@example.test')]), misuse);
        await assert.rejects(store.replaceUsers([entry('1', 'One', 'same@example.test'), entry('4', 'Four', 'SAME@example.test')]), misuse);
        assert.deepEqual(
          (await store.listUsers()).map((row) => row.username),
          ['Alice', 'Robert', 'Carol'],
        );
        assert.deepEqual(await store.listPendingUsers(), ['2']);
      });

      test('replaceUsers makes the index exactly the entries: names may move between rows, pending marks go', async (t) => {
        const store = await threeUsers(t);
        await store.claimNames('30', { username: 'Caroline' });
        // Alice and Bob swap names; Carol's row comes back to her file's name; Dan is new.
        const removed = await store.replaceUsers([
          entry('1', 'Bob', 'bob@example.test', 10),
          entry('2', 'Alice', 'alice@example.test', 20),
          entry('30', 'Carol', 'carol@example.test', 30),
          entry('4', 'Dan', 'dan@example.test', 40),
        ]);
        assert.deepEqual(removed, []);
        assert.deepEqual(await store.listUsers(), [
          stored(entry('1', 'Bob', 'bob@example.test', 10)),
          stored(entry('2', 'Alice', 'alice@example.test', 20)),
          stored(entry('4', 'Dan', 'dan@example.test', 40)),
          stored(entry('30', 'Carol', 'carol@example.test', 30)),
        ]);
        assert.deepEqual(await store.findUserByUsername('alice'), { id: '2', username: 'Alice' });
        assert.deepEqual(await store.findUserByEmail('bob@example.test'), { id: '1', username: 'Bob' });
        assert.equal(await store.findUserByUsername('caroline'), undefined);
        assert.deepEqual(await store.listPendingUsers(), []);
      });

      test('replaceUsers: accounts whose row goes lose everything; the others keep theirs', async (t) => {
        const store = await threeUsers(t);
        await store.insertSessionIfEpoch(session('a1', '1'), 0);
        await store.insertSessionIfEpoch(session('b1', '2'), 0);
        await store.insertSessionIfEpoch(session('b2', '2'), 0);
        await store.insertSessionIfEpoch(session('c1', '30'), 0);
        await store.endCredentials('2', 'b1');
        await store.insertSessionIfEpoch(session('b3', '2'), 1);
        await store.replaceRelationshipPair('1', '2', { mine: undefined, theirs: undefined }, { mine: 'friend', theirs: 'friend' }, '50');
        await store.replaceRelationshipPair('30', '1', { mine: undefined, theirs: undefined }, { mine: 'block', theirs: undefined }, '51');
        await store.replaceRelationshipPair('1', '30', { mine: undefined, theirs: 'block' }, { mine: 'block', theirs: 'block' }, '52');
        await store.openDmChannel('1', '2', '60', 1000);
        await store.openDmChannel('30', '1', '61', 1000);
        await store.insertMailToken(mailToken('b', '2', 'verify_email'), 1000);
        await store.insertMailToken(mailToken('a', '1', 'verify_email'), 1000);
        await store.claimNames('2', { username: 'Robert' });

        // Bob and Carol's files are gone; Alice keeps her row, Dan is new and takes Bob's old name.
        const removed = await store.replaceUsers([entry('1', 'Alice'), entry('4', 'Bob', 'bob@example.test')]);
        assert.deepEqual(sorted(removed), ['2', '30']);
        assert.equal(await store.countUsers(), 2);
        assert.deepEqual(await store.findUserByUsername('bob'), { id: '4', username: 'Bob' });
        assert.equal(await store.findUserByUsername('robert'), undefined);
        assert.equal(await store.findUserByEmail('carol@example.test'), undefined);
        assert.deepEqual(await store.listPendingUsers(), []);
        // Sessions: only Alice's.
        assert.deepEqual([...(await store.existingSessions(['a1', 'b1', 'b2', 'b3', 'c1']))], ['a1']);
        assert.equal(await store.findSessionByTokenHash(tokenHash('session b1')), undefined);
        assert.deepEqual(await store.listUserSessions('2'), []);
        assert.equal(await store.readCredentialEpoch('2'), 0);
        // Relationships and DM channels with them, both ways.
        assert.deepEqual(await store.listRelationships('1'), []);
        assert.deepEqual(await store.listRelationships('2'), []);
        assert.deepEqual(await store.listRelationships('30'), []);
        assert.deepEqual(await store.readRelationshipPair('1', '30'), { mine: undefined, theirs: undefined });
        assert.deepEqual(await store.listDmChannels('1'), []);
        assert.deepEqual(await store.listDmChannels('2'), []);
        // Their mail tokens, not Alice's.
        assert.equal(await store.findLiveMailToken(tokenHash('mail b'), 'verify_email', 1000), undefined);
        assert.deepEqual(await store.findLiveMailToken(tokenHash('mail a'), 'verify_email', 1000), { user_id: '1', email_lower: '1@example.test' });
        // An account indexed again under a removed id starts with nothing.
        await store.indexUser(entry('2', 'Bobby'));
        assert.deepEqual(await store.listUserSessions('2'), []);
        assert.deepEqual(await store.listRelationships('2'), []);
        assert.deepEqual(await store.listDmChannels('2'), []);
        // A pair whose channel went gets a new one.
        assert.equal(await store.openDmChannel('2', '1', '63', 1000), '63');
      });

      test('deleteUser removes the row and everything of the account, both ways, and returns the sessions it ended', async (t) => {
        const store = await threeUsers(t);
        await store.indexUser(entry('4', 'Dan'), session('d0', '4'));
        await store.insertSessionIfEpoch(session('b1', '2'), 0);
        await store.insertSessionIfEpoch(session('b2', '2'), 0);
        await store.insertSessionIfEpoch(session('a1', '1'), 0);
        await store.endCredentials('2', 'b2');
        await store.insertSessionIfEpoch(session('b3', '2'), 1);
        await store.replaceRelationshipPair('1', '2', { mine: undefined, theirs: undefined }, { mine: 'outgoing_request', theirs: 'incoming_request' }, '50');
        // A block is a row on the blocker's side only: Carol's row about Bob must go too.
        await store.replaceRelationshipPair('30', '2', { mine: undefined, theirs: undefined }, { mine: 'block', theirs: undefined }, '51');
        await store.replaceRelationshipPair('2', '4', { mine: undefined, theirs: undefined }, { mine: 'block', theirs: undefined }, '52');
        await store.replaceRelationshipPair('1', '30', { mine: undefined, theirs: undefined }, { mine: 'friend', theirs: 'friend' }, '53');
        await store.openDmChannel('1', '2', '60', 1000);
        await store.openDmChannel('2', '30', '61', 1000);
        const kept = await store.openDmChannel('1', '30', '62', 1000);
        await store.insertMailToken(mailToken('b-verify', '2', 'verify_email'), 1000);
        await store.insertMailToken(mailToken('b-reset', '2', 'reset_password'), 1000);
        await store.insertMailToken(mailToken('a-reset', '1', 'reset_password'), 1000);
        await store.claimNames('2', { username: 'Robert' });

        assert.deepEqual(sorted(await store.deleteUser('2')), ['b2', 'b3']);
        assert.equal(await store.findUserById('2'), undefined);
        assert.equal(await store.findUserByUsername('robert'), undefined);
        assert.equal(await store.findUserByEmail('bob@example.test'), undefined);
        assert.equal(await store.countUsers(), 3);
        assert.deepEqual(await store.listPendingUsers(), []);
        assert.deepEqual(await store.listUserSessions('2'), []);
        assert.equal(await store.findSessionByTokenHash(tokenHash('session b2')), undefined);
        assert.equal(await store.readCredentialEpoch('2'), 0);
        assert.deepEqual(await store.listRelationships('1'), [{ other_id: '30', type: 'friend' }]);
        assert.deepEqual(await store.listRelationships('30'), [{ other_id: '1', type: 'friend' }]);
        assert.deepEqual(await store.listRelationships('4'), []);
        assert.deepEqual(await store.readRelationshipPair('2', '4'), { mine: undefined, theirs: undefined });
        assert.deepEqual(await store.listDmChannels('1'), [{ id: kept, recipient_id: '30', last_message_id: null }]);
        assert.deepEqual(await store.listDmChannels('30'), [{ id: kept, recipient_id: '1', last_message_id: null }]);
        assert.equal(await store.findLiveMailToken(tokenHash('mail b-verify'), 'verify_email', 1000), undefined);
        assert.equal(await store.findLiveMailToken(tokenHash('mail b-reset'), 'reset_password', 1000), undefined);
        assert.deepEqual(await store.findLiveMailToken(tokenHash('mail a-reset'), 'reset_password', 1000), { user_id: '1', email_lower: '1@example.test' });
        assert.deepEqual(sorted(await store.existingSessions(['a1', 'd0', 'b2'])), ['a1', 'd0']);
        // Run again (a deletion finished later): nothing to do, no error.
        assert.deepEqual(await store.deleteUser('2'), []);
        assert.deepEqual(await store.deleteUser('999'), []);
        // The names are free, and the id starts from nothing if indexed again.
        await store.indexUser(entry('2', 'Bob'));
        assert.deepEqual(await store.listRelationships('2'), []);
        assert.deepEqual(await store.listDmChannels('2'), []);
        assert.equal(await store.openDmChannel('1', '2', '63', 1000), '63');
      });

      test('writes naming a user who is not indexed are refused', async (t) => {
        const store = await threeUsers(t);
        await assert.rejects(store.openDmChannel('1', '404', '60', 1000));
        await assert.rejects(store.replaceRelationshipPair('1', '404', { mine: undefined, theirs: undefined }, { mine: 'block', theirs: undefined }, '50'));
        await assert.rejects(store.insertMailToken(mailToken('x', '404', 'verify_email'), 1000));
        assert.deepEqual(await store.listDmChannels('1'), []);
        assert.deepEqual(await store.listRelationships('1'), []);
        assert.equal(await store.findLiveMailToken(tokenHash('mail x'), 'verify_email', 1000), undefined);
        assert.equal(await store.insertSessionIfEpoch(session('s', '404'), 0), false);
        await assert.rejects(store.endCredentials('404', null));
        await assert.rejects(store.claimNames('404', { username: 'nobody' }));
        assert.equal(await store.readCredentialEpoch('404'), 0);
        assert.equal(await store.findUserByUsername('nobody'), undefined);
        assert.deepEqual(await store.listPendingUsers(), []);
      });
    });

    describe('sessions and the credential epoch', () => {
      test('the epoch starts at 0 and moves on with every credential change', async (t) => {
        const store = await threeUsers(t);
        assert.equal(await store.readCredentialEpoch('1'), 0);
        await store.endCredentials('1', null);
        assert.equal(await store.readCredentialEpoch('1'), 1);
        await store.endCredentials('1', null);
        assert.equal(await store.readCredentialEpoch('1'), 2);
        assert.equal(await store.readCredentialEpoch('2'), 0);
      });

      test('insertSessionIfEpoch starts a session only at the current epoch and for an indexed account', async (t) => {
        const store = await threeUsers(t);
        assert.equal(await store.insertSessionIfEpoch(session('s1', '1', 1100, { userAgent: 'ua' }), 0), true);
        await store.endCredentials('1', 's1');
        // A login that read epoch 0 before the change gets nothing.
        assert.equal(await store.insertSessionIfEpoch(session('s2', '1'), 0), false);
        assert.equal(await store.findSessionByTokenHash(tokenHash('session s2')), undefined);
        assert.equal(await store.insertSessionIfEpoch(session('s3', '1'), 1), true);
        assert.equal(await store.insertSessionIfEpoch(session('s4', '99'), 0), false);
        assert.deepEqual(await store.listUserSessions('99'), []);
        assert.deepEqual(await store.findSessionByTokenHash(tokenHash('session s1')), { id: 's1', user_id: '1', created_at: 1100, last_used_at: 1100 });
        assert.equal(await store.findSessionByTokenHash(tokenHash('unknown')), undefined);
      });

      test("a user's sessions are listed most recently used first, ties by larger id (as a number) first", async (t) => {
        const store = await threeUsers(t);
        // Session ids are snowflakes: 10 is larger than 9, and 100 than 99.
        await store.insertSessionIfEpoch(session('5', '1', 100, { userAgent: 'agent a', deviceName: 'phone' }), 0);
        await store.insertSessionIfEpoch(session('9', '1', 300), 0);
        await store.insertSessionIfEpoch(session('10', '1', 300), 0);
        await store.insertSessionIfEpoch(session('8', '1', 300), 0);
        await store.insertSessionIfEpoch(session('99', '1', 200), 0);
        await store.insertSessionIfEpoch(session('100', '1', 200), 0);
        await store.insertSessionIfEpoch(session('7', '2', 999), 0);
        await store.touchSession('5', 400);
        assert.deepEqual(await store.listUserSessions('1'), [
          { id: '5', device_name: 'phone', user_agent: 'agent a', created_at: 100, last_used_at: 400 },
          { id: '10', device_name: 'device 10', user_agent: null, created_at: 300, last_used_at: 300 },
          { id: '9', device_name: 'device 9', user_agent: null, created_at: 300, last_used_at: 300 },
          { id: '8', device_name: 'device 8', user_agent: null, created_at: 300, last_used_at: 300 },
          { id: '100', device_name: 'device 100', user_agent: null, created_at: 200, last_used_at: 200 },
          { id: '99', device_name: 'device 99', user_agent: null, created_at: 200, last_used_at: 200 },
        ]);
      });

      test('touchSession records a use; a session that is gone stays gone', async (t) => {
        const store = await threeUsers(t);
        await store.insertSessionIfEpoch(session('s1', '1', 100), 0);
        await store.touchSession('s1', 250);
        assert.deepEqual(await store.findSessionByTokenHash(tokenHash('session s1')), { id: 's1', user_id: '1', created_at: 100, last_used_at: 250 });
        assert.equal(await store.deleteSession('s1'), true);
        await store.touchSession('s1', 300);
        await store.touchSession('never', 300);
        assert.equal(await store.findSessionByTokenHash(tokenHash('session s1')), undefined);
        assert.deepEqual([...(await store.existingSessions(['s1', 'never']))], []);
        assert.deepEqual(await store.listUserSessions('1'), []);
        // Nor does a sweep's touch bring it back.
        assert.deepEqual(await store.sweepSessions(['s1'], 300, 0, 0), []);
        assert.deepEqual([...(await store.existingSessions(['s1']))], []);
      });

      test('deleteSession and deleteUserSession say whether they deleted', async (t) => {
        const store = await threeUsers(t);
        await store.insertSessionIfEpoch(session('s1', '1'), 0);
        await store.insertSessionIfEpoch(session('s2', '1'), 0);
        assert.equal(await store.deleteSession('s1'), true);
        assert.equal(await store.deleteSession('s1'), false);
        assert.equal(await store.findSessionByTokenHash(tokenHash('session s1')), undefined);
        // Only the owner's deletion deletes.
        assert.equal(await store.deleteUserSession('2', 's2'), false);
        assert.deepEqual([...(await store.existingSessions(['s2']))], ['s2']);
        assert.equal(await store.deleteUserSession('1', 's2'), true);
        assert.equal(await store.deleteUserSession('1', 's2'), false);
        assert.deepEqual(await store.listUserSessions('1'), []);
      });

      test('deleteOtherSessions keeps one session of the user and no one else’s is touched', async (t) => {
        const store = await threeUsers(t);
        for (const id of ['s1', 's2', 's3']) await store.insertSessionIfEpoch(session(id, '1'), 0);
        await store.insertSessionIfEpoch(session('b1', '2'), 0);
        assert.deepEqual(sorted(await store.deleteOtherSessions('1', 's2')), ['s1', 's3']);
        assert.deepEqual(
          (await store.listUserSessions('1')).map((s) => s.id),
          ['s2'],
        );
        assert.deepEqual(await store.deleteOtherSessions('1', 's2'), []);
        assert.deepEqual([...(await store.existingSessions(['b1']))], ['b1']);
        // It is no credential change.
        assert.equal(await store.readCredentialEpoch('1'), 0);
      });

      test('endCredentials moves the epoch on and ends every other session (null: all of them)', async (t) => {
        const store = await threeUsers(t);
        for (const id of ['s1', 's2', 's3']) await store.insertSessionIfEpoch(session(id, '1'), 0);
        await store.insertSessionIfEpoch(session('b1', '2'), 0);
        assert.deepEqual(sorted(await store.endCredentials('1', 's3')), ['s1', 's2']);
        assert.equal(await store.readCredentialEpoch('1'), 1);
        assert.deepEqual(
          (await store.listUserSessions('1')).map((s) => s.id),
          ['s3'],
        );
        assert.deepEqual(await store.endCredentials('1', null), ['s3']);
        assert.equal(await store.readCredentialEpoch('1'), 2);
        assert.deepEqual(await store.listUserSessions('1'), []);
        assert.equal(await store.findSessionByTokenHash(tokenHash('session s3')), undefined);
        assert.deepEqual([...(await store.existingSessions(['b1']))], ['b1']);
        assert.equal(await store.readCredentialEpoch('2'), 0);
      });

      test('sweepSessions records the uses first, then deletes sessions idle or old at or before the limits', async (t) => {
        const store = await threeUsers(t);
        // created_at = last_used_at = the session's `now`; touches move last_used_at on.
        await store.insertSessionIfEpoch(session('idle', '1', 100), 0);
        await store.insertSessionIfEpoch(session('idle-edge', '1', 200), 0);
        await store.insertSessionIfEpoch(session('fresh', '1', 201), 0);
        await store.insertSessionIfEpoch(session('old-but-used', '2', 50), 0);
        await store.touchSession('old-but-used', 900);
        await store.insertSessionIfEpoch(session('open-socket', '2', 150), 0);
        await store.insertSessionIfEpoch(session('old-open-socket', '30', 60), 0);
        // At 1000: idle at or before 200 goes, created at or before 60 goes; the open sockets count as a use now.
        const ended = await store.sweepSessions(['open-socket', 'old-open-socket', 'unknown'], 1000, 200, 60);
        assert.deepEqual(sorted(ended), ['idle', 'idle-edge', 'old-but-used', 'old-open-socket']);
        assert.deepEqual(sorted(await store.existingSessions(['idle', 'idle-edge', 'fresh', 'old-but-used', 'open-socket', 'old-open-socket'])), [
          'fresh',
          'open-socket',
        ]);
        assert.deepEqual(await store.findSessionByTokenHash(tokenHash('session open-socket')), {
          id: 'open-socket',
          user_id: '2',
          created_at: 150,
          last_used_at: 1000,
        });
        assert.deepEqual(await store.sweepSessions([], 1000, 200, 60), []);
      });

      test('existingSessions answers which of the ids exist', async (t) => {
        const store = await threeUsers(t);
        await store.insertSessionIfEpoch(session('s1', '1'), 0);
        await store.insertSessionIfEpoch(session('s2', '2'), 0);
        assert.deepEqual(sorted(await store.existingSessions(['s2', 'nope', 's1'])), ['s1', 's2']);
        assert.deepEqual([...(await store.existingSessions([]))], []);
      });
    });

    describe('relationships', () => {
      const none = { mine: undefined, theirs: undefined };

      test('a pair is written as a whole, each side its own view', async (t) => {
        const store = await threeUsers(t);
        assert.deepEqual(await store.readRelationshipPair('1', '2'), none);
        assert.equal(await store.replaceRelationshipPair('1', '2', none, { mine: 'outgoing_request', theirs: 'incoming_request' }, '10'), true);
        assert.deepEqual(await store.readRelationshipPair('1', '2'), { mine: 'outgoing_request', theirs: 'incoming_request' });
        assert.deepEqual(await store.readRelationshipPair('2', '1'), { mine: 'incoming_request', theirs: 'outgoing_request' });
        assert.deepEqual(await store.listRelationships('1'), [{ other_id: '2', type: 'outgoing_request' }]);
        assert.deepEqual(await store.listRelationships('2'), [{ other_id: '1', type: 'incoming_request' }]);
        // Accepted from the other side.
        assert.equal(
          await store.replaceRelationshipPair('2', '1', { mine: 'incoming_request', theirs: 'outgoing_request' }, { mine: 'friend', theirs: 'friend' }, '11'),
          true,
        );
        assert.deepEqual(await store.readRelationshipPair('1', '2'), { mine: 'friend', theirs: 'friend' });
        // One side blocks: the other's row goes.
        assert.equal(await store.replaceRelationshipPair('2', '1', { mine: 'friend', theirs: 'friend' }, { mine: 'block', theirs: undefined }, '12'), true);
        assert.deepEqual(await store.readRelationshipPair('1', '2'), { mine: undefined, theirs: 'block' });
        assert.deepEqual(await store.listRelationships('1'), []);
        assert.deepEqual(await store.listRelationships('2'), [{ other_id: '1', type: 'block' }]);
        // Unblocked: no row at all.
        assert.equal(await store.replaceRelationshipPair('2', '1', { mine: 'block', theirs: undefined }, none, '13'), true);
        assert.deepEqual(await store.readRelationshipPair('1', '2'), none);
        assert.deepEqual(await store.listRelationships('2'), []);
      });

      test('a pair that is no longer as expected is not written and answers false', async (t) => {
        const store = await threeUsers(t);
        await store.replaceRelationshipPair('1', '2', none, { mine: 'outgoing_request', theirs: 'incoming_request' }, '10');
        assert.equal(await store.replaceRelationshipPair('1', '2', none, { mine: 'block', theirs: undefined }, '11'), false);
        assert.equal(await store.replaceRelationshipPair('1', '2', { mine: 'outgoing_request', theirs: undefined }, none, '11'), false);
        assert.equal(await store.replaceRelationshipPair('1', '2', { mine: 'incoming_request', theirs: 'outgoing_request' }, none, '11'), false);
        assert.deepEqual(await store.readRelationshipPair('1', '2'), { mine: 'outgoing_request', theirs: 'incoming_request' });
        assert.equal(await store.replaceRelationshipPair('1', '30', { mine: 'friend', theirs: 'friend' }, none, '12'), false);
        assert.equal(await store.replaceRelationshipPair('1', '30', { mine: undefined, theirs: 'friend' }, { mine: 'friend', theirs: 'friend' }, '12'), false);
        assert.deepEqual(await store.readRelationshipPair('1', '30'), none);
      });

      test('of concurrent changes from one expected pair, exactly one is written', async (t) => {
        const store = await threeUsers(t);
        const results = await Promise.all([
          store.replaceRelationshipPair('1', '2', none, { mine: 'outgoing_request', theirs: 'incoming_request' }, '10'),
          store.replaceRelationshipPair('2', '1', none, { mine: 'outgoing_request', theirs: 'incoming_request' }, '11'),
          store.replaceRelationshipPair('1', '2', none, { mine: 'block', theirs: undefined }, '12'),
          store.replaceRelationshipPair('2', '1', none, { mine: 'block', theirs: undefined }, '13'),
        ]);
        assert.equal(results.filter(Boolean).length, 1, JSON.stringify(results));
      });

      test('relationships are listed most recently changed first (changed ids as numbers); an unchanged type keeps its changed id', async (t) => {
        const store = await fresh(t);
        for (const id of ['1', '2', '3', '4']) await store.indexUser(entry(id, `user${id}`));
        const friends = { mine: 'friend', theirs: 'friend' } as const;
        await store.replaceRelationshipPair('1', '2', none, friends, '9');
        await store.replaceRelationshipPair('1', '3', none, friends, '10');
        await store.replaceRelationshipPair('1', '4', none, friends, '100');
        assert.deepEqual(
          (await store.listRelationships('1')).map((r) => r.other_id),
          ['4', '3', '2'],
        );
        // 2 blocks 1: 1's row goes, 2's row changes (changed id 200 for 2's side only).
        await store.replaceRelationshipPair('2', '1', friends, { mine: 'block', theirs: undefined }, '200');
        assert.deepEqual(
          (await store.listRelationships('1')).map((r) => r.other_id),
          ['4', '3'],
        );
        // A change of 3's side only: 1's row keeps its type, so keeps its changed id (10).
        await store.replaceRelationshipPair('1', '3', friends, { mine: 'friend', theirs: 'block' }, '300');
        assert.deepEqual(await store.listRelationships('1'), [
          { other_id: '4', type: 'friend' },
          { other_id: '3', type: 'friend' },
        ]);
        assert.deepEqual(await store.listRelationships('3'), [{ other_id: '1', type: 'block' }]);
        // Now 1's row about 3 changes: it is the most recent.
        await store.replaceRelationshipPair('1', '3', { mine: 'friend', theirs: 'block' }, { mine: 'block', theirs: 'block' }, '1000');
        assert.deepEqual(await store.listRelationships('1'), [
          { other_id: '3', type: 'block' },
          { other_id: '4', type: 'friend' },
        ]);
      });
    });

    describe('DM channels', () => {
      test('a pair has one channel, whoever opens it; each side lists it with the other as recipient', async (t) => {
        const store = await threeUsers(t);
        assert.equal(await store.openDmChannel('2', '1', '50', 1000), '50');
        assert.equal(await store.openDmChannel('1', '2', '51', 1001), '50');
        assert.equal(await store.openDmChannel('2', '1', '52', 1002), '50');
        assert.deepEqual(await store.listDmChannels('1'), [{ id: '50', recipient_id: '2', last_message_id: null }]);
        assert.deepEqual(await store.listDmChannels('2'), [{ id: '50', recipient_id: '1', last_message_id: null }]);
        assert.deepEqual(await store.listDmChannels('30'), []);
      });

      test('of many concurrent opens from both sides, one creates the channel and all answer it', async (t) => {
        const store = await threeUsers(t);
        const ids = await Promise.all(
          Array.from({ length: 16 }, (_, i) =>
            i % 2 === 0 ? store.openDmChannel('1', '30', String(100 + i), 1000) : store.openDmChannel('30', '1', String(100 + i), 1000),
          ),
        );
        assert.equal(new Set(ids).size, 1, JSON.stringify(ids));
        assert.ok(Number(ids[0]) >= 100 && Number(ids[0]) < 116);
        assert.deepEqual(await store.listDmChannels('1'), [{ id: ids[0], recipient_id: '30', last_message_id: null }]);
        assert.deepEqual(await store.listDmChannels('30'), [{ id: ids[0], recipient_id: '1', last_message_id: null }]);
      });

      test('channels are listed most recent first (ids as numbers)', async (t) => {
        const store = await fresh(t);
        for (const id of ['1', '2', '3', '4', '5']) await store.indexUser(entry(id, `user${id}`));
        await store.openDmChannel('1', '2', '99', 1000);
        await store.openDmChannel('4', '1', '100', 1000);
        await store.openDmChannel('1', '3', '1000', 1000);
        await store.openDmChannel('5', '1', '999', 1000);
        assert.deepEqual(
          (await store.listDmChannels('1')).map((c) => [c.id, c.recipient_id]),
          [
            ['1000', '3'],
            ['999', '5'],
            ['100', '4'],
            ['99', '2'],
          ],
        );
      });
    });

    describe('mail tokens', () => {
      test('a token of a digest stored already is refused while that one is live, and replaces it once it expired by `now`', async (t) => {
        const store = await threeUsers(t);
        await store.insertMailToken(mailToken('t', '1', 'verify_email', 2000), 1000);
        await assert.rejects(store.insertMailToken(mailToken('t', '2', 'reset_password', 3000), 1999));
        assert.deepEqual(await store.findLiveMailToken(tokenHash('mail t'), 'verify_email', 1000), { user_id: '1', email_lower: '1@example.test' });
        // Expired at 2000: swept on the way, as every expired token, so the new one takes its place.
        await store.insertMailToken(mailToken('t', '2', 'reset_password', 3000), 2000);
        assert.equal(await store.findLiveMailToken(tokenHash('mail t'), 'verify_email', 1000), undefined);
        assert.deepEqual(await store.findLiveMailToken(tokenHash('mail t'), 'reset_password', 2000), { user_id: '2', email_lower: '2@example.test' });
        assert.deepEqual(await store.spendResetToken(tokenHash('mail t'), '2', 2000), []);
      });

      test('a token is found only for its purpose and while live at `now`', async (t) => {
        const store = await threeUsers(t);
        await store.insertMailToken({ ...mailToken('v', '1', 'verify_email', 2000), emailLower: 'alice@example.test' }, 1000);
        const hash = tokenHash('mail v');
        assert.deepEqual(await store.findLiveMailToken(hash, 'verify_email', 1999), { user_id: '1', email_lower: 'alice@example.test' });
        assert.equal(await store.findLiveMailToken(hash, 'reset_password', 1000), undefined);
        assert.equal(await store.findLiveMailToken(hash, 'verify_email', 2000), undefined);
        assert.equal(await store.findLiveMailToken(tokenHash('mail unknown'), 'verify_email', 1000), undefined);
        // Expired is not gone: an earlier `now` (a clock moved back) still finds it.
        assert.deepEqual(await store.findLiveMailToken(hash, 'verify_email', 1500), { user_id: '1', email_lower: 'alice@example.test' });
      });

      test('takeLiveMailToken deletes a live token of its purpose, and of concurrent takers exactly one gets it', async (t) => {
        const store = await threeUsers(t);
        await store.insertMailToken(mailToken('r', '1', 'reset_password', 2000), 1000);
        const hash = tokenHash('mail r');
        assert.equal(await store.takeLiveMailToken(hash, 'verify_email', 1000), false);
        assert.equal(await store.takeLiveMailToken(hash, 'reset_password', 2000), false);
        assert.ok(await store.findLiveMailToken(hash, 'reset_password', 1000), 'a refused take leaves the token');
        const taken = await Promise.all(Array.from({ length: 12 }, () => store.takeLiveMailToken(hash, 'reset_password', 1500)));
        assert.equal(taken.filter(Boolean).length, 1);
        assert.equal(await store.findLiveMailToken(hash, 'reset_password', 1000), undefined);
        assert.equal(await store.takeLiveMailToken(hash, 'reset_password', 1000), false);
      });

      test('spendResetToken spends every reset token of the account, moves the epoch on and ends every session', async (t) => {
        const store = await threeUsers(t);
        for (const id of ['s1', 's2']) await store.insertSessionIfEpoch(session(id, '1'), 0);
        await store.insertSessionIfEpoch(session('b1', '2'), 0);
        await store.insertMailToken(mailToken('r1', '1', 'reset_password', 2000), 1000);
        await store.insertMailToken(mailToken('r2', '1', 'reset_password', 3000), 1000);
        await store.insertMailToken(mailToken('v1', '1', 'verify_email', 3000), 1000);
        await store.insertMailToken(mailToken('rb', '2', 'reset_password', 3000), 1000);
        assert.deepEqual(sorted((await store.spendResetToken(tokenHash('mail r1'), '1', 1500)) ?? ['null']), ['s1', 's2']);
        assert.equal(await store.readCredentialEpoch('1'), 1);
        assert.deepEqual(await store.listUserSessions('1'), []);
        assert.equal(await store.findLiveMailToken(tokenHash('mail r1'), 'reset_password', 1500), undefined);
        assert.equal(await store.findLiveMailToken(tokenHash('mail r2'), 'reset_password', 1500), undefined);
        assert.ok(await store.findLiveMailToken(tokenHash('mail v1'), 'verify_email', 1500), 'other purposes stay');
        assert.ok(await store.findLiveMailToken(tokenHash('mail rb'), 'reset_password', 1500), "other accounts' tokens stay");
        assert.deepEqual([...(await store.existingSessions(['b1']))], ['b1']);
        // Spent: a second use does nothing.
        assert.equal(await store.spendResetToken(tokenHash('mail r1'), '1', 1500), null);
        assert.equal(await store.readCredentialEpoch('1'), 1);
        // With no session left, it still spends and moves the epoch on.
        await store.insertMailToken(mailToken('r3', '1', 'reset_password', 3000), 1000);
        assert.deepEqual(await store.spendResetToken(tokenHash('mail r3'), '1', 1500), []);
        assert.equal(await store.readCredentialEpoch('1'), 2);
      });

      test('spendResetToken of a token not live, or not a reset token, changes nothing and answers null', async (t) => {
        const store = await threeUsers(t);
        await store.insertSessionIfEpoch(session('s1', '1'), 0);
        await store.insertMailToken(mailToken('r', '1', 'reset_password', 2000), 1000);
        await store.insertMailToken(mailToken('v', '1', 'verify_email', 3000), 1000);
        assert.equal(await store.spendResetToken(tokenHash('mail r'), '1', 2000), null);
        assert.equal(await store.spendResetToken(tokenHash('mail v'), '1', 1500), null);
        assert.equal(await store.spendResetToken(tokenHash('mail unknown'), '1', 1500), null);
        await store.insertSessionIfEpoch(session('s2', '2'), 0);
        assert.equal(await store.spendResetToken(tokenHash('mail r'), '2', 1500), null, "another account's token ends nothing of this one");
        assert.deepEqual([...(await store.existingSessions(['s2']))], ['s2']);
        assert.equal(await store.readCredentialEpoch('2'), 0);
        assert.equal(await store.readCredentialEpoch('1'), 0);
        assert.deepEqual([...(await store.existingSessions(['s1']))], ['s1']);
        assert.ok(await store.findLiveMailToken(tokenHash('mail r'), 'reset_password', 1500));
        assert.ok(await store.findLiveMailToken(tokenHash('mail v'), 'verify_email', 1500));
      });

      test('of concurrent spends of one reset token exactly one succeeds', async (t) => {
        const store = await threeUsers(t);
        await store.insertSessionIfEpoch(session('s1', '1'), 0);
        await store.insertMailToken(mailToken('r', '1', 'reset_password', 2000), 1000);
        const results = await Promise.all(Array.from({ length: 8 }, () => store.spendResetToken(tokenHash('mail r'), '1', 1500)));
        assert.deepEqual(
          results.filter((r) => r !== null),
          [['s1']],
        );
        assert.equal(await store.readCredentialEpoch('1'), 1);
      });

      test('deleteMailToken and deleteMailTokensOf (one purpose, or all)', async (t) => {
        const store = await threeUsers(t);
        await store.insertMailToken(mailToken('a-v1', '1', 'verify_email'), 1000);
        await store.insertMailToken(mailToken('a-v2', '1', 'verify_email'), 1000);
        await store.insertMailToken(mailToken('a-r1', '1', 'reset_password'), 1000);
        await store.insertMailToken(mailToken('b-v1', '2', 'verify_email'), 1000);
        await store.insertMailToken(mailToken('b-r1', '2', 'reset_password'), 1000);
        const live = async () => {
          const found: string[] = [];
          for (const [name, purpose] of [
            ['a-v1', 'verify_email'],
            ['a-v2', 'verify_email'],
            ['a-r1', 'reset_password'],
            ['b-v1', 'verify_email'],
            ['b-r1', 'reset_password'],
          ] as const)
            if (await store.findLiveMailToken(tokenHash(`mail ${name}`), purpose, 1000)) found.push(name);
          return found;
        };
        await store.deleteMailToken(tokenHash('mail a-v2'));
        await store.deleteMailToken(tokenHash('mail unknown'));
        assert.deepEqual(await live(), ['a-v1', 'a-r1', 'b-v1', 'b-r1']);
        await store.deleteMailTokensOf('1', 'verify_email');
        assert.deepEqual(await live(), ['a-r1', 'b-v1', 'b-r1']);
        await store.deleteMailTokensOf('2');
        assert.deepEqual(await live(), ['a-r1']);
        await store.deleteMailTokensOf('404');
        await store.deleteMailTokensOf('1', 'reset_password');
        assert.deepEqual(await live(), []);
      });
    });
  });
}

describe('the Redis directory: Redis itself', { skip: missingRedis() }, () => {
  test('a Redis that cannot be reached makes every call reject with a retryable error (503), never hang', async (t) => {
    const server = await RedisServer.start();
    t.after(() => server.close());
    const redis = await connectTo(server);
    t.after(() => redis.disconnect());
    const store = new RedisDirectory(redis);
    await store.indexUser(entry('1', 'Alice'));
    await server.stop();
    const calls: [string, () => Promise<unknown>][] = [
      ['findUserById', () => store.findUserById('1')],
      ['indexUser', () => store.indexUser(entry('2', 'Bob'))],
      ['findSessionByTokenHash', () => store.findSessionByTokenHash(tokenHash('x'))],
      ['existingSessions', () => store.existingSessions(['x'])],
      ['listRelationships', () => store.listRelationships('1')],
    ];
    for (const [name, call] of calls) {
      await assert.rejects(call(), (error: unknown) => {
        assert.ok(isRetryableStorageError(error), `${name}: ${String(error)}`);
        return true;
      });
    }
  });

  test('a Redis that stopped answering (paused) makes calls reject with a retryable error after the command timeout', async (t) => {
    const server = await RedisServer.start();
    t.after(() => server.close());
    const redis = await connectTo(server);
    t.after(() => redis.disconnect());
    const store = new RedisDirectory(redis);
    server.pause();
    t.after(() => server.resume());
    await Promise.all([
      assert.rejects(store.countUsers(), (error: unknown) => isRetryableStorageError(error)),
      assert.rejects(store.deleteUser('1'), (error: unknown) => isRetryableStorageError(error)),
    ]);
  });

  test('a refused misuse is no retryable failure', async (t) => {
    const opened = await openRedis();
    t.after(() => opened.close());
    await opened.store.indexUser(entry('1', 'Alice'));
    await assert.rejects(
      opened.store.indexUser(entry('1', 'Other')),
      (error: unknown) => !isRetryableStorageError(error) && !(error instanceof NameTakenError),
    );
  });

  test('deleting every account leaves no key of the directory behind', async (t) => {
    const server = await sharedRedis();
    const redis = await connectTo(server);
    t.after(() => redis.quit());
    await redis.flushdb();
    const store = new RedisDirectory(redis);
    const none = { mine: undefined, theirs: undefined };
    for (const id of ['1', '2', '3']) await store.indexUser(entry(id, `user${id}`), session(`s${id}`, id));
    await store.endCredentials('1', 's1');
    await store.insertSessionIfEpoch(session('s1b', '1'), 1);
    await store.claimNames('2', { username: 'renamed' });
    await store.replaceRelationshipPair('1', '2', none, { mine: 'friend', theirs: 'friend' }, '10');
    await store.replaceRelationshipPair('3', '1', none, { mine: 'block', theirs: undefined }, '11');
    await store.openDmChannel('1', '2', '20', 1000);
    await store.openDmChannel('3', '2', '21', 1000);
    await store.insertMailToken(mailToken('a', '1', 'verify_email'), 1000);
    await store.insertMailToken(mailToken('b', '2', 'reset_password'), 1000);
    await store.deleteUser('2');
    assert.deepEqual(sorted(await store.replaceUsers([])), ['1', '3']);
    assert.deepEqual(await redis.keys('plexichat:dir:*'), []);
  });

  test('scripts Redis forgot (a restart, SCRIPT FLUSH) are sent again', async (t) => {
    const server = await sharedRedis();
    const redis = await connectTo(server);
    t.after(() => redis.quit());
    await redis.flushdb();
    const store = new RedisDirectory(redis);
    await store.indexUser(entry('1', 'Alice'), session('s1', '1'));
    await redis.script('FLUSH');
    assert.deepEqual(await store.findSessionByTokenHash(tokenHash('session s1')), { id: 's1', user_id: '1', created_at: 1000, last_used_at: 1000 });
    assert.equal(store.changedElsewhere(), false);
  });
});

describe('directories an older version wrote, without cards', () => {
  test('Redis: upgradeLayout marks every row without a card pending, once; the rows read with no card until settled', {
    skip: missingRedis(),
  }, async (t) => {
    const redis = await connectTo(await sharedRedis());
    t.after(() => redis.quit());
    await redis.flushdb();
    const store = new RedisDirectory(redis);
    // Two rows as the previous version wrote them (names only), and one of this version.
    for (const [id, name] of [
      ['1', 'Alice'],
      ['2', 'Bob'],
    ] as const) {
      const lower = name.toLowerCase();
      await redis.hset(`plexichat:dir:user:${id}`, 'username', name, 'username_lower', lower, 'email_lower', `${lower}@example.test`, 'created_at', 1000);
      await redis.set(`plexichat:dir:username:${lower}`, id);
      await redis.set(`plexichat:dir:email:${lower}@example.test`, id);
      await redis.sadd('plexichat:dir:users', id);
    }
    await store.indexUser(entry('30', 'Carol'));
    assert.deepEqual(await store.findUserRow('1'), { id: '1', username: 'Alice', email_lower: 'alice@example.test', created_at: 1000, card: null });
    assert.deepEqual(await store.findUserById('1'), { id: '1', username: 'Alice' }, 'found by its names all the same');

    assert.equal(await store.upgradeLayout(), 2);
    assert.deepEqual(sorted(await store.listPendingUsers()), ['1', '2']);
    assert.deepEqual(
      (await store.listUsers()).map((row) => [row.id, row.card === null]),
      [
        ['1', true],
        ['2', true],
        ['30', false],
      ],
    );
    // Done once: a row left without a card later (none is: every write gives one) is not looked for again.
    await store.settleUser(entry('1', 'Alice', 'Alice@example.test', 1000, { badges: ['vip'] }));
    assert.equal(await store.upgradeLayout(), 0);
    assert.deepEqual(await store.listPendingUsers(), ['2']);
    assert.deepEqual(await store.findUserRow('1'), stored(entry('1', 'Alice', 'Alice@example.test', 1000, { badges: ['vip'] })));
  });

  test('SQLite: the migration that adds the card marks every existing row pending; the rows read with no card until settled', async (t) => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'plexichat-directory-'));
    t.after(() => fs.rmSync(dataDir, { recursive: true, force: true }));
    const old = openDatabase(path.join(dataDir, 'directory.sqlite'), { migrations: DIRECTORY_MIGRATIONS.slice(0, 6) });
    old.prepare("INSERT INTO users (id, username, username_lower, email_lower, created_at) VALUES ('1', 'Alice', 'alice', 'alice@example.test', 1000)").run();
    old.close();
    const store = new SqliteDirectory(dataDir);
    t.after(() => store.close());
    assert.deepEqual(await store.findUserRow('1'), { id: '1', username: 'Alice', email_lower: 'alice@example.test', created_at: 1000, card: null });
    assert.deepEqual(await store.listPendingUsers(), ['1']);
    await store.settleUser(entry('1', 'Alice', 'Alice@Example.test', 1000, { allowDmsFrom: 'none' }));
    assert.deepEqual(await store.findUserRow('1'), stored(entry('1', 'Alice', 'Alice@Example.test', 1000, { allowDmsFrom: 'none' })));
    assert.deepEqual(await store.listPendingUsers(), []);
  });
});
