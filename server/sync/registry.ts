import type * as Y from 'yjs';
import type { Logger } from 'pino';
import { CLOSE_CODES } from '../../shared/sync-protocol.ts';
import { NotOwnerError } from '../storage/errors.ts';
import type { Storage } from '../storage/index.ts';
import type { SyncMetrics } from '../metrics/recorders.ts';
import type { TemplatedApp } from '../http/uws.ts';
import { SyncDocument, type DocPolicy, type SyncLimits, type SyncSocket } from './document.ts';
import type { DocName } from './repo.ts';
import type { DecodedUpdate } from './update-check.ts';

export interface RegistryDeps {
  storage: Storage;
  logger: Logger;
  app: TemplatedApp;
  limits: SyncLimits;
  /** What each kind of document allows beyond a valid update (e.g. the settings limits). */
  policies: Partial<Record<DocName, DocPolicy>>;
  /** Where the documents count commits and compactions; undefined when metrics are off. */
  metrics?: SyncMetrics;
  /**
   * Cluster mode: whether this node owns a user (only then is a document of theirs loaded here),
   * and where frames for sockets other nodes hold go.
   */
  cluster?: { owns(userId: string): boolean; relay: DocRelay };
}

/** Cluster mode: sends a document's frames to the other nodes holding sockets on it. */
export interface DocRelay {
  /** `except`: the id of the connection that sent the frame (it must not get it back), or ''. */
  publish(docKey: string, frame: Uint8Array, except: string): void;
}

/**
 * All loaded documents and the indices over their sockets. A document is loaded once
 * (synchronously, so nobody sees it half loaded); sockets keep it loaded and its user file pinned.
 * Without sockets it stays in memory for `unloadDelayMs`, or until its user file is closed to make
 * room for another, whichever comes first. Incoming updates of every document are flushed together
 * once per event-loop turn, one transaction per document.
 */
export class DocRegistry {
  private readonly docs = new Map<string, SyncDocument>();
  private readonly dirty = new Set<SyncDocument>();
  private flushScheduled: NodeJS.Immediate | undefined;
  private readonly socketsBySession = new Map<string, Set<SyncSocket>>();
  private readonly socketsPerUser = new Map<string, number>();
  /** The user-file pin each document with sockets holds. */
  private readonly pins = new Map<SyncDocument, () => void>();
  private closing = false;

  constructor(private readonly deps: RegistryDeps) {
    // A user file is about to close to make room: its idle documents are written back and unloaded first.
    deps.storage.userFiles.onClosing((userId) => {
      for (const name of ['notes', 'settings'] as const) {
        const doc = this.docs.get(docKey(userId, name));
        if (doc && doc.sockets.size === 0 && doc.restUses === 0) this.unload(doc);
      }
    });
  }

  get loadedCount(): number {
    return this.docs.size;
  }

  get connectionCount(): number {
    let total = 0;
    for (const count of this.socketsPerUser.values()) total += count;
    return total;
  }

  /** Shutting down: no new connections. */
  get refusing(): boolean {
    return this.closing;
  }

  /** Sessions with at least one open sync socket: in use, whether or not they make REST calls. */
  sessionsWithSockets(): Iterable<string> {
    return this.socketsBySession.keys();
  }

  connectionsOf(userId: string): number {
    return this.socketsPerUser.get(userId) ?? 0;
  }

  /** Attaches an opened socket to its document, loading it if needed. Throws if it cannot load. */
  attach(ws: SyncSocket): SyncDocument {
    const conn = ws.getUserData();
    const doc = this.acquire(conn.userId, conn.docName);
    if (doc.sockets.size === 0) this.pins.set(doc, this.deps.storage.userFiles.pin(conn.userId).release);
    conn.doc = doc;
    doc.addConnection(ws);
    let sessionSockets = this.socketsBySession.get(conn.sessionId);
    if (!sessionSockets) {
      sessionSockets = new Set();
      this.socketsBySession.set(conn.sessionId, sessionSockets);
    }
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
    doc.removeConnection(ws);
    const sessionSockets = this.socketsBySession.get(conn.sessionId);
    sessionSockets?.delete(ws);
    if (sessionSockets?.size === 0) this.socketsBySession.delete(conn.sessionId);
    const count = this.connectionsOf(conn.userId) - 1;
    if (count > 0) this.socketsPerUser.set(conn.userId, count);
    else this.socketsPerUser.delete(conn.userId);
    if (doc.sockets.size === 0) {
      this.pins.get(doc)?.();
      this.pins.delete(doc);
      this.scheduleUnload(doc);
    }
  }

