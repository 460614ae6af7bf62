import type { DirectoryFile } from './directory.ts';

/** Small server-wide values kept in the directory's `meta` table. */
export function readMeta(directory: DirectoryFile, key: string): string | undefined {
  const row = directory.stmt('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined;
  return row?.value;
}

export function writeMeta(directory: DirectoryFile, key: string, value: string): void {
  directory.stmt('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
}
