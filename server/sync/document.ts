import * as Y from 'yjs';
import type { Logger } from 'pino';
import { encodeAck, encodeAwareness, encodeSyncStep1, encodeUpdate } from '../../shared/sync-codec.ts';
import { CLOSE_CODES } from '../../shared/sync-protocol.ts';
import type { UserFile } from '../storage/index.ts';
import type { SyncMetrics } from '../metrics/recorders.ts';
import { AwarenessRelay, type AwarenessLimits } from './awareness.ts';
import * as repo from './repo.ts';
import type { DocName } from './repo.ts';
import { replayDoc, type PendingLimits } from './replay.ts';
import { checkUpdate, pendingBytes, type DecodedUpdate, type UpdateCheckLimits } from './update-check.ts';

/** Per-socket state, set at the upgrade. */
export interface Connection {
  /** The upgrade's request id, for the log. */
  id: string;
  userId: string;
  sessionId: string;
  docName: DocName;
  /**
   * The document as the device named it (`settings`, or its notes channel id). Cluster mode: an
   * edge node cannot read whose notes channel an id is (only the owner opens the user's file), so
   * the owner checks it when the socket is placed there.
   */
  docParam: string;
  /** Opted in to acknowledgements (`?ack=1`). */
  ack: boolean;
  doc: SyncDocument | undefined;
  /** Ended, by either side: nothing more is sent to it. */
  closed: boolean;
  /** Closed for something it sent: whatever else it queued is dropped, not applied. */
  refused: boolean;
  /** Update-carrying messages of this connection stored so far, and the count last acknowledged. */
  stored: number;
  acked: number;
  /** Bytes of sync step 2 sent to it and not yet drained: a reader catching up is not a slow one. */
  catchUp: number;
  /**
   * Cluster mode, on an edge node: the node that owns the document, to which this socket's frames
   * are relayed (the document is never loaded here); undefined when it is served here.
   */
  remote: string | undefined;
  /** Cluster mode, from the upgrade until it opens: where the user is served, still being looked up. */
  placing: Promise<'here' | { node: string }> | undefined;
  /** Cluster mode: frames that came while the socket was being placed, in order. */
  held: Uint8Array[] | undefined;
}

/** A connection's state as it starts: nothing stored, acknowledged or sent yet. */
export function newConnection(fields: Pick<Connection, 'id' | 'userId' | 'sessionId' | 'docName' | 'docParam' | 'ack'>): Connection {
  return { ...fields, doc: undefined, closed: false, refused: false, stored: 0, acked: 0, catchUp: 0, remote: undefined, placing: undefined, held: undefined };
}

/**
 * A device's sync connection, as documents and the registry use it: a uWS WebSocket, or (cluster
 * mode, on the owner) a socket held by another node and relayed to it (`server/cluster/`). Like
 * uWS, `end` runs the close handler before it returns.
 */
export interface SyncSocket {
  getUserData(): Connection;
  send(message: Uint8Array, isBinary: boolean): number;
  end(code: number, reason: string): void;
  /** Sends to every socket subscribed to `topic` but this one. */
  publish(topic: string, message: Uint8Array, isBinary: boolean): boolean;
  subscribe(topic: string): boolean;
  cork(fn: () => void): unknown;
  getBufferedAmount(): number;
}

export interface SyncLimits extends PendingLimits, UpdateCheckLimits, AwarenessLimits {
  /** Unsent bytes a socket may hold (beyond a catch-up in flight) before it is closed as a slow reader. */
  maxBackpressureBytes: number;
  unloadDelayMs: number;
  compactAfterUpdates: number;
  compactAfterBytes: number;
  compactDebounceMs: number;
  compactMaxWaitMs: number;
}

/**
 * What a kind of document allows beyond being a valid Yjs update, checked on the change an
 * incoming update made (already applied, in `transaction`). Returns why it is refused, or null.
 */
export interface DocPolicy {
  /**
   * Defines the document's root types on a freshly loaded Y.Doc. Until the server asks for a root
   * by its type, Yjs holds it as a bare AbstractType, and asking later swaps in a new object — so
   * a check would not recognise its own root among a transaction's changes.
   */
  prepare(doc: Y.Doc): void;
  checkIncoming(doc: Y.Doc, transaction: Y.Transaction): string | null;
}

