import path from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.ts';
import { DIRECTORY_FILE, USERS_FOLDER, inspectDataFile, isDataFolder, listDataFiles, type DataFile, type FileHealth } from '../storage/data-folder.ts';
import { DIRECTORY_IN_REDIS } from '../storage/sqlite-directory.ts';
import { rowsWithoutFile, type IndexProblem } from '../users/directory-index.ts';
import { AccountsAdmin, type ServerNotice } from './accounts.ts';
import { movedToRedis } from './cluster-folder.ts';
import type { Progress } from './progress.ts';

export interface DoctorReport {
  files: FileHealth[];
  /** How the users index disagrees with the user files; undefined when it could not be compared. */
  index: IndexProblem[] | undefined;
  /** One line per problem found (none: the data folder is sound). */
  problems: string[];
  /** What to do about them, one line each. */
  fixes: string[];
}

const FIX_COMMAND = 'plexichat doctor --fix';

/**
 * `plexichat doctor`: every SQLite file of the data folder through SQLite's integrity check (and a
 * schema this server knows), then the directory's users index against the user files, and what
 * to do about each problem. Reads only; safe while the server runs (each check is one read
 * transaction). A disagreement may be a change caught between its two writes, so the index is
 * compared twice and only what both comparisons found is reported.
 *
 * A cluster's folder (given the nodes' `--redis-url`): each user file is checked while the
 * command holds its user (the node serving them hands them over: the nodes hold their users'
 * files exclusively), which writes nothing but the owner token the file carries.
 */
export async function examineDataFolder(config: Config, logger: Logger, progress: Progress): Promise<DoctorReport> {
  const dataDir = config.dataDir;
  if (!isDataFolder(dataDir)) throw new Error(`no Plexichat data folder at ${dataDir} (no ${DIRECTORY_FILE}): check --data-dir`);
  // Said first: without Redis, a cluster's user files cannot be had, and its index is not here.
  if (config.redisUrl === undefined && (await movedToRedis(dataDir, { clustered: false }))) throw new Error(DIRECTORY_IN_REDIS);
  const list = listDataFiles(dataDir);
  const shared = list.filter((file) => file.kind !== 'user');
  progress.start('check', list.length, 'files');
  const files = shared.map((file, index) => {
    // Given Redis, read alone, as the cluster's processes use these files (storage/moments.ts).
    const health = inspectDataFile(dataDir, file, { exclusive: config.redisUrl !== undefined });
    progress.update(index + 1, file.path);
    return health;
  });
  const directoryDamaged = files.some((health) => health.file.kind === 'directory' && health.problems.length > 0);
  // A cluster's command needs the directory (the record that it moved) to take users.
  const admin = config.redisUrl === undefined || directoryDamaged ? undefined : await AccountsAdmin.open(config, logger);
  // Without it a cluster's user files cannot be had (their nodes hold them): not checked at all.
  const unchecked = config.redisUrl !== undefined && directoryDamaged;
  let index: IndexProblem[] | undefined;
  try {
    const userFiles = unchecked ? [] : list.filter((candidate) => candidate.kind === 'user');
    // A cluster's users are each taken once, for their file's check and their row's together.
    const heldIndex: IndexProblem[] = [];
    try {
      for (const file of userFiles) {
        if (admin === undefined) files.push(inspectDataFile(dataDir, file));
        else {
          const checked = await admin.inspectUserFile(file, userIdOf(file));
          files.push(checked.health);
          heldIndex.push(...checked.index);
        }
        progress.update(files.length, file.path);
      }
    } finally {
      progress.stop();
    }
    if (admin !== undefined) {
      // Rows whose file is gone, asked twice as below (a deletion caught between its two steps).
      const ids = userFiles.map(userIdOf);
      const first = rowsWithoutFile(await admin.users.listIndexRows(), ids);
      const again = new Set(rowsWithoutFile(await admin.users.listIndexRows(), ids).map((problem) => JSON.stringify(problem)));
      index = [...heldIndex, ...first.filter((problem) => again.has(JSON.stringify(problem)))];
    } else if (!directoryDamaged) {
      const checker = await AccountsAdmin.open(config, logger);
      try {
        const first = await checker.users.checkDirectoryIndex();
        const again = new Set((await checker.users.checkDirectoryIndex()).map((problem) => JSON.stringify(problem)));
        index = first.filter((problem) => again.has(JSON.stringify(problem)));
      } finally {
        await checker.close();
      }
    }
  } finally {
    await admin?.close();
  }

  const problems: string[] = [];
  const fixes = new Set<string>();
  const damaged = files.filter((health) => health.problems.length > 0);
  for (const health of damaged) {
    for (const problem of health.problems) problems.push(`${health.file.path}: ${problem}`);
    fixes.add(fixForDamage(health));
  }
  if (index !== undefined) {
    const damagedUsers = new Set(damaged.map((health) => health.file.path));
    for (const problem of index) {
      // A damaged file was reported above, with its own fix.
      if (problem.kind === 'unreadable' && damagedUsers.has(`${USERS_FOLDER}/${problem.userId}.sqlite`)) continue;
      problems.push(describe(problem));
      fixes.add(fixForIndex(problem));
    }
  } else {
    problems.push('the users index was not compared with the user files: the directory cannot be read');
  }
  if (unchecked) problems.push(`the user files were not checked: a command takes a cluster's users only once ${DIRECTORY_FILE} can be read`);
  return { files, index, problems, fixes: [...fixes] };
}

