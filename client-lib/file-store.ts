import type BetterSqlite3 from 'better-sqlite3';
import { CompactionTrigger, compact, sizeOf, type LocalState, type LocalStore, type CompactionOptions, type StoredUpdate } from './store.ts';

export interface FileStoreOptions extends CompactionOptions {
  /**
   * `full` (default) syncs every edit to disk before the append resolves, so an edit survives a
   * power cut; `normal` survives an app crash only, for much cheaper writes.
   */
  durability?: 'full' | 'normal';
}

interface RecordRow {
  seq: number;
  local: number;
  update: Buffer;
}

/**
 * A SQLite file per document (desktop, Electron, Node): an append log of updates plus a snapshot
 * the store folds settled records into. better-sqlite3 is loaded only when a file store is opened,
 * so importing client-lib in a browser bundle never pulls in the native module.
 */
export async function openFileStore(path: string, options: FileStoreOptions = {}): Promise<FileStore> {
  const { default: Database } = await import('better-sqlite3');
  return new FileStore(new Database(path), options);
}

export class FileStore implements LocalStore {
  readonly #db: BetterSqlite3.Database;
  readonly #trigger: CompactionTrigger;
  #acked: number;

  constructor(db: BetterSqlite3.Database, options: FileStoreOptions) {
    this.#db = db;
    this.#trigger = new CompactionTrigger(options);
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${options.durability === 'normal' ? 'NORMAL' : 'FULL'}`);
    db.exec(`
      CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, local INTEGER NOT NULL, "update" BLOB NOT NULL);
      CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), snapshot BLOB, acked INTEGER NOT NULL, last_seq INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      INSERT OR IGNORE INTO state (id, snapshot, acked, last_seq) VALUES (1, NULL, 0, 0);
    `);
    this.#acked = this.#state().acked;
    const sizes = this.#db.prepare('SELECT seq, local, length("update") AS bytes FROM records').all() as { seq: number; local: number; bytes: number }[];
    this.#trigger.reset(
      sizes.map((r) => ({ seq: r.seq, local: r.local === 1, bytes: r.bytes })),
      this.#acked,
    );
  }

  #state(): { snapshot: Buffer | null; acked: number; last_seq: number } {
    return this.#db.prepare('SELECT snapshot, acked, last_seq FROM state WHERE id = 1').get() as { snapshot: Buffer | null; acked: number; last_seq: number };
  }

  async load(): Promise<LocalState> {
    const state = this.#state();
    const rows = this.#db.prepare('SELECT seq, local, "update" FROM records ORDER BY seq').all() as RecordRow[];
    const meta: Record<string, string> = {};
    for (const row of this.#db.prepare('SELECT key, value FROM meta').all() as { key: string; value: string }[]) meta[row.key] = row.value;
    return {
      snapshot: state.snapshot ? new Uint8Array(state.snapshot) : null,
      updates: rows.map((r) => ({ seq: r.seq, local: r.local === 1, update: new Uint8Array(r.update) })),
      acked: state.acked,
      lastSeq: state.last_seq,
      meta,
    };
  }

  async append(record: StoredUpdate): Promise<void> {
    this.#db.transaction(() => {
      this.#db.prepare('INSERT INTO records (seq, local, "update") VALUES (?, ?, ?)').run(record.seq, record.local ? 1 : 0, record.update);
      this.#db.prepare('UPDATE state SET last_seq = max(last_seq, ?) WHERE id = 1').run(record.seq);
    })();
    this.#trigger.appended(sizeOf(record));
    if (this.#trigger.due) this.#compact();
  }

  async setAcked(seq: number): Promise<void> {
    if (seq <= this.#acked) return;
    // Stored first: a write that throws leaves the store as it was, so the same ack can come again.
    this.#db.prepare('UPDATE state SET acked = max(acked, ?) WHERE id = 1').run(seq);
    this.#acked = seq;
    this.#trigger.acked(seq);
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.#db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  async close(): Promise<void> {
    if (this.#db.open) this.#db.close();
  }

  /**
   * Reads, folds settled records into the snapshot and rewrites, in one transaction: a crash leaves
   * either state. It folds by the `acked` read in that transaction, so what it folds always agrees
   * with the acknowledgement stored beside it (the one a restart goes by).
   */
  #compact(): void {
    const kept = this.#db.transaction(() => {
      const state = this.#state();
      const rows = this.#db.prepare('SELECT seq, local, "update" FROM records ORDER BY seq').all() as RecordRow[];
      const records = rows.map((r) => ({ seq: r.seq, local: r.local === 1, update: new Uint8Array(r.update) }));
      const result = compact(state.snapshot ? new Uint8Array(state.snapshot) : null, records, state.acked);
      const keep = new Set(result.kept.map((r) => r.seq));
      const remove = this.#db.prepare('DELETE FROM records WHERE seq = ?');
      for (const r of records) if (!keep.has(r.seq)) remove.run(r.seq);
      this.#db.prepare('UPDATE state SET snapshot = ? WHERE id = 1').run(result.snapshot);
      return result.kept;
    })();
    this.#trigger.reset(kept.map(sizeOf), this.#acked);
  }

  /** Records not yet merged (for tests of compaction). */
  get recordCount(): number {
    return (this.#db.prepare('SELECT count(*) AS n FROM records').get() as { n: number }).n;
  }
}