export interface DocumentContext {
  key: string;
  userId: string;
  name: DocName;
  /** Open for as long as the document is loaded: the registry unloads it before the file closes. */
  file: UserFile;
  logger: Logger;
  limits: SyncLimits;
  policy: DocPolicy | undefined;
  /** Sends a frame to every socket of the document (uWS pub/sub: encoded once for all). */
  publish: (frame: Uint8Array) => void;
  /** The same, but not to `sender`. */
  publishFrom: (sender: SyncSocket, frame: Uint8Array) => void;
  /** The document can no longer match its storage (it could not be reloaded): drop it from memory. */
  onBroken: (doc: SyncDocument) => void;
  /** Where commits and compactions are counted; undefined when metrics are off (nothing is timed then). */
  metrics: SyncMetrics | undefined;
}

/** Origin of the updates sockets send, applied by `flush`. */
const INCOMING = Symbol('incoming');
/** Origin of the server's own changes (REST), stored by `change`. */
const LOCAL = Symbol('local');

/**
 * A short log is not worth rewriting the snapshot when a document unloads; a long one would be
 * replayed on every load, so it is folded then (bounded by the compaction threshold).
 */
const UNLOAD_COMPACT_MIN_UPDATES = 50;

interface Queued {
  /** null for an empty update: nothing to apply or store, but it counts for acknowledgements. */
  update: Uint8Array | null;
  /** The update as decoded when it arrived, judged against the document when its turn comes. */
  decoded: DecodedUpdate | null;
  /** What readers receive, encoded once; null until it is needed (a step 2 is relayed as an update). */
  frame: Uint8Array | null;
  ws: SyncSocket;
  conn: Connection;
}

/** Why an update was refused; `dirty` when it was applied (or half-applied) before being judged. */
interface Refusal {
  reason: string;
  dirty: boolean;
}

/**
 * One loaded document: its Y.Doc, awareness, sockets, the updates waiting for the next flush, and
 * the compaction schedule. It keeps one invariant: the Y.Doc in memory holds exactly what is
 * stored. An incoming update is applied and judged, stored, and only then relayed, acknowledged or
 * visible to REST — all in one synchronous `flush`, so nothing can read in between. An update that
 * cannot be applied, or breaks the document's rules, is refused and never stored; if it touched
 * the Y.Doc, the Y.Doc is rebuilt from storage. A commit that fails does the same, so a failed
 * write can never be stored later by compaction.
 */
export class SyncDocument {
  ydoc: Y.Doc;
  readonly sockets = new Set<SyncSocket>();
  readonly awareness: AwarenessRelay;
  /** REST calls using the document right now (sockets keep it loaded on their own). */
  restUses = 0;
  unloadTimer: NodeJS.Timeout | undefined;
  private queue: Queued[] = [];
  private logCount: number;
  private logBytes: number;
  private compactTimer: NodeJS.Timeout | undefined;
  private compactFirstAskedAt = 0;
  private unloaded = false;

  constructor(readonly ctx: DocumentContext) {
    const replayed = replayDoc(ctx.file, ctx.name, ctx.limits, ctx.logger);
    this.ydoc = replayed.ydoc;
    this.logCount = replayed.logCount;
    this.logBytes = replayed.logBytes;
    this.awareness = new AwarenessRelay(ctx.limits);
    this.adopt(this.ydoc);
    this.scheduleCompaction();
  }

  get key(): string {
    return this.ctx.key;
  }

  get queued(): boolean {
    return this.queue.length > 0;
  }

  // --- connections ------------------------------------------------------------------------

  /** Attaches an opened socket: it gets our state vector and who is here, as the reference server does. */
  addConnection(ws: SyncSocket): void {
    this.sockets.add(ws);
    ws.subscribe(this.key);
    const states = this.awareness.encodeAll();
    ws.cork(() => {
      ws.send(encodeSyncStep1(this.ydoc), true);
      if (states !== null) ws.send(encodeAwareness(states), true);
    });
  }

  /** Detaches a closed socket; its awareness states are removed for everyone else. */
  removeConnection(ws: SyncSocket): void {
    if (!this.sockets.delete(ws)) return;
    const removal = this.awareness.removeOwner(ws.getUserData());
    if (removal !== null && this.sockets.size > 0) this.publishAll(encodeAwareness(removal));
  }

