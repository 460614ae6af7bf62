import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { ALLOW_DMS_FROM } from '../../shared/schemas/messaging-settings.ts';
import type { RelationshipType } from '../../shared/schemas/relationships.ts';
import { RedisDirectory } from '../../server/cluster/redis-directory.ts';
import {
  type DirectoryStore,
  type IndexEntry,
  type MailTokenPurpose,
  NameTakenError,
  type NewSession,
  type RelationshipPair,
} from '../../server/storage/directory-store.ts';
import { isRetryableStorageError } from '../../server/storage/errors.ts';
import { SqliteDirectory } from '../../server/storage/sqlite-directory.ts';
import { type FuzzRun, params } from './properties.ts';

/**
 * Property: the two directory stores (SQLite, one node; Redis, cluster mode) are one contract
 * (server/storage/directory-store.ts). Random sequences of calls over a small universe (4 users, 5
 * usernames and 5 emails differing in case, 6 sessions, 4 mail tokens, 4 DM channel ids, clocks that
 * go up and down), so that collisions are the common case, run against a fresh store of each kind:
 * every call answers the same in both (the same value, once put in the order the contract fixes; the
 * same kind of refusal), and at the end everything read back is equal. Some steps run two calls at
 * once, on two connections to the same store, where the contract makes the outcome deterministic:
 * the multiset of answers is compared, not which call got which.
 *
 * Both stores are driven by the same steps: when they differ, the failure names the step, and
 * fast-check shrinks the sequence to a short one.
 */

const USERS = ['1', '2', '30', '400'] as const;
/** Four names, one in two cases: enough for every user at once, and collisions all the same. */
const USERNAMES = ['alice', 'ALICE', 'bob', 'Carol', 'dave'] as const;
const EMAILS = ['a@x.test', 'A@X.test', 'b@x.test', 'c@x.test', 'd@x.test'] as const;
/** Snowflake-like, of different lengths: they are ordered as numbers, which strings are not. */
const SESSIONS = ['5', '9', '10', '88', '100', '1000'] as const;
const MAIL_TOKENS = ['m1', 'm2', 'm3', 'm4'] as const;
const CHANNELS = ['7', '60', '61', '800'] as const;
const NOWS = [1000, 1500, 2000, 2500, 3000] as const;
const PURPOSES: readonly MailTokenPurpose[] = ['verify_email', 'reset_password'];
const TYPES: readonly (RelationshipType | undefined)[] = [undefined, 'friend', 'incoming_request', 'outgoing_request', 'block'];

const sessionToken = (name: string) => createHash('sha256').update(`session ${name}`).digest();
const mailToken = (name: string) => createHash('sha256').update(`mail ${name}`).digest();

/** Two connections to one store: steps use the first, and both when they run two calls at once. */
type Stores = readonly [DirectoryStore, DirectoryStore];

/** What a call came to: its value (normalised), or the kind of refusal the contract distinguishes. */
type Outcome =
  | { ok: unknown }
  | { nameTaken: 'username' | 'email' }
  /** Any other refusal: misuse the store refused (`directory:` in Redis, a constraint in SQLite). */
  | { refused: true; message: string }
  | { retryable: true; message: string };

async function outcome(call: Promise<unknown>): Promise<Outcome> {
  try {
    return { ok: await call };
  } catch (error) {
    if (error instanceof NameTakenError) return { nameTaken: error.field };
    const message = error instanceof Error ? error.message : String(error);
    return isRetryableStorageError(error) ? { retryable: true, message } : { refused: true, message };
  }
}

/** The outcome as compared: a refusal's message is the store's own words (shown, not compared). */
function comparable(o: Outcome): unknown {
  return 'message' in o ? { ...o, message: undefined } : o;
}

/** A step's answer without the refusals' messages (JSON: `undefined` fields drop out). */
const withoutMessages = (value: unknown): unknown =>
  value === undefined ? value : JSON.parse(JSON.stringify(value, (key, v) => (key === 'message' ? undefined : v)));

