import * as Y from 'yjs';
import * as awarenessProtocol from 'y-protocols/awareness';
import type { Logger } from 'pino';
import { CLOSE_CODES } from '../../shared/sync-protocol.ts';
import type { Storage, UserFile } from '../storage/index.ts';
import type { TemplatedApp, WebSocket } from '../http/uws.ts';
import { encodeAck, encodeAwarenessMessage, encodeUpdateMessage, isEmptyUpdate } from './protocol.ts';
import * as repo from './repo.ts';
import type { DocName } from './repo.ts';

/** Origin of updates that are already stored: the doc's update listener must not store them again. */
const STORED = Symbol('stored');

export interface SyncLimits {
  /** Unsent bytes a socket may hold before it is closed as a slow reader. */
  maxBackpressureBytes: number;
  unloadDelayMs: number;
  compactAfterUpdates: number;
  compactAfterBytes: number;
  compactDebounceMs: number;
  compactMaxWaitMs: number;
}

/** Per-socket state, set at upgrade. */
export interface Connection {
  userId: string;
  sessionId: string;
  docName: DocName;
  ack: boolean;
  doc: SyncDoc | undefined;
  closed: boolean;
  /** Update-carrying messages received, and how many of them are stored (for `?ack=1`). */
  received: number;
  stored: number;
  /** Awareness client ids this socket controls, removed when it closes. */
  awarenessIds: Set<number>;
}

export type SyncSocket = WebSocket<Connection>;

interface PendingUpdate {
  /** null for an empty update: nothing to store, but it still counts for acks. */
  update: Uint8Array | null;
  /** The frame relayed to readers, encoded once for all of them. */
  frame: Uint8Array | null;
  /** The sending socket and its state (the state outlives the socket: check `closed` first). */
  from: { ws: SyncSocket; conn: Connection } | null;
}

/** One loaded document: its Y.Doc, awareness, sockets and the writes waiting for the next commit. */
export class SyncDoc {
  readonly ydoc = new Y.Doc();
  readonly awareness = new awarenessProtocol.Awareness(this.ydoc);
  readonly sockets = new Set<SyncSocket>();
  /** REST calls using the doc right now; with sockets, what keeps it loaded. */
  holds = 0;
  pending: PendingUpdate[] = [];
  waiters: { resolve: () => void; reject: (error: Error) => void }[] = [];
  logCount = 0;
  logBytes = 0;
  unloadTimer: NodeJS.Timeout | undefined;
  compactTimer: NodeJS.Timeout | undefined;
  compactFirstAskedAt = 0;

  constructor(
    readonly key: string,
    readonly userId: string,
    readonly name: DocName,
    readonly file: UserFile,
    readonly releaseFile: () => void,
  ) {
    // The server holds no awareness state of its own.
    this.awareness.setLocalState(null);
  }

  /** Sockets attached and REST calls in progress: what keeps the doc loaded. */
  get users(): number {
    return this.holds;
  }
}

/**
 * All loaded documents. A document is loaded once (synchronously, so nobody can see it half
 * loaded), stays while a socket or REST call uses it, and is unloaded a little after the last one
 * leaves. Writes are stored before anyone else sees them: incoming updates wait in `pending`, are
 * committed in one transaction per document per event-loop turn, then applied and relayed.
 */
export class DocRegistry {
  private readonly docs = new Map<string, SyncDoc>();
  private readonly dirty = new Set<SyncDoc>();
  private flushScheduled: NodeJS.Immediate | undefined;
  private readonly socketsBySession = new Map<string, Set<SyncSocket>>();
  private readonly socketsPerUser = new Map<string, number>();

  constructor(
    private readonly deps: { storage: Storage; logger: Logger; app: TemplatedApp; limits: SyncLimits },
  ) {}

  get loadedCount(): number {
    return this.docs.size;
  }

  get connectionCount(): number {
    let total = 0;
    for (const count of this.socketsPerUser.values()) total += count;
    return total;
  }

  connectionsOf(userId: string): number {
    return this.socketsPerUser.get(userId) ?? 0;
  }

