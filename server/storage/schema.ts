import type { Migration } from './sqlite.ts';

/**
 * Schemas of the three kinds of files. Append migrations; never edit one that has shipped.
 *
 * Where data lives, and which copy is the truth:
 *
 * - users/<id>.sqlite is the source of truth for everything of one user, credentials included: the
 *   password hash exists only in its `profile` row, the second factor (TOTP secret, the last time
 *   step used, backup-code digests) only in the `totp` tables the mfa feature owns. A user's data is
 *   that one file, so it can be exported, imported or deleted as a whole.
 * - directory.sqlite (one node; a cluster keeps the same in Redis, storage/directory-store.ts) holds
 *   what crosses users. Its `users` table is an index derived from the user
 *   files (id, display username, lower-cased username and email, creation time), kept to find
 *   accounts by name and to keep names unique, and each user's card (the address as spelt, the
 *   avatar's hash, badges, who may open a DM: what other users' requests need, so they never read
 *   another user's file); it holds nothing a user file does not, and
 *   `rebuildDirectoryIndex` (server/users/directory-index.ts) derives it again from the files (the
 *   server does so on start when the index is empty but user files exist). Sessions, credential
 *   epochs, relationships, DM channels and mailed tokens live only here: they are the directory's
 *   own data.
 * - ids.sqlite holds the id generator's reservation, written outside every other transaction.
 *
 * Credentials. A session is inserted only if the user's credential epoch (directory, owned by auth)
 * is still the one read before the password was verified, checked in the same atomic step as the
 * insert; a password change moves the epoch on and deletes the other sessions, in one directory
 * step, before the new hash is stored. So no session started with an old password survives
 * a change, and the epoch is not a copy of anything: it is the sessions' own guard.
 *
 * Writes that touch both files go in the one order in which a failure between them is safe: first
 * the write that may stand alone, then the other.
 * - Password change: sessions end first (directory), the new hash is stored second (user file).
 *   Stopped in between, the other sessions are signed out and the old password still works; never
 *   is a new password stored beside sessions started with the old one.
 * - Username or email change: the directory first claims the new name and marks the row pending,
 *   then the profile is written. Stopped in between, the row is derived again from the user file
 *   (at once, or on the next start from the mark): the index comes back to what the file says.
 * - A change of what a card holds (an avatar uploaded or removed, a badge given or taken, who may
 *   open a DM): the row is marked pending first, then the file is written, then the row is derived
 *   again from the file and the mark cleared. Stopped in between, the next start (or, in a cluster,
 *   any node that sees Redis come back) derives it from the mark; until then others see the card
 *   of before the change, never one the file does not hold or did not hold a moment ago.
 * - Registration: the user file first, then the directory entry (with the first session). A user
 *   file nobody indexed is no account, and deleting it needs no free space, so a failure leaves
 *   nothing a retry would trip over.
 * - Password reset (server/recovery): the mailed token is used up and every session of the user
 *   ends, in one directory step, then the new hash is stored. Stopped in between, the user
 *   is signed out everywhere and the old password still works; the token is spent (a new mail
 *   is one request away), so it never resets a password twice.
 * - Email verification: `email_verified` is set in the user file first (only if the profile still
 *   has the address the token was mailed to), then the token is deleted. Stopped in between, the
 *   token can only verify that same address again.
 * - Account deletion (`plexichat admin user delete`): the user file is marked deleted first (the
 *   `deletion` table: from then on it is no account, no process writes it, no rebuild indexes it),
 *   then the index row goes with everything of the account the directory holds (ON DELETE CASCADE:
 *   sessions, credential epoch, relationships, DM channels, mailed tokens), then the file.
 *   Stopped in between, the account is gone all the same; `doctor --fix` (or the same command
 *   again) finishes it.
 * - Import of an exported user file: the file first (under a temporary name, linked in under its
 *   id, never over another), then the index entry, as a registration.
 * The directory is one interface with two stores (storage/directory-store.ts: this SQLite file, or
 * Redis in a cluster); each of its steps is atomic on its own, and a change's directory step and
 * its user-file write are two commits in the orders above. The server runs the changes of one
 * account that touch both one at a time (a per-account lock in UsersService), so of two password
 * changes from the same password exactly one wins; a change re-reads the profile under the user
 * file's write lock before it commits, so one that another process (an admin command) overtook
 * stops there, in one of the states the orders above make safe.
 *
 * Processes. One server per data folder (a second is refused at start: see storage/coordination.ts),
 * and beside it, at any time, admin commands (`plexichat admin …`, `doctor --fix`) writing the same
 * files through the same services, hence in the same orders. What holds with two processes:
 * - SQLite's locks keep each file consistent: every write is one IMMEDIATE transaction (the write
 *   lock up front, never upgraded), and `busy_timeout` (5 s) waits for the other process's lock.
 *   Every process takes a user file's lock before the directory's, never the other way, so two
 *   processes cannot deadlock; commands keep their transactions short (a password is hashed before
 *   the lock is taken), since the server waits, blocked, while a command holds one.
 * - The state between a change's two commits can now be seen by the other process (not only after
 *   a failure): it is always one a crash could leave too, which the orders above make safe. An
 *   admin password reset, for one, has ended every session (login races are refused by the epoch)
 *   before its new hash is stored.
 * - What the server keeps in memory over the files follows the other process's commits, which
 *   SQLite reports through `PRAGMA data_version`: memoised user-file reads and the session cache
 *   are dropped, sockets of ended sessions closed (4401), a deleted account's documents and file let
 *   go of. The server looks when a command tells it (before the command exits), every second, and,
 *   for a user file, inside every write transaction, so it never writes the file of an account
 *   deleted meanwhile (storage/coordination.ts, UserFile.refresh).
 * - Migrations run under the write lock and read the schema version again there: a file two
 *   processes open at once is migrated once.
 * - Ids: each process reserves its milliseconds exclusively in ids.sqlite (storage/ids.ts), so a
 *   command and the server never issue the same id, even with one worker id.
 * - A backup (server/admin/backup.ts) copies the directory first, the user files next, ids.sqlite
 *   last, each a consistent snapshot (SQLite's backup API), and derives the copied index again
 *   from the copied user files when a change fell between two copies.
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
  // Credentials live only in the user files now: the index's copy of the login hash goes. (Where
  // the two copies disagreed — a password change whose directory write failed after its user-file
  // write — the user file's stays: the one current_password was checked against.) Sessions are
  // guarded by a per-user credential epoch instead: no row means 0, no change yet.
  (db) =>
    db.exec(`
      ALTER TABLE users DROP COLUMN password_hash;
      CREATE TABLE credential_epochs (
        user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
        epoch INTEGER NOT NULL
      ) STRICT, WITHOUT ROWID;
    `),
  // Index rows a change wrote ahead of its user file; each is derived again from the file once the
  // file's write is over (or on the next start, if the server stopped in between).
  (db) =>
    db.exec(`
      CREATE TABLE users_index_pending (
        user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE
      ) STRICT, WITHOUT ROWID;
    `),
  // Sessions are devices the user can see and end: each keeps the name it was given at login, or
  // one derived from its User-Agent (NULL for sessions started before this: derived when listed).
  // They expire after an idle timeout or an absolute lifetime, both measured from these columns
  // with the limits of the running configuration; the indexes serve the periodic sweep.
  (db) =>
    db.exec(`
      ALTER TABLE sessions ADD COLUMN device_name TEXT;
      CREATE INDEX sessions_by_last_used ON sessions(last_used_at);
      CREATE INDEX sessions_by_created ON sessions(created_at);
    `),
  // Tokens mailed to users (verify an address, reset a password), owned by server/recovery. Here,
  // not in the user file: a token arrives alone and must find its account. Only a SHA-256 of each
  // is kept, with the address it was mailed to, which is all it can ever prove.
  (db) =>
    db.exec(`
      CREATE TABLE mail_tokens (
        token_hash BLOB PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        purpose TEXT NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
        email_lower TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
      ) STRICT, WITHOUT ROWID;
      CREATE INDEX mail_tokens_by_user ON mail_tokens(user_id, purpose);
      CREATE INDEX mail_tokens_by_expiry ON mail_tokens(expires_at);
    `),
  // Each user's card (storage/directory-store.ts, UserCard): what other users' requests need of an
  // account — the address as spelt, the avatar's hash, the badges (a JSON array), who may open a
  // DM — kept here so that no request reads another user's file (in a cluster, another node's).
  // NULL until derived: a migration of this file cannot read the user files, so every existing row
  // is marked pending, and the start derives each from its user file (as after a change that
  // stopped half-way) before it serves; doctor --fix derives them too.
  (db) =>
    db.exec(`
      ALTER TABLE users ADD COLUMN email TEXT;
      ALTER TABLE users ADD COLUMN avatar_hash TEXT;
      ALTER TABLE users ADD COLUMN badges TEXT;
      ALTER TABLE users ADD COLUMN allow_dms_from TEXT CHECK (allow_dms_from IN ('everyone', 'friends', 'none'));
      INSERT OR IGNORE INTO users_index_pending (user_id) SELECT id FROM users;
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
  // Two-factor authentication (server/mfa), a credential like the password hash, so here. One row
  // while 2FA is on (`secret`) or a setup waits for its first code (`pending_secret`), never both.
  // `last_step` is the newest TOTP step a code was accepted for: no code of it or an older step is
  // accepted again. Backup codes are kept only as SHA-256 digests, and deleted when used.
  (db) =>
    db.exec(`
      CREATE TABLE totp (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        secret BLOB,
        pending_secret BLOB,
        enabled_at INTEGER,
        last_step INTEGER NOT NULL DEFAULT 0,
        CHECK ((secret IS NULL) <> (pending_secret IS NULL))
      ) STRICT;
      CREATE TABLE totp_backup_codes (
        digest BLOB PRIMARY KEY
      ) STRICT, WITHOUT ROWID;
    `),
  // The account's tier, as an administrator set it (`admin tier set`); every account starts in
  // `free`. Badges have had their column since the first migration.
  (db) => db.exec(`ALTER TABLE profile ADD COLUMN tier TEXT NOT NULL DEFAULT 'free';`),
  // A row here: the account was deleted (`admin user delete`). It is the first write of a deletion,
  // committed before the index entry and the file go, so a server that has the file open sees it
  // (data_version) and stops using the file, and a deletion stopped half-way never leaves a file
  // that a rebuild of the index would make an account again. Written and read by storage only.
  (db) =>
    db.exec(`
      CREATE TABLE deletion (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        deleted_at INTEGER NOT NULL
      ) STRICT;
    `),
  // Cluster mode: the fencing token of the node that owns this file (docs/cluster.md). A node
  // writes its token when it takes the file over; every write transaction of the owner checks it is
  // still its own, so a former owner that wakes up after a takeover can never write. Written and
  // read by storage only.
  (db) =>
    db.exec(`
      CREATE TABLE owner_lease (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        token INTEGER NOT NULL
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