/** Answers of calls run at once, in an order of their own (which call got which is not compared). */
function multiset(outcomes: Outcome[]): string[] {
  return outcomes.map((o) => JSON.stringify(comparable(o))).sort();
}

const sorted = (ids: Iterable<string>) => [...ids].sort();
/** `undefined` is no JSON: an absent row is null here. */
const orNull = <T>(value: T | undefined): T | null => value ?? null;

interface Step {
  readonly label: string;
  /** The relationship change id it writes, if any (see `changedId`). */
  readonly changedId?: string | undefined;
  /** Runs the step on one kind of store; returns what is compared with the other kind. */
  run(stores: Stores): Promise<unknown>;
}

/** One call, its value put in the order the contract fixes. */
interface Call {
  readonly label: string;
  call(store: DirectoryStore): Promise<unknown>;
  readonly changedId?: string;
  /** When run twice at once: what makes the two calls deterministic (a read done once, first). */
  twice?: (stores: Stores) => Promise<unknown>;
}

function step(label: string, run: (stores: Stores) => Promise<unknown>, changedId?: string): Step {
  return { label, run, changedId, [fc.toStringMethod]: () => label } as Step;
}

const single = (c: Call): Step => step(c.label, async ([store]) => outcome(c.call(store)), c.changedId);

/** The same call twice at once, on two connections: each write must be atomic for a deterministic pair of answers. */
const twice = (c: Call): Step =>
  step(
    `twice at once: ${c.label}`,
    async (stores) => {
      if (c.twice) return c.twice(stores);
      return multiset(await Promise.all([outcome(c.call(stores[0])), outcome(c.call(stores[1]))]));
    },
    c.changedId,
  );

// Arbitraries of the universe.

const user = fc.constantFrom(...USERS);
const username = fc.constantFrom(...USERNAMES);
const email = fc.constantFrom(...EMAILS);
const sid = fc.constantFrom(...SESSIONS);
const mail = fc.constantFrom(...MAIL_TOKENS);
/**
 * The user a session or mail token is most often about (its index among the users): calls that
 * need the right pair (deleting a user's session, spending a user's token) then mostly get it.
 */
const ownerOf = (name: string, names: readonly string[]) => USERS[names.indexOf(name) % USERS.length]!;
const userOr = (name: string, names: readonly string[]) =>
  fc.oneof({ arbitrary: fc.constant(ownerOf(name, names)), weight: 3 }, { arbitrary: user, weight: 1 });
const sessionAndUser = sid.chain((s) => userOr(s, SESSIONS).map((id) => [id, s] as const));
const mailAndUser = mail.chain((m) => userOr(m, MAIL_TOKENS).map((id) => [id, m] as const));
const now = fc.constantFrom(...NOWS);
const purpose = fc.constantFrom(...PURPOSES);
const relType = fc.constantFrom(...TYPES);
const pair = fc.record({ mine: relType, theirs: relType });
const twoUsers = fc.uniqueArray(user, { minLength: 2, maxLength: 2 }).map(([a, b]) => [a!, b!] as const);

/** A card: mostly a new account's, sometimes with an avatar, badges (in some order), DMs refused. */
const AVATARS = [null, 'a'.repeat(64), 'b'.repeat(64)] as const;
const BADGE_SETS: readonly string[][] = [[], ['vip'], ['vip', 'beta_tester'], ['beta_tester', 'vip']];
const card = fc.record({
  avatarHash: fc.constantFrom(...AVATARS),
  badges: fc.constantFrom(...BADGE_SETS).map((badges) => [...badges]),
  allowDmsFrom: fc.constantFrom(...ALLOW_DMS_FROM),
});
/** A new account's card. */
const newCard = (): Pick<IndexEntry, 'avatarHash' | 'badges' | 'allowDmsFrom'> => ({ avatarHash: null, badges: [], allowDmsFrom: 'everyone' });