  // --- incoming updates --------------------------------------------------------------------

  /** Queues an update a socket sent (decoded already); the next `flush` judges, stores and relays it. */
  receive(ws: SyncSocket, update: Uint8Array, decoded: DecodedUpdate, frame: Uint8Array | null): void {
    const conn = ws.getUserData();
    if (isEmptyUpdate(update)) this.queue.push({ update: null, decoded: null, frame: null, ws, conn });
    else this.queue.push({ update, decoded, frame, ws, conn });
  }

  /** Applies, stores and relays what sockets sent since the last flush (one transaction). */
  flush(): void {
    const batch = this.queue;
    if (batch.length === 0) return;
    this.queue = [];
    let accepted: Queued[] = [];
    for (const item of batch) {
      if (item.conn.refused || this.unloaded) continue;
      if (item.update === null || item.decoded === null) {
        accepted.push(item);
        continue;
      }
      const refusal = this.applyIncoming(item.update, item.decoded);
      if (refusal === null) {
        accepted.push(item);
        continue;
      }
      this.refuse(item, refusal.reason);
      if (refusal.dirty) {
        // The Y.Doc holds (part of) the refused update: store what was good, then rebuild from storage.
        this.commit(accepted);
        accepted = [];
        this.reload();
      }
    }
    this.commit(accepted);
  }

  private applyIncoming(update: Uint8Array, decoded: DecodedUpdate): Refusal | null {
    // Judged against the document as it is now, after everything queued before it.
    const unsafe = checkUpdate(decoded, (client) => Y.getState(this.ydoc.store, client), this.ctx.limits);
    if (unsafe !== null) return { reason: unsafe, dirty: false };
    let transaction: Y.Transaction | undefined;
    try {
      this.ydoc.transact((tr) => {
        transaction = tr;
        Y.applyUpdate(this.ydoc, update, INCOMING);
      }, INCOMING);
    } catch (error) {
      return { reason: `the update cannot be applied (${error instanceof Error ? error.message : String(error)})`, dirty: true };
    }
    const pending = pendingBytes(this.ydoc);
    const { maxPendingStructBytes, maxPendingDeleteBytes } = this.ctx.limits;
    if (pending.structs > maxPendingStructBytes || pending.deletes > maxPendingDeleteBytes) {
      return { reason: 'the update leaves too much content waiting for updates the document does not have', dirty: true };
    }
    const broken = transaction && this.ctx.policy?.checkIncoming(this.ydoc, transaction);
    return broken ? { reason: broken, dirty: true } : null;
  }

  /** Closes the sender of a refused update with 4400: resending it cannot help. */
  private refuse(item: Queued, reason: string): void {
    item.conn.refused = true;
    this.ctx.logger.warn({ conn: item.conn.id, userId: this.ctx.userId, doc: this.ctx.name, reason }, 'refused a sync update');
    if (!item.conn.closed) item.ws.end(CLOSE_CODES.MALFORMED_MESSAGE, truncateReason(`Update refused: ${reason}`));
  }

  /** Stores applied updates in one transaction, then relays and acknowledges them. */
  private commit(items: Queued[]): void {
    // A document that could not be rebuilt has closed its sockets and is being dropped.
    if (items.length === 0 || this.unloaded) return;
    let bytes = 0;
    let count = 0;
    const { metrics } = this.ctx;
    const started = metrics === undefined ? 0 : performance.now();
    try {
      this.ctx.file.transaction(() => {
        for (const item of items) {
          if (item.update === null) continue;
          repo.appendUpdate(this.ctx.file, this.ctx.name, item.update);
          bytes += item.update.byteLength;
          count += 1;
        }
      });
    } catch (error) {
      this.failCommit(items, error);
      return;
    }
    metrics?.committed(count, (performance.now() - started) / 1000);
    this.logCount += count;
    this.logBytes += bytes;
    for (const item of items) {
      item.conn.stored += 1;
      if (item.update === null) continue;
      // Relayed to every other reader, encoded once; a sender that left meanwhile gets nothing.
      const frame = item.frame ?? encodeUpdate(item.update);
      if (item.conn.closed) this.publishAll(frame);
      else this.ctx.publishFrom(item.ws, frame);
    }
    for (const item of items) {
      const { conn } = item;
      if (conn.ack && !conn.closed && conn.stored !== conn.acked) {
        conn.acked = conn.stored;
        item.ws.send(encodeAck(conn.stored), true);
      }
    }
    this.closeSlowReaders();
    this.scheduleCompaction();
  }

