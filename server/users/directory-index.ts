import type { AllowDmsFrom } from '../../shared/schemas/messaging-settings.ts';
import { compareSnowflakes } from '../../shared/snowflake.ts';
import { UserFileDeletedError, type Storage, type UserFile } from '../storage/index.ts';
import type { IndexEntry, StoredIndexRow, UserCard } from '../storage/directory-store.ts';
import * as repo from './repo.ts';

/**
 * What a card holds of other features' data, read from the user file through the feature that owns
 * it (the avatar: avatars; who may open a DM: settings). Given by whoever composes the services:
 * settings depends on users, so users cannot ask it directly.
 */
export interface CardSources {
  /** The avatar image's SHA-256 in hex, or null without an avatar. */
  avatarHashOf(file: UserFile): string | null;
  allowDmsFromOf(file: UserFile): AllowDmsFrom;
}

/** What a rebuild did. */
export interface IndexRebuild {
  /** Rows derived from a user file. */
  indexed: number;
  /** Rows that went: no user file claimed them (with them went their sessions, relationships, DMs). */
  removed: string[];
  /** User files left out because a newer account claims the same name (their files are untouched). */
  leftOut: { id: string; field: 'username' | 'email'; heldBy: string }[];
}

/**
 * Derives the directory's users index again from the user files, in one directory step:
 * afterwards it holds one row per user file, made from its profile, and nothing else. The
 * sessions, relationships and DM channels of every account that keeps its row stay.
 *
 * Two files can claim one username or email only after a crash in the middle of a registration (the
 * file was written, its index entry never was, and the user registered again) or a failed repair.
 * The newest account keeps the name: in the first case it is the registration that completed. The
 * other is left out of the index (its file stays on disk, untouched) and reported, for an operator
 * to rename or remove.
 *
 * A file whose account was deleted (a deletion that stopped before the file went) is no account
 * and gets no row. Throws, changing nothing, if a user file cannot be read.
 */
