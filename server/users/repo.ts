import type { DirectoryFile, UserFile } from '../storage/index.ts';

/** The directory's index row: derived from the user file (see storage/schema.ts). */
export interface IndexedUser {
  id: string;
  username: string;
}

export interface ProfileRow {
  id: string;
  username: string;
  email: string;
  password_hash: string;
  created_at: number;
  email_verified: number;
  totp_enabled: number;
  age_verified: number;
  badges: string;
  tier: string;
}

/** What the index derives from a profile. */
export interface IndexEntry {
  id: string;
  username: string;
  email: string;
  createdAt: number;
}

/** Which unique key a write collided with, or null when it was some other failure. */
export function uniqueConflict(error: unknown): 'username' | 'email' | null {
  if (!(error instanceof Error) || (error as { code?: string }).code !== 'SQLITE_CONSTRAINT_UNIQUE') return null;
  if (error.message.includes('users.username_lower')) return 'username';
  if (error.message.includes('users.email_lower')) return 'email';
  return null;
}

export function indexUser(directory: DirectoryFile, user: IndexEntry): void {
  directory
    .stmt('INSERT INTO users (id, username, username_lower, email_lower, created_at) VALUES (?, ?, ?, ?, ?)')
    .run(user.id, user.username, user.username.toLowerCase(), user.email.toLowerCase(), user.createdAt);
}

/** Writes the user's index row as derived from their profile, whatever it held before. */
export function upsertIndexedUser(directory: DirectoryFile, user: IndexEntry): void {
  directory
    .stmt(
      `INSERT INTO users (id, username, username_lower, email_lower, created_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (id) DO UPDATE SET username = excluded.username, username_lower = excluded.username_lower,
         email_lower = excluded.email_lower, created_at = excluded.created_at`,
    )
    .run(user.id, user.username, user.username.toLowerCase(), user.email.toLowerCase(), user.createdAt);
}

export function findIndexedByUsername(directory: DirectoryFile, username: string): IndexedUser | undefined {
  return directory.stmt('SELECT id, username FROM users WHERE username_lower = ?').get(username.toLowerCase()) as IndexedUser | undefined;
}

export function findIndexedByEmail(directory: DirectoryFile, email: string): IndexedUser | undefined {
  return directory.stmt('SELECT id, username FROM users WHERE email_lower = ?').get(email.toLowerCase()) as IndexedUser | undefined;
}

export function findIndexedById(directory: DirectoryFile, id: string): IndexedUser | undefined {
  return directory.stmt('SELECT id, username FROM users WHERE id = ?').get(id) as IndexedUser | undefined;
}

/** A row of the index as it is stored, for comparing it with the user files (doctor). */
export interface StoredIndexRow {
  id: string;
  username: string;
  email_lower: string;
  created_at: number;
}

/** Every row of the index, by id. */
export function listIndexed(directory: DirectoryFile): StoredIndexRow[] {
  return directory.stmt('SELECT id, username, email_lower, created_at FROM users ORDER BY length(id), id').all() as StoredIndexRow[];
}

/**
 * Removes the user's index row, and with it (ON DELETE CASCADE) everything of theirs the directory
 * holds: sessions, credential epoch, relationships both ways, DM channels, mailed tokens.
 */
export function unindexUser(directory: DirectoryFile, id: string): boolean {
  return directory.stmt('DELETE FROM users WHERE id = ?').run(id).changes > 0;
}

export function countIndexed(directory: DirectoryFile): number {
  return (directory.stmt('SELECT count(*) AS n FROM users').get() as { n: number }).n;
}

export function reindexUsername(directory: DirectoryFile, id: string, username: string): void {
  directory.stmt('UPDATE users SET username = ?, username_lower = ? WHERE id = ?').run(username, username.toLowerCase(), id);
}

export function reindexEmail(directory: DirectoryFile, id: string, email: string): void {
  directory.stmt('UPDATE users SET email_lower = ? WHERE id = ?').run(email.toLowerCase(), id);
}

/** Marks the row as written ahead of its user file: to be derived again from the file. */
export function markIndexPending(directory: DirectoryFile, id: string): void {
  directory.stmt('INSERT OR IGNORE INTO users_index_pending (user_id) VALUES (?)').run(id);
}

export function clearIndexPending(directory: DirectoryFile, id: string): void {
  directory.stmt('DELETE FROM users_index_pending WHERE user_id = ?').run(id);
}

export function listIndexPending(directory: DirectoryFile): string[] {
  return (directory.stmt('SELECT user_id FROM users_index_pending').all() as { user_id: string }[]).map((row) => row.user_id);
}

/**
 * Rebuild, step one: every row gives up its username and email for a placeholder no real one can
 * equal (`#` is in no username, and an email has an `@`), so the rows derived next may take any
 * name whatever row held it before.
 */
export function releaseIndexedNames(directory: DirectoryFile): void {
  directory.stmt("UPDATE users SET username_lower = '#' || id, email_lower = '#' || id").run();
}

export function clearAllIndexPending(directory: DirectoryFile): void {
  directory.stmt('DELETE FROM users_index_pending').run();
}

/** Rebuild, last step: the rows no user file claimed again go; returns their ids. */
export function deleteUnclaimedIndexRows(directory: DirectoryFile): string[] {
  const rows = directory.stmt("DELETE FROM users WHERE username_lower = '#' || id RETURNING id").all() as { id: string }[];
  return rows.map((row) => row.id);
}

export function insertProfile(file: UserFile, profile: IndexEntry & { passwordHash: string }): void {
  file
    .stmt('INSERT INTO profile (id, username, email, password_hash, created_at) VALUES (?, ?, ?, ?, ?)')
    .run(profile.id, profile.username, profile.email, profile.passwordHash, profile.createdAt);
}

export function readProfile(file: UserFile): ProfileRow {
  const row = file.stmt('SELECT id, username, email, password_hash, created_at, email_verified, totp_enabled, age_verified, badges, tier FROM profile').get() as
    | ProfileRow
    | undefined;
  if (!row) throw new Error(`user file ${file.userId} has no profile row`);
  return row;
}

export function updateProfileUsername(file: UserFile, username: string): void {
  file.stmt('UPDATE profile SET username = ?').run(username);
}

export function updateProfileEmail(file: UserFile, email: string, verified: boolean): void {
  file.stmt('UPDATE profile SET email = ?, email_verified = ?').run(email, verified ? 1 : 0);
}

export function updateProfilePasswordHash(file: UserFile, passwordHash: string): void {
  file.stmt('UPDATE profile SET password_hash = ?').run(passwordHash);
}

/** Badges as a JSON array of ids (the column the first user-file schema gave them). */
export function updateProfileBadges(file: UserFile, badges: readonly string[]): void {
  file.stmt('UPDATE profile SET badges = ?').run(JSON.stringify(badges));
}

export function updateProfileTier(file: UserFile, tier: string): void {
  file.stmt('UPDATE profile SET tier = ?').run(tier);
}

export function updateProfileEmailVerified(file: UserFile, verified: boolean): void {
  file.stmt('UPDATE profile SET email_verified = ?').run(verified ? 1 : 0);
}

export function updateProfileAgeVerified(file: UserFile, verified: boolean): void {
  file.stmt('UPDATE profile SET age_verified = ?').run(verified ? 1 : 0);
}