const entry = fc
  .record({ id: user, username, email, createdAt: fc.constantFrom(1000, 2000), card })
  .map(({ card: c, ...names }): IndexEntry => ({ ...names, ...c }));

/** A session of `userId`: usually its token is its own, sometimes another session's (a collision). */
const newSession = (userId: string, id: fc.Arbitrary<string> = sid) =>
  fc
    .record({
      id,
      token: fc.oneof({ arbitrary: fc.constant(undefined), weight: 4 }, { arbitrary: sid, weight: 1 }),
      now,
      userAgent: fc.constantFrom(null, 'curl/8'),
      deviceName: fc.constantFrom('phone', 'laptop'),
    })
    .map((s): NewSession => ({ id: s.id, tokenHash: sessionToken(s.token ?? s.id), userId, now: s.now, userAgent: s.userAgent, deviceName: s.deviceName }));

const describeEntry = (e: IndexEntry) =>
  `(${e.id}, ${e.username}, ${e.email}, ${e.createdAt}, avatar ${e.avatarHash?.slice(0, 1) ?? '-'}, [${e.badges.join(' ')}], ${e.allowDmsFrom})`;
const describeSession = (s: NewSession) =>
  `{${s.id}, token ${s.tokenHash.toString('hex').slice(0, 6)}, user ${s.userId}, now ${s.now}, ${s.userAgent}, ${s.deviceName}}`;
const describePair = (p: RelationshipPair) => `{${p.mine ?? '-'}/${p.theirs ?? '-'}}`;

/**
 * A relationship's change id: a snowflake, never the same twice (a run that draws one twice is
 * skipped), of varied lengths since they are ordered as numbers. Rows listed by it would otherwise
 * tie, in an order the contract leaves open.
 */
const changedId = fc.tuple(fc.integer({ min: 1, max: 999 }), fc.nat(999_999)).map(([high, low]) => `${high}${String(low).padStart(6, '0')}`);

// The calls. Each `Call` answers a value whose order the contract fixes, or sorted when it does not.

/**
 * The first session is always the new account's own (`newSession(e.id)`): given another user's, the
 * stores differ (SQLite starts it for that user or fails, Redis starts it for the new account), but
 * no caller can do that — registration builds it from the id it indexes — so it is left out.
 */
const indexUser = fc
  .tuple(entry, fc.boolean())
  .chain(
    ([e, withSession]): fc.Arbitrary<[IndexEntry, NewSession | undefined]> => (withSession ? newSession(e.id).map((s) => [e, s]) : fc.constant([e, undefined])),
  )
  .map(
    ([e, s]): Call => ({
      label: `indexUser${describeEntry(e)}${s ? ` + ${describeSession(s)}` : ''}`,
      call: (store) => store.indexUser(e, s),
    }),
  );

const claimNames = fc
  .tuple(user, fc.option(username, { nil: undefined }), fc.option(email, { nil: undefined }))
  .map(([id, u, e]): Call => ({ label: `claimNames(${id}, ${u}, ${e})`, call: (store) => store.claimNames(id, { username: u, email: e }) }));

const markPending = user.map((id): Call => ({ label: `markPending(${id})`, call: (store) => store.markPending(id) }));

const settleUser = entry.map((e): Call => ({ label: `settleUser${describeEntry(e)}`, call: (store) => store.settleUser(e) }));

const replaceUsers = fc
  .uniqueArray(entry, { maxLength: 4, selector: (e) => e.id })
  .map(
    (entries): Call => ({ label: `replaceUsers[${entries.map(describeEntry).join(' ')}]`, call: async (store) => sorted(await store.replaceUsers(entries)) }),
  );

const deleteUser = user.map((id): Call => ({ label: `deleteUser(${id})`, call: async (store) => sorted(await store.deleteUser(id)) }));

