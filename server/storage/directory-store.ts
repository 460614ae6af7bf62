import type { AllowDmsFrom } from '../../shared/schemas/messaging-settings.ts';
import type { RelationshipType } from '../../shared/schemas/relationships.ts';

/**
 * The directory: what crosses users (storage/schema.ts says why each thing lives where). One
 * interface, two stores: SQLite (`directory.sqlite`, one node; storage/sqlite-directory.ts) and Redis
 * (cluster mode; cluster/redis-directory.ts), held to the same contract by
 * tests/directory-contract.test.ts. Every method is one atomic step of the store (a transaction, or
 * one Lua script): what must change together is one method.
 *
 * Failures: a store that cannot be reached or is busy rejects with an error `isRetryableStorageError`
 * recognises (storage/errors.ts), which the services answer with 503; a name collision rejects with
 * `NameTakenError`.
 */
export interface DirectoryStore {
  // The users index: derived from the user files, which are the truth. Each row also holds the
  // user's card (`UserCard`): what other users' requests need of the account, so that no node
  // reads another user's file to show them, to decide whether they may be messaged, or to mail them.

  /**
   * Indexes a new account (registration, import); with `firstSession`, starts it in the same step
   * (the account's epoch is 0). Rejects with `NameTakenError` when the username or email (any case)
   * is another account's, changing nothing. An id indexed already is a misuse, refused with another
   * error (never `NameTakenError`, though its names may collide with its own row).
   */
  indexUser(entry: IndexEntry, firstSession?: NewSession): Promise<void>;
  findUserByUsername(username: string): Promise<IndexedUser | undefined>;
  findUserByEmail(email: string): Promise<IndexedUser | undefined>;
  findUserById(id: string): Promise<IndexedUser | undefined>;
  /** The row as stored, card included (null in a row an older version wrote, until derived again). */
  findUserRow(id: string): Promise<StoredIndexRow | undefined>;
  countUsers(): Promise<number>;
  /** Every row, by id (snowflake order). */
  listUsers(): Promise<StoredIndexRow[]>;
  /**
   * A change of username and/or email, ahead of the user file's write: the row takes the new names
   * and is marked pending (`settleUser` clears it once the file is written). `NameTakenError` when
   * another account holds one of them, changing nothing.
   */
  claimNames(userId: string, names: { username?: string | undefined; email?: string | undefined }): Promise<void>;
  /**
   * A change of what the card holds (avatar, badges, who may open a DM), ahead of the user file's
   * write: the row is marked pending, as `claimNames` marks it, and changes nothing else
   * (`settleUser` writes the card once the file is written). False, marking nothing, when the user
   * is not indexed (an account deleted meanwhile).
   */
  markPending(userId: string): Promise<boolean>;
  /** Writes the row as the user file derives it (whatever it held before) and clears its pending mark. */
  settleUser(entry: IndexEntry): Promise<void>;
  /** Rows marked pending by a change that did not settle. */
  listPendingUsers(): Promise<string[]>;
  /**
   * Makes the index exactly `entries` (names unique among them: the caller settled who keeps a
   * name), clearing every pending mark. Accounts that keep their row keep everything else; those
   * whose row goes lose everything of theirs, as `deleteUser`. Returns the ids whose row went.
   * Entries repeating an id, a username or an email (any case) are a misuse, refused with another
   * error than `NameTakenError`, changing nothing.
   */
  replaceUsers(entries: readonly IndexEntry[]): Promise<string[]>;
  /**
   * Removes the account's row and everything of the account the directory holds: sessions (ended:
   * their ids are returned), credential epoch, relationships both ways, DM channels, mail tokens.
   * Nothing to remove is fine (a deletion run again).
   */
  deleteUser(userId: string): Promise<string[]>;

  // Sessions, and the credential epoch that guards them.

