import type { RelationshipType } from '../../shared/schemas/relationships.ts';
import type { DirectoryFile } from '../storage/index.ts';

export interface RelationshipRow {
  other_id: string;
  type: RelationshipType;
}

/** How `userId` relates to `otherId`, from `userId`'s side; undefined when not at all. */
export function findRelationship(directory: DirectoryFile, userId: string, otherId: string): RelationshipType | undefined {
  const row = directory.stmt('SELECT type FROM relationships WHERE user_id = ? AND other_id = ?').get(userId, otherId) as
    | { type: RelationshipType }
    | undefined;
  return row?.type;
}

/** Sets the type; `changedId` (a fresh snowflake) is kept only when the type really changes. */
export function setRelationship(directory: DirectoryFile, userId: string, otherId: string, type: RelationshipType, changedId: string): void {
  directory
    .stmt(
      `INSERT INTO relationships (user_id, other_id, type, changed_id) VALUES (?, ?, ?, ?)
       ON CONFLICT (user_id, other_id) DO UPDATE SET type = excluded.type, changed_id = excluded.changed_id
       WHERE type <> excluded.type`,
    )
    .run(userId, otherId, type, changedId);
}

export function deleteRelationship(directory: DirectoryFile, userId: string, otherId: string): void {
  directory.stmt('DELETE FROM relationships WHERE user_id = ? AND other_id = ?').run(userId, otherId);
}

/** The user's relationships, most recently changed first (snowflakes compare as numbers: shorter is smaller). */
export function listRelationships(directory: DirectoryFile, userId: string): RelationshipRow[] {
  return directory
    .stmt('SELECT other_id, type FROM relationships WHERE user_id = ? ORDER BY length(changed_id) DESC, changed_id DESC')
    .all(userId) as RelationshipRow[];
}

/** Whether either user has blocked the other. */
export function isBlockedEitherWay(directory: DirectoryFile, a: string, b: string): boolean {
  return (
    directory
      .stmt(
        `SELECT 1 FROM relationships
         WHERE type = 'block' AND ((user_id = ? AND other_id = ?) OR (user_id = ? AND other_id = ?))
         LIMIT 1`,
      )
      .get(a, b, b, a) !== undefined
  );
}
