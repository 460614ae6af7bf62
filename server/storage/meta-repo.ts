import type { DirectoryFile } from './directory.ts';

/** Small server-wide values kept in the directory's `meta` table. */
export function readMeta(directory: DirectoryFile, key: string): string | undefined {
  const row = directory.stmt('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined;
  return row?.value;
}

export function deleteMeta(directory: DirectoryFile, key: string): void {
  directory.stmt('DELETE FROM meta WHERE key = ?').run(key);
}
