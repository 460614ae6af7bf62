import type { Migration } from './sqlite.ts';

/**
 * Schemas of the two kinds of files. Append migrations; never edit one that has shipped.
 *
 * directory.sqlite: what crosses users. The users index duplicates the user files (rebuildable
 * from them); sessions and meta live only here.
 */
export const DIRECTORY_MIGRATIONS: readonly Migration[] = [
  (db) =>
    db.exec(`
      CREATE TABLE users (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        username_lower TEXT NOT NULL UNIQUE,
        email_lower TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL
      ) STRICT;
      CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        token_hash BLOB NOT NULL UNIQUE,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL,
        user_agent TEXT
      ) STRICT;
      CREATE INDEX sessions_by_user ON sessions(user_id);
      CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    `),
  // Relationships and DM channels cross users, so they live here. A relationship is one row per
  // direction (each side's own view: a pending request is outgoing on one side, incoming on the
  // other; a block exists only on the blocker's side). A DM channel is one row per pair of users,
  // keyed by the ordered pair so concurrent opens from either side cannot create two.
  (db) =>
    db.exec(`
      CREATE TABLE relationships (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        other_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        type TEXT NOT NULL CHECK (type IN ('friend', 'incoming_request', 'outgoing_request', 'block')),
        -- A snowflake taken when the row last changed: orders "most recent first" without ties.
        changed_id TEXT NOT NULL,
        PRIMARY KEY (user_id, other_id),
        CHECK (user_id <> other_id)
      ) STRICT, WITHOUT ROWID;
      CREATE INDEX relationships_by_other ON relationships(other_id);
      CREATE TABLE dm_channels (
        id TEXT PRIMARY KEY,
        user_low TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        user_high TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        last_message_id TEXT,
        UNIQUE (user_low, user_high),
        CHECK (user_low < user_high)
      ) STRICT;
      CREATE INDEX dm_channels_by_high ON dm_channels(user_high);
    `),
];

/** users/<id>.sqlite: the source of truth for one user's data. */
export const USER_FILE_MIGRATIONS: readonly Migration[] = [
  (db) =>
    db.exec(`
      CREATE TABLE profile (
        id TEXT PRIMARY KEY,
        singleton INTEGER NOT NULL DEFAULT 1 UNIQUE CHECK (singleton = 1),
        username TEXT NOT NULL,
        email TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        email_verified INTEGER NOT NULL DEFAULT 0,
        totp_enabled INTEGER NOT NULL DEFAULT 0,
        age_verified INTEGER NOT NULL DEFAULT 0,
        badges TEXT NOT NULL DEFAULT '[]'
      ) STRICT;
      CREATE TABLE messaging_settings (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        read_receipts_enabled INTEGER NOT NULL DEFAULT 1,
        typing_indicators_enabled INTEGER NOT NULL DEFAULT 1,
        compact_messages_enabled INTEGER NOT NULL DEFAULT 1,
        allow_dms_from TEXT NOT NULL DEFAULT 'everyone' CHECK (allow_dms_from IN ('everyone', 'friends', 'none')),
        auto_create_dms INTEGER NOT NULL DEFAULT 1,
        max_message_length INTEGER,
        max_attachment_size INTEGER,
        max_attachments_per_message INTEGER
      ) STRICT;
      INSERT INTO messaging_settings (singleton) VALUES (1);
    `),
  (db) =>
    db.exec(`
      -- Yjs documents of this user: 'notes' (the notes channel) and 'settings'. The state is the
      -- snapshot merged with every logged update; updates are appended, compaction folds the
      -- log into the snapshot.
      CREATE TABLE docs (
        name TEXT PRIMARY KEY,
        snapshot BLOB,
        created_at INTEGER NOT NULL
      ) STRICT;
      CREATE TABLE doc_updates (
        id INTEGER PRIMARY KEY,
        doc TEXT NOT NULL REFERENCES docs(name),
        data BLOB NOT NULL
      ) STRICT;
      CREATE INDEX doc_updates_by_doc ON doc_updates(doc, id);
      -- The notes channel: one per user, ever (the singleton makes get-or-create race-free).
      CREATE TABLE notes_channel (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        id TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
      ) STRICT;
    `),
  // Avatar: at most one per user; `bytes` is last so reading the hash never pages in the image.
  (db) =>
    db.exec(`
      CREATE TABLE avatar (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        hash TEXT NOT NULL,
        content_type TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        animated INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        bytes BLOB NOT NULL
      ) STRICT;
    `),
  // Stored document updates that could not be applied when the document was rebuilt (written by
  // a server before it refused such updates at the door), kept for inspection instead of being
  // replayed — and failing — on every load.
  (db) =>
    db.exec(`
      CREATE TABLE doc_quarantine (
        id INTEGER PRIMARY KEY,
        doc TEXT NOT NULL,
        data BLOB NOT NULL,
        reason TEXT NOT NULL,
        quarantined_at INTEGER NOT NULL
      ) STRICT;
    `),
];

/** ids.sqlite: the id generator's reservation (see server/storage/ids.ts), and nothing else. */
export const ID_FILE_MIGRATIONS: readonly Migration[] = [
  (db) =>
    db.exec(`
      CREATE TABLE reservation (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        -- Every id issued so far encodes a millisecond below this one.
        reserved_until_ms INTEGER NOT NULL
      ) STRICT;
    `),
];