  /** Attaches an opened socket to its document (loading it if needed). */
  attach(ws: SyncSocket): SyncDoc {
    const conn = ws.getUserData();
    const doc = this.acquire(conn.userId, conn.docName);
    doc.sockets.add(ws);
    conn.doc = doc;
    ws.subscribe(doc.key);
    let sessionSockets = this.socketsBySession.get(conn.sessionId);
    if (!sessionSockets) this.socketsBySession.set(conn.sessionId, (sessionSockets = new Set()));
    sessionSockets.add(ws);
    this.socketsPerUser.set(conn.userId, this.connectionsOf(conn.userId) + 1);
    return doc;
  }

  /** Called from the socket's close handler (any reason, errors included). */
  detach(ws: SyncSocket): void {
    const conn = ws.getUserData();
    conn.closed = true;
    const doc = conn.doc;
    if (!doc) return;
    conn.doc = undefined;
    doc.sockets.delete(ws);
    const sessionSockets = this.socketsBySession.get(conn.sessionId);
    sessionSockets?.delete(ws);
    if (sessionSockets?.size === 0) this.socketsBySession.delete(conn.sessionId);
    const count = this.connectionsOf(conn.userId) - 1;
    if (count > 0) this.socketsPerUser.set(conn.userId, count);
    else this.socketsPerUser.delete(conn.userId);
    if (conn.awarenessIds.size > 0) awarenessProtocol.removeAwarenessStates(doc.awareness, [...conn.awarenessIds], null);
    this.release(doc);
  }

  /** Queues an update received on a socket; it is stored, applied and relayed on the next flush. */
  receiveUpdate(ws: SyncSocket, update: Uint8Array, frame: Uint8Array | null): void {
    const conn = ws.getUserData();
    const doc = conn.doc;
    if (!doc) return;
    conn.received += 1;
    const empty = isEmptyUpdate(update);
    doc.pending.push({
      update: empty ? null : update,
      frame: empty ? null : (frame ?? encodeUpdateMessage(update)),
      from: { ws, conn },
    });
    this.markDirty(doc);
  }

  /** Reads a document (loading it if needed) without keeping it loaded longer than necessary. */
  read<T>(userId: string, name: DocName, fn: (doc: Y.Doc) => T): T {
    const doc = this.acquire(userId, name);
    try {
      return fn(doc.ydoc);
    } finally {
      this.release(doc);
    }
  }

  /**
   * Changes a document from the server side (REST) in one Yjs transaction and resolves once the
   * change is stored; connected devices receive it at the same time.
   */
  async change<T>(userId: string, name: DocName, fn: (doc: Y.Doc) => T): Promise<T> {
    const doc = this.acquire(userId, name);
    try {
      const result = doc.ydoc.transact(() => fn(doc.ydoc));
      if (doc.pending.length > 0) await new Promise<void>((resolve, reject) => doc.waiters.push({ resolve, reject }));
      return result;
    } finally {
      this.release(doc);
    }
  }

  /** Closes every socket of the given sessions (logout, password change): their token is dead. */
  revokeSessions(sessionIds: string[]): void {
    for (const id of sessionIds) {
      for (const ws of [...(this.socketsBySession.get(id) ?? [])]) ws.end(CLOSE_CODES.SESSION_REVOKED, 'Session revoked');
    }
  }

  /** Shutdown: stores what is pending, closes sockets with 1012 (reconnect elsewhere), unloads all. */
  closeAll(): void {
    this.flush();
    for (const doc of [...this.docs.values()]) {
      for (const ws of [...doc.sockets]) ws.end(CLOSE_CODES.SERVICE_RESTART, 'Server restarting');
    }
    for (const doc of [...this.docs.values()]) this.unload(doc);
  }

  private acquire(userId: string, name: DocName): SyncDoc {
    const key = `${userId}:${name}`;
    let doc = this.docs.get(key);
    if (!doc) {
      doc = this.load(key, userId, name);
      this.docs.set(key, doc);
    }
    if (doc.unloadTimer) {
      clearTimeout(doc.unloadTimer);
      doc.unloadTimer = undefined;
    }
    doc.holds += 1;
    return doc;
  }