  /** How many times the user's credentials changed: 0 until the first change. */
  readCredentialEpoch(userId: string): Promise<number>;
  /**
   * Starts the session only if the user's credential epoch is still `epoch` (read before the
   * password was verified) and the account is indexed; returns whether it did.
   */
  insertSessionIfEpoch(session: NewSession, epoch: number): Promise<boolean>;
  findSessionByTokenHash(tokenHash: Buffer): Promise<SessionRow | undefined>;
  /** The user's sessions, most recently used first (ties: larger id first). */
  listUserSessions(userId: string): Promise<DeviceSessionRow[]>;
  /** Records a use (`now`, Unix seconds); a session that is gone stays gone. */
  touchSession(sessionId: string, now: number): Promise<void>;
  deleteSession(sessionId: string): Promise<boolean>;
  /** Deletes the session only if it is the user's; returns whether it did. */
  deleteUserSession(userId: string, sessionId: string): Promise<boolean>;
  /** Deletes every session of the user but `keepSessionId`; returns the ids deleted. */
  deleteOtherSessions(userId: string, keepSessionId: string): Promise<string[]>;
  /**
   * A credential change (password change, reset): the epoch moves on, so logins that verified the
   * old password get no session, and every session of the user but `keepSessionId` (null: all)
   * ends. Returns the ids deleted.
   */
  endCredentials(userId: string, keepSessionId: string | null): Promise<string[]>;
  /**
   * Records a use of `inUse` at `now` (sessions with an open socket), then deletes every session
   * last used at or before `idleBefore` or created at or before `createdBefore`; returns their ids.
   */
  sweepSessions(inUse: readonly string[], now: number, idleBefore: number, createdBefore: number): Promise<string[]>;
  /** Which of these sessions exist. */
  existingSessions(sessionIds: readonly string[]): Promise<Set<string>>;

  // Relationships: one row per direction, each side's own view.

  /** `userId`'s row about `otherId` and `otherId`'s about `userId`. */
  readRelationshipPair(userId: string, otherId: string): Promise<RelationshipPair>;
  /**
   * Writes both rows of the pair (`undefined`: no row) if they are still `expected`, and returns
   * whether it did: false means another change came first, to be read again. A row whose type does
   * not change keeps its `changedId`.
   */
  replaceRelationshipPair(userId: string, otherId: string, expected: RelationshipPair, next: RelationshipPair, changedId: string): Promise<boolean>;
  /** The user's rows, most recently changed first. */
  listRelationships(userId: string): Promise<RelationshipRow[]>;

  // DM channels: one per pair of users.

  /** The pair's channel, created with `newId` when there is none; of two racing opens, one creates. */
  openDmChannel(userId: string, recipientId: string, newId: string, createdAt: number): Promise<string>;
  /** The user's channels, most recent activity first (last message, else creation). */
  listDmChannels(userId: string): Promise<DmChannelRow[]>;

  // Tokens mailed to users (only their SHA-256 is kept).

  /** Stores a token; expired tokens of everyone may be swept on the way. */
  insertMailToken(token: NewMailToken, now: number): Promise<void>;
  /** The token, if it is of that purpose and live at `now`. */
  findLiveMailToken(tokenHash: Buffer, purpose: MailTokenPurpose, now: number): Promise<MailTokenRow | undefined>;
  /** Deletes the token if it is of that purpose and live; of two takers exactly one gets true. */
  takeLiveMailToken(tokenHash: Buffer, purpose: MailTokenPurpose, now: number): Promise<boolean>;
  /**
   * A password reset's directory step: the live reset token is spent with every other reset token
   * of its account, the credential epoch moves on and every session of the account ends — or, when
   * the token is not live (any more), nothing happens and null is returned.
   */
  spendResetToken(tokenHash: Buffer, userId: string, now: number): Promise<string[] | null>;
  deleteMailToken(tokenHash: Buffer): Promise<void>;
  /** Deletes the account's tokens of that purpose, or of every purpose. */
  deleteMailTokensOf(userId: string, purpose?: MailTokenPurpose): Promise<void>;