export async function rebuildDirectoryIndex(storage: Storage, sources: CardSources): Promise<IndexRebuild> {
  const { directory, userFiles } = storage;
  const profiles: IndexEntry[] = [];
  for (const id of userFiles.list().sort((a, b) => compareSnowflakes(b, a))) {
    // `holding`: a command on a cluster takes each user in turn (their owner hands them over).
    const profile = await userFiles.holding(id, () => {
      try {
        return userFiles.read(id, (file) => entryOf(file, sources));
      } catch (error) {
        if (error instanceof UserFileDeletedError) return undefined;
        // Said with the file's path: an operator has to find it to repair it or move it aside.
        throw new Error(`cannot read the user file ${userFiles.pathOf(id)}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
      }
    });
    if (profile !== undefined) profiles.push(profile);
  }
  const holders = { username: new Map<string, string>(), email: new Map<string, string>() };
  const kept: IndexEntry[] = [];
  const leftOut: IndexRebuild['leftOut'] = [];
  for (const profile of profiles) {
    const username = profile.username.toLowerCase();
    const email = profile.email.toLowerCase();
    const nameHolder = holders.username.get(username);
    const emailHolder = holders.email.get(email);
    if (nameHolder !== undefined) leftOut.push({ id: profile.id, field: 'username', heldBy: nameHolder });
    else if (emailHolder !== undefined) leftOut.push({ id: profile.id, field: 'email', heldBy: emailHolder });
    else {
      holders.username.set(username, profile.id);
      holders.email.set(email, profile.id);
      kept.push(profile);
    }
  }
  const removed = await directory.replaceUsers(kept);
  return { indexed: kept.length, removed, leftOut };
}

/** One way the directory's users index and the user files disagree. */
export type IndexProblem =
  /** A user file the index does not name: no account (a registration or import that stopped half-way, or a lost row). */
  | { kind: 'not_indexed'; userId: string; username: string }
  /** An index row with no user file: an account that cannot sign in or be read. */
  | { kind: 'no_file'; userId: string; username: string }
  /** The row says something else than the file (the file is the truth). */
  | { kind: 'differs'; userId: string; field: IndexField; inFile: string; inIndex: string }
  /** The row holds no card: an older version wrote it, and no start has derived it since. */
  | { kind: 'no_card'; userId: string }
  /** A change stopped between its two writes; the next start derives the row again. */
  | { kind: 'pending'; userId: string }
  /** A file whose account was deleted, left by a deletion that stopped half-way. */
  | { kind: 'deleted'; userId: string; indexed: boolean }
  /** A user file that cannot be read (its own check says why). */
  | { kind: 'unreadable'; userId: string; reason: string };

/** What a row holds that doctor compares with the file. */
type IndexField = 'username' | 'email' | 'created_at' | 'avatar' | 'badges' | 'allow_dms_from';

/**
 * Compares the directory's users index with what the user files derive, reading both as they are
 * now (the server may be running: a registration or a change between the two reads can show up
 * once, which is why doctor asks twice). Changes nothing.
 */
export async function checkDirectoryIndex(storage: Storage, sources: CardSources): Promise<IndexProblem[]> {
  const { directory, userFiles } = storage;
  const rows = new Map((await directory.listUsers()).map((row) => [row.id, row]));
  const pending = new Set(await directory.listPendingUsers());
  const problems: IndexProblem[] = [];
  const files = userFiles.list().sort(compareSnowflakes);
  for (const userId of files) {
    problems.push(...(await userFiles.holding(userId, () => problemsOfUser(storage, sources, userId, rows.get(userId), pending.has(userId)))));
  }
  problems.push(...rowsWithoutFile(rows.values(), files));
  return problems;
}

/**
 * Cluster mode, for a command that holds the user (their owner handed them over): how the user's
 * index row disagrees with their file, both read now. Nothing can change either meanwhile (every
 * change of a user's row goes through their file, which the command holds), so one comparison
 * is exact, where `checkDirectoryIndex` (files and rows read apart) must be asked twice.
 */
export async function checkHeldUser(storage: Storage, sources: CardSources, userId: string): Promise<IndexProblem[]> {
  const { directory } = storage;
  const row = await directory.findUserRow(userId);
  const pending = (await directory.listPendingUsers()).includes(userId);
  return problemsOfUser(storage, sources, userId, row, pending);
}

/** The rows that name a user with no file among `files` (an account nobody can use). */
export function rowsWithoutFile(rows: Iterable<StoredIndexRow>, files: readonly string[]): IndexProblem[] {
  const onDisk = new Set(files);
  const problems: IndexProblem[] = [];
  for (const row of rows) if (!onDisk.has(row.id)) problems.push({ kind: 'no_file', userId: row.id, username: row.username });
  return problems;
}

/** How one user's file and their index row (`row`, undefined when there is none) disagree; reads the file. */
function problemsOfUser(storage: Storage, sources: CardSources, userId: string, row: StoredIndexRow | undefined, pending: boolean): IndexProblem[] {
  const { userFiles } = storage;
  let entry: IndexEntry;
  try {
    entry = userFiles.read(userId, (file) => entryOf(file, sources));
  } catch (error) {
    if (error instanceof UserFileDeletedError) return [{ kind: 'deleted', userId, indexed: row !== undefined }];
    return [{ kind: 'unreadable', userId, reason: error instanceof Error ? error.message : String(error) }];
  }
  if (row === undefined) return [{ kind: 'not_indexed', userId, username: entry.username }];
  const problems: IndexProblem[] = [];
  const differs = (field: IndexField, inFile: string, inIndex: string) => {
    if (inFile !== inIndex) problems.push({ kind: 'differs', userId, field, inFile, inIndex });
  };
  differs('username', entry.username, row.username);
  // The address as it is found (lower-cased), then, when that is right, as the card spells it.
  if (row.email_lower !== entry.email.toLowerCase()) differs('email', entry.email.toLowerCase(), row.email_lower);
  else if (row.card !== null) differs('email', entry.email, row.card.email);
  differs('created_at', String(entry.createdAt), String(row.created_at));
  if (row.card === null) problems.push({ kind: 'no_card', userId });
  else {
    differs('avatar', entry.avatarHash ?? 'none', row.card.avatarHash ?? 'none');
    const badges = (held: string[]) => (held.length === 0 ? 'none' : held.join(', '));
    differs('badges', badges(entry.badges), badges(row.card.badges));
    differs('allow_dms_from', entry.allowDmsFrom, row.card.allowDmsFrom);
  }
  if (pending) problems.push({ kind: 'pending', userId });
  return problems;
}

/** Derives one user's index row again from their file, and clears its pending mark. */
export async function rederiveIndexEntry(storage: Storage, sources: CardSources, userId: string): Promise<void> {
  await storage.directory.settleUser(await storage.userFiles.holding(userId, () => storage.userFiles.read(userId, (file) => entryOf(file, sources))));
}

/** The index entry a user file derives: under the id the file is found by (its name). */
export function entryOf(file: UserFile, sources: CardSources): IndexEntry {
  const profile = repo.readProfile(file);
  const card: UserCard = {
    email: profile.email,
    avatarHash: sources.avatarHashOf(file),
    badges: repo.parseBadges(profile.badges),
    allowDmsFrom: sources.allowDmsFromOf(file),
  };
  return { id: file.userId, username: profile.username, createdAt: profile.created_at, ...card };
}