/** `users/<id>.sqlite` → `<id>`. */
function userIdOf(file: DataFile): string {
  return path.basename(file.path, '.sqlite');
}

/** What `repairDataFolder` did. */
export interface Repair {
  /** Deletions that had stopped half-way, finished (their account ids). */
  finishedDeletions: string[];
  /** Whether the users index was derived again, and what that left out (names two files claim). */
  rebuilt: { indexed: number; removed: number; leftOut: string[] } | undefined;
  notice: ServerNotice | undefined;
}

/**
 * `plexichat doctor --fix`: what can be repaired from the data folder itself, while the server
 * runs, through the users and auth services: deletions that stopped half-way are finished, then
 * the users index is derived again from the user files (the rebuild the server runs on a lost
 * directory; sessions, relationships and DM channels of the accounts that stay are kept). Damaged
 * files need a person (a backup, or moving the file aside): with any, nothing is changed.
 */
export async function repairDataFolder(config: Config, report: DoctorReport, logger: Logger): Promise<Repair> {
  const damaged = report.files.filter((health) => health.problems.length > 0);
  if (damaged.length > 0) {
    throw new Error(
      `${damaged.map((health) => health.file.path).join(', ')} ${damaged.length === 1 ? 'is' : 'are'} damaged: repair or move ${damaged.length === 1 ? 'it' : 'them'} first (see the fixes above), then run ${FIX_COMMAND} again`,
    );
  }
  const problems = report.index ?? [];
  if (problems.length === 0) return { finishedDeletions: [], rebuilt: undefined, notice: undefined };
  const admin = await AccountsAdmin.open(config, logger);
  try {
    const finishedDeletions: string[] = [];
    for (const problem of problems) {
      if (problem.kind !== 'deleted') continue;
      await admin.delete(problem.userId);
      finishedDeletions.push(problem.userId);
    }
    let rebuilt: Repair['rebuilt'];
    if (problems.some((problem) => problem.kind !== 'deleted')) {
      const result = await admin.users.rebuildDirectoryIndex();
      rebuilt = {
        indexed: result.indexed,
        removed: result.removed.length,
        leftOut: result.leftOut.map((left) => `${USERS_FOLDER}/${left.id}.sqlite (its ${left.field} is held by the newer account ${left.heldBy})`),
      };
    }
    return { finishedDeletions, rebuilt, notice: await admin.notify() };
  } finally {
    await admin.close();
  }
}

function describe(problem: IndexProblem): string {
  const file = `${USERS_FOLDER}/${problem.userId}.sqlite`;
  switch (problem.kind) {
    case 'not_indexed':
      return `${file} (${problem.username}) has no entry in the directory's users index: it is no account`;
    case 'no_file':
      return `the directory's users index names ${problem.userId} (${problem.username}), but there is no ${file}`;
    case 'differs':
      return `${file}: the index says ${problem.field} ${JSON.stringify(problem.inIndex)}, the file says ${JSON.stringify(problem.inFile)}`;
    case 'no_card':
      return `${file}: its index entry has no card (written by an older version; the next start derives it)`;
    case 'pending':
      return `${file}: a change stopped between its two writes, or an upgrade marked it (the index entry is marked to be derived again)`;
    case 'deleted':
      return `${file} belongs to a deleted account: the deletion stopped before the file went${problem.indexed ? ' (the index still names it)' : ''}`;
    case 'unreadable':
      return `${file} cannot be read: ${problem.reason}`;
  }
}

function fixForIndex(problem: IndexProblem): string {
  if (problem.kind === 'deleted') return `${FIX_COMMAND} finishes the deletions that stopped half-way (the server may keep running)`;
  if (problem.kind === 'unreadable')
    return `a user file that cannot be read: stop the server, restore it from a backup or move it out of ${USERS_FOLDER}/, then run ${FIX_COMMAND}`;
  return (
    `${FIX_COMMAND} derives the directory's users index again from the user files, the truth (the server may keep running; ` +
    'sessions, relationships and DM channels of every account that stays are kept; user files the index lacks become accounts again)'
  );
}

function fixForDamage(health: FileHealth): string {
  const file = health.file.path;
  if (health.problems.some((problem) => problem.includes('newer than this server knows'))) {
    return `${file} was written by a newer Plexichat server: run that version (files are never migrated down)`;
  }
  switch (health.file.kind) {
    case 'directory':
      return (
        `${file} is damaged: stop the server and move it aside; the next start rebuilds the users index from the user files ` +
        '(sessions, relationships and DM channels are lost), or restore the whole data folder from a backup'
      );
    case 'ids':
      return `${file} is damaged: stop the server and delete it (ids then go on from the clock, which must not be behind) or take it from a backup`;
    case 'user':
      return (
        `${file} is damaged: stop the server, then put the same file from a backup in its place (restore the backup into an empty folder and copy that one file), ` +
        `or move it out of ${USERS_FOLDER}/ (the account can no longer sign in) and run ${FIX_COMMAND}`
      );
  }
}
