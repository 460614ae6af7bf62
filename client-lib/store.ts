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

/** A record as the compaction trigger sees it: its size instead of its bytes. */
export interface RecordSize {
  seq: number;
  local: boolean;
  bytes: number;
}

export function sizeOf(record: StoredUpdate): RecordSize {
  return { seq: record.seq, local: record.local, bytes: record.update.byteLength };
}

/** A record may be merged into the snapshot once it is no longer an unacknowledged local edit. */
function isSettled(record: { seq: number; local: boolean }, acked: number): boolean {
  return !record.local || record.seq <= acked;
}

/** Folds the settled records into the snapshot; pending local ones stay as they are. */
export function compact(snapshot: Uint8Array | null, records: StoredUpdate[], acked: number): { snapshot: Uint8Array; kept: StoredUpdate[] } {
  const settled = records.filter((r) => isSettled(r, acked)).map((r) => r.update);
  const merged = Y.mergeUpdates(snapshot ? [snapshot, ...settled] : settled);
  return { snapshot: merged, kept: records.filter((r) => !isSettled(r, acked)) };
}

/**
 * When a store should compact, the same for every store: once the records a compaction would fold
 * (every remote one, and local ones once acknowledged) number `maxRecords` or hold `maxBytes`. It
 * keeps the seq and size of each pending local record, so an acknowledgement moves them over
 * without reading the store again.
 */
export class CompactionTrigger {
  readonly #maxRecords: number;
  readonly #maxBytes: number;
  #acked = 0;
  #settledRecords = 0;
  #settledBytes = 0;
  #pending: RecordSize[] = [];

  constructor(options: CompactionOptions = {}) {
    this.#maxRecords = options.maxRecords ?? DEFAULT_COMPACTION.maxRecords;
    this.#maxBytes = options.maxBytes ?? DEFAULT_COMPACTION.maxBytes;
  }

  /** Counts from scratch what a store holds after its snapshot (when opened, after a compaction). */
  reset(records: Iterable<RecordSize>, acked: number): void {
    this.#acked = acked;
    this.#settledRecords = 0;
    this.#settledBytes = 0;
    this.#pending = [];
    for (const record of records) this.appended(record);
  }

  appended(record: RecordSize): void {
    if (isSettled(record, this.#acked)) {
      this.#settledRecords += 1;
      this.#settledBytes += record.bytes;
    } else {
      this.#pending.push(record);
    }
  }

  /** Every local record with seq <= `acked` is now settled. */
  acked(acked: number): void {
    if (acked <= this.#acked) return;
    this.#acked = acked;
    const pending = this.#pending;
    this.#pending = [];
    for (const record of pending) this.appended(record);
  }

  /** Enough could be folded that the store should compact now. */
  get due(): boolean {
    return this.#settledRecords >= this.#maxRecords || this.#settledBytes >= this.#maxBytes;
  }
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
  readonly #trigger: CompactionTrigger;

  constructor(options: CompactionOptions = {}) {
    this.#trigger = new CompactionTrigger(options);
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
    this.#trigger.appended(sizeOf(record));
    if (this.#trigger.due) {
      const { snapshot, kept } = compact(this.#snapshot, this.#updates, this.#acked);
      this.#snapshot = snapshot;
      this.#updates = kept;
      this.#trigger.reset(kept.map(sizeOf), this.#acked);
    }
  }

  async setAcked(seq: number): Promise<void> {
    this.#acked = Math.max(this.#acked, seq);
    this.#trigger.acked(this.#acked);
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
