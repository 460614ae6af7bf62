import type { Redis } from 'ioredis';
import type { AllowDmsFrom } from '../../shared/schemas/messaging-settings.ts';
import type { RelationshipType } from '../../shared/schemas/relationships.ts';
import { compareSnowflakes } from '../../shared/snowflake.ts';
import {
  type DeviceSessionRow,
  type DirectoryDump,
  type DirectoryStore,
  type DmChannelRow,
  type IndexEntry,
  type IndexedUser,
  type MailTokenPurpose,
  type MailTokenRow,
  NameTakenError,
  type NewMailToken,
  type NewSession,
  type RelationshipPair,
  type RelationshipRow,
  type SessionRow,
  type StoredIndexRow,
} from '../storage/directory-store.ts';
import { DirectoryUnavailableError } from '../storage/errors.ts';
import { DIR, SCRIPTS, type Script } from './directory-scripts.ts';

/** Commands per round trip when a whole directory is written (`importAll`). */
const IMPORT_BATCH = 1000;

/**
 * Redis' own replies that a retry can cure (starting up, a primary gone, out of memory, a script
 * or a save in the way); every other reply error is a bug or misuse, answered 500.
 */
const RETRYABLE_REPLY = /^(LOADING|BUSY|OOM|READONLY|MASTERDOWN|TRYAGAIN|NOREPLICAS|MISCONF|CLUSTERDOWN)\b/;

/** What a failed call rejects with: unreachable or busy Redis is retryable (503), the rest as it came. */
function storeError(error: unknown): unknown {
  if (!(error instanceof Error)) return error;
  if (error.name === 'ReplyError' && !RETRYABLE_REPLY.test(error.message)) return error;
  return new DirectoryUnavailableError(`the directory in Redis cannot be reached: ${error.message}`, { cause: error });
}

function isNoScript(error: unknown): boolean {
  return error instanceof Error && error.name === 'ReplyError' && error.message.startsWith('NOSCRIPT');
}

/** A reply that may be nil. */
type Bulk = string | null;

function nameTaken(answer: unknown): void {
  if (answer === 'username' || answer === 'email') throw new NameTakenError(answer);
}

function hex(digest: Buffer): string {
  return digest.toString('hex');
}

function sessionArgs(session: NewSession): string[] {
  return [
    session.id,
    hex(session.tokenHash),
    session.userId,
    String(session.now),
    session.userAgent === null ? '0' : '1',
    session.userAgent ?? '',
    session.deviceName,
  ];
}

/** An entry as the scripts take it (directory-scripts.ts, write_row): nine values. */
function entryArgs(entry: IndexEntry): string[] {
  return [
    entry.id,
    entry.username,
    entry.username.toLowerCase(),
    entry.email.toLowerCase(),
    String(entry.createdAt),
    entry.email,
    entry.avatarHash ?? '',
    JSON.stringify(entry.badges),
    entry.allowDmsFrom,
  ];
}

/** The fields of `user:<id>` a row is read from, in `storedRow`'s order. */
const ROW_FIELDS = ['username', 'email_lower', 'created_at', 'email', 'avatar_hash', 'badges', 'allow_dms_from'] as const;

/** A row from its id and ROW_FIELDS' values; the card is null in a row an older version wrote (no card fields). */
function storedRow(id: string, [username, emailLower, createdAt, email, avatarHash, badges, allowDmsFrom]: Bulk[]): StoredIndexRow {
  const card =
    email == null || badges == null || allowDmsFrom == null
      ? null
      : { email, avatarHash: avatarHash ? avatarHash : null, badges: JSON.parse(badges) as string[], allowDmsFrom: allowDmsFrom as AllowDmsFrom };
  return { id, username: username ?? '', email_lower: emailLower ?? '', created_at: Number(createdAt), card };
}

/** A relationship row as stored: "<type> <changed id>". */
function parseRelationship(row: string): { type: RelationshipType; changedId: string } {
  const space = row.indexOf(' ');
  return { type: row.slice(0, space) as RelationshipType, changedId: row.slice(space + 1) };
}

