import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { type DataFile, isMarkedDeleted } from './data-folder.ts';
import { openExistingForReading, type Db } from './sqlite.ts';

/**
 * Online backup of single SQLite files (SQLite's backup API, through better-sqlite3), and the
 * manifest that describes a backup folder. The order in which files are taken, and how the copies
 * are made to agree, is the caller's (server/admin/backup.ts).
 */

/** Pages copied per step: progress is reported between steps (4 MiB with SQLite's default page size). */
const PAGES_PER_STEP = 1024;

/** Progress of one file's copy: pages copied and pages in all (which a restart may change). */
export type PageProgress = (copied: number, total: number) => void;

/** What `copyDatabase` did. */
export type CopyResult = { copied: true } | { copied: false; reason: 'vanished' | 'deleted' };

/**
 * Copies `source` to `destination` (which must not exist) with the backup API: a consistent
 * snapshot of the file, while other processes keep reading and writing it (in WAL mode the
 * backup's reads never block the server's writes). SQLite restarts a stepwise backup when another
 * connection writes the file meanwhile; after a restart the rest goes in one step (one read
 * transaction), so a busy file cannot starve it. A user file whose account was deleted, or that
 * vanished, is not copied (`skipDeleted`). `exclusive`: read alone (a cluster's `ids.sqlite` and
 * `directory.sqlite`, which its processes open only for a moment: storage/moments.ts), the others
 * waiting for the copy.
 */
export async function copyDatabase(
  source: string,
  destination: string,
  options: { skipDeleted: boolean; progress?: PageProgress; exclusive?: boolean },
): Promise<CopyResult> {
  if (fs.existsSync(destination)) throw new Error(`${destination} exists already`);
  let db: ReturnType<typeof openExistingForReading>;
  try {
    db = openExistingForReading(source, { exclusive: options.exclusive === true });
  } catch (error) {
    if (!fs.existsSync(source)) return { copied: false, reason: 'vanished' };
    throw error;
  }
  try {
    if (options.skipDeleted && isMarkedDeleted(db)) return { copied: false, reason: 'deleted' };
    await backupOpenDatabase(db, destination, options.progress);
    return { copied: true };
  } finally {
    db.close();
  }
}

/**
 * Copies what the open connection `db` reads to `destination` (which must not exist) with the
 * backup API, in steps (progress between them); after a restart (another connection wrote the
 * file meanwhile) the rest goes in one step, so a busy file cannot starve it. Nothing is left at
 * `destination` on failure.
 */
export async function backupOpenDatabase(db: Db, destination: string, progress?: PageProgress): Promise<void> {
  let lastRemaining = Number.POSITIVE_INFINITY;
  let restarted = false;
  try {
    await db.backup(destination, {
      progress: ({ totalPages, remainingPages }) => {
        progress?.(totalPages - remainingPages, totalPages);
        if (remainingPages > lastRemaining) restarted = true;
        lastRemaining = remainingPages;
        return restarted ? 0x7fffffff : PAGES_PER_STEP;
      },
    });
  } catch (error) {
    for (const suffix of ['', '-wal', '-shm', '-journal']) fs.rmSync(destination + suffix, { force: true });
    throw error;
  }
}

/** A file's size and SHA-256, read in chunks (a directory can be large). */
export function digestFile(file: string): { bytes: number; sha256: string } {
  const hash = createHash('sha256');
  const buffer = Buffer.alloc(1024 * 1024);
  const fd = fs.openSync(file, 'r');
  let bytes = 0;
  try {
    for (let read = fs.readSync(fd, buffer); read > 0; read = fs.readSync(fd, buffer)) {
      hash.update(buffer.subarray(0, read));
      bytes += read;
    }
  } finally {
    fs.closeSync(fd);
  }
  return { bytes, sha256: hash.digest('hex') };
}

export const MANIFEST_FILE = 'manifest.json';

const manifestEntrySchema = z.strictObject({
  path: z.string().regex(/^(directory\.sqlite|ids\.sqlite|users\/[1-9][0-9]{0,18}\.sqlite)$/, { message: 'not a file of a data folder' }),
  kind: z.enum(['directory', 'ids', 'user']),
  bytes: z.number().int().min(0),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  schema_version: z.number().int().min(0),
});

/** `manifest.json` of a backup folder: written last, so a folder without one is no complete backup. */
const manifestSchema = z.strictObject({
  format: z.literal('plexichat-backup'),
  version: z.literal(1),
  /** When the backup started and finished (ISO 8601, UTC): every file was taken in between. */
  started_at: z.string(),
  finished_at: z.string(),
  users: z.number().int().min(0),
  files: z.array(manifestEntrySchema),
});
export type Manifest = z.infer<typeof manifestSchema>;
export type ManifestEntry = z.infer<typeof manifestEntrySchema>;

/** A copied file's manifest entry (the copy is closed: no WAL beside it). */
export function manifestEntry(folder: string, file: DataFile): ManifestEntry {
  const full = path.join(folder, file.path);
  return { path: file.path, kind: file.kind, ...digestFile(full), schema_version: headerSchemaVersion(full) };
}

/**
 * `PRAGMA user_version` as the file's header holds it (4 bytes, big-endian, at offset 60), read
 * without a connection, which could leave a WAL or shared-memory file beside a finished copy.
 */
function headerSchemaVersion(file: string): number {
  const fd = fs.openSync(file, 'r');
  try {
    const header = Buffer.alloc(4);
    fs.readSync(fd, header, 0, 4, 60);
    return header.readUInt32BE(0);
  } finally {
    fs.closeSync(fd);
  }
}

/** Written whole or not at all: a temporary name, then renamed. */
export function writeManifest(folder: string, manifest: Manifest): void {
  const target = path.join(folder, MANIFEST_FILE);
  const temporary = `${target}.tmp`;
  fs.writeFileSync(temporary, `${JSON.stringify(manifest, null, 2)}\n`);
  fs.renameSync(temporary, target);
}

/** The folder's manifest, validated; throws one line saying what is wrong. */
export function readManifest(folder: string): Manifest {
  const file = path.join(folder, MANIFEST_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new Error(`${folder} has no ${MANIFEST_FILE}: it is not a finished Plexichat backup`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error(`${file} is not JSON`);
  }
  const result = manifestSchema.safeParse(json);
  if (!result.success) {
    const issue = result.error.issues[0];
    throw new Error(`${file} is not a Plexichat backup manifest: ${issue?.path.join('.') ?? ''} ${issue?.message ?? ''}`.trim());
  }
  return result.data;
}
