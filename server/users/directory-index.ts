import { compareSnowflakes } from '../../shared/snowflake.ts';
import type { Storage, UserFile } from '../storage/index.ts';
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
 * Derives the directory's users index again from the user files, in one directory transaction:
 * afterwards it holds one row per user file, made from its profile, and nothing else. The
 * sessions, relationships and DM channels of every account that keeps its row stay.
 *
 * Two files can claim one username or email only after a crash in the middle of a registration (the
 * file was written, its index entry never was, and the user registered again) or a failed repair.
 * The newest account keeps the name: in the first case it is the registration that completed. The
 * other is left out of the index (its file stays on disk, untouched) and reported, for an operator
 * to rename or remove.
 *
 * Throws, changing nothing, if a user file cannot be read.
 */
export function rebuildDirectoryIndex(storage: Storage): IndexRebuild {
  const { directory, userFiles } = storage;
  const profiles = userFiles
    .list()
    .sort((a, b) => compareSnowflakes(b, a))
    .map((id) => {
      try {
        return userFiles.use(id, entryOf);
      } catch (error) {
        // Said with the file's path: an operator has to find it to repair it or move it aside.
        throw new Error(`cannot read the user file ${userFiles.pathOf(id)}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
      }
    });
  const holders = { username: new Map<string, string>(), email: new Map<string, string>() };
  const kept: repo.IndexEntry[] = [];
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
  const removed = directory.transaction(() => {
    repo.releaseIndexedNames(directory);
    repo.clearAllIndexPending(directory);
    for (const profile of kept) repo.upsertIndexedUser(directory, profile);
    return repo.deleteUnclaimedIndexRows(directory);
  });
  return { indexed: kept.length, removed, leftOut };
}

/** Derives one user's index row again from their file, and clears its pending mark. */
export function rederiveIndexEntry(storage: Storage, userId: string): void {
  const { directory, userFiles } = storage;
  const entry = userFiles.use(userId, entryOf);
  directory.transaction(() => {
    repo.upsertIndexedUser(directory, entry);
    repo.clearIndexPending(directory, userId);
  });
}

/** The index entry a user file derives: under the id the file is found by (its name). */
function entryOf(file: UserFile): repo.IndexEntry {
  const profile = repo.readProfile(file);
  return { id: file.userId, username: profile.username, email: profile.email, createdAt: profile.created_at };
}
