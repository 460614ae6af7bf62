import { compareSnowflakes } from '../../shared/snowflake.ts';
import { UserFileDeletedError, type Storage, type UserFile } from '../storage/index.ts';
import type { IndexEntry } from '../storage/directory-store.ts';
import * as repo from './repo.ts';

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
export async function rebuildDirectoryIndex(storage: Storage): Promise<IndexRebuild> {
  const { directory, userFiles } = storage;
  const profiles: IndexEntry[] = [];
  for (const id of userFiles.list().sort((a, b) => compareSnowflakes(b, a))) {
    // `holding`: a command on a cluster takes each user in turn (their owner hands them over).
    const profile = await userFiles.holding(id, () => {
      try {
        return userFiles.read(id, entryOf);
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
  | { kind: 'differs'; userId: string; field: 'username' | 'email' | 'created_at'; inFile: string; inIndex: string }
  /** A change stopped between its two writes; the next start derives the row again. */
  | { kind: 'pending'; userId: string }
  /** A file whose account was deleted, left by a deletion that stopped half-way. */
  | { kind: 'deleted'; userId: string; indexed: boolean }
  /** A user file that cannot be read (its own check says why). */
  | { kind: 'unreadable'; userId: string; reason: string };

/**
 * Compares the directory's users index with what the user files derive, reading both as they are
 * now (the server may be running: a registration or a change between the two reads can show up
 * once, which is why doctor asks twice). Changes nothing.
 */
export async function checkDirectoryIndex(storage: Storage): Promise<IndexProblem[]> {
  const { directory, userFiles } = storage;
  const rows = new Map((await directory.listUsers()).map((row) => [row.id, row]));
  const pending = new Set(await directory.listPendingUsers());
  const problems: IndexProblem[] = [];
  const files = userFiles.list().sort(compareSnowflakes);
  for (const userId of files) {
    const row = rows.get(userId);
    const read = await userFiles.holding(userId, (): IndexEntry | IndexProblem => {
      try {
        return userFiles.read(userId, entryOf);
      } catch (error) {
        if (error instanceof UserFileDeletedError) return { kind: 'deleted', userId, indexed: row !== undefined };
        return { kind: 'unreadable', userId, reason: error instanceof Error ? error.message : String(error) };
      }
    });
    if ('kind' in read) {
      problems.push(read);
      continue;
    }
    const entry = read;
    if (row === undefined) {
      problems.push({ kind: 'not_indexed', userId, username: entry.username });
      continue;
    }
    if (row.username !== entry.username) problems.push({ kind: 'differs', userId, field: 'username', inFile: entry.username, inIndex: row.username });
    if (row.email_lower !== entry.email.toLowerCase()) {
      problems.push({ kind: 'differs', userId, field: 'email', inFile: entry.email.toLowerCase(), inIndex: row.email_lower });
    }
    if (row.created_at !== entry.createdAt) {
      problems.push({ kind: 'differs', userId, field: 'created_at', inFile: String(entry.createdAt), inIndex: String(row.created_at) });
    }
    if (pending.has(userId)) problems.push({ kind: 'pending', userId });
  }
  const onDisk = new Set(files);
  for (const row of rows.values()) if (!onDisk.has(row.id)) problems.push({ kind: 'no_file', userId: row.id, username: row.username });
  return problems;
}

/** Derives one user's index row again from their file, and clears its pending mark. */
export async function rederiveIndexEntry(storage: Storage, userId: string): Promise<void> {
  await storage.directory.settleUser(await storage.userFiles.holding(userId, () => storage.userFiles.read(userId, entryOf)));
}

/** The index entry a user file derives: under the id the file is found by (its name). */
function entryOf(file: UserFile): IndexEntry {
  const profile = repo.readProfile(file);
  return { id: file.userId, username: profile.username, email: profile.email, createdAt: profile.created_at };
}
