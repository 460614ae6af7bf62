import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.ts';
import { MANIFEST_FILE, copyDatabase, digestFile, manifestEntry, readManifest, writeManifest, type Manifest, type ManifestEntry } from '../storage/backup.ts';
import {
  DIRECTORY_FILE,
  IDS_FILE,
  USERS_FOLDER,
  isDataFolder,
  knownSchemaVersion,
  listDataFiles,
  listUserFiles,
  type DataFile,
} from '../storage/data-folder.ts';
import { SqliteDirectory } from '../storage/sqlite-directory.ts';
import { AccountsAdmin } from './accounts.ts';
import { movedToRedis } from './cluster-folder.ts';

/** What a backup of a cluster's data folder says it leaves out. */
const DIRECTORY_NOT_COPIED =
  "the directory (users index, sessions, relationships, DM channels) is in the cluster's Redis, not in this backup: keep Redis's own backups " +
  '(its RDB or AOF files) beside it (docs/cluster.md)';
import type { Progress } from './progress.ts';

/** Rounds of taking conflicting user files again before a backup gives up (see `makeCopiesAgree`). */
const AGREEMENT_ROUNDS = 3;

export interface BackupSummary {
  manifest: Manifest;
  /** User files not taken: their account was deleted meanwhile (or the file vanished). */
  skipped: string[];
  /** What was done to the copied directory so it agrees with the copied user files, if anything. */
  reconciled: string | undefined;
  /** A cluster's folder: how many users a node was serving, and handed over for their copy; undefined on one node. */
  handedOver: number | undefined;
}

/** A cluster's folder backed up without its Redis: its nodes hold the user files, which only a command with the nodes' Redis can be handed. */
export const BACKUP_NEEDS_REDIS =
  "this is a cluster's data folder (its directory moved to Redis): give backup the nodes' --redis-url (or PLEXICHAT_REDIS_URL), so that each user is handed over by the node serving them for the copy of their file";

/**
 * `plexichat backup <dir>`: a copy of every SQLite file of the data folder, taken with SQLite's
 * online backup while the server keeps serving, into `target` (new or empty), with a manifest.
 *
 * Each file is a consistent snapshot of itself; together they are made to agree:
 * - the directory is taken first, then the user files, then ids.sqlite last, so its reservation is
 *   above every id in the copies (a restored server never issues one of them again);
 * - a user file changes after the directory was taken (a registration, a rename, a deletion): the
 *   copied index is then derived again from the copied user files, the truth, with the rebuild the
 *   server itself uses (`rebuildDirectoryIndex`): sessions, relationships and DM channels of every
 *   account in the copy are kept. Should two copied files claim one name (it moved from one account
 *   to another while they were taken), both are taken again, now, and the copy derived again.
 * The manifest (files, sizes, SHA-256, schema versions, times) is written last: a folder without
 * one is no complete backup, and restore refuses it.
 *
 * A cluster's folder needs the nodes' Redis (`config.redisUrl`): the nodes hold their users' files
 * exclusively, so each user is taken for the copy of their file (the node serving them hands them
 * over: their devices reconnect once) and given back; the copy is read through the command's own
 * connection. The directory is Redis's, not in the backup.
 */
export async function backupDataFolder(config: Config, target: string, progress: Progress, logger: Logger): Promise<BackupSummary> {
  const source = config.dataDir;
  if (!isDataFolder(source)) throw new Error(`no Plexichat data folder at ${source} (no ${DIRECTORY_FILE}): check --data-dir`);
  const clustered = await movedToRedis(source, { clustered: config.redisUrl !== undefined });
  if (clustered && config.redisUrl === undefined) throw new Error(BACKUP_NEEDS_REDIS);
  if (!clustered && config.redisUrl !== undefined) {
    throw new Error(`${source} is not a cluster's data folder (its directory is in ${DIRECTORY_FILE}, not in Redis): back it up without --redis-url`);
  }
  prepareEmptyFolder(target, 'back up into');
  const admin = clustered ? await AccountsAdmin.open(config, logger) : undefined;
  try {
    return await copyDataFolder(config, target, progress, logger, admin);
  } finally {
    await admin?.close();
  }
}

