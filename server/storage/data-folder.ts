import fs from 'node:fs';
import path from 'node:path';
import { compareSnowflakes, isSnowflake } from '../../shared/snowflake.ts';
import { DIRECTORY_MIGRATIONS, ID_FILE_MIGRATIONS, USER_FILE_MIGRATIONS } from './schema.ts';
import { openExistingForReading, readSchemaVersion, type Db } from './sqlite.ts';

/** The three kinds of SQLite files of a data folder (storage/schema.ts says what each holds). */
export type DataFileKind = 'directory' | 'ids' | 'user';

/** One SQLite file of a data folder, by its path relative to the folder (`users/<id>.sqlite`). */
export interface DataFile {
  path: string;
  kind: DataFileKind;
}

export const DIRECTORY_FILE = 'directory.sqlite';
export const IDS_FILE = 'ids.sqlite';
export const USERS_FOLDER = 'users';

/** The schema version this server writes for each kind of file. */
export function knownSchemaVersion(kind: DataFileKind): number {
  return { directory: DIRECTORY_MIGRATIONS, ids: ID_FILE_MIGRATIONS, user: USER_FILE_MIGRATIONS }[kind].length;
}

/** Whether `dataDir` holds a data folder (its directory); commands that only read it refuse others. */
export function isDataFolder(dataDir: string): boolean {
  return fs.existsSync(path.join(dataDir, DIRECTORY_FILE));
}

/**
 * Every SQLite file of the data folder as it is now: the directory and the id file when present,
 * then the user files by id. Names in `users/` that are not `<snowflake>.sqlite` are no user's
 * (an import's temporary file, say) and are left out, as the server does.
 */
export function listDataFiles(dataDir: string): DataFile[] {
  const files: DataFile[] = [];
  if (fs.existsSync(path.join(dataDir, DIRECTORY_FILE))) files.push({ path: DIRECTORY_FILE, kind: 'directory' });
  if (fs.existsSync(path.join(dataDir, IDS_FILE))) files.push({ path: IDS_FILE, kind: 'ids' });
  return [...files, ...listUserFiles(dataDir)];
}

export function listUserFiles(dataDir: string): DataFile[] {
  const folder = path.join(dataDir, USERS_FOLDER);
  if (!fs.existsSync(folder)) return [];
  const ids: string[] = [];
  for (const name of fs.readdirSync(folder)) {
    const match = /^([0-9]+)\.sqlite$/.exec(name);
    if (match !== null && isSnowflake(match[1])) ids.push(match[1]);
  }
  return ids.sort(compareSnowflakes).map((id) => ({ path: `${USERS_FOLDER}/${id}.sqlite`, kind: 'user' as const }));
}

/** What `inspectDataFile` found. */
export interface FileHealth {
  file: DataFile;
  bytes: number;
  /** `PRAGMA user_version`, when the file could be read that far. */
  schemaVersion: number | undefined;
  /** Empty when the file is sound; otherwise one line each (integrity errors are capped). */
  problems: string[];
}

/** Integrity errors reported per file at most; SQLite may list thousands for one bad page. */
const MAX_INTEGRITY_LINES = 5;

/**
 * Checks one file as it is, changing nothing: it must open as SQLite, have a schema this server
 * knows (older is fine: it migrates on open), and pass `PRAGMA integrity_check`, which reads every
 * page inside one read transaction (a consistent view, also while the server writes).
 */
export function inspectDataFile(dataDir: string, file: DataFile, options: { exclusive?: boolean } = {}): FileHealth {
  const full = path.join(dataDir, file.path);
  const health: FileHealth = { file, bytes: sizeOf(full), schemaVersion: undefined, problems: [] };
  let db: ReturnType<typeof openExistingForReading>;
  try {
    db = openExistingForReading(full, options);
  } catch (error) {
    health.problems.push(`cannot be opened: ${messageOf(error)}`);
    return health;
  }
  try {
    inspectDatabase(db, health);
  } finally {
    db.close();
  }
  return health;
}

/**
 * The same check through a connection that is open already, and stays open: in cluster mode a
 * user file allows only the connection of the process holding it (a command, once the file's
 * user was handed over to it).
 */
export function inspectOpenDataFile(dataDir: string, file: DataFile, db: Db): FileHealth {
  const health: FileHealth = { file, bytes: sizeOf(path.join(dataDir, file.path)), schemaVersion: undefined, problems: [] };
  inspectDatabase(db, health);
  return health;
}

/** A file that cannot be checked at all, for the reason given. */
export function unopenableDataFile(dataDir: string, file: DataFile, error: unknown): FileHealth {
  return { file, bytes: sizeOf(path.join(dataDir, file.path)), schemaVersion: undefined, problems: [`cannot be opened: ${messageOf(error)}`] };
}

function inspectDatabase(db: Db, health: FileHealth): void {
  try {
    const version = readSchemaVersion(db);
    health.schemaVersion = version;
    const known = knownSchemaVersion(health.file.kind);
    if (version > known) health.problems.push(`has schema version ${version}, newer than this server knows (${known}): it was written by a newer server`);
    const lines = (db.prepare('PRAGMA integrity_check').pluck().all() as string[]).filter((line) => line !== 'ok');
    for (const line of lines.slice(0, MAX_INTEGRITY_LINES)) health.problems.push(`integrity check: ${line}`);
    if (lines.length > MAX_INTEGRITY_LINES) health.problems.push(`integrity check: … and ${lines.length - MAX_INTEGRITY_LINES} more`);
  } catch (error) {
    // Damage SQLite meets before its check can run: "file is not a database", "malformed".
    health.problems.push(`cannot be read: ${messageOf(error)}`);
  }
}

/** Whether a user file (opened as it is, perhaps of an older schema) carries the deletion mark. */
export function isMarkedDeleted(db: ReturnType<typeof openExistingForReading>): boolean {
  const hasTable = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'deletion'").get() !== undefined;
  return hasTable && db.prepare('SELECT 1 FROM deletion').get() !== undefined;
}

function sizeOf(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
