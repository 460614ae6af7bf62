import type { DirectoryFile } from '../storage/index.ts';

export interface SessionRow {
  id: string;
  user_id: string;
  created_at: number;
  last_used_at: number;
}

/** A session as its user's list shows it. */
export interface DeviceSessionRow {
  id: string;
  /** NULL for sessions started before devices were named: the name is derived from `user_agent`. */
  device_name: string | null;
  user_agent: string | null;
  created_at: number;
  last_used_at: number;
}

/** How many times the user's credentials changed: 0 until the first change (no row). */
export function readCredentialEpoch(directory: DirectoryFile, userId: string): number {
  const row = directory.stmt('SELECT epoch FROM credential_epochs WHERE user_id = ?').get(userId) as { epoch: number } | undefined;
  return row?.epoch ?? 0;
}

export function advanceCredentialEpoch(directory: DirectoryFile, userId: string): void {
  directory.stmt('INSERT INTO credential_epochs (user_id, epoch) VALUES (?, 1) ON CONFLICT (user_id) DO UPDATE SET epoch = epoch + 1').run(userId);
}

/**
 * Inserts the session only if the user's credential epoch is still `epoch`, the one read before the
 * password was verified, and the account still exists (a deletion takes the epoch row with it);
 * returns whether it did. One statement, so the check and the insert are one
 * atomic step: a password change that commits while a login is verifying (Argon2 runs on the thread
 * pool) either comes first, and this inserts nothing, or comes after, and deletes the session.
 */
export function insertSessionIfEpoch(
  directory: DirectoryFile,
  session: { id: string; tokenHash: Buffer; userId: string; now: number; userAgent: string | null; deviceName: string },
  epoch: number,
): boolean {
  return (
    directory
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

export function findSessionByTokenHash(directory: DirectoryFile, tokenHash: Buffer): SessionRow | undefined {
  return directory.stmt('SELECT id, user_id, created_at, last_used_at FROM sessions WHERE token_hash = ?').get(tokenHash) as SessionRow | undefined;
}

/** The user's sessions, most recently used first. */
export function listUserSessions(directory: DirectoryFile, userId: string): DeviceSessionRow[] {
  return directory
    .stmt('SELECT id, device_name, user_agent, created_at, last_used_at FROM sessions WHERE user_id = ? ORDER BY last_used_at DESC, id DESC')
    .all(userId) as DeviceSessionRow[];
}

export function touchSession(directory: DirectoryFile, sessionId: string, now: number): void {
  directory.stmt('UPDATE sessions SET last_used_at = ? WHERE id = ?').run(now, sessionId);
}

export function deleteSession(directory: DirectoryFile, sessionId: string): boolean {
  return directory.stmt('DELETE FROM sessions WHERE id = ?').run(sessionId).changes > 0;
}

/** Deletes the session only if it is the user's; returns whether it did. */
export function deleteUserSession(directory: DirectoryFile, userId: string, sessionId: string): boolean {
  return directory.stmt('DELETE FROM sessions WHERE id = ? AND user_id = ?').run(sessionId, userId).changes > 0;
}

/**
 * Deletes every session last used at or before `idleBefore` or created at or before `createdBefore`
 * (both Unix seconds); returns the ids it deleted.
 */
/** Records a use of these sessions (in the caller's transaction). */
export function touchSessions(directory: DirectoryFile, sessionIds: Iterable<string>, now: number): void {
  const touch = directory.stmt('UPDATE sessions SET last_used_at = ? WHERE id = ?');
  for (const id of sessionIds) touch.run(now, id);
}

export function deleteExpiredSessions(directory: DirectoryFile, idleBefore: number, createdBefore: number): string[] {
  const rows = directory.stmt('DELETE FROM sessions WHERE last_used_at <= ? OR created_at <= ? RETURNING id').all(idleBefore, createdBefore) as {
    id: string;
  }[];
  return rows.map((row) => row.id);
}

/** Deletes every session of the user but `keepSessionId`; returns the ids it deleted. */
export function deleteOtherSessions(directory: DirectoryFile, userId: string, keepSessionId: string): string[] {
  const rows = directory.stmt('DELETE FROM sessions WHERE user_id = ? AND id != ? RETURNING id').all(userId, keepSessionId) as { id: string }[];
  return rows.map((row) => row.id);
}

/** Which of these sessions still exist (another process may have deleted some). */
export function existingSessions(directory: DirectoryFile, sessionIds: readonly string[]): Set<string> {
  const rows = directory.stmt('SELECT id FROM sessions WHERE id IN (SELECT value FROM json_each(?))').all(JSON.stringify(sessionIds)) as { id: string }[];
  return new Set(rows.map((row) => row.id));
}