async function copyDataFolder(config: Config, target: string, progress: Progress, logger: Logger, admin: AccountsAdmin | undefined): Promise<BackupSummary> {
  const source = config.dataDir;
  fs.mkdirSync(path.join(target, USERS_FOLDER), { recursive: true });
  const startedAt = new Date();

  // Listed once, now: a user registered after this is in the backup only if the directory copy
  // (taken first) does not know them either, which is consistent.
  const order: DataFile[] = [{ path: DIRECTORY_FILE, kind: 'directory' }, ...listUserFiles(source), { path: IDS_FILE, kind: 'ids' }];
  const sizes = order.map((file) => sizeWithWal(path.join(source, file.path)));
  const total = sizes.reduce((sum, size) => sum + size, 0);
  progress.start('backup', total, 'bytes');
  const skipped: string[] = [];
  let done = 0;
  for (const [index, file] of order.entries()) {
    const estimate = sizes[index] ?? 0;
    const onPages = (copied: number, pages: number) => progress.update(done + (pages === 0 ? 0 : (estimate * copied) / pages), file.path);
    const destination = path.join(target, file.path);
    const result =
      admin !== undefined && file.kind === 'user'
        ? { copied: await admin.copyUserFile(path.basename(file.path, '.sqlite'), destination, onPages) }
        : // A cluster's ids.sqlite and directory.sqlite: read alone, for the moment of the copy, as
          // the nodes use them (storage/moments.ts).
          await copyDatabase(path.join(source, file.path), destination, {
            skipDeleted: file.kind === 'user',
            progress: onPages,
            exclusive: admin !== undefined,
          });
    if (!result.copied) {
      if (file.kind !== 'user') throw new Error(`${file.path} disappeared from ${source} during the backup`);
      skipped.push(file.path);
    }
    done += estimate;
    progress.update(done, file.path);
  }
  progress.stop();

  const reconciled = await makeCopiesAgree(config, target, logger);
  const files = listDataFiles(target);
  const manifest: Manifest = {
    format: 'plexichat-backup',
    version: 1,
    started_at: startedAt.toISOString(),
    finished_at: new Date().toISOString(),
    users: files.filter((file) => file.kind === 'user').length,
    files: files.map((file) => manifestEntry(target, file)),
  };
  writeManifest(target, manifest);
  return { manifest, skipped, reconciled, handedOver: admin?.handedOver };
}

/**
 * Derives the copied users index again from the copied user files when the two disagree; takes
 * user files whose names collide again from the source (bounded). Returns what it did, if anything.
 */
async function makeCopiesAgree(config: Config, target: string, logger: Logger): Promise<string | undefined> {
  const copied = new SqliteDirectory(target);
  const moved = copied.movedToRedis();
  await copied.close();
  if (moved) return DIRECTORY_NOT_COPIED;
  let summary: string | undefined;
  for (let round = 0; round < AGREEMENT_ROUNDS; round += 1) {
    const admin = new AccountsAdmin({ ...config, dataDir: target }, logger);
    let collisions: string[];
    try {
      const problems = await admin.users.checkDirectoryIndex();
      if (problems.length === 0) return summary;
      const rebuilt = await admin.users.rebuildDirectoryIndex();
      summary = `the users index of the copy was derived again from its user files (${problems.length} difference${problems.length === 1 ? '' : 's'}: accounts changed while the backup ran)`;
      collisions = [...new Set(rebuilt.leftOut.flatMap((left) => [left.id, left.heldBy]))];
    } finally {
      await admin.close();
    }
    if (collisions.length === 0) return summary;
    for (const userId of collisions) {
      const file = `${USERS_FOLDER}/${userId}.sqlite`;
      removeDatabaseFiles(path.join(target, file));
      await copyDatabase(path.join(config.dataDir, file), path.join(target, file), { skipDeleted: true });
    }
  }
  throw new Error(`accounts kept exchanging names while the backup ran (${AGREEMENT_ROUNDS} tries); run it again`);
}

export interface RestoreSummary {
  manifest: Manifest;
  files: number;
  /** The backup is of a cluster's folder: its nodes start on the Redis that holds its directory. */
  clustered: boolean;
}

