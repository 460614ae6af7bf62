import { CLOSE_CODES } from '../../shared/sync-protocol.ts';
import { newConnection, type SyncSocket } from '../sync/document.ts';
import type { DocRelay } from '../sync/registry.ts';
import type { NodeBus } from './bus.ts';
import { RemoteSocket, type RemoteSocketHost } from './remote-socket.ts';
import type { NodeMessage } from './wire.ts';

const NO_SUCH_DOCUMENT = 'No such document';

/** What the sync channel does for a socket another node holds, exactly as for its own. */
export interface SyncSessions {
  open(ws: SyncSocket): void;
  receive(ws: SyncSocket, bytes: Uint8Array): void;
  close(ws: SyncSocket): void;
}

/**
 * Owner side of sync relaying: devices' sockets other nodes hold, for documents of users this node
 * owns, served as `RemoteSocket`s; and the relay of each document's frames to the edge nodes with
 * sockets on it, encoded once for all of them.
 */
export class OwnerSockets implements DocRelay, RemoteSocketHost {
  private readonly sockets = new Map<string, RemoteSocket>();
  /** For each document, the edge nodes with sockets on it, and how many. */
  private readonly interest = new Map<string, Map<string, number>>();

  constructor(
    private readonly bus: NodeBus,
    private readonly sessions: SyncSessions,
    private readonly publishToLocal: (topic: string, frame: Uint8Array) => void,
  ) {}

  get size(): number {
    return this.sockets.size;
  }

  /**
   * A device's socket opened on another node: served here, or ended — told to reconnect when this
   * node does not own its user, or 4401 when its session ended on the way.
   */
  open(message: Extract<NodeMessage, { kind: 'sync-open' }>, verdict: 'serve' | 'not-owner' | 'not-found'): void {
    const { docParam } = message;
    const socket = new RemoteSocket(
      newConnection({
        id: message.conn,
        userId: message.userId,
        sessionId: message.sessionId,
        docName: docParam === 'settings' ? 'settings' : 'notes',
        docParam,
        ack: message.ack,
      }),
      message.from,
      this,
    );
    if (verdict === 'not-owner') {
      socket.end(CLOSE_CODES.TRY_AGAIN_LATER, 'Your data is moving between servers; reconnect');
      return;
    }
    if (verdict === 'not-found') {
      socket.end(CLOSE_CODES.DOCUMENT_NOT_FOUND, NO_SUCH_DOCUMENT);
      return;
    }
    this.sockets.set(message.conn, socket);
    this.sessions.open(socket);
  }

  frame(message: Extract<NodeMessage, { kind: 'sync-frame' }>): void {
    const socket = this.sockets.get(message.conn);
    if (socket !== undefined) {
      this.sessions.receive(socket, message.bytes);
      return;
    }
    // A socket this node does not serve (any more: it gave the user up, or restarted, while its
    // close could not reach the edge): the edge is told to close it, for the device to reconnect.
    const edge = message.conn.slice(0, message.conn.indexOf('/'));
    if (edge === '') return;
    this.bus.send(edge, { kind: 'sync-end', conn: message.conn, code: CLOSE_CODES.SERVICE_RESTART, reason: 'Your data moved to another server; reconnect' });
  }

  /** Ends a relayed socket served here (its session ended on the way, say); nothing if it is gone. */
  end(conn: string, code: number, reason: string): void {
    this.sockets.get(conn)?.end(code, reason);
  }

  closedByEdge(message: Extract<NodeMessage, { kind: 'sync-close' }>): void {
    this.sockets.get(message.conn)?.closedByEdge();
  }

  /** Ends the relayed sockets held by `edge` (every one when undefined): their devices reconnect. */
  endAll(edge: string | undefined, code: number, reason: string): void {
    for (const socket of [...this.sockets.values()]) if (edge === undefined || socket.edge === edge) socket.end(code, reason);
  }

  // DocRelay

  publish(docKey: string, frame: Uint8Array, except: string): void {
    const nodes = this.interest.get(docKey);
    if (nodes === undefined) return;
    // A relayed sender's node needs the frame only for its other sockets on the document.
    const senderNode = except.includes('/') ? except.slice(0, except.indexOf('/')) : '';
    // Written into each node's batch; a lost link ends that node's sockets (`endAll`), to resync.
    for (const [node, count] of nodes) {
      if (node === senderNode && count === 1) continue;
      this.bus.send(node, { kind: 'sync-publish', doc: docKey, except, bytes: frame });
    }
  }

  // RemoteSocketHost

  sendToEdge(socket: RemoteSocket, message: { kind: 'sync-send'; bytes: Uint8Array } | { kind: 'sync-end'; code: number; reason: string }): void {
    const conn = socket.getUserData().id;
    const full: NodeMessage =
      message.kind === 'sync-send' ? { kind: 'sync-send', conn, bytes: message.bytes } : { kind: 'sync-end', conn, code: message.code, reason: message.reason };
    // A lost frame would leave the device silently behind: the node ends its edge's sockets instead (`endAll`).
    this.bus.send(socket.edge, full);
  }

  publishLocal(topic: string, frame: Uint8Array): void {
    this.publishToLocal(topic, frame);
  }

  subscribed(socket: RemoteSocket, topic: string): void {
    let nodes = this.interest.get(topic);
    if (nodes === undefined) {
      nodes = new Map();
      this.interest.set(topic, nodes);
    }
    nodes.set(socket.edge, (nodes.get(socket.edge) ?? 0) + 1);
  }

  ended(socket: RemoteSocket): void {
    const id = socket.getUserData().id;
    if (this.sockets.get(id) === socket) this.sockets.delete(id);
    if (socket.topic !== undefined) {
      const nodes = this.interest.get(socket.topic);
      const count = (nodes?.get(socket.edge) ?? 0) - 1;
      if (count > 0) nodes?.set(socket.edge, count);
      else nodes?.delete(socket.edge);
      if (nodes?.size === 0) this.interest.delete(socket.topic);
    }
    this.sessions.close(socket);
  }
}
