import type { DirectoryFile } from '../storage/index.ts';

/** What a mail token is for: each is accepted only by its own route. */
export type MailTokenPurpose = 'verify_email' | 'reset_password';

export interface MailTokenRow {
  user_id: string;
  /** The address the token was mailed to, lower-cased: it proves that address, no other. */
  email_lower: string;
}

export function insertMailToken(
  directory: DirectoryFile,
  token: { hash: Buffer; userId: string; purpose: MailTokenPurpose; emailLower: string; createdAt: number; expiresAt: number },
): void {
  directory
    .stmt('INSERT INTO mail_tokens (token_hash, user_id, purpose, email_lower, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)')
    .run(token.hash, token.userId, token.purpose, token.emailLower, token.createdAt, token.expiresAt);
}

/** The token, if it is of that purpose and has not expired at `now`. */
export function findLiveMailToken(directory: DirectoryFile, hash: Buffer, purpose: MailTokenPurpose, now: number): MailTokenRow | undefined {
  return directory.stmt('SELECT user_id, email_lower FROM mail_tokens WHERE token_hash = ? AND purpose = ? AND expires_at > ?').get(hash, purpose, now) as
    | MailTokenRow
    | undefined;
}

/**
 * Deletes the token if it is of that purpose and still live, and says whether it did: one
 * statement, so of two requests using one token exactly one gets it.
 */
export function takeLiveMailToken(directory: DirectoryFile, hash: Buffer, purpose: MailTokenPurpose, now: number): boolean {
  return directory.stmt('DELETE FROM mail_tokens WHERE token_hash = ? AND purpose = ? AND expires_at > ?').run(hash, purpose, now).changes === 1;
}

export function deleteMailToken(directory: DirectoryFile, hash: Buffer): void {
  directory.stmt('DELETE FROM mail_tokens WHERE token_hash = ?').run(hash);
}

export function deleteMailTokensOf(directory: DirectoryFile, userId: string, purpose: MailTokenPurpose): void {
  directory.stmt('DELETE FROM mail_tokens WHERE user_id = ? AND purpose = ?').run(userId, purpose);
}

export function deleteAllMailTokensOf(directory: DirectoryFile, userId: string): void {
  directory.stmt('DELETE FROM mail_tokens WHERE user_id = ?').run(userId);
}

/** Expired tokens are refused anyway; this only keeps them from piling up. */
export function deleteExpiredMailTokens(directory: DirectoryFile, now: number): void {
  directory.stmt('DELETE FROM mail_tokens WHERE expires_at <= ?').run(now);
}