const insertSessionIfEpoch = fc
  .tuple(
    sessionAndUser.chain(([id, s]) => newSession(id, fc.constant(s))),
    fc.oneof({ arbitrary: fc.constant('current' as const), weight: 3 }, { arbitrary: fc.integer({ min: 0, max: 2 }), weight: 1 }),
  )
  .map(
    ([s, epoch]): Call => ({
      label: `insertSessionIfEpoch(${describeSession(s)}, ${epoch})`,
      // 'current': as a login does, the epoch read first (that read is part of the answer).
      call: async (store) => {
        const at = epoch === 'current' ? await store.readCredentialEpoch(s.userId) : epoch;
        return [at, await store.insertSessionIfEpoch(s, at)];
      },
    }),
  );

const touchSession = fc.tuple(sid, now).map(([id, at]): Call => ({ label: `touchSession(${id}, ${at})`, call: (store) => store.touchSession(id, at) }));

const deleteSession = sid.map((id): Call => ({ label: `deleteSession(${id})`, call: (store) => store.deleteSession(id) }));

const deleteUserSession = sessionAndUser.map(([id, s]): Call => ({ label: `deleteUserSession(${id}, ${s})`, call: (store) => store.deleteUserSession(id, s) }));

const deleteOtherSessions = sessionAndUser.map(
  ([id, keep]): Call => ({ label: `deleteOtherSessions(${id}, ${keep})`, call: async (store) => sorted(await store.deleteOtherSessions(id, keep)) }),
);

const endCredentials = fc
  .tuple(user, fc.option(sid, { nil: null }))
  .chain(
    ([id, keep]): fc.Arbitrary<[string, string | null]> => (keep === null ? fc.constant([id, null]) : userOr(keep, SESSIONS).map((owner) => [owner, keep])),
  )
  .map(([id, keep]): Call => ({ label: `endCredentials(${id}, ${keep})`, call: async (store) => sorted(await store.endCredentials(id, keep)) }));

const sweepSessions = fc.tuple(fc.subarray([...SESSIONS]), now, now, now).map(
  ([inUse, at, idle, created]): Call => ({
    label: `sweepSessions([${inUse.join(' ')}], ${at}, ${idle - 500}, ${created - 1000})`,
    call: async (store) => sorted(await store.sweepSessions(inUse, at, idle - 500, created - 1000)),
  }),
);

const replaceRelationshipPair = fc
  .tuple(twoUsers, fc.oneof({ arbitrary: fc.constant('current' as const), weight: 3 }, { arbitrary: pair, weight: 1 }), pair, changedId)
  .map(([[a, b], expected, next, id]): Call => {
    const label = `replaceRelationshipPair(${a}, ${b}, ${expected === 'current' ? 'as read' : describePair(expected)}, ${describePair(next)}, ${id})`;
    const call = async (store: DirectoryStore) => {
      // 'current': as a service does, the pair read first (that read is part of the answer).
      const seen = expected === 'current' ? await store.readRelationshipPair(a, b) : expected;
      return [expected === 'current' ? seen : null, await store.replaceRelationshipPair(a, b, seen, next, id)];
    };
    return {
      label,
      changedId: id,
      call,
      // Two services that read the same pair, then both write: one read, then the two writes at once.
      twice: async ([one, other]) => {
        const seen = expected === 'current' ? await one.readRelationshipPair(a, b) : expected;
        const writes = await Promise.all([one, other].map((store) => outcome(store.replaceRelationshipPair(a, b, seen, next, id))));
        return [seen, multiset(writes)];
      },
    };
  });

const openDmChannel = fc
  .tuple(user, user, fc.constantFrom(...CHANNELS), now)
  .map(([a, b, id, at]): Call => ({ label: `openDmChannel(${a}, ${b}, ${id}, ${at})`, call: (store) => store.openDmChannel(a, b, id, at) }));