/** What restoring a cluster's folder leaves to do. */
export const RESTORED_CLUSTER_FOLDER =
  "this is a cluster's data folder: its directory (users index, sessions, relationships, DM channels) is in Redis, not in the backup; " +
  'start its nodes on the Redis that holds it (restored from its own backup if it was lost), with this folder as --data-dir';

/**
 * `plexichat restore <dir>`: a backup into an empty data folder (or one that does not exist yet).
 * Everything is checked before anything is written: the manifest, then every file it lists (size,
 * SHA-256, a schema this server can run). The user files go first and the directory last, so an
 * interrupted restore leaves no folder a server would take for a data folder; a failure removes
 * what was copied. It reads and writes only files, a cluster's folder included: nothing needs to
 * run, and nothing may run on the new folder yet.
 */
export async function restoreDataFolder(backup: string, dataDir: string, progress: Progress): Promise<RestoreSummary> {
  const manifest = readManifest(backup);
  if (!manifest.files.some((file) => file.kind === 'directory')) throw new Error(`${backup}/${MANIFEST_FILE} lists no ${DIRECTORY_FILE}`);
  prepareEmptyFolder(dataDir, 'restore into');

  const total = manifest.files.reduce((sum, file) => sum + file.bytes, 0);
  progress.start('verify', total, 'bytes');
  let done = 0;
  for (const entry of manifest.files) {
    verifyEntry(backup, entry);
    done += entry.bytes;
    progress.update(done, entry.path);
  }
  progress.stop();

  const rank = { user: 0, ids: 1, directory: 2 } as const;
  const ordered = [...manifest.files].sort((a, b) => rank[a.kind] - rank[b.kind]);
  const written: string[] = [];
  progress.start('restore', total, 'bytes');
  done = 0;
  try {
    fs.mkdirSync(path.join(dataDir, USERS_FOLDER), { recursive: true });
    for (const entry of ordered) {
      const destination = path.join(dataDir, entry.path);
      fs.copyFileSync(path.join(backup, entry.path), destination, fs.constants.COPYFILE_EXCL);
      written.push(destination);
      done += entry.bytes;
      progress.update(done, entry.path);
    }
  } catch (error) {
    for (const file of written) removeDatabaseFiles(file);
    throw error;
  } finally {
    progress.stop();
  }
  return { manifest, files: written.length, clustered: await movedToRedis(dataDir, { clustered: false }) };
}

/** One file of a backup against its manifest entry; throws one line naming what differs. */
function verifyEntry(backup: string, entry: ManifestEntry): void {
  const file = path.join(backup, entry.path);
  if (!fs.existsSync(file)) throw new Error(`${entry.path} is listed in the manifest but missing from ${backup}`);
  const { bytes, sha256 } = digestFile(file);
  if (bytes !== entry.bytes || sha256 !== entry.sha256) {
    throw new Error(`${entry.path} is not the file the backup wrote (size or SHA-256 differs from the manifest): the backup is damaged`);
  }
  const known = knownSchemaVersion(entry.kind);
  if (entry.schema_version > known) {
    throw new Error(
      `${entry.path} has schema version ${entry.schema_version}, newer than this server knows (${known}): restore it with the version that took it`,
    );
  }
}

/** `folder` must be new or empty (a `.gitkeep` aside); it is created if missing. */
function prepareEmptyFolder(folder: string, what: string): void {
  if (fs.existsSync(folder)) {
    const entries = fs.readdirSync(folder).filter((name) => name !== '.gitkeep');
    if (entries.length > 0) throw new Error(`${folder} is not empty: ${what} a new or empty folder only`);
  }
  fs.mkdirSync(folder, { recursive: true });
}

function sizeWithWal(file: string): number {
  let bytes = 0;
  for (const suffix of ['', '-wal']) {
    try {
      bytes += fs.statSync(file + suffix).size;
    } catch {
      // No WAL (or the file is gone: the copy says so).
    }
  }
  return bytes;
}

function removeDatabaseFiles(file: string): void {
  for (const suffix of ['', '-wal', '-shm', '-journal']) fs.rmSync(file + suffix, { force: true });
}
