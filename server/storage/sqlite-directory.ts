import type { AllowDmsFrom } from '../../shared/schemas/messaging-settings.ts';
import type { RelationshipType } from '../../shared/schemas/relationships.ts';
import { DirectoryFile } from './directory.ts';
import {
  NameTakenError,
  type DeviceSessionRow,
  type DirectoryDump,
  type DirectoryStore,
  type DmChannelRow,
  type IndexEntry,
  type IndexedUser,
  type MailTokenPurpose,
  type MailTokenRow,
  type NewMailToken,
  type NewSession,
  type RelationshipPair,
  type RelationshipRow,
  type SessionRow,
  type StoredIndexRow,
} from './directory-store.ts';

/** Why one node (or a command without `--redis-url`) refuses a data folder whose directory moved to Redis. */
export const DIRECTORY_IN_REDIS =
  "this data folder is served by a cluster: its directory (the users index, sessions, relationships, DM channels) is in the cluster's Redis, " +
  'and directory.sqlite is out of date; give --redis-url (PLEXICHAT_REDIS_URL) as the nodes have it (docs/cluster.md)';

/**
 * What a cluster's processes still read or write in `directory.sqlite` once the directory is in
 * Redis: the record of the move, and the rows for the move itself (cluster/directory-move.ts).
 */
export interface DirectoryRecord {
  movedToRedis(): boolean;
  markMovedToRedis(at: number): void;
  exportAll(): DirectoryDump;
}

/**
 * `directory.sqlite`'s record in cluster mode: each call opens the file for a moment, alone, and
 * closes it (storage/moments.ts), so no process of the cluster holds it open.
 */
export function directoryRecordInTurns(dataDir: string): DirectoryRecord {
  const atMoment = <T>(fn: (directory: SqliteDirectory) => T): T => {
    const file = new DirectoryFile(dataDir, { moment: true });
    try {
      return fn(new SqliteDirectory(file));
    } finally {
      file.close();
    }
  };
  return {
    movedToRedis: () => atMoment((directory) => directory.movedToRedis()),
    markMovedToRedis: (at) => atMoment((directory) => directory.markMovedToRedis(at)),
    exportAll: () => atMoment((directory) => directory.exportAll()),
  };
}

/** The columns of a users row, as `storedRow` reads them. */
const USER_COLUMNS = 'id, username, email_lower, created_at, email, avatar_hash, badges, allow_dms_from';

/** The `meta` key that says the directory moved to a cluster's Redis (its value: when, Unix seconds). */
const MOVED_KEY = 'directory_moved_to_redis_at';

/**
 * The directory of one node: `<dataDir>/directory.sqlite` (schema: storage/schema.ts). Each method
 * is one IMMEDIATE transaction (or one statement), run at once: the promise it returns is settled
 * when the call returns (the interface is asynchronous for the Redis store's sake).
 */
export class SqliteDirectory implements DirectoryStore, DirectoryRecord {
  private readonly file: DirectoryFile;

  constructor(dataDirOrFile: string | DirectoryFile) {
    this.file = typeof dataDirOrFile === 'string' ? new DirectoryFile(dataDirOrFile) : dataDirOrFile;
  }

  // Users index.