  /** Queues an update a socket sent; it is judged, stored and relayed on the next flush. */
  receiveUpdate(ws: SyncSocket, update: Uint8Array, decoded: DecodedUpdate, frame: Uint8Array | null): void {
    const doc = ws.getUserData().doc;
    if (!doc) return;
    doc.receive(ws, update, decoded, frame);
    this.dirty.add(doc);
    this.flushScheduled ??= setImmediate(() => {
      this.flushScheduled = undefined;
      this.flush();
    });
  }

  /** Reads a document (loading it if needed); the user file is held open only during the call. */
  read<T>(userId: string, name: DocName, fn: (doc: Y.Doc) => T): T {
    return this.withDoc(userId, name, (doc) => fn(doc.ydoc));
  }

  /**
   * Changes a document from the server side (REST) in one Yjs transaction; returns once the change
   * is stored, and connected devices receive it at the same time. A failure changes nothing.
   */
  change<T>(userId: string, name: DocName, fn: (doc: Y.Doc) => T): T {
    return this.withDoc(userId, name, (doc) => doc.change(fn));
  }

  /** Whether nothing of the user's is loaded (cluster mode: their file can be let go of). */
  holdsNothingOf(userId: string): boolean {
    return !this.docs.has(docKey(userId, 'notes')) && !this.docs.has(docKey(userId, 'settings'));
  }

  /**
   * Cluster mode: this node no longer owns the user. Their documents are dropped without a write
   * (another node may be writing the file now) and their sockets closed with `code`.
   */
  evictUser(userId: string, code: number, reason: string): void {
    for (const name of ['notes', 'settings'] as const) {
      const doc = this.docs.get(docKey(userId, name));
      if (doc) this.fail(doc, code, reason);
    }
  }

  /**
   * Cluster mode: this node gives the user up willingly (an admin command asked for them). Unlike
   * a lost lease, this node still owns the file: what their sockets sent is stored first (and
   * acknowledged), then the sockets close with `code` and the documents are written back and
   * unloaded. Throws if storing fails (the caller then drops what is left, as on a lost lease).
   */
  handOverUser(userId: string, code: number, reason: string): void {
    for (const name of ['notes', 'settings'] as const) {
      const doc = this.docs.get(docKey(userId, name));
      if (!doc) continue;
      doc.flush();
      for (const ws of [...doc.sockets]) {
        const conn = ws.getUserData();
        conn.refused = true;
        if (!conn.closed) ws.end(code, reason);
      }
      this.unload(doc);
    }
  }

  /**
   * The user's account was deleted (by an admin command): their documents are dropped without a
   * write (the file is going), and any socket still open on them is closed with 4401.
   */
  dropUser(userId: string): void {
    this.evictUser(userId, CLOSE_CODES.SESSION_REVOKED, 'Account deleted');
  }

  /** Closes every socket of the given sessions (logout, password change): their token is dead. */
  revokeSessions(sessionIds: string[]): void {
    for (const id of sessionIds) {
      for (const ws of [...(this.socketsBySession.get(id) ?? [])]) ws.end(CLOSE_CODES.SESSION_REVOKED, 'Session revoked');
    }
  }

