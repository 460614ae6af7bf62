import * as Y from 'yjs';

/** One Yjs update as kept on the device. `seq` orders all records of a store, local or not. */
export interface StoredUpdate {
  seq: number;
  /** Made on this device (so it is pending until the server acknowledges it). */
  local: boolean;
  update: Uint8Array;
}

/** Everything a store holds for one document. */
export interface LocalState {
  /** Older updates merged into one, or null. */
  snapshot: Uint8Array | null;
  /** Records after the snapshot, by seq. */
  updates: StoredUpdate[];
  /** Every local record with seq <= acked is stored durably on the server. */
  acked: number;
  /** The highest seq ever appended, so seqs stay increasing after compaction. */
  lastSeq: number;
  meta: Record<string, string>;
}

/**
 * Where a device keeps its copy of a document. Implementations must keep appends in order and
 * must never drop a local record with seq > acked: that is the only copy of an unsent edit.
 */
export interface LocalStore {
  load(): Promise<LocalState>;
  append(record: StoredUpdate): Promise<void>;
  setAcked(seq: number): Promise<void>;
  setMeta(key: string, value: string): Promise<void>;
  close(): Promise<void>;
}

export interface CompactionOptions {
  /** Merge once this many records could be merged. */
  maxRecords?: number;
  /** ... or once they hold this many bytes. */
  maxBytes?: number;
}

export const DEFAULT_COMPACTION = { maxRecords: 500, maxBytes: 1 << 20 } as const;

/** A record may be merged into the snapshot once it is no longer an unacknowledged local edit. */
export function isSettled(record: StoredUpdate, acked: number): boolean {
  return !record.local || record.seq <= acked;
}

/** Folds the settled records into the snapshot; pending local ones stay as they are. */
export function compact(snapshot: Uint8Array | null, records: StoredUpdate[], acked: number): { snapshot: Uint8Array; kept: StoredUpdate[] } {
  const settled = records.filter((r) => isSettled(r, acked)).map((r) => r.update);
  const merged = Y.mergeUpdates(snapshot ? [snapshot, ...settled] : settled);
  return { snapshot: merged, kept: records.filter((r) => !isSettled(r, acked)) };
}

/**
 * Keeps everything in memory: for tests, and for apps that only want a session-long cache. The
 * same object can be re-opened (that is how tests simulate an app restart).
 */
export class MemoryStore implements LocalStore {
  #snapshot: Uint8Array | null = null;
  #updates: StoredUpdate[] = [];
  #acked = 0;
  #lastSeq = 0;
  #meta: Record<string, string> = {};
  readonly #limits: Required<CompactionOptions>;

  constructor(options: CompactionOptions = {}) {
    this.#limits = { ...DEFAULT_COMPACTION, ...options };
  }

  async load(): Promise<LocalState> {
    return {
      snapshot: this.#snapshot,
      updates: [...this.#updates],
      acked: this.#acked,
      lastSeq: this.#lastSeq,
      meta: { ...this.#meta },
    };
  }

  async append(record: StoredUpdate): Promise<void> {
    this.#updates.push({ ...record, update: record.update.slice() });
    this.#lastSeq = Math.max(this.#lastSeq, record.seq);
    const settled = this.#updates.filter((r) => isSettled(r, this.#acked));
    const bytes = settled.reduce((sum, r) => sum + r.update.byteLength, 0);
    if (settled.length >= this.#limits.maxRecords || bytes >= this.#limits.maxBytes) {
      const { snapshot, kept } = compact(this.#snapshot, this.#updates, this.#acked);
      this.#snapshot = snapshot;
      this.#updates = kept;
    }
  }

  async setAcked(seq: number): Promise<void> {
    this.#acked = Math.max(this.#acked, seq);
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.#meta[key] = value;
  }

  async close(): Promise<void> {}

  /** Records not yet merged (for tests of compaction). */
  get recordCount(): number {
    return this.#updates.length;
  }
}