/** The pair in its stored order: the same two users give the same key whoever opens the DM. */
function orderedPair(a: string, b: string): [string, string] {
  return a < b ? [a, b] : [b, a];
}

/**
 * The directory of a cluster (its keys and scripts: directory-scripts.ts), on the node's command connection to Redis (cluster/redis.ts: no
 * offline queue, no command sent twice, 2 s at most per command), so a Redis that is down or stuck
 * makes each call reject with `DirectoryUnavailableError` (503) instead of waiting.
 */
export class RedisDirectory implements DirectoryStore {
  constructor(private readonly redis: Redis) {}

  async indexUser(entry: IndexEntry, firstSession?: NewSession): Promise<void> {
    const session = firstSession === undefined ? ['0'] : ['1', ...sessionArgs(firstSession)];
    nameTaken(await this.run(SCRIPTS.indexUser, [...entryArgs(entry), ...session]));
  }

  findUserByUsername(username: string): Promise<IndexedUser | undefined> {
    return this.findUserByName('username', username);
  }

  findUserByEmail(email: string): Promise<IndexedUser | undefined> {
    return this.findUserByName('email', email);
  }

  async findUserById(id: string): Promise<IndexedUser | undefined> {
    const username = await this.call(() => this.redis.hget(`${DIR}user:${id}`, 'username'));
    return username === null ? undefined : { id, username };
  }

  async findUserRow(id: string): Promise<StoredIndexRow | undefined> {
    const values = await this.call(() => this.redis.hmget(`${DIR}user:${id}`, ...ROW_FIELDS));
    return values[0] == null ? undefined : storedRow(id, values);
  }

  countUsers(): Promise<number> {
    return this.call(() => this.redis.scard(`${DIR}users`));
  }

  async listUsers(): Promise<StoredIndexRow[]> {
    const rows = (await this.run(SCRIPTS.listUsers, [])) as [string, ...Bulk[]][];
    return rows.map(([id, ...values]) => storedRow(id, values)).sort((a, b) => compareSnowflakes(a.id, b.id));
  }

  async claimNames(userId: string, names: { username?: string | undefined; email?: string | undefined }): Promise<void> {
    const { username, email } = names;
    const args = [
      userId,
      username === undefined ? '0' : '1',
      username ?? '',
      username?.toLowerCase() ?? '',
      email === undefined ? '0' : '1',
      email?.toLowerCase() ?? '',
      email ?? '',
    ];
    nameTaken(await this.run(SCRIPTS.claimNames, args));
  }

  async markPending(userId: string): Promise<boolean> {
    return (await this.run(SCRIPTS.markPending, [userId])) === 1;
  }

  async settleUser(entry: IndexEntry): Promise<void> {
    nameTaken(await this.run(SCRIPTS.settleUser, entryArgs(entry)));
  }

  listPendingUsers(): Promise<string[]> {
    return this.call(() => this.redis.smembers(`${DIR}pending`));
  }

  async replaceUsers(entries: readonly IndexEntry[]): Promise<string[]> {
    return (await this.run(SCRIPTS.replaceUsers, entries.flatMap(entryArgs))) as string[];
  }

  async deleteUser(userId: string): Promise<string[]> {
    return (await this.run(SCRIPTS.deleteUser, [userId])) as string[];
  }

  async readCredentialEpoch(userId: string): Promise<number> {
    const epoch = await this.call(() => this.redis.get(`${DIR}epoch:${userId}`));
    return epoch === null ? 0 : Number(epoch);
  }

  async insertSessionIfEpoch(session: NewSession, epoch: number): Promise<boolean> {
    return (await this.run(SCRIPTS.insertSessionIfEpoch, [...sessionArgs(session), String(epoch)])) === 1;
  }