  /** Commits every dirty document's queued updates (one transaction each), then relays them. */
  flush(): void {
    if (this.flushScheduled) {
      clearImmediate(this.flushScheduled);
      this.flushScheduled = undefined;
    }
    for (const doc of this.dirty) {
      try {
        doc.flush();
      } catch (error) {
        // A bug, not bad input (that is refused inside): fail this document, not the process.
        this.deps.logger.error({ err: error, key: doc.key }, 'flushing a document failed; dropping it from memory');
        this.fail(doc);
      }
    }
    this.dirty.clear();
  }

  /** Shutdown: stores what is queued, closes sockets with 1012 (reconnect elsewhere), unloads all. */
  closeAll(): void {
    this.closing = true;
    this.flush();
    for (const doc of [...this.docs.values()]) {
      for (const ws of [...doc.sockets]) ws.end(CLOSE_CODES.SERVICE_RESTART, 'Server restarting');
    }
    for (const doc of [...this.docs.values()]) this.unload(doc);
  }

  private withDoc<T>(userId: string, name: DocName, fn: (doc: SyncDocument) => T): T {
    // Pinned for the call only: afterwards an idle document lets its file go when room is needed.
    return this.deps.storage.userFiles.use(userId, () => {
      const doc = this.acquire(userId, name);
      doc.restUses += 1;
      try {
        return fn(doc);
      } finally {
        doc.restUses -= 1;
        if (doc.sockets.size === 0 && doc.restUses === 0) this.scheduleUnload(doc);
      }
    });
  }

  private acquire(userId: string, name: DocName): SyncDocument {
    const key = docKey(userId, name);
    let doc = this.docs.get(key);
    if (!doc) {
      const { storage, logger, limits, policies, app, cluster } = this.deps;
      // No node loads a document it does not own: the owner's updates would never reach it.
      if (cluster !== undefined && !cluster.owns(userId)) throw new NotOwnerError(`this node does not own ${userId}`);
      const relay = cluster?.relay;
      doc = new SyncDocument({
        key,
        userId,
        name,
        file: storage.userFiles.get(userId),
        logger,
        limits,
        policy: policies[name],
        publish: (frame) => {
          app.publish(key, frame, true);
          relay?.publish(key, frame, '');
        },
        publishFrom: (sender, frame) => {
          sender.publish(key, frame, true);
          relay?.publish(key, frame, sender.getUserData().id);
        },
        onBroken: (broken) => this.fail(broken),
        metrics: this.deps.metrics,
      });
      this.docs.set(key, doc);
    }
    if (doc.unloadTimer) {
      clearTimeout(doc.unloadTimer);
      doc.unloadTimer = undefined;
    }
    return doc;
  }

  private scheduleUnload(doc: SyncDocument): void {
    if (doc.unloadTimer || this.docs.get(doc.key) !== doc) return;
    doc.unloadTimer = setTimeout(() => {
      doc.unloadTimer = undefined;
      if (doc.sockets.size > 0 || doc.restUses > 0) return;
      try {
        this.unload(doc);
      } catch (error) {
        this.deps.logger.error({ err: error, key: doc.key }, 'unloading a document failed');
      }
    }, this.deps.limits.unloadDelayMs);
    doc.unloadTimer.unref();
  }

  private unload(doc: SyncDocument): void {
    if (this.docs.get(doc.key) !== doc) return;
    this.docs.delete(doc.key);
    this.dirty.delete(doc);
    this.pins.get(doc)?.();
    this.pins.delete(doc);
    doc.unload();
  }

  /** Drops a document whose memory no longer matches its storage, without writing anything. */
  private fail(doc: SyncDocument, code: number = CLOSE_CODES.INTERNAL_ERROR, reason = 'Storage failure; reconnect later'): void {
    for (const ws of [...doc.sockets]) {
      const conn = ws.getUserData();
      conn.refused = true;
      if (!conn.closed) ws.end(code, reason);
    }
    if (this.docs.get(doc.key) === doc) this.docs.delete(doc.key);
    this.dirty.delete(doc);
    this.pins.get(doc)?.();
    this.pins.delete(doc);
    doc.discard();
  }
}

export function docKey(userId: string, name: DocName): string {
  return `${userId}:${name}`;
}