const insertMailToken = fc
  // Mostly reset tokens, mostly live for a while: spending one needs both.
  .tuple(
    mailAndUser,
    fc.constantFrom<MailTokenPurpose>('reset_password', 'reset_password', 'verify_email'),
    email,
    now,
    fc.constantFrom(1500, 2500, 4000, 4000),
    now,
  )
  .map(([[id, name], p, address, createdAt, expiresAt, at]): Call => {
    const token = { hash: mailToken(name), userId: id, purpose: p, emailLower: address.toLowerCase(), createdAt, expiresAt };
    return {
      label: `insertMailToken(${name}, ${id}, ${p}, ${address}, ${createdAt}, expires ${expiresAt}, now ${at})`,
      call: (store) => store.insertMailToken(token, at),
    };
  });

const takeLiveMailToken = fc
  .tuple(mail, purpose, now)
  .map(([name, p, at]): Call => ({ label: `takeLiveMailToken(${name}, ${p}, ${at})`, call: (store) => store.takeLiveMailToken(mailToken(name), p, at) }));

const spendResetToken = fc.tuple(mailAndUser, now).map(
  ([[id, name], at]): Call => ({
    label: `spendResetToken(${name}, ${id}, ${at})`,
    call: async (store) => {
      const ended = await store.spendResetToken(mailToken(name), id, at);
      return ended === null ? null : sorted(ended);
    },
  }),
);

const deleteMailToken = mail.map((name): Call => ({ label: `deleteMailToken(${name})`, call: (store) => store.deleteMailToken(mailToken(name)) }));

const deleteMailTokensOf = fc
  .tuple(user, fc.option(purpose, { nil: undefined }))
  .map(([id, p]): Call => ({ label: `deleteMailTokensOf(${id}, ${p})`, call: (store) => store.deleteMailTokensOf(id, p) }));

// Reads in the middle of a run (the final read-back reads everything).
const reads: fc.Arbitrary<Call> = fc.oneof(
  username.map((n): Call => ({ label: `findUserByUsername(${n})`, call: async (store) => orNull(await store.findUserByUsername(n)) })),
  email.map((e): Call => ({ label: `findUserByEmail(${e})`, call: async (store) => orNull(await store.findUserByEmail(e)) })),
  user.map((id): Call => ({ label: `findUserById(${id})`, call: async (store) => orNull(await store.findUserById(id)) })),
  user.map((id): Call => ({ label: `findUserRow(${id})`, call: async (store) => orNull(await store.findUserRow(id)) })),
  user.map((id): Call => ({ label: `readCredentialEpoch(${id})`, call: (store) => store.readCredentialEpoch(id) })),
  user.map((id): Call => ({ label: `listUserSessions(${id})`, call: (store) => store.listUserSessions(id) })),
  sid.map((s): Call => ({ label: `findSessionByTokenHash(${s})`, call: async (store) => orNull(await store.findSessionByTokenHash(sessionToken(s))) })),
  twoUsers.map(([a, b]): Call => ({ label: `readRelationshipPair(${a}, ${b})`, call: (store) => store.readRelationshipPair(a, b) })),
  user.map((id): Call => ({ label: `listRelationships(${id})`, call: (store) => store.listRelationships(id) })),
  user.map((id): Call => ({ label: `listDmChannels(${id})`, call: (store) => store.listDmChannels(id) })),
  fc.tuple(mail, purpose, now).map(
    ([name, p, at]): Call => ({
      label: `findLiveMailToken(${name}, ${p}, ${at})`,
      call: async (store) => orNull(await store.findLiveMailToken(mailToken(name), p, at)),
    }),
  ),
);