  async indexUser(entry: IndexEntry, firstSession?: NewSession): Promise<void> {
    this.transaction(() => {
      // An id indexed already is a misuse, refused as the Redis store refuses it, before the unique
      // names are checked: its own names would otherwise collide and answer NameTakenError (a 409
      // instead of a bug's 500), and the stores would differ (the differential fuzz found it).
      if (this.file.stmt('SELECT 1 FROM users WHERE id = ?').get(entry.id) !== undefined) {
        throw new Error(`directory: user ${entry.id} is indexed already`);
      }
      this.file
        .stmt(
          `INSERT INTO users (id, username, username_lower, email_lower, created_at, email, avatar_hash, badges, allow_dms_from)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(...entryValues(entry));
      if (firstSession !== undefined && !this.insertSession(firstSession, 0)) {
        throw new Error(`the credential epoch of user ${entry.id} changed inside its own creation`);
      }
    });
  }

  async findUserByUsername(username: string): Promise<IndexedUser | undefined> {
    return this.file.stmt('SELECT id, username FROM users WHERE username_lower = ?').get(username.toLowerCase()) as IndexedUser | undefined;
  }

  async findUserByEmail(email: string): Promise<IndexedUser | undefined> {
    return this.file.stmt('SELECT id, username FROM users WHERE email_lower = ?').get(email.toLowerCase()) as IndexedUser | undefined;
  }

  async findUserById(id: string): Promise<IndexedUser | undefined> {
    return this.file.stmt('SELECT id, username FROM users WHERE id = ?').get(id) as IndexedUser | undefined;
  }

  async findUserRow(id: string): Promise<StoredIndexRow | undefined> {
    const row = this.file.stmt(`SELECT ${USER_COLUMNS} FROM users WHERE id = ?`).get(id) as UserTableRow | undefined;
    return row === undefined ? undefined : storedRow(row);
  }

  async countUsers(): Promise<number> {
    return (this.file.stmt('SELECT count(*) AS n FROM users').get() as { n: number }).n;
  }

  async listUsers(): Promise<StoredIndexRow[]> {
    return (this.file.stmt(`SELECT ${USER_COLUMNS} FROM users ORDER BY length(id), id`).all() as UserTableRow[]).map(storedRow);
  }

  async claimNames(userId: string, names: { username?: string | undefined; email?: string | undefined }): Promise<void> {
    this.transaction(() => {
      this.file.stmt('INSERT OR IGNORE INTO users_index_pending (user_id) VALUES (?)').run(userId);
      if (names.username !== undefined) {
        this.file.stmt('UPDATE users SET username = ?, username_lower = ? WHERE id = ?').run(names.username, names.username.toLowerCase(), userId);
      }
      if (names.email !== undefined) {
        this.file.stmt('UPDATE users SET email_lower = ?, email = ? WHERE id = ?').run(names.email.toLowerCase(), names.email, userId);
      }
    });
  }

  async markPending(userId: string): Promise<boolean> {
    return this.transaction(() => {
      if (this.file.stmt('SELECT 1 FROM users WHERE id = ?').get(userId) === undefined) return false;
      this.file.stmt('INSERT OR IGNORE INTO users_index_pending (user_id) VALUES (?)').run(userId);
      return true;
    });
  }

  async settleUser(entry: IndexEntry): Promise<void> {
    this.transaction(() => {
      this.upsertUser(entry);
      this.file.stmt('DELETE FROM users_index_pending WHERE user_id = ?').run(entry.id);
    });
  }

  async listPendingUsers(): Promise<string[]> {
    return (this.file.stmt('SELECT user_id FROM users_index_pending').all() as { user_id: string }[]).map((row) => row.user_id);
  }

  async replaceUsers(entries: readonly IndexEntry[]): Promise<string[]> {
    // Entries that repeat a name break the caller's promise: refused as a misuse before anything is
    // written, as the Redis store does, not as the NameTakenError the unique index would raise half-way
    // (the differential fuzz found the stores differing here).
    for (const key of ['id', 'username', 'email'] as const) {
      if (new Set(entries.map((entry) => entry[key].toLowerCase())).size !== entries.length) {
        throw new Error('directory: the new index repeats an id, a username or an email');
      }
    }
    return this.transaction(() => {
      // Every row first gives up its names for a placeholder no real one can equal (`#` is in no
      // username, and an email has an `@`), so the rows written next may take any name whatever
      // row held it before; the rows nobody wrote still hold the placeholder, and go.
      this.file.stmt("UPDATE users SET username_lower = '#' || id, email_lower = '#' || id").run();
      this.file.stmt('DELETE FROM users_index_pending').run();
      for (const entry of entries) this.upsertUser(entry);
      const rows = this.file.stmt("DELETE FROM users WHERE username_lower = '#' || id RETURNING id").all() as { id: string }[];
      return rows.map((row) => row.id);
    });
  }

  async deleteUser(userId: string): Promise<string[]> {
    return this.transaction(() => {
      const sessions = this.file.stmt('SELECT id FROM sessions WHERE user_id = ?').all(userId) as { id: string }[];
      // ON DELETE CASCADE takes everything else of the account with the row.
      this.file.stmt('DELETE FROM users WHERE id = ?').run(userId);
      return sessions.map((row) => row.id);
    });
  }

  // Sessions.

  async readCredentialEpoch(userId: string): Promise<number> {
    const row = this.file.stmt('SELECT epoch FROM credential_epochs WHERE user_id = ?').get(userId) as { epoch: number } | undefined;
    return row?.epoch ?? 0;
  }

  async insertSessionIfEpoch(session: NewSession, epoch: number): Promise<boolean> {
    return this.insertSession(session, epoch);
  }

  async findSessionByTokenHash(tokenHash: Buffer): Promise<SessionRow | undefined> {
    return this.file.stmt('SELECT id, user_id, created_at, last_used_at FROM sessions WHERE token_hash = ?').get(tokenHash) as SessionRow | undefined;
  }

  async listUserSessions(userId: string): Promise<DeviceSessionRow[]> {
    return this.file
      .stmt('SELECT id, device_name, user_agent, created_at, last_used_at FROM sessions WHERE user_id = ? ORDER BY last_used_at DESC, length(id) DESC, id DESC')
      .all(userId) as DeviceSessionRow[];
  }

  async touchSession(sessionId: string, now: number): Promise<void> {
    this.file.stmt('UPDATE sessions SET last_used_at = ? WHERE id = ?').run(now, sessionId);
  }

  async deleteSession(sessionId: string): Promise<boolean> {
    return this.file.stmt('DELETE FROM sessions WHERE id = ?').run(sessionId).changes > 0;
  }

  async deleteUserSession(userId: string, sessionId: string): Promise<boolean> {
    return this.file.stmt('DELETE FROM sessions WHERE id = ? AND user_id = ?').run(sessionId, userId).changes > 0;
  }

  async deleteOtherSessions(userId: string, keepSessionId: string): Promise<string[]> {
    return this.deleteSessionsOf(userId, keepSessionId);
  }

  async endCredentials(userId: string, keepSessionId: string | null): Promise<string[]> {
    return this.transaction(() => {
      this.file.stmt('INSERT INTO credential_epochs (user_id, epoch) VALUES (?, 1) ON CONFLICT (user_id) DO UPDATE SET epoch = epoch + 1').run(userId);
      // No session has the empty id: with no session to keep, all of them go.
      return this.deleteSessionsOf(userId, keepSessionId ?? '');
    });
  }

  async sweepSessions(inUse: readonly string[], now: number, idleBefore: number, createdBefore: number): Promise<string[]> {
    return this.transaction(() => {
      const touch = this.file.stmt('UPDATE sessions SET last_used_at = ? WHERE id = ?');
      for (const id of inUse) touch.run(now, id);
      const rows = this.file.stmt('DELETE FROM sessions WHERE last_used_at <= ? OR created_at <= ? RETURNING id').all(idleBefore, createdBefore) as {
        id: string;
      }[];
      return rows.map((row) => row.id);
    });
  }

  async existingSessions(sessionIds: readonly string[]): Promise<Set<string>> {
    const rows = this.file.stmt('SELECT id FROM sessions WHERE id IN (SELECT value FROM json_each(?))').all(JSON.stringify(sessionIds)) as { id: string }[];
    return new Set(rows.map((row) => row.id));
  }

  // Relationships.

  async readRelationshipPair(userId: string, otherId: string): Promise<RelationshipPair> {
    return { mine: this.findRelationship(userId, otherId), theirs: this.findRelationship(otherId, userId) };
  }

  async replaceRelationshipPair(userId: string, otherId: string, expected: RelationshipPair, next: RelationshipPair, changedId: string): Promise<boolean> {
    return this.transaction(() => {
      if (this.findRelationship(userId, otherId) !== expected.mine || this.findRelationship(otherId, userId) !== expected.theirs) return false;
      this.writeRelationship(userId, otherId, next.mine, changedId);
      this.writeRelationship(otherId, userId, next.theirs, changedId);
      return true;
    });
  }

  async listRelationships(userId: string): Promise<RelationshipRow[]> {
    return this.file
      .stmt('SELECT other_id, type FROM relationships WHERE user_id = ? ORDER BY length(changed_id) DESC, changed_id DESC')
      .all(userId) as RelationshipRow[];
  }

  // DM channels.

  async openDmChannel(userId: string, recipientId: string, newId: string, createdAt: number): Promise<string> {
    const [low, high] = userId < recipientId ? [userId, recipientId] : [recipientId, userId];
    // The unique key on the ordered pair settles races (also between processes sharing the
    // directory): a losing insert does nothing and the select finds the winner's channel.
    this.file
      .stmt('INSERT INTO dm_channels (id, user_low, user_high, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (user_low, user_high) DO NOTHING')
      .run(newId, low, high, createdAt);
    const row = this.file.stmt('SELECT id FROM dm_channels WHERE user_low = ? AND user_high = ?').get(low, high) as { id: string } | undefined;
    if (row === undefined) throw new Error(`DM channel of ${low} and ${high} missing right after its insert`);
    return row.id;
  }

  async listDmChannels(userId: string): Promise<DmChannelRow[]> {
    return this.file
      .stmt(
        `SELECT id, recipient_id, last_message_id FROM (
           SELECT id, user_high AS recipient_id, last_message_id FROM dm_channels WHERE user_low = ?
           UNION ALL
           SELECT id, user_low AS recipient_id, last_message_id FROM dm_channels WHERE user_high = ?
         )
         ORDER BY length(COALESCE(last_message_id, id)) DESC, COALESCE(last_message_id, id) DESC`,
      )
      .all(userId, userId) as DmChannelRow[];
  }

  // Mail tokens.

  async insertMailToken(token: NewMailToken, now: number): Promise<void> {
    this.transaction(() => {
      this.file.stmt('DELETE FROM mail_tokens WHERE expires_at <= ?').run(now);
      this.file
        .stmt('INSERT INTO mail_tokens (token_hash, user_id, purpose, email_lower, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(token.hash, token.userId, token.purpose, token.emailLower, token.createdAt, token.expiresAt);
    });
  }

  async findLiveMailToken(tokenHash: Buffer, purpose: MailTokenPurpose, now: number): Promise<MailTokenRow | undefined> {
    return this.file
      .stmt('SELECT user_id, email_lower FROM mail_tokens WHERE token_hash = ? AND purpose = ? AND expires_at > ?')
      .get(tokenHash, purpose, now) as MailTokenRow | undefined;
  }

  async takeLiveMailToken(tokenHash: Buffer, purpose: MailTokenPurpose, now: number): Promise<boolean> {
    return this.takeToken(tokenHash, purpose, now);
  }

  async spendResetToken(tokenHash: Buffer, userId: string, now: number): Promise<string[] | null> {
    return this.transaction(() => {
      // Only a token of this account: a token is never spent for another's sessions.
      const taken = this.file
        .stmt("DELETE FROM mail_tokens WHERE token_hash = ? AND purpose = 'reset_password' AND expires_at > ? AND user_id = ?")
        .run(tokenHash, now, userId).changes;
      if (taken !== 1) return null;
      this.file.stmt("DELETE FROM mail_tokens WHERE user_id = ? AND purpose = 'reset_password'").run(userId);
      this.file.stmt('INSERT INTO credential_epochs (user_id, epoch) VALUES (?, 1) ON CONFLICT (user_id) DO UPDATE SET epoch = epoch + 1').run(userId);
      return this.deleteSessionsOf(userId, '');
    });
  }

  async deleteMailToken(tokenHash: Buffer): Promise<void> {
    this.file.stmt('DELETE FROM mail_tokens WHERE token_hash = ?').run(tokenHash);
  }

  async deleteMailTokensOf(userId: string, purpose?: MailTokenPurpose): Promise<void> {
    if (purpose === undefined) this.file.stmt('DELETE FROM mail_tokens WHERE user_id = ?').run(userId);
    else this.file.stmt('DELETE FROM mail_tokens WHERE user_id = ? AND purpose = ?').run(userId, purpose);
  }

  changedElsewhere(): boolean {
    return this.file.changedElsewhere();
  }

  /** Every row, read in one transaction (a consistent snapshot), for the move to a cluster. */
  exportAll(): DirectoryDump {
    return this.file.db
      .transaction(() => ({
        users: (this.file.stmt(`SELECT ${USER_COLUMNS} FROM users ORDER BY length(id), id`).all() as UserTableRow[]).map(storedRow),
        pending: (this.file.stmt('SELECT user_id FROM users_index_pending').all() as { user_id: string }[]).map((row) => row.user_id),
        sessions: this.file
          .stmt('SELECT id, user_id, token_hash, device_name, user_agent, created_at, last_used_at FROM sessions')
          .all() as DirectoryDump['sessions'],
        epochs: this.file.stmt('SELECT user_id, epoch FROM credential_epochs').all() as DirectoryDump['epochs'],
        relationships: this.file.stmt('SELECT user_id, other_id, type, changed_id FROM relationships').all() as DirectoryDump['relationships'],
        dmChannels: this.file.stmt('SELECT id, user_low, user_high, created_at, last_message_id FROM dm_channels').all() as DirectoryDump['dmChannels'],
        mailTokens: this.file
          .stmt('SELECT token_hash, user_id, purpose, email_lower, created_at, expires_at FROM mail_tokens')
          .all() as DirectoryDump['mailTokens'],
      }))
      .deferred();
  }

  /**
   * Whether this data folder's directory was moved to a cluster's Redis: then this file is stale,
   * and nothing may read or write it as the directory (one node, or a command without
   * `--redis-url`, refuses to start).
   */
  movedToRedis(): boolean {
    return this.file.stmt('SELECT value FROM meta WHERE key = ?').get(MOVED_KEY) !== undefined;
  }

  /** Records the move (after the rows were copied): from now on the directory is the cluster's. */
  markMovedToRedis(at: number): void {
    this.file.stmt('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING').run(MOVED_KEY, String(at));
  }

  async close(): Promise<void> {
    this.file.close();
  }

  /** One IMMEDIATE transaction; a unique-name collision becomes `NameTakenError`. */
  private transaction<T>(fn: () => T): T {
    try {
      return this.file.transaction(fn);
    } catch (error) {
      throw nameTaken(error) ?? error;
    }
  }

  private upsertUser(entry: IndexEntry): void {
    this.file
      .stmt(
        `INSERT INTO users (id, username, username_lower, email_lower, created_at, email, avatar_hash, badges, allow_dms_from)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET username = excluded.username, username_lower = excluded.username_lower,
           email_lower = excluded.email_lower, created_at = excluded.created_at, email = excluded.email,
           avatar_hash = excluded.avatar_hash, badges = excluded.badges, allow_dms_from = excluded.allow_dms_from`,
      )
      .run(...entryValues(entry));
  }

  /**
   * One statement, so the check and the insert are one atomic step: a password change that commits
   * while a login is verifying either comes first, and this inserts nothing, or comes after, and
   * deletes the session. An account deleted meanwhile took its epoch row with it: nothing either.
   */
  private insertSession(session: NewSession, epoch: number): boolean {
    return (
      this.file
        .stmt(
          `INSERT INTO sessions (id, token_hash, user_id, created_at, last_used_at, user_agent, device_name)
           SELECT ?, ?, ?, ?, ?, ?, ? WHERE COALESCE((SELECT epoch FROM credential_epochs WHERE user_id = ?), 0) = ?
             AND EXISTS (SELECT 1 FROM users WHERE id = ?)`,
        )
        .run(
          session.id,
          session.tokenHash,
          session.userId,
          session.now,
          session.now,
          session.userAgent,
          session.deviceName,
          session.userId,
          epoch,
          session.userId,
        ).changes === 1
    );
  }

  private deleteSessionsOf(userId: string, keepSessionId: string): string[] {
    const rows = this.file.stmt('DELETE FROM sessions WHERE user_id = ? AND id != ? RETURNING id').all(userId, keepSessionId) as { id: string }[];
    return rows.map((row) => row.id);
  }

  private findRelationship(userId: string, otherId: string): RelationshipType | undefined {
    const row = this.file.stmt('SELECT type FROM relationships WHERE user_id = ? AND other_id = ?').get(userId, otherId) as
      | { type: RelationshipType }
      | undefined;
    return row?.type;
  }

  /** Sets the row (undefined: deletes it); `changedId` is kept only when the type really changes. */
  private writeRelationship(userId: string, otherId: string, type: RelationshipType | undefined, changedId: string): void {
    if (type === undefined) {
      this.file.stmt('DELETE FROM relationships WHERE user_id = ? AND other_id = ?').run(userId, otherId);
      return;
    }
    this.file
      .stmt(
        `INSERT INTO relationships (user_id, other_id, type, changed_id) VALUES (?, ?, ?, ?)
         ON CONFLICT (user_id, other_id) DO UPDATE SET type = excluded.type, changed_id = excluded.changed_id
         WHERE type <> excluded.type`,
      )
      .run(userId, otherId, type, changedId);
  }

  /** Deletes the token if it is of that purpose and still live: one statement, so exactly one taker wins. */
  private takeToken(tokenHash: Buffer, purpose: MailTokenPurpose, now: number): boolean {
    return this.file.stmt('DELETE FROM mail_tokens WHERE token_hash = ? AND purpose = ? AND expires_at > ?').run(tokenHash, purpose, now).changes === 1;
  }
}

/** A users row as SQLite answers it (the card's columns are NULL in a row an older version wrote). */
interface UserTableRow {
  id: string;
  username: string;
  email_lower: string;
  created_at: number;
  email: string | null;
  avatar_hash: string | null;
  badges: string | null;
  allow_dms_from: string | null;
}

function storedRow(row: UserTableRow): StoredIndexRow {
  const { id, username, email_lower, created_at, email, avatar_hash, badges, allow_dms_from } = row;
  // Written together, always: one missing means a row of before the cards, not derived yet.
  const card =
    email === null || badges === null || allow_dms_from === null
      ? null
      : { email, avatarHash: avatar_hash, badges: JSON.parse(badges) as string[], allowDmsFrom: allow_dms_from as AllowDmsFrom };
  return { id, username, email_lower, created_at, card };
}

/** The values of a users row, in the order of the INSERTs above. */
function entryValues(entry: IndexEntry): [string, string, string, string, number, string, string | null, string, AllowDmsFrom] {
  return [
    entry.id,
    entry.username,
    entry.username.toLowerCase(),
    entry.email.toLowerCase(),
    entry.createdAt,
    entry.email,
    entry.avatarHash,
    JSON.stringify(entry.badges),
    entry.allowDmsFrom,
  ];
}

/** Which unique key a write collided with, as the store's error; null for any other failure. */
function nameTaken(error: unknown): NameTakenError | null {
  if (!(error instanceof Error) || (error as { code?: string }).code !== 'SQLITE_CONSTRAINT_UNIQUE') return null;
  if (error.message.includes('users.username_lower')) return new NameTakenError('username');
  if (error.message.includes('users.email_lower')) return new NameTakenError('email');
  return null;
}
