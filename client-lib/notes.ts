import * as Y from 'yjs';
import { SnowflakeGenerator, MAX_WORKER_ID } from '../shared/snowflake.ts';
import { insertNote, listNotes, notesMap, readNote, replaceNoteText, type NoteMessage } from '../shared/notes-doc.ts';
import { messageContentSchema } from '../shared/schemas/notes.ts';
import { ApiError } from './errors.ts';
import type { LocalStore } from './store.ts';
import { REMOTE_ORIGIN, SyncProvider, type BackoffOptions, type SyncStatus, type WebSocketConstructor } from './sync.ts';

export type { NoteMessage };

/** What `openNotes` needs of the REST client (kept narrow so tests can fake it). */
export interface NotesHost {
  readonly token: string | undefined;
  notesChannel(): Promise<{ id: string }>;
  syncUrl(doc: string): string;
  /** Any authenticated call: used to tell a refused token from a network failure. */
  me(): Promise<unknown>;
  onEndpointChange(listener: () => void): () => void;
}

export interface OpenNotesOptions {
  store: LocalStore;
  /** Node 20 has no global WebSocket: pass `ws`'s. Defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Start syncing right away (default true). */
  connect?: boolean;
  backoff?: BackoffOptions;
  /** Random source for retry jitter and the device's id worker number (tests pass a seeded one). */
  random?: () => number;
}

export interface NotesEvents {
  /** The notes changed, here or on another device. `local` is true for this device's edits. */
  change: (event: { local: boolean }) => void;
  /** `status` or `pending` changed. */
  status: (status: SyncStatus, pending: number) => void;
  /** The server refused the connection for good (e.g. 4401 revoked session); set a new token. */
  refused: (code: number, reason: string) => void;
  /** Writing to the local store failed. */
  error: (error: unknown) => void;
}

const META_CHANNEL = 'channel_id';
const META_WORKER = 'snowflake_worker';
const META_LAST_MS = 'snowflake_last_ms';
const LOAD_ORIGIN = Symbol('plexichat-load');

/** Opens the notes document from the store, then (unless told not to) starts syncing. */
export async function openNotes(host: NotesHost, options: OpenNotesOptions): Promise<Notes> {
  const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (WebSocketImpl === undefined) throw new TypeError('No WebSocket: pass one (e.g. the `ws` package) as options.WebSocket');
  const state = await options.store.load();
  let channelId = state.meta[META_CHANNEL];
  if (channelId === undefined) {
    // The first open needs the server once, to learn the channel; every later one works offline.
    channelId = (await host.notesChannel()).id;
    await options.store.setMeta(META_CHANNEL, channelId);
  }
  const random = options.random ?? Math.random;
  let worker = Number(state.meta[META_WORKER]);
  if (!Number.isInteger(worker) || worker < 0 || worker > MAX_WORKER_ID) {
    // Devices pick their id worker number at random, so two devices rarely mint the same id even
    // offline in the same millisecond; each device's own ids never repeat.
    worker = Math.floor(random() * (MAX_WORKER_ID + 1));
    await options.store.setMeta(META_WORKER, String(worker));
  }

  const doc = new Y.Doc();
  doc.transact(() => {
    if (state.snapshot) Y.applyUpdate(doc, state.snapshot);
    for (const record of state.updates) Y.applyUpdate(doc, record.update);
  }, LOAD_ORIGIN);
  const pending = state.updates.filter((r) => r.local && r.seq > state.acked).map((r) => r.seq);
  const notes = new Notes({
    host,
    store: options.store,
    doc,
    channelId,
    lastSeq: state.lastSeq,
    acked: state.acked,
    pending,
    ids: new SnowflakeGenerator({ workerId: worker, notBeforeMs: Number(state.meta[META_LAST_MS] ?? 0) + 1 }),
    WebSocket: WebSocketImpl,
    backoff: options.backoff,
    random,
  });
  if (options.connect ?? true) notes.connect();
  return notes;
}

