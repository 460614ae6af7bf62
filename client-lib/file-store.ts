import type BetterSqlite3 from 'better-sqlite3';
import { DEFAULT_COMPACTION, compact, type CompactionOptions, type LocalState, type LocalStore, type StoredUpdate } from './store.ts';

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
  readonly #limits: Required<CompactionOptions>;
  #acked: number;
  #settledCount = 0;
  #settledBytes = 0;

  constructor(db: BetterSqlite3.Database, options: FileStoreOptions) {
    this.#db = db;
    this.#limits = { maxRecords: options.maxRecords ?? DEFAULT_COMPACTION.maxRecords, maxBytes: options.maxBytes ?? DEFAULT_COMPACTION.maxBytes };
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${options.durability === 'normal' ? 'NORMAL' : 'FULL'}`);
    db.exec(`
      CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, local INTEGER NOT NULL, "update" BLOB NOT NULL);
      CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), snapshot BLOB, acked INTEGER NOT NULL, last_seq INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      INSERT OR IGNORE INTO state (id, snapshot, acked, last_seq) VALUES (1, NULL, 0, 0);
    `);
    this.#acked = this.#state().acked;
    this.#recount();
  }

  #state(): { snapshot: Buffer | null; acked: number; last_seq: number } {
    return this.#db.prepare('SELECT snapshot, acked, last_seq FROM state WHERE id = 1').get() as { snapshot: Buffer | null; acked: number; last_seq: number };
  }

  #recount(): void {
    const row = this.#db
      .prepare('SELECT count(*) AS n, coalesce(sum(length("update")), 0) AS bytes FROM records WHERE local = 0 OR seq <= ?')
      .get(this.#acked) as { n: number; bytes: number };
    this.#settledCount = row.n;
    this.#settledBytes = row.bytes;
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
    if (!record.local) {
      this.#settledCount += 1;
      this.#settledBytes += record.update.byteLength;
    }
    if (this.#settledCount >= this.#limits.maxRecords || this.#settledBytes >= this.#limits.maxBytes) this.#compact();
  }

  async setAcked(seq: number): Promise<void> {
    if (seq <= this.#acked) return;
    this.#acked = seq;
    this.#db.prepare('UPDATE state SET acked = max(acked, ?) WHERE id = 1').run(seq);
    this.#recount();
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.#db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  async close(): Promise<void> {
    if (this.#db.open) this.#db.close();
  }

  /** Folds settled records into the snapshot in one transaction: a crash leaves either state. */
  #compact(): void {
    this.#db.transaction(() => {
      const state = this.#state();
      const rows = this.#db.prepare('SELECT seq, local, "update" FROM records ORDER BY seq').all() as RecordRow[];
      const records = rows.map((r) => ({ seq: r.seq, local: r.local === 1, update: new Uint8Array(r.update) }));
      const { snapshot, kept } = compact(state.snapshot ? new Uint8Array(state.snapshot) : null, records, this.#acked);
      const keep = new Set(kept.map((r) => r.seq));
      const remove = this.#db.prepare('DELETE FROM records WHERE seq = ?');
      for (const r of records) if (!keep.has(r.seq)) remove.run(r.seq);
      this.#db.prepare('UPDATE state SET snapshot = ? WHERE id = 1').run(snapshot);
    })();
    this.#settledCount = 0;
    this.#settledBytes = 0;
  }

  /** Records not yet merged (for tests of compaction). */
  get recordCount(): number {
    return (this.#db.prepare('SELECT count(*) AS n FROM records').get() as { n: number }).n;
  }
}
