import { CompactionTrigger, compact, sizeOf, type CompactionOptions, type LocalState, type LocalStore, type StoredUpdate } from './store.ts';

/*
 * The slice of the IndexedDB API this store uses, typed here because the project compiles without
 * the DOM library. The browser's `indexedDB` (and `fake-indexeddb` in tests) fit it.
 */
interface IdbRequest<T> {
  result: T;
  error: unknown;
  onsuccess: ((event: never) => void) | null;
  onerror: ((event: never) => void) | null;
}
interface IdbOpenRequest extends IdbRequest<IdbDatabase> {
  onupgradeneeded: ((event: never) => void) | null;
}
interface IdbObjectStore {
  put(value: unknown, key?: string | number): IdbRequest<unknown>;
  get(key: string | number): IdbRequest<unknown>;
  getAll(): IdbRequest<unknown[]>;
  delete(key: string | number): IdbRequest<unknown>;
}
interface IdbTransaction {
  objectStore(name: string): IdbObjectStore;
  oncomplete: ((event: never) => void) | null;
  onerror: ((event: never) => void) | null;
  onabort: ((event: never) => void) | null;
  error: unknown;
}
interface IdbDatabase {
  objectStoreNames: { contains(name: string): boolean };
  createObjectStore(name: string, options?: { keyPath?: string }): unknown;
  transaction(names: string[], mode: 'readonly' | 'readwrite'): IdbTransaction;
  close(): void;
}
export interface IdbFactoryLike {
  open(name: string, version?: number): IdbOpenRequest;
}

interface RecordValue {
  seq: number;
  local: boolean;
  update: Uint8Array;
}

const RECORDS = 'records';
const STATE = 'state';

export interface IndexedDbStoreOptions extends CompactionOptions {
  /** Defaults to `globalThis.indexedDB`. */
  indexedDB?: IdbFactoryLike;
}

/** Browser / WebView store: one IndexedDB database per document, same log + snapshot model. */
export async function openIndexedDbStore(name: string, options: IndexedDbStoreOptions = {}): Promise<IndexedDbStore> {
  const factory = options.indexedDB ?? (globalThis as { indexedDB?: IdbFactoryLike }).indexedDB;
  if (!factory) throw new TypeError('No IndexedDB here: pass options.indexedDB');
  const request = factory.open(name, 1);
  request.onupgradeneeded = () => {
    const db = request.result;
    if (!db.objectStoreNames.contains(RECORDS)) db.createObjectStore(RECORDS, { keyPath: 'seq' });
    if (!db.objectStoreNames.contains(STATE)) db.createObjectStore(STATE);
  };
  const db = await settle(request);
  const store = new IndexedDbStore(db, options);
  await store.init();
  return store;
}

export class IndexedDbStore implements LocalStore {
  readonly #db: IdbDatabase;
  readonly #trigger: CompactionTrigger;
  #acked = 0;

  constructor(db: IdbDatabase, options: CompactionOptions) {
    this.#db = db;
    this.#trigger = new CompactionTrigger(options);
  }

  /** Reads what the database holds so far (`openIndexedDbStore` calls it once). */
  async init(): Promise<void> {
    const state = await this.load();
    this.#acked = state.acked;
    this.#trigger.reset(state.updates.map(sizeOf), state.acked);
  }

  async load(): Promise<LocalState> {
    const tx = this.#db.transaction([RECORDS, STATE], 'readonly');
    const records = tx.objectStore(RECORDS).getAll();
    const snapshot = tx.objectStore(STATE).get('snapshot');
    const acked = tx.objectStore(STATE).get('acked');
    const lastSeq = tx.objectStore(STATE).get('last_seq');
    const meta = tx.objectStore(STATE).get('meta');
    await done(tx);
    const rows = (records.result as RecordValue[]).sort((a, b) => a.seq - b.seq);
    return {
      snapshot: snapshot.result instanceof Uint8Array ? snapshot.result : null,
      updates: rows.map((r) => ({ seq: r.seq, local: r.local, update: r.update })),
      acked: typeof acked.result === 'number' ? acked.result : 0,
      lastSeq: typeof lastSeq.result === 'number' ? lastSeq.result : 0,
      meta: isStringRecord(meta.result) ? meta.result : {},
    };
  }

  async append(record: StoredUpdate): Promise<void> {
    const tx = this.#db.transaction([RECORDS, STATE], 'readwrite');
    tx.objectStore(RECORDS).put({ seq: record.seq, local: record.local, update: record.update.slice() } satisfies RecordValue);
    const lastSeq = tx.objectStore(STATE).get('last_seq');
    lastSeq.onsuccess = () => {
      const previous = typeof lastSeq.result === 'number' ? lastSeq.result : 0;
      tx.objectStore(STATE).put(Math.max(previous, record.seq), 'last_seq');
    };
    await done(tx);
    this.#trigger.appended(sizeOf(record));
    if (this.#trigger.due) await this.#compact();
  }

  async setAcked(seq: number): Promise<void> {
    if (seq <= this.#acked) return;
    this.#acked = seq;
    const tx = this.#db.transaction([STATE], 'readwrite');
    tx.objectStore(STATE).put(seq, 'acked');
    await done(tx);
    this.#trigger.acked(seq);
  }

  async setMeta(key: string, value: string): Promise<void> {
    const tx = this.#db.transaction([STATE], 'readwrite');
    const meta = tx.objectStore(STATE).get('meta');
    meta.onsuccess = () => {
      const next = isStringRecord(meta.result) ? { ...meta.result } : {};
      next[key] = value;
      tx.objectStore(STATE).put(next, 'meta');
    };
    await done(tx);
  }

  async close(): Promise<void> {
    this.#db.close();
  }

  /**
   * Reads, merges and rewrites in one readwrite transaction, so a closed tab leaves either the old
   * or the new state, and no other write can come between the read and the rewrite: IndexedDB
   * runs readwrite transactions over the same stores one at a time. A transaction takes new
   * requests only while its callbacks run and commits once none is pending, so nothing here
   * awaits: the merge and the writes happen in the last read's callback. Like the SQLite store,
   * it folds by the `acked` read in the same transaction.
   */
  async #compact(): Promise<void> {
    const tx = this.#db.transaction([RECORDS, STATE], 'readwrite');
    const records = tx.objectStore(RECORDS).getAll();
    const snapshot = tx.objectStore(STATE).get('snapshot');
    const acked = tx.objectStore(STATE).get('acked');
    // Requests of one transaction succeed in the order they were made: this one comes last.
    acked.onsuccess = () => {
      const rows = (records.result as RecordValue[]).sort((a, b) => a.seq - b.seq);
      const result = compact(snapshot.result instanceof Uint8Array ? snapshot.result : null, rows, typeof acked.result === 'number' ? acked.result : 0);
      const keep = new Set(result.kept.map((r) => r.seq));
      for (const r of rows) if (!keep.has(r.seq)) tx.objectStore(RECORDS).delete(r.seq);
      tx.objectStore(STATE).put(result.snapshot, 'snapshot');
      // Counted from what this transaction read: appends made later are counted after it.
      this.#trigger.reset(result.kept.map(sizeOf), this.#acked);
    };
    await done(tx);
  }
}

function settle<T>(request: IdbRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function done(tx: IdbTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}

function isStringRecord(value: unknown): value is Record<string, string> {
  return typeof value === 'object' && value !== null && Object.values(value).every((v) => typeof v === 'string');
}