interface NotesInit {
  host: NotesHost;
  store: LocalStore;
  doc: Y.Doc;
  channelId: string;
  lastSeq: number;
  acked: number;
  pending: number[];
  ids: SnowflakeGenerator;
  WebSocket: WebSocketConstructor;
  backoff: BackoffOptions | undefined;
  random: () => number;
}

type Listeners = { [K in keyof NotesEvents]: Set<NotesEvents[K]> };

/**
 * The user's notes on this device. Every edit lands in the local store first and is sent when a
 * connection is up; `pending` counts this device's edits the server has not yet stored.
 */
export class Notes {
  readonly doc: Y.Doc;
  readonly channelId: string;
  readonly #store: LocalStore;
  readonly #provider: SyncProvider;
  readonly #ids: SnowflakeGenerator;
  readonly #listeners: Listeners = { change: new Set(), status: new Set(), refused: new Set(), error: new Set() };
  readonly #unsubscribeToken: () => void;
  #lastSeq: number;
  #acked: number;
  #pending: number[];
  #writes: Promise<void> = Promise.resolve();
  #closed = false;
  #lastStatus: SyncStatus | null = null;
  #lastPending = -1;

  constructor(init: NotesInit) {
    this.doc = init.doc;
    this.channelId = init.channelId;
    this.#store = init.store;
    this.#ids = init.ids;
    this.#lastSeq = init.lastSeq;
    this.#acked = init.acked;
    this.#pending = init.pending;
    this.#provider = new SyncProvider({
      doc: init.doc,
      url: () => init.host.syncUrl(init.channelId),
      token: () => init.host.token,
      WebSocket: init.WebSocket,
      lastLocalSeq: () => this.#lastSeq,
      onAck: (seq) => this.#acknowledge(seq),
      onStatus: () => this.#emitStatus(),
      onRefused: (code, reason) => this.#emit('refused', code, reason),
      isTokenRefused: () =>
        init.host.me().then(
          () => false,
          (error: unknown) => {
            if (error instanceof ApiError && error.status === 401) return true;
            throw error;
          },
        ),
      random: init.random,
      ...(init.backoff ? { backoff: init.backoff } : {}),
    });
    this.#unsubscribeToken = init.host.onEndpointChange(() => this.#provider.retry());
    this.doc.on('update', this.#onUpdate);
  }

  // --- reading ------------------------------------------------------------------------------

  /** All notes, newest first. */
  list(): NoteMessage[] {
    return listNotes(this.doc);
  }

  get(id: string): NoteMessage | null {
    return readNote(notesMap(this.doc).get(id), id);
  }

  get status(): SyncStatus {
    if (this.#provider.serverSynced) return this.#pending.length === 0 ? 'synced' : 'syncing';
    if (this.#provider.connected) return 'syncing';
    if (this.#provider.connecting) return 'connecting';
    return 'offline';
  }

  /** This device's edits that the server has not yet confirmed as stored. */
  get pending(): number {
    return this.#pending.length;
  }

  /** Why the last connection closed (code and reason), or null. */
  get lastClose(): { code: number; reason: string } | null {
    return this.#provider.lastClose;
  }

  // --- writing ------------------------------------------------------------------------------

  /** Adds a note with an id made on this device (works offline); returns the id. */
  add(text: string): string {
    this.#assertOpen();
    const content = messageContentSchema.parse(text);
    const id = this.#ids.next();
    this.doc.transact(() => insertNote(this.doc, { id, content, created_at: Math.floor(Date.now() / 1000) }));
    this.#queue(() => this.#store.setMeta(META_LAST_MS, String(this.#ids.lastTimestampMs)));
    return id;
  }

  /** Edits a note's text in place (cursor-friendly, merges with concurrent edits). */
  edit(id: string, fn: (text: Y.Text) => void): void {
    this.#assertOpen();
    const entry = this.#entry(id);
    this.doc.transact(() => {
      let text = entry.get('content');
      if (!(text instanceof Y.Text)) {
        text = new Y.Text(typeof text === 'string' ? text : '');
        entry.set('content', text);
      }
      fn(text as Y.Text);
      entry.set('edited_at', Math.floor(Date.now() / 1000));
    });
  }

  /** Replaces a note's text, touching only the part that changed. */
  setText(id: string, text: string): void {
    const content = messageContentSchema.parse(text);
    this.edit(id, (ytext) => replaceNoteText(ytext, content));
  }

  remove(id: string): boolean {
    this.#assertOpen();
    if (!notesMap(this.doc).has(id)) return false;
    this.doc.transact(() => notesMap(this.doc).delete(id));
    return true;
  }

  // --- events and lifecycle -----------------------------------------------------------------

  on<K extends keyof NotesEvents>(event: K, listener: NotesEvents[K]): () => void {
    this.#listeners[event].add(listener);
    return () => {
      this.#listeners[event].delete(listener);
    };
  }

  /** Resolves once the status is `synced` (everything here is stored on the server and vice versa). */
  whenSynced(timeoutMs = 30_000): Promise<void> {
    return this.waitFor(() => this.status === 'synced', 'synced', timeoutMs);
  }

  /** Resolves when `predicate` holds, re-checked on every change and status change. */
  waitFor(predicate: () => boolean, label = 'condition', timeoutMs = 30_000): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!predicate()) return;
        done();
        resolve();
      };
      const offChange = this.on('change', check);
      const offStatus = this.on('status', check);
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out waiting for ${label} (status ${this.status}, pending ${this.pending})`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        offChange();
        offStatus();
      };
    });
  }

  connect(): void {
    this.#assertOpen();
    this.#provider.connect();
  }

  /** Goes offline on purpose; edits keep working and are sent on `connect()`. */
  disconnect(): void {
    this.#provider.disconnect();
  }

  /** Disconnects, waits for every local write to reach the store, and closes the store. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#provider.disconnect();
    this.#unsubscribeToken();
    this.doc.off('update', this.#onUpdate);
    await this.#writes;
    await this.#store.close();
    this.doc.destroy();
  }

  // --- internals ----------------------------------------------------------------------------

  readonly #onUpdate = (update: Uint8Array, origin: unknown): void => {
    if (origin === LOAD_ORIGIN) return;
    const local = origin !== REMOTE_ORIGIN;
    this.#lastSeq += 1;
    const seq = this.#lastSeq;
    this.#queue(() => this.#store.append({ seq, local, update }));
    if (local) {
      this.#pending.push(seq);
      this.#provider.sendLocal(update, seq);
    }
    this.#emit('change', { local });
    this.#emitStatus();
  };

  #acknowledge(seq: number): void {
    if (seq <= this.#acked) return;
    this.#acked = seq;
    this.#pending = this.#pending.filter((s) => s > seq);
    this.#queue(() => this.#store.setAcked(seq));
    this.#emitStatus();
  }

  /** Store writes run one after another, in the order the edits happened. */
  #queue(write: () => Promise<void>): void {
    this.#writes = this.#writes.then(write).catch((error: unknown) => this.#emit('error', error));
  }

  #entry(id: string): Y.Map<unknown> {
    const entry = notesMap(this.doc).get(id);
    if (!(entry instanceof Y.Map)) throw new RangeError(`No note with id ${id}`);
    return entry;
  }

  #assertOpen(): void {
    if (this.#closed) throw new Error('These notes are closed');
  }

  #emitStatus(): void {
    const status = this.status;
    const pending = this.pending;
    if (status === this.#lastStatus && pending === this.#lastPending) return;
    this.#lastStatus = status;
    this.#lastPending = pending;
    this.#emit('status', status, pending);
  }

  #emit<K extends keyof NotesEvents>(event: K, ...args: Parameters<NotesEvents[K]>): void {
    for (const listener of this.#listeners[event]) {
      try {
        (listener as (...a: Parameters<NotesEvents[K]>) => void)(...args);
      } catch (error) {
        if (event !== 'error') this.#emit('error', error);
      }
    }
  }
}