const writes: fc.Arbitrary<Call> = fc.oneof(
  { arbitrary: indexUser, weight: 6 },
  { arbitrary: claimNames, weight: 3 },
  { arbitrary: markPending, weight: 2 },
  { arbitrary: settleUser, weight: 2 },
  { arbitrary: replaceUsers, weight: 1 },
  { arbitrary: deleteUser, weight: 1 },
  { arbitrary: insertSessionIfEpoch, weight: 5 },
  { arbitrary: touchSession, weight: 2 },
  { arbitrary: deleteSession, weight: 1 },
  { arbitrary: deleteUserSession, weight: 1 },
  { arbitrary: deleteOtherSessions, weight: 1 },
  { arbitrary: endCredentials, weight: 2 },
  { arbitrary: sweepSessions, weight: 1 },
  { arbitrary: replaceRelationshipPair, weight: 6 },
  { arbitrary: openDmChannel, weight: 3 },
  { arbitrary: insertMailToken, weight: 6 },
  { arbitrary: takeLiveMailToken, weight: 2 },
  { arbitrary: spendResetToken, weight: 2 },
  { arbitrary: deleteMailToken, weight: 1 },
  { arbitrary: deleteMailTokensOf, weight: 1 },
);

/**
 * Two registrations at once, by two accounts whose names may collide (any case): at most one of a
 * colliding pair is indexed, with the same answers in some order. Who won may differ between the
 * stores (and between runs of one), so whoever the race indexed is deleted again right after, in
 * each store, which leaves the directory as it was before the race whoever won (the answers of
 * those deletions compared as a multiset too). Both carry the same first session: whoever won
 * holds it, so the deletions answer the same.
 */
const registrationRace = fc.tuple(twoUsers, username, username, email, email, newSession('0')).map(([[a, b], nameA, nameB, emailA, emailB, s]): Step => {
  const entries: IndexEntry[] = [
    { id: a, username: nameA, email: emailA, createdAt: 1000, ...newCard() },
    { id: b, username: nameB, email: emailB, createdAt: 1000, ...newCard() },
  ];
  return step(`registration race: ${entries.map(describeEntry).join(' and ')} with ${describeSession(s)}`, async (stores) => {
    const race = await Promise.all(entries.map((e, i) => outcome(stores[i]!.indexUser(e, { ...s, userId: e.id }))));
    const winners = entries.filter((_, i) => 'ok' in race[i]!);
    const deletions = await Promise.all(winners.map((e) => outcome(stores[0].deleteUser(e.id).then(sorted))));
    return [multiset(race), multiset(deletions)];
  });
});

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { arbitrary: writes.map(single), weight: 12 },
  { arbitrary: reads.map(single), weight: 3 },
  { arbitrary: writes.map(twice), weight: 3 },
  { arbitrary: registrationRace, weight: 1 },
);

/**
 * Every run starts with three or four of the accounts indexed, each with its own names and first session, so
 * that the calls after it find users to act on (one of the names is still taken in another case).
 */
const warmUp: fc.Arbitrary<Step[]> = fc.subarray(
  USERS.map((id, i) => {
    const e: IndexEntry = { id, username: USERNAMES[i === 0 ? 0 : i + 1]!, email: EMAILS[i === 0 ? 0 : i + 1]!, createdAt: 1000, ...newCard() };
    const s: NewSession = { id: SESSIONS[i]!, tokenHash: sessionToken(SESSIONS[i]!), userId: id, now: 1000, userAgent: null, deviceName: 'phone' };
    return single({ label: `indexUser${describeEntry(e)} + ${describeSession(s)}`, call: (store) => store.indexUser(e, s) });
  }),
  { minLength: 3 },
);