  /**
   * The store refused a batch: none of it is acknowledged or relayed. The senders are closed with
   * 1011 (they resend on reconnect, by state vector) and the Y.Doc, which already holds the batch,
   * is rebuilt from what is stored.
   */
  private failCommit(items: Queued[], error: unknown): void {
    this.ctx.logger.error({ err: error, userId: this.ctx.userId, doc: this.ctx.name, updates: items.length }, 'could not store sync updates');
    for (const item of items) {
      item.conn.refused = true;
      if (!item.conn.closed) item.ws.end(CLOSE_CODES.INTERNAL_ERROR, 'Storage failure; reconnect later');
    }
    this.reload();
  }

  // --- server-side reads and writes (REST) -------------------------------------------------

  /**
   * Changes the document in one Yjs transaction and stores the change before returning, so no one
   * sees it unstored. If `fn` throws, or the change cannot be stored, the document is left as it
   * was (rebuilt from storage) and the error is rethrown: a failed call changes nothing.
   */
  change<T>(fn: (doc: Y.Doc) => T): T {
    // Updates that arrived earlier are stored first: the log keeps the order things happened in.
    this.flush();
    if (this.unloaded) throw new Error(`document ${this.key} is no longer loaded`);
    const captured: Uint8Array[] = [];
    const ydoc = this.ydoc;
    const capture = (update: Uint8Array, origin: unknown) => {
      if (origin === LOCAL) captured.push(update);
    };
    // Listened to only during the change: while a Y.Doc has an 'update' listener, Yjs encodes the
    // update of every transaction for it, each incoming update included (about a sixth of an
    // update's CPU in the benchmarks), and nothing but this needs them.
    ydoc.on('update', capture);
    let result: T;
    try {
      result = ydoc.transact(() => fn(ydoc), LOCAL);
    } catch (error) {
      if (captured.length > 0) this.reload();
      throw error;
    } finally {
      ydoc.off('update', capture);
    }
    if (captured.length === 0) return result;
    let bytes = 0;
    const { metrics } = this.ctx;
    const started = metrics === undefined ? 0 : performance.now();
    try {
      this.ctx.file.transaction(() => {
        for (const update of captured) {
          repo.appendUpdate(this.ctx.file, this.ctx.name, update);
          bytes += update.byteLength;
        }
      });
    } catch (error) {
      this.reload();
      throw error;
    }
    metrics?.committed(captured.length, (performance.now() - started) / 1000);
    this.logCount += captured.length;
    this.logBytes += bytes;
    for (const update of captured) this.publishAll(encodeUpdate(update));
    this.closeSlowReaders();
    this.scheduleCompaction();
    return result;
  }

  // --- awareness ---------------------------------------------------------------------------

  /** Applies an awareness update from a socket and relays what changed; throws AwarenessRefused. */
  receiveAwareness(ws: SyncSocket, update: Uint8Array): void {
    const changed = this.awareness.apply(update, ws.getUserData());
    if (changed === null) return;
    // To every socket, the sender included, as the reference server does: it keeps an idle stock
    // client's 30-second watchdog fed.
    this.publishAll(encodeAwareness(changed));
    this.closeSlowReaders();
  }

  // --- memory and storage upkeep -----------------------------------------------------------

  /** Folds the update log into one snapshot of the in-memory state, which holds exactly what is stored. */
  compact(): void {
    this.flush();
    if (this.unloaded || this.logCount === 0) return;
    const snapshot = Y.encodeStateAsUpdate(this.ydoc);
    try {
      this.ctx.file.transaction(() => repo.replaceSnapshot(this.ctx.file, this.ctx.name, snapshot));
    } catch (error) {
      this.ctx.logger.error({ err: error, userId: this.ctx.userId, doc: this.ctx.name }, 'compaction failed; the update log is kept');
      if (this.ctx.metrics !== undefined) this.ctx.metrics.compactionFailures += 1;
      return;
    }
    if (this.ctx.metrics !== undefined) this.ctx.metrics.compactions += 1;
    this.ctx.logger.debug({ key: this.key, updates: this.logCount, logBytes: this.logBytes, snapshotBytes: snapshot.byteLength }, 'compacted');
    this.logCount = 0;
    this.logBytes = 0;
  }

