import type { DirectoryFile, UserFile } from '../storage/index.ts';

/** The directory's index row: unique lower-cased username and email, and the login hash. */
export interface IndexedUser {
  id: string;
  username: string;
  password_hash: string;
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
}

/** Which unique key a write collided with, or null when it was some other failure. */
export function uniqueConflict(error: unknown): 'username' | 'email' | null {
  if (!(error instanceof Error) || (error as { code?: string }).code !== 'SQLITE_CONSTRAINT_UNIQUE') return null;
  if (error.message.includes('users.username_lower')) return 'username';
  if (error.message.includes('users.email_lower')) return 'email';
  return null;
}

export function indexUser(directory: DirectoryFile, user: { id: string; username: string; email: string; passwordHash: string; createdAt: number }): void {
  directory
    .stmt('INSERT INTO users (id, username, username_lower, email_lower, password_hash, created_at) VALUES (?, ?, ?, ?, ?, ?)')
    .run(user.id, user.username, user.username.toLowerCase(), user.email.toLowerCase(), user.passwordHash, user.createdAt);
}

export function findIndexedByUsername(directory: DirectoryFile, username: string): IndexedUser | undefined {
  return directory.stmt('SELECT id, username, password_hash FROM users WHERE username_lower = ?').get(username.toLowerCase()) as IndexedUser | undefined;
}

export function findIndexedByEmail(directory: DirectoryFile, email: string): IndexedUser | undefined {
  return directory.stmt('SELECT id, username, password_hash FROM users WHERE email_lower = ?').get(email.toLowerCase()) as IndexedUser | undefined;
}

export function findIndexedById(directory: DirectoryFile, id: string): IndexedUser | undefined {
  return directory.stmt('SELECT id, username, password_hash FROM users WHERE id = ?').get(id) as IndexedUser | undefined;
}

export function reindexUsername(directory: DirectoryFile, id: string, username: string): void {
  directory.stmt('UPDATE users SET username = ?, username_lower = ? WHERE id = ?').run(username, username.toLowerCase(), id);
}

export function reindexEmail(directory: DirectoryFile, id: string, email: string): void {
  directory.stmt('UPDATE users SET email_lower = ? WHERE id = ?').run(email.toLowerCase(), id);
}

export function reindexPasswordHash(directory: DirectoryFile, id: string, passwordHash: string): void {
  directory.stmt('UPDATE users SET password_hash = ? WHERE id = ?').run(passwordHash, id);
}

export function insertProfile(file: UserFile, profile: { id: string; username: string; email: string; passwordHash: string; createdAt: number }): void {
  file
    .stmt('INSERT INTO profile (id, username, email, password_hash, created_at) VALUES (?, ?, ?, ?, ?)')
    .run(profile.id, profile.username, profile.email, profile.passwordHash, profile.createdAt);
}

export function readProfile(file: UserFile): ProfileRow {
  const row = file.stmt('SELECT id, username, email, password_hash, created_at, email_verified, totp_enabled, age_verified, badges FROM profile').get() as
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
