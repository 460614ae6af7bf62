import type { UserFile } from '../storage/index.ts';

export type DocName = 'notes' | 'settings';

export interface StoredDoc {
  snapshot: Uint8Array | null;
  updates: Uint8Array[];
  /** Bytes in the update log, for deciding when to compact. */
  logBytes: number;
}

export function ensureDoc(file: UserFile, name: DocName, now: number): void {
  file.stmt('INSERT OR IGNORE INTO docs (name, created_at) VALUES (?, ?)').run(name, now);
}

export function readDoc(file: UserFile, name: DocName): StoredDoc {
  const row = file.stmt('SELECT snapshot FROM docs WHERE name = ?').get(name) as { snapshot: Buffer | null } | undefined;
  const rows = file.stmt('SELECT data FROM doc_updates WHERE doc = ? ORDER BY id').all(name) as { data: Buffer }[];
  let logBytes = 0;
  const updates = rows.map((r) => {
    logBytes += r.data.byteLength;
    return r.data;
  });
  return { snapshot: row?.snapshot ?? null, updates, logBytes };
}

export function appendUpdate(file: UserFile, name: DocName, update: Uint8Array): void {
  file.stmt('INSERT INTO doc_updates (doc, data) VALUES (?, ?)').run(name, update);
}

/** Replaces the snapshot and drops the log it already contains, in the caller's transaction. */
export function replaceSnapshot(file: UserFile, name: DocName, snapshot: Uint8Array): void {
  file.stmt('UPDATE docs SET snapshot = ? WHERE name = ?').run(snapshot, name);
  file.stmt('DELETE FROM doc_updates WHERE doc = ?').run(name);
}