  /** Stores what is queued, folds a long log, and lets go of memory and timers. */
  unload(): void {
    if (this.unloaded) return;
    try {
      this.flush();
      if (this.logCount >= Math.min(UNLOAD_COMPACT_MIN_UPDATES, this.ctx.limits.compactAfterUpdates)) this.compact();
    } finally {
      this.discard();
    }
  }

  /** Lets go of memory and timers without touching storage (the document is broken or storage is gone). */
  discard(): void {
    this.unloaded = true;
    this.queue = [];
    if (this.unloadTimer) clearTimeout(this.unloadTimer);
    if (this.compactTimer) clearTimeout(this.compactTimer);
    this.unloadTimer = undefined;
    this.compactTimer = undefined;
    this.ydoc.destroy();
  }

  private scheduleCompaction(): void {
    const { compactAfterUpdates, compactAfterBytes, compactDebounceMs, compactMaxWaitMs } = this.ctx.limits;
    if (this.logCount < compactAfterUpdates && this.logBytes < compactAfterBytes) return;
    const now = Date.now();
    if (!this.compactTimer) {
      this.compactFirstAskedAt = now;
      this.compactTimer = setTimeout(() => {
        this.compactTimer = undefined;
        try {
          this.compact();
        } catch (error) {
          this.ctx.logger.error({ err: error, key: this.key }, 'compaction crashed');
        }
      }, compactDebounceMs);
      this.compactTimer.unref();
    } else if (now - this.compactFirstAskedAt + compactDebounceMs <= compactMaxWaitMs) {
      // Debounced per document (never one debouncer for all), but never past the max wait.
      this.compactTimer.refresh();
    }
  }

  /** Rebuilds the Y.Doc from storage after it took in something that is not stored. */
  private reload(): void {
    let replayed: ReturnType<typeof replayDoc>;
    try {
      replayed = replayDoc(this.ctx.file, this.ctx.name, this.ctx.limits, this.ctx.logger);
    } catch (error) {
      this.ctx.logger.error({ err: error, key: this.key }, 'could not reload a document from storage; dropping it from memory');
      for (const ws of [...this.sockets]) {
        const conn = ws.getUserData();
        conn.refused = true;
        if (!conn.closed) ws.end(CLOSE_CODES.INTERNAL_ERROR, 'Storage failure; reconnect later');
      }
      this.ctx.onBroken(this);
      return;
    }
    this.ydoc.destroy();
    this.ydoc = replayed.ydoc;
    this.logCount = replayed.logCount;
    this.logBytes = replayed.logBytes;
    this.adopt(this.ydoc);
  }

  /** Readies a freshly loaded Y.Doc: its root types defined. */
  private adopt(ydoc: Y.Doc): void {
    this.ctx.policy?.prepare(ydoc);
  }

  private publishAll(frame: Uint8Array): void {
    if (this.sockets.size > 0) this.ctx.publish(frame);
  }

  /** Closes sockets that fell more than the limit behind (they reconnect and resync by state vector). */
  private closeSlowReaders(): void {
    const slow: SyncSocket[] = [];
    for (const ws of this.sockets) {
      const conn = ws.getUserData();
      if (!conn.closed && ws.getBufferedAmount() > this.ctx.limits.maxBackpressureBytes + conn.catchUp) slow.push(ws);
    }
    // Ended after the loop: a socket's close handler runs inside end() and leaves this set.
    for (const ws of slow) ws.end(CLOSE_CODES.SLOW_READER, 'Too far behind; reconnect to resync');
  }
}

/** An empty Yjs update (no structs, no deletions): nothing to store or relay. */
function isEmptyUpdate(update: Uint8Array): boolean {
  return update.byteLength === 2 && update[0] === 0 && update[1] === 0;
}

/** A close reason must fit a control frame (123 bytes). */
function truncateReason(reason: string): string {
  const bytes = Buffer.from(reason);
  return bytes.byteLength <= 120
    ? reason
    : `${bytes
        .subarray(0, 117)
        .toString()
        .replace(/\uFFFD$/, '')}...`;
}
