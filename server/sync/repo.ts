import type { UserFile } from '../storage/index.ts';

export type DocName = 'notes' | 'settings';

interface StoredUpdate {
  id: number;
  data: Uint8Array;
}

export interface StoredDoc {
  snapshot: Uint8Array | null;
  /** The update log after the snapshot, in the order it was stored. */
  updates: StoredUpdate[];
  /** Bytes in the update log, for deciding when to compact. */
  logBytes: number;
}

/** The stored state of a document; one that was never stored is empty (and gets its row). */
export function readDoc(file: UserFile, name: DocName, now: number): StoredDoc {
  let row = file.stmt('SELECT snapshot FROM docs WHERE name = ?').get(name) as { snapshot: Buffer | null } | undefined;
  if (row === undefined) {
    file.transaction(() => file.stmt('INSERT OR IGNORE INTO docs (name, created_at) VALUES (?, ?)').run(name, now));
    row = { snapshot: null };
  }
  const rows = file.stmt('SELECT id, data FROM doc_updates WHERE doc = ? ORDER BY id').all(name) as { id: number; data: Buffer }[];
  let logBytes = 0;
  for (const r of rows) logBytes += r.data.byteLength;
  return { snapshot: row.snapshot, updates: rows, logBytes };
}

export function appendUpdate(file: UserFile, name: DocName, update: Uint8Array): void {
  file.stmt('INSERT INTO doc_updates (doc, data) VALUES (?, ?)').run(name, update);
}

/** Replaces the snapshot and drops the log it already contains, in the caller's transaction. */
export function replaceSnapshot(file: UserFile, name: DocName, snapshot: Uint8Array): void {
  file.stmt('UPDATE docs SET snapshot = ? WHERE name = ?').run(snapshot, name);
  file.stmt('DELETE FROM doc_updates WHERE doc = ?').run(name);
}

/** Keeps a copy of stored updates aside, with why, in the caller's transaction. */
export function quarantineUpdates(file: UserFile, name: DocName, updates: Uint8Array[], reason: string, now: number): void {
  const insert = file.stmt('INSERT INTO doc_quarantine (doc, data, reason, quarantined_at) VALUES (?, ?, ?, ?)');
  for (const update of updates) insert.run(name, update, reason, now);
}