  private release(doc: SyncDoc): void {
    doc.holds = Math.max(0, doc.holds - 1);
    if (doc.users > 0 || doc.unloadTimer) return;
    doc.unloadTimer = setTimeout(() => {
      doc.unloadTimer = undefined;
      if (doc.users === 0) this.unload(doc);
    }, this.deps.limits.unloadDelayMs);
    doc.unloadTimer.unref();
  }

  private load(key: string, userId: string, name: DocName): SyncDoc {
    const { file, release } = this.deps.storage.userFiles.pin(userId);
    try {
      const doc = new SyncDoc(key, userId, name, file, release);
      file.transaction(() => repo.ensureDoc(file, name, Math.floor(Date.now() / 1000)));
      const stored = repo.readDoc(file, name);
      doc.ydoc.transact(() => {
        if (stored.snapshot) Y.applyUpdate(doc.ydoc, stored.snapshot, STORED);
        for (const update of stored.updates) {
          try {
            Y.applyUpdate(doc.ydoc, update, STORED);
          } catch (error) {
            this.deps.logger.error({ err: error, key }, 'skipping an unreadable stored update');
          }
        }
      }, STORED);
      doc.logCount = stored.updates.length;
      doc.logBytes = stored.logBytes;
      this.listen(doc);
      this.maybeCompact(doc);
      return doc;
    } catch (error) {
      release();
      throw error;
    }
  }

  private listen(doc: SyncDoc): void {
    doc.ydoc.on('update', (update: Uint8Array, origin: unknown) => {
      if (origin === STORED) return;
      // A server-side (REST) change: store it like any other update, relay it to every socket.
      doc.pending.push({ update, frame: encodeUpdateMessage(update), from: null });
      this.markDirty(doc);
    });
    doc.awareness.on(
      'update',
      ({ added, updated, removed }: { added: number[]; updated: number[]; removed: number[] }, origin: unknown) => {
        const changed = [...added, ...updated, ...removed];
        if (origin !== null && typeof origin === 'object' && doc.sockets.has(origin as SyncSocket)) {
          const ids = (origin as SyncSocket).getUserData().awarenessIds;
          for (const id of [...added, ...updated]) ids.add(id);
          for (const id of removed) ids.delete(id);
        }
        // Relayed to every socket, the sender included, as the reference server does: it is what
        // keeps an idle stock client from timing out its connection.
        if (doc.sockets.size > 0) this.deps.app.publish(doc.key, encodeAwarenessMessage(doc.awareness, changed), true);
      },
    );
  }

  private markDirty(doc: SyncDoc): void {
    this.dirty.add(doc);
    this.flushScheduled ??= setImmediate(() => {
      this.flushScheduled = undefined;
      this.flush();
    });
  }

  /** Commits every dirty document's pending updates (one transaction each), then applies and relays them. */
  flush(): void {
    if (this.flushScheduled) {
      clearImmediate(this.flushScheduled);
      this.flushScheduled = undefined;
    }
    for (const doc of this.dirty) this.flushDoc(doc);
    this.dirty.clear();
  }

