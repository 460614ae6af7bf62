import * as Y from 'yjs';
import { ApiError } from './errors.ts';
import type { LocalState, LocalStore } from './store.ts';
import { REMOTE_ORIGIN, SyncProvider, type BackoffOptions, type SyncStatus, type WebSocketConstructor } from './sync.ts';

/** What a synced document needs of the REST client (kept narrow so tests can fake it). */
export interface SyncHost {
  readonly token: string | undefined;
  syncUrl(doc: string): string;
  /** Any authenticated call: used to tell a refused token from a network failure. */
  me(): Promise<unknown>;
  onEndpointChange(listener: () => void): () => void;
}

/** Options every offline-first document takes (`openNotes`, `openSettings`). */
export interface OpenSyncedDocOptions {
  store: LocalStore;
  /** Node 20 has no global WebSocket: pass `ws`'s. Defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Start syncing right away (default true). */
  connect?: boolean;
  backoff?: BackoffOptions;
  /** Random source for retry jitter (tests pass a seeded one). */
  random?: () => number;
}

export interface SyncedDocEvents<Change> {
  /** The document changed, here or on another device. `local` is true for this device's edits. */
  change: (event: Change) => void;
  /** `status` or `pending` changed. */
  status: (status: SyncStatus, pending: number) => void;
  /** The server refused the connection for good (e.g. 4401 revoked session); set a new token. */
  refused: (code: number, reason: string) => void;
  /** Writing to the local store failed, or a listener of another event threw. */
  error: (error: unknown) => void;
}

/** A document rebuilt from its store, ready to hand to a `SyncedDoc`. */
export interface LoadedDoc {
  doc: Y.Doc;
  state: LocalState;
  /** Local seqs the server has not acknowledged. */
  pending: number[];
}

export interface SyncedDocInit {
  host: SyncHost;
  /** The `{doc}` of `/sync/{doc}`. */
  docName: string;
  store: LocalStore;
  loaded: LoadedDoc;
  WebSocket: WebSocketConstructor;
  backoff: BackoffOptions | undefined;
  random: () => number;
}

const LOAD_ORIGIN = Symbol('plexichat-load');

export function resolveWebSocket(options: OpenSyncedDocOptions): WebSocketConstructor {
  const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (WebSocketImpl === undefined) throw new TypeError('No WebSocket: pass one (e.g. the `ws` package) as options.WebSocket');
  return WebSocketImpl;
}

/**
 * Replays the store into a fresh doc, in one transaction (one update event, not one per record).
 * Nothing listens yet when it runs; its origin is LOAD_ORIGIN all the same, which a `SyncedDoc`
 * never stores again or counts as an edit.
 */
export function loadDoc(state: LocalState): LoadedDoc {
  const doc = new Y.Doc();
  doc.transact(() => {
    if (state.snapshot) Y.applyUpdate(doc, state.snapshot);
    for (const record of state.updates) Y.applyUpdate(doc, record.update);
  }, LOAD_ORIGIN);
  const pending = state.updates.filter((r) => r.local && r.seq > state.acked).map((r) => r.seq);
  return { doc, state, pending };
}

type Listeners<Change> = { [K in keyof SyncedDocEvents<Change>]: Set<SyncedDocEvents<Change>[K]> };

/**
 * The part `Notes` and `Settings` share: a Yjs doc whose every update lands in the local store
 * first and is sent when a connection is up; `pending` counts this device's updates the server
 * has not yet stored. Subclasses add the document's own reads and writes.
 */
export abstract class SyncedDoc<Change extends { local: boolean }> {
  readonly doc: Y.Doc;
  readonly #store: LocalStore;
  readonly #provider: SyncProvider;
  readonly #listeners: Listeners<Change> = { change: new Set(), status: new Set(), refused: new Set(), error: new Set() };
  readonly #unsubscribeToken: () => void;
  /** The seq of the newest update in the doc, local or remote: each update takes the next one. */
  #lastSeq: number;
  #acked: number;
  #pending: number[];
  #writes: Promise<void> = Promise.resolve();
  #closed = false;
  #lastStatus: SyncStatus | null = null;
  #lastPending = -1;

  constructor(init: SyncedDocInit) {
    this.doc = init.loaded.doc;
    this.#store = init.store;
    this.#lastSeq = init.loaded.state.lastSeq;
    this.#acked = init.loaded.state.acked;
    this.#pending = init.loaded.pending;
    this.#provider = new SyncProvider({
      doc: this.doc,
      url: () => init.host.syncUrl(init.docName),
      token: () => init.host.token,
      WebSocket: init.WebSocket,
      currentSeq: () => this.#lastSeq,
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

  /** What a `change` event says about one transaction (e.g. which keys it touched). */
  protected abstract describeChange(local: boolean, transaction: Y.Transaction): Change;

  /** What `assertOpen` says once the handle is closed. */
  protected abstract readonly closedMessage: string;

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

  on<K extends keyof SyncedDocEvents<Change>>(event: K, listener: SyncedDocEvents<Change>[K]): () => void {
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
    this.assertOpen();
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

  /** Store writes run one after another, in the order the edits happened. */
  protected queueWrite(write: (store: LocalStore) => Promise<void>): void {
    this.#writes = this.#writes.then(() => write(this.#store)).catch((error: unknown) => this.#emit('error', error));
  }

  protected assertOpen(): void {
    if (this.#closed) throw new Error(this.closedMessage);
  }

  readonly #onUpdate = (update: Uint8Array, origin: unknown, _doc: Y.Doc, transaction: Y.Transaction): void => {
    if (origin === LOAD_ORIGIN) return;
    const local = origin !== REMOTE_ORIGIN;
    this.#lastSeq += 1;
    const seq = this.#lastSeq;
    this.queueWrite((store) => store.append({ seq, local, update }));
    if (local) {
      this.#pending.push(seq);
      this.#provider.sendLocal(update, seq);
    }
    this.#emit('change', this.describeChange(local, transaction));
    this.#emitStatus();
  };

  #acknowledge(seq: number): void {
    if (seq <= this.#acked) return;
    this.#acked = seq;
    this.#pending = this.#pending.filter((s) => s > seq);
    this.queueWrite((store) => store.setAcked(seq));
    this.#emitStatus();
  }

  #emitStatus(): void {
    const status = this.status;
    const pending = this.pending;
    if (status === this.#lastStatus && pending === this.#lastPending) return;
    this.#lastStatus = status;
    this.#lastPending = pending;
    this.#emit('status', status, pending);
  }

  #emit<K extends keyof SyncedDocEvents<Change>>(event: K, ...args: Parameters<SyncedDocEvents<Change>[K]>): void {
    for (const listener of this.#listeners[event]) {
      try {
        (listener as (...a: Parameters<SyncedDocEvents<Change>[K]>) => void)(...args);
      } catch (error) {
        if (event !== 'error') this.#emit('error', error);
      }
    }
  }
}
