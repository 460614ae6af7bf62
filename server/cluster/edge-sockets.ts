import type { Connection, SyncSocket } from '../sync/document.ts';
import type { EdgeRelay } from '../sync/socket.ts';
import type { NodeBus } from './bus.ts';
import type { NodeMessage } from './wire.ts';
import { CLOSE_CODES } from '../../shared/sync-protocol.ts';

/**
 * How long a relayed socket waits for the owner's first word (its state vector, or a close): the
 * owner answers an open at once, so silence means the open or the answer was lost (a link that
 * could not be made, which only the sending side learns of), and the device is told to reconnect
 * instead of waiting on a socket nobody serves.
 */
export const OPEN_ANSWER_TIMEOUT_MS = 10_000;
export const OWNER_SILENT = 'The server holding your data did not answer; reconnect';

/** Delivers an owner's frame to this node's sockets on a document, except the one that sent it. */
export type PublishRelayed = (docKey: string, frame: Uint8Array, sender: SyncSocket | undefined) => void;

/**
 * Edge side of sync relaying: devices' sockets held by this node for documents another node owns.
 * Each socket's frames go to the owner in order; what the owner sends (its answers, its close, the
 * document's frames) comes back here. When what was sent to an owner is lost, the node ends the
 * sockets relayed to it (`endAll`) with a code that makes the devices reconnect (and resync).
 */
export class EdgeSockets implements EdgeRelay {
  /** By cluster-wide connection id: `<this node>/<request id>`. */
  private readonly sockets = new Map<string, { ws: SyncSocket; owner: string; unanswered: NodeJS.Timeout | undefined }>();

  constructor(
    private readonly bus: NodeBus,
    private readonly publishRelayed: PublishRelayed,
  ) {}

  get size(): number {
    return this.sockets.size;
  }

  /** The nodes sockets here are relayed to. */
  owners(): Set<string> {
    return new Set([...this.sockets.values()].map((socket) => socket.owner));
  }

  open(ws: SyncSocket): void {
    const conn = ws.getUserData();
    if (conn.remote === undefined) return;
    const id = this.idOf(conn);
    const unanswered = setTimeout(() => {
      // Outside any uWS callback: corked, as uWS wants.
      if (this.sockets.get(id)?.ws === ws && !conn.closed) ws.cork(() => ws.end(CLOSE_CODES.TRY_AGAIN_LATER, OWNER_SILENT));
    }, OPEN_ANSWER_TIMEOUT_MS);
    // Never the reason a process stays up.
    unanswered.unref();
    this.sockets.set(id, { ws, owner: conn.remote, unanswered });
    this.bus.send(conn.remote, {
      kind: 'sync-open',
      conn: id,
      from: this.bus.self,
      userId: conn.userId,
      sessionId: conn.sessionId,
      docParam: conn.docParam,
      ack: conn.ack,
    });
  }

  frame(ws: SyncSocket, bytes: Uint8Array): void {
    const conn = ws.getUserData();
    if (conn.remote === undefined || conn.closed) return;
    this.bus.send(conn.remote, { kind: 'sync-frame', conn: this.idOf(conn), bytes });
  }

  closed(ws: SyncSocket): void {
    const conn = ws.getUserData();
    if (conn.remote === undefined) return;
    const id = this.idOf(conn);
    const socket = this.sockets.get(id);
    if (socket?.ws !== ws) return;
    clearTimeout(socket.unanswered);
    this.sockets.delete(id);
    // Lost only with the link that carried it, and the owner, seeing that link drop, ends every
    // socket it serves for this node (`onInterrupted`).
    this.bus.send(conn.remote, { kind: 'sync-close', conn: id });
  }

  /** A message from an owner for a socket (or the sockets of a document) here. */
  receive(message: Extract<NodeMessage, { kind: 'sync-send' | 'sync-end' | 'sync-publish' }>): void {
    switch (message.kind) {
      case 'sync-send': {
        const socket = this.sockets.get(message.conn);
        if (socket === undefined) return;
        if (socket.unanswered !== undefined) {
          clearTimeout(socket.unanswered);
          socket.unanswered = undefined;
        }
        const { ws } = socket;
        // Outside any uWS callback: corked, as uWS wants.
        if (!ws.getUserData().closed) ws.cork(() => ws.send(message.bytes, true));
        return;
      }
      case 'sync-end': {
        const ws = this.sockets.get(message.conn)?.ws;
        if (ws !== undefined && !ws.getUserData().closed) ws.cork(() => ws.end(message.code, message.reason));
        return;
      }
      case 'sync-publish':
        this.publishRelayed(message.doc, message.bytes, message.except === '' ? undefined : this.sockets.get(message.except)?.ws);
        return;
    }
  }

  /** Ends the sockets relayed to `owner` (every one when undefined). */
  endAll(owner: string | undefined, code: number, reason: string): void {
    for (const socket of [...this.sockets.values()]) if (owner === undefined || socket.owner === owner) socket.ws.end(code, reason);
  }

  private idOf(conn: Connection): string {
    return `${this.bus.self}/${conn.id}`;
  }
}