  private flushDoc(doc: SyncDoc): void {
    const batch = doc.pending;
    const waiters = doc.waiters;
    if (batch.length === 0 && waiters.length === 0) return;
    doc.pending = [];
    doc.waiters = [];
    let bytes = 0;
    try {
      doc.file.transaction(() => {
        for (const item of batch) {
          if (item.update === null) continue;
          repo.appendUpdate(doc.file, doc.name, item.update);
          bytes += item.update.byteLength;
        }
      });
    } catch (error) {
      this.failDoc(doc, waiters, error);
      return;
    }
    let stored = 0;
    for (const item of batch) {
      if (item.update !== null) stored += 1;
      const from = item.from;
      if (from === null) {
        if (item.frame) this.deps.app.publish(doc.key, item.frame, true);
        continue;
      }
      if (item.update !== null) {
        Y.applyUpdate(doc.ydoc, item.update, STORED);
        // Relayed to every other reader, encoded once; a sender that left meanwhile gets nothing.
        if (item.frame) {
          if (from.conn.closed) this.deps.app.publish(doc.key, item.frame, true);
          else from.ws.publish(doc.key, item.frame, true);
        }
      }
      from.conn.stored += 1;
    }
    doc.logCount += stored;
    doc.logBytes += bytes;
    for (const ws of doc.sockets) {
      const conn = ws.getUserData();
      if (conn.closed) continue;
      if (conn.ack && conn.stored > 0) ws.send(encodeAck(conn.stored), true);
      if (ws.getBufferedAmount() > this.deps.limits.maxBackpressureBytes) {
        // Its close handler may only run once the peer reads again: stop using it now.
        conn.closed = true;
        ws.end(CLOSE_CODES.SLOW_READER, 'Too far behind; reconnect to resync');
      }
    }
    for (const waiter of waiters) waiter.resolve();
    this.maybeCompact(doc);
  }

  /**
   * The store refused a batch. Nothing of it was acknowledged or relayed. The senders are closed
   * (they resend on reconnect) and the document is dropped from memory, since REST changes in the
   * batch were already applied to it: the next load starts again from what is stored.
   */
  private failDoc(doc: SyncDoc, waiters: SyncDoc['waiters'], error: unknown): void {
    this.deps.logger.error({ err: error, key: doc.key }, 'could not store document updates');
    const failure = new Error('could not store the change');
    for (const waiter of waiters) waiter.reject(failure);
    for (const ws of [...doc.sockets]) ws.end(CLOSE_CODES.INTERNAL_ERROR, 'Storage failure');
    this.unload(doc);
  }

  private maybeCompact(doc: SyncDoc): void {
    const { compactAfterUpdates, compactAfterBytes, compactDebounceMs, compactMaxWaitMs } = this.deps.limits;
    if (doc.logCount < compactAfterUpdates && doc.logBytes < compactAfterBytes) return;
    const now = Date.now();
    if (!doc.compactTimer) {
      doc.compactFirstAskedAt = now;
      doc.compactTimer = setTimeout(() => {
        doc.compactTimer = undefined;
        this.compact(doc);
      }, compactDebounceMs);
      doc.compactTimer.unref();
    } else if (now - doc.compactFirstAskedAt + compactDebounceMs <= compactMaxWaitMs) {
      // Debounce per document (never one debouncer for all), but never past the max wait.
      doc.compactTimer.refresh();
    }
  }

  /** Folds the update log into one snapshot of the in-memory state (which holds all of it). */
  compact(doc: SyncDoc): void {
    if (!this.docs.has(doc.key)) return;
    this.flushDoc(doc);
    if (doc.logCount === 0) return;
    const snapshot = Y.encodeStateAsUpdate(doc.ydoc);
    try {
      doc.file.transaction(() => repo.replaceSnapshot(doc.file, doc.name, snapshot));
    } catch (error) {
      this.deps.logger.error({ err: error, key: doc.key }, 'compaction failed; the update log is kept');
      return;
    }
    this.deps.logger.debug({ key: doc.key, updates: doc.logCount, logBytes: doc.logBytes, snapshotBytes: snapshot.byteLength }, 'compacted');
    doc.logCount = 0;
    doc.logBytes = 0;
  }

  private unload(doc: SyncDoc): void {
    if (this.docs.get(doc.key) !== doc) return;
    this.flushDoc(doc);
    if (doc.logCount >= Math.min(50, this.deps.limits.compactAfterUpdates)) this.compact(doc);
    this.dirty.delete(doc);
    if (doc.unloadTimer) clearTimeout(doc.unloadTimer);
    if (doc.compactTimer) clearTimeout(doc.compactTimer);
    this.docs.delete(doc.key);
    doc.awareness.destroy();
    doc.ydoc.destroy();
    doc.releaseFile();
  }
}
