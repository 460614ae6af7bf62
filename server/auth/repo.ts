import type { DirectoryFile } from '../storage/index.ts';

export interface SessionRow {
  id: string;
  user_id: string;
  last_used_at: number;
}

/**
 * Inserts the session only if the user's password hash is still `verifiedHash`, the one the caller
 * checked the password against; returns whether it did. One statement, so the check and the insert
 * are one atomic step: a password change that commits while a login is hashing (Argon2 runs on the
 * thread pool) either comes first, and this inserts nothing, or comes after, and deletes the session.
 */
export function insertSessionIfCredential(
  directory: DirectoryFile,
  session: { id: string; tokenHash: Buffer; userId: string; now: number; userAgent: string | null },
  verifiedHash: string,
): boolean {
  return (
    directory
      .stmt(
        `INSERT INTO sessions (id, token_hash, user_id, created_at, last_used_at, user_agent)
         SELECT ?, ?, id, ?, ?, ? FROM users WHERE id = ? AND password_hash = ?`,
      )
      .run(session.id, session.tokenHash, session.now, session.now, session.userAgent, session.userId, verifiedHash).changes === 1
  );
}

export function findSessionByTokenHash(directory: DirectoryFile, tokenHash: Buffer): SessionRow | undefined {
  return directory.stmt('SELECT id, user_id, last_used_at FROM sessions WHERE token_hash = ?').get(tokenHash) as SessionRow | undefined;
}

export function touchSession(directory: DirectoryFile, sessionId: string, now: number): void {
  directory.stmt('UPDATE sessions SET last_used_at = ? WHERE id = ?').run(now, sessionId);
}

export function deleteSession(directory: DirectoryFile, sessionId: string): boolean {
  return directory.stmt('DELETE FROM sessions WHERE id = ?').run(sessionId).changes > 0;
}

/** Deletes every session of the user but `keepSessionId`; returns the ids it deleted. */
export function deleteOtherSessions(directory: DirectoryFile, userId: string, keepSessionId: string): string[] {
  const rows = directory.stmt('DELETE FROM sessions WHERE user_id = ? AND id != ? RETURNING id').all(userId, keepSessionId) as { id: string }[];
  return rows.map((row) => row.id);
}