  async findSessionByTokenHash(tokenHash: Buffer): Promise<SessionRow | undefined> {
    const row = (await this.run(SCRIPTS.findSession, [hex(tokenHash)])) as [string, string, string, string] | null;
    if (row === null) return undefined;
    const [id, userId, createdAt, lastUsedAt] = row;
    return { id, user_id: userId, created_at: Number(createdAt), last_used_at: Number(lastUsedAt) };
  }

  async listUserSessions(userId: string): Promise<DeviceSessionRow[]> {
    const rows = (await this.run(SCRIPTS.listSessions, [userId])) as [string, Bulk, Bulk, string, string][];
    return (
      rows
        .map(([id, deviceName, userAgent, createdAt, lastUsedAt]) => ({
          id,
          device_name: deviceName,
          user_agent: userAgent,
          created_at: Number(createdAt),
          last_used_at: Number(lastUsedAt),
        }))
        // Ties: the larger id (a snowflake, compared as a number) first.
        .sort((a, b) => b.last_used_at - a.last_used_at || compareSnowflakes(b.id, a.id))
    );
  }

  async touchSession(sessionId: string, now: number): Promise<void> {
    await this.run(SCRIPTS.touchSession, [sessionId, String(now)]);
  }

  async deleteSession(sessionId: string): Promise<boolean> {
    return (await this.run(SCRIPTS.deleteSession, [sessionId])) === 1;
  }

  async deleteUserSession(userId: string, sessionId: string): Promise<boolean> {
    return (await this.run(SCRIPTS.deleteUserSession, [userId, sessionId])) === 1;
  }

  async deleteOtherSessions(userId: string, keepSessionId: string): Promise<string[]> {
    return (await this.run(SCRIPTS.endSessions, [userId, '0', '1', keepSessionId])) as string[];
  }

  async endCredentials(userId: string, keepSessionId: string | null): Promise<string[]> {
    return (await this.run(SCRIPTS.endSessions, [userId, '1', keepSessionId === null ? '0' : '1', keepSessionId ?? ''])) as string[];
  }

  async sweepSessions(inUse: readonly string[], now: number, idleBefore: number, createdBefore: number): Promise<string[]> {
    return (await this.run(SCRIPTS.sweepSessions, [String(now), String(idleBefore), String(createdBefore), ...inUse])) as string[];
  }

  async existingSessions(sessionIds: readonly string[]): Promise<Set<string>> {
    if (sessionIds.length === 0) return new Set();
    const scores = await this.call(() => this.redis.zmscore(`${DIR}sessions-by-use`, [...sessionIds]));
    return new Set(sessionIds.filter((_, index) => scores[index] !== null));
  }

  async readRelationshipPair(userId: string, otherId: string): Promise<RelationshipPair> {
    const [mine, theirs] = (await this.run(SCRIPTS.readPair, [userId, otherId])) as [Bulk, Bulk];
    return { mine: mine === null ? undefined : parseRelationship(mine).type, theirs: theirs === null ? undefined : parseRelationship(theirs).type };
  }

  async replaceRelationshipPair(userId: string, otherId: string, expected: RelationshipPair, next: RelationshipPair, changedId: string): Promise<boolean> {
    const args = [userId, otherId, expected.mine ?? '', expected.theirs ?? '', next.mine ?? '', next.theirs ?? '', changedId];
    return (await this.run(SCRIPTS.replacePair, args)) === 1;
  }

  async listRelationships(userId: string): Promise<RelationshipRow[]> {
    const rows = await this.call(() => this.redis.hgetall(`${DIR}rel:${userId}`));
    return Object.entries(rows)
      .map(([otherId, row]) => ({ other_id: otherId, ...parseRelationship(row) }))
      .sort((a, b) => compareSnowflakes(b.changedId, a.changedId))
      .map(({ other_id, type }) => ({ other_id, type }));
  }

  async openDmChannel(userId: string, recipientId: string, newId: string, createdAt: number): Promise<string> {
    return (await this.run(SCRIPTS.openDm, [...orderedPair(userId, recipientId), newId, String(createdAt)])) as string;
  }