  /**
   * Whether another process wrote the store since the last call, so that what this process keeps
   * over it (the session cache) must be read again. The SQLite store answers from
   * `PRAGMA data_version`; Redis never says so (nodes tell each other what they changed).
   */
  changedElsewhere(): boolean;
  close(): Promise<void>;
}

/** The unique key a change collided with: another account holds that username or email. */
export class NameTakenError extends Error {
  constructor(readonly field: 'username' | 'email') {
    super(`that ${field} is another account's`);
    this.name = 'NameTakenError';
  }
}

/**
 * The part of an index row other users' requests read instead of the user's file: the public user
 * object (`avatar_url` is made from the avatar's hash, `badges`), the privacy setting a DM is opened
 * against, and what a mail to the account needs (its address as the profile spells it; the
 * username is the row's own). Derived from the user file with the rest of the row.
 */
export interface UserCard {
  /** As the profile spells it (the row keeps it lower-cased too, to find it). */
  email: string;
  /** The avatar image's SHA-256, in hex (its URL carries a prefix of it); null without an avatar. */
  avatarHash: string | null;
  badges: string[];
  allowDmsFrom: AllowDmsFrom;
}

/** What the index derives from a user file: the names, and the card. */
export interface IndexEntry extends UserCard {
  id: string;
  username: string;
  createdAt: number;
}

/** An index row, as lookups answer it. */
export interface IndexedUser {
  id: string;
  username: string;
}

/** An index row as it is stored: what other users' requests read, and what doctor compares with the user files. */
export interface StoredIndexRow {
  id: string;
  username: string;
  email_lower: string;
  created_at: number;
  /**
   * null in a row an older version wrote, which kept no card: upgrading marks such rows pending,
   * and the start derives them again from the user files before it serves (doctor --fix too).
   */
  card: UserCard | null;
}

export interface NewSession {
  id: string;
  tokenHash: Buffer;
  userId: string;
  /** Unix seconds: its creation and first use. */
  now: number;
  userAgent: string | null;
  deviceName: string;
}

export interface SessionRow {
  id: string;
  user_id: string;
  created_at: number;
  last_used_at: number;
}

/** A session as its user's list shows it. */
export interface DeviceSessionRow {
  id: string;
  /** null for sessions started before devices were named: the name is derived from `user_agent`. */
  device_name: string | null;
  user_agent: string | null;
  created_at: number;
  last_used_at: number;
}

export interface RelationshipPair {
  mine: RelationshipType | undefined;
  theirs: RelationshipType | undefined;
}

export interface RelationshipRow {
  other_id: string;
  type: RelationshipType;
}

export interface DmChannelRow {
  id: string;
  recipient_id: string;
  last_message_id: string | null;
}

/** What a mail token is for: each is accepted only by its own route. */
export type MailTokenPurpose = 'verify_email' | 'reset_password';

export interface NewMailToken {
  hash: Buffer;
  userId: string;
  purpose: MailTokenPurpose;
  emailLower: string;
  createdAt: number;
  expiresAt: number;
}

export interface MailTokenRow {
  user_id: string;
  /** The address the token was mailed to, lower-cased: it proves that address, no other. */
  email_lower: string;
}

/**
 * Everything a directory holds, row by row: what one node's `directory.sqlite` hands the cluster's
 * Redis store once, when a data folder moves to cluster mode (cluster/directory-move.ts).
 */
export interface DirectoryDump {
  users: StoredIndexRow[];
  pending: string[];
  sessions: (DeviceSessionRow & { user_id: string; token_hash: Buffer })[];
  epochs: { user_id: string; epoch: number }[];
  relationships: { user_id: string; other_id: string; type: RelationshipType; changed_id: string }[];
  dmChannels: { id: string; user_low: string; user_high: string; created_at: number; last_message_id: string | null }[];
  mailTokens: { token_hash: Buffer; user_id: string; purpose: MailTokenPurpose; email_lower: string; created_at: number; expires_at: number }[];
}
