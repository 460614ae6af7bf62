import type { DirectoryFile } from '../storage/index.ts';

export interface DmChannelRow {
  id: string;
  recipient_id: string;
  last_message_id: string | null;
}

/** The pair in its stored order: the same two users give the same key whoever opens the DM. */
function orderedPair(a: string, b: string): [string, string] {
  return a < b ? [a, b] : [b, a];
}

function findDmChannelId(directory: DirectoryFile, low: string, high: string): string | undefined {
  const row = directory.stmt('SELECT id FROM dm_channels WHERE user_low = ? AND user_high = ?').get(low, high) as { id: string } | undefined;
  return row?.id;
}

/**
 * Answers the pair's DM channel, creating it (with `newId()`) when there is none. The unique key on
 * the ordered pair settles races (also between processes sharing the directory): a losing insert
 * does nothing and the select finds the winner's channel.
 */
export function openDmChannel(directory: DirectoryFile, userId: string, recipientId: string, newId: () => string, createdAt: number): string {
  const [low, high] = orderedPair(userId, recipientId);
  const existing = findDmChannelId(directory, low, high);
  if (existing !== undefined) return existing;
  directory
    .stmt('INSERT INTO dm_channels (id, user_low, user_high, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (user_low, user_high) DO NOTHING')
    .run(newId(), low, high, createdAt);
  const id = findDmChannelId(directory, low, high);
  if (id === undefined) throw new Error(`DM channel of ${low} and ${high} missing right after its insert`);
  return id;
}

/**
 * The user's DM channels, most recent activity first (last message, else creation). Snowflakes are
 * compared as numbers: a shorter decimal string is the smaller one.
 */
export function listDmChannels(directory: DirectoryFile, userId: string): DmChannelRow[] {
  return directory
    .stmt(
      `SELECT id, recipient_id, last_message_id FROM (
         SELECT id, user_high AS recipient_id, last_message_id FROM dm_channels WHERE user_low = ?
         UNION ALL
         SELECT id, user_low AS recipient_id, last_message_id FROM dm_channels WHERE user_high = ?
       )
       ORDER BY length(COALESCE(last_message_id, id)) DESC, COALESCE(last_message_id, id) DESC`,
    )
    .all(userId, userId) as DmChannelRow[];
}