  async listDmChannels(userId: string): Promise<DmChannelRow[]> {
    const rows = (await this.run(SCRIPTS.listDms, [userId])) as [string, string, Bulk][];
    return rows
      .map(([id, recipientId, lastMessageId]) => ({ id, recipient_id: recipientId, last_message_id: lastMessageId }))
      .sort((a, b) => compareSnowflakes(b.last_message_id ?? b.id, a.last_message_id ?? a.id));
  }

  async insertMailToken(token: NewMailToken, now: number): Promise<void> {
    const args = [hex(token.hash), token.userId, token.purpose, token.emailLower, String(token.createdAt), String(token.expiresAt), String(now)];
    await this.run(SCRIPTS.insertMailToken, args);
  }

  async findLiveMailToken(tokenHash: Buffer, purpose: MailTokenPurpose, now: number): Promise<MailTokenRow | undefined> {
    const [userId, storedPurpose, emailLower, expiresAt] = await this.call(() =>
      this.redis.hmget(`${DIR}mail:${hex(tokenHash)}`, 'user_id', 'purpose', 'email_lower', 'expires_at'),
    );
    if (userId == null || emailLower == null || storedPurpose !== purpose || !(Number(expiresAt) > now)) return undefined;
    return { user_id: userId, email_lower: emailLower };
  }

  async takeLiveMailToken(tokenHash: Buffer, purpose: MailTokenPurpose, now: number): Promise<boolean> {
    return (await this.run(SCRIPTS.takeMailToken, [hex(tokenHash), purpose, String(now)])) === 1;
  }

  async spendResetToken(tokenHash: Buffer, userId: string, now: number): Promise<string[] | null> {
    return (await this.run(SCRIPTS.spendResetToken, [hex(tokenHash), userId, String(now)])) as string[] | null;
  }

  async deleteMailToken(tokenHash: Buffer): Promise<void> {
    await this.run(SCRIPTS.deleteMailToken, [hex(tokenHash)]);
  }

  async deleteMailTokensOf(userId: string, purpose?: MailTokenPurpose): Promise<void> {
    await this.run(SCRIPTS.deleteMailTokensOf, [userId, purpose ?? '']);
  }

  /** Never: nodes tell each other what they changed (the cluster's bus), Redis does not. */
  changedElsewhere(): boolean {
    return false;
  }

  /**
   * Brings a directory an older version wrote to this layout, once (later calls find it done): its
   * rows hold no card, which only the user files can give, so they are marked pending and the
   * start derives them (UsersService.repairDirectoryIndex) before the node serves. A node calls it
   * at start, before that repair. Returns how many rows it marked.
   */
  async upgradeLayout(): Promise<number> {
    return (await this.run(SCRIPTS.upgradeLayout, [])) as number;
  }