/** Everything the directory holds, through the interface: equal in both stores after a run. */
async function readBack(store: DirectoryStore): Promise<unknown> {
  const perUser: Record<string, unknown> = {};
  for (const id of USERS) {
    perUser[id] = {
      user: orNull(await store.findUserById(id)),
      row: orNull(await store.findUserRow(id)),
      sessions: await store.listUserSessions(id),
      epoch: await store.readCredentialEpoch(id),
      relationships: await store.listRelationships(id),
      dms: await store.listDmChannels(id),
    };
  }
  const names: Record<string, unknown> = {};
  for (const name of USERNAMES) names[name] = orNull(await store.findUserByUsername(name));
  for (const address of EMAILS) names[address] = orNull(await store.findUserByEmail(address));
  const sessions: Record<string, unknown> = {};
  for (const s of SESSIONS) sessions[s] = orNull(await store.findSessionByTokenHash(sessionToken(s)));
  const tokens: Record<string, unknown> = {};
  for (const name of MAIL_TOKENS) {
    for (const p of PURPOSES) for (const at of [999, 1500, 2999]) tokens[`${name} ${p} ${at}`] = orNull(await store.findLiveMailToken(mailToken(name), p, at));
  }
  return {
    users: await store.listUsers(),
    count: await store.countUsers(),
    pending: sorted(await store.listPendingUsers()),
    existing: sorted(await store.existingSessions(SESSIONS)),
    perUser,
    names,
    sessions,
    tokens,
  };
}

/** A new, empty store of each kind, on two connections each. */
interface Pair {
  sqlite: Stores;
  redis: Stores;
  close(): Promise<void>;
}

async function openPair(redisUrl: string, dataDir: string): Promise<Pair> {
  const sqlite = [new SqliteDirectory(dataDir), new SqliteDirectory(dataDir)] as const;
  // Plain connections, without the node's 2 s command timeout: a busy machine must not fail the property.
  const connections = [new Redis(redisUrl), new Redis(redisUrl)] as const;
  // A failure surfaces as the call's rejection; without a listener ioredis also prints each one.
  for (const connection of connections) connection.on('error', () => {});
  await connections[0].flushdb();
  return {
    sqlite,
    redis: [new RedisDirectory(connections[0]), new RedisDirectory(connections[1])],
    async close() {
      for (const store of sqlite) await store.close();
      for (const connection of connections) await connection.quit();
    },
  };
}

/**
 * The property. `redisUrl`: a Redis of its own — every run empties its database (FLUSHDB).
 */
export async function fuzzDirectoryStores(run: FuzzRun, redisUrl: string): Promise<void> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'plexichat-dirfuzz-'));
  let runs = 0;
  // The run in flight: a time limit (`npm run fuzz`) abandons it, and its stores must be closed
  // before the caller stops Redis, or its connections would try to reconnect forever.
  let inFlight: Promise<unknown> = Promise.resolve();
  try {
    await fc.assert(
      fc.asyncProperty(fc.tuple(warmUp, fc.array(stepArb, { minLength: 1, maxLength: 30, size: 'max' })), (drawn) => {
        const ids = [...drawn[0], ...drawn[1]].flatMap((s) => s.changedId ?? []);
        fc.pre(new Set(ids).size === ids.length);
        const running = runSteps(drawn);
        inFlight = running.catch(() => {});
        return running;
      }),
      // Shrinking is cheap here (no server), and a short sequence is what makes a difference readable.
      { ...params(run), endOnFailure: false },
    );
  } finally {
    await inFlight;
    fs.rmSync(root, { recursive: true, force: true });
  }

  async function runSteps([first, then]: [Step[], Step[]]): Promise<void> {
    const steps = [...first, ...then];
    runs += 1;
    const dataDir = path.join(root, String(runs));
    const stores = await openPair(redisUrl, dataDir);
    try {
      for (const [index, s] of steps.entries()) {
        const fromSqlite = await s.run(stores.sqlite);
        const fromRedis = await s.run(stores.redis);
        assert.deepEqual(
          withoutMessages(fromRedis),
          withoutMessages(fromSqlite),
          `step ${index + 1}, ${s.label}: Redis ${JSON.stringify(fromRedis)}, SQLite ${JSON.stringify(fromSqlite)}`,
        );
      }
      assert.deepEqual(
        await readBack(stores.redis[0]),
        await readBack(stores.sqlite[0]),
        'after the run, Redis (actual) and SQLite (expected) hold different directories',
      );
    } finally {
      await stores.close();
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  }
}
