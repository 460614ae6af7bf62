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
];