  /**
   * Writes every row of a dump (one node's directory, moving to the cluster) in the layout above,
   * in pipelined batches. Not one atomic step: it runs once, under the move's lock, into a Redis
   * directory with no users yet (cluster/directory-move.ts), before any node serves from it.
   */
  async importAll(dump: DirectoryDump): Promise<void> {
    const commands: (string | number)[][] = [];
    for (const user of dump.users) {
      const usernameLower = user.username.toLowerCase();
      const fields: (string | number)[] = [
        'username',
        user.username,
        'username_lower',
        usernameLower,
        'email_lower',
        user.email_lower,
        'created_at',
        user.created_at,
      ];
      // A row the file had not derived its card for yet (it came from an older version) is pending
      // there, and the pending marks come along: the start derives it here instead.
      if (user.card !== null) {
        const { email, avatarHash, badges, allowDmsFrom } = user.card;
        fields.push('email', email, 'avatar_hash', avatarHash ?? '', 'badges', JSON.stringify(badges), 'allow_dms_from', allowDmsFrom);
      }
      commands.push(['hset', `${DIR}user:${user.id}`, ...fields]);
      commands.push(['set', `${DIR}username:${usernameLower}`, user.id], ['set', `${DIR}email:${user.email_lower}`, user.id], ['sadd', `${DIR}users`, user.id]);
    }
    for (const id of dump.pending) commands.push(['sadd', `${DIR}pending`, id]);
    for (const { user_id, epoch } of dump.epochs) commands.push(['set', `${DIR}epoch:${user_id}`, epoch]);
    for (const session of dump.sessions) {
      const fields: (string | number)[] = [
        'user_id',
        session.user_id,
        'token',
        hex(session.token_hash),
        'created_at',
        session.created_at,
        'last_used_at',
        session.last_used_at,
      ];
      if (session.device_name !== null) fields.push('device_name', session.device_name);
      if (session.user_agent !== null) fields.push('user_agent', session.user_agent);
      commands.push(['hset', `${DIR}session:${session.id}`, ...fields], ['set', `${DIR}session-token:${hex(session.token_hash)}`, session.id]);
      commands.push(['sadd', `${DIR}user-sessions:${session.user_id}`, session.id]);
      commands.push(
        ['zadd', `${DIR}sessions-by-use`, session.last_used_at, session.id],
        ['zadd', `${DIR}sessions-by-creation`, session.created_at, session.id],
      );
    }
    for (const row of dump.relationships) {
      commands.push(
        ['hset', `${DIR}rel:${row.user_id}`, row.other_id, `${row.type} ${row.changed_id}`],
        ['sadd', `${DIR}rel-about:${row.other_id}`, row.user_id],
      );
    }
    for (const channel of dump.dmChannels) {
      const fields: (string | number)[] = ['user_low', channel.user_low, 'user_high', channel.user_high, 'created_at', channel.created_at];
      if (channel.last_message_id !== null) fields.push('last_message_id', channel.last_message_id);
      commands.push(['set', `${DIR}dm-pair:${channel.user_low}:${channel.user_high}`, channel.id], ['hset', `${DIR}dm:${channel.id}`, ...fields]);
      commands.push(
        ['hset', `${DIR}user-dms:${channel.user_low}`, channel.user_high, channel.id],
        ['hset', `${DIR}user-dms:${channel.user_high}`, channel.user_low, channel.id],
      );
    }
    for (const token of dump.mailTokens) {
      const digest = hex(token.token_hash);
      const fields = [
        'user_id',
        token.user_id,
        'purpose',
        token.purpose,
        'email_lower',
        token.email_lower,
        'created_at',
        token.created_at,
        'expires_at',
        token.expires_at,
      ];
      commands.push(
        ['hset', `${DIR}mail:${digest}`, ...fields],
        ['sadd', `${DIR}user-mail:${token.user_id}`, digest],
        ['zadd', `${DIR}mail-by-expiry`, token.expires_at, digest],
      );
    }
    for (let start = 0; start < commands.length; start += IMPORT_BATCH) {
      const batch = commands.slice(start, start + IMPORT_BATCH);
      const results = await this.call(() => this.redis.pipeline(batch).exec());
      const failed = results?.find(([error]) => error !== null);
      if (failed) throw storeError(failed[0]);
    }
  }

  /** Nothing to release: the connection is the node's, which quits it after everything using it stopped. */
  async close(): Promise<void> {}

  private async findUserByName(kind: 'username' | 'email', name: string): Promise<IndexedUser | undefined> {
    const found = (await this.run(SCRIPTS.findByName, [kind, name.toLowerCase()])) as [string, string] | null;
    return found === null ? undefined : { id: found[0], username: found[1] };
  }

  /** One command; a failure rejects as `storeError` says. */
  private async call<T>(command: () => Promise<T>): Promise<T> {
    try {
      return await command();
    } catch (error) {
      throw storeError(error);
    }
  }

  /** One script, by digest; sent whole only when Redis does not know it (first use, or Redis restarted). */
  private run(script: Script, args: readonly string[]): Promise<unknown> {
    return this.call(async () => {
      try {
        return await this.redis.evalsha(script.sha, 0, [...args]);
      } catch (error) {
        if (!isNoScript(error)) throw error;
        return await this.redis.eval(script.source, 0, [...args]);
      }
    });
  }
}
