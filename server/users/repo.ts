import type { UserFile } from '../storage/index.ts';
import type { IndexEntry } from '../storage/directory-store.ts';

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

export function insertProfile(file: UserFile, profile: Pick<IndexEntry, 'id' | 'username' | 'email' | 'createdAt'> & { passwordHash: string }): void {
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

/** The profile's badges column: a JSON array of ids (anything else in it counts as none). */
export function parseBadges(json: string): string[] {
  const parsed: unknown = JSON.parse(json);
  return Array.isArray(parsed) ? parsed.filter((b): b is string => typeof b === 'string') : [];
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
