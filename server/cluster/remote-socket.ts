import type { Connection, SyncSocket } from '../sync/document.ts';

/** What a relayed socket needs of the node that serves it. */
export interface RemoteSocketHost {
  /** Sends to the edge node holding the device's socket (fire and forget: a lost edge is noticed by its sockets' owner checks). */
  sendToEdge(socket: RemoteSocket, message: { kind: 'sync-send'; bytes: Uint8Array } | { kind: 'sync-end'; code: number; reason: string }): void;
  /** Delivers a frame to this node's own sockets subscribed to `topic`. */
  publishLocal(topic: string, frame: Uint8Array): void;
  /** The socket subscribed to a document: the edge node now wants its frames. */
  subscribed(socket: RemoteSocket, topic: string): void;
  /** The socket ended (either side): detach it and forget it. */
  ended(socket: RemoteSocket): void;
}

/**
 * Cluster mode, on the owner: a device's sync socket that another node (the edge) holds, served
 * here exactly as a socket of this node — the same checks, the same document, the same acks.
 * What it sends goes to the edge over the link to it; its frames come from there.
 */
export class RemoteSocket implements SyncSocket {
  /** The document topic it subscribed to, if any. */
  topic: string | undefined;
  private over = false;

  constructor(
    private readonly conn: Connection,
    /** The edge node holding the device's socket. */
    readonly edge: string,
    private readonly host: RemoteSocketHost,
  ) {}

  getUserData(): Connection {
    return this.conn;
  }

  send(message: Uint8Array): number {
    if (!this.over) this.host.sendToEdge(this, { kind: 'sync-send', bytes: message });
    return 1;
  }

  /** Tells the edge to close the device's socket; as with uWS, the close handling runs before this returns. */
  end(code: number, reason: string): void {
    if (this.over) return;
    this.over = true;
    this.host.sendToEdge(this, { kind: 'sync-end', code, reason });
    this.host.ended(this);
  }

  /** The edge closed the device's socket: nothing is sent back. */
  closedByEdge(): void {
    if (this.over) return;
    this.over = true;
    this.host.ended(this);
  }

  /** No local socket is this one: every local subscriber gets it (the edge leaves out the sender itself). */
  publish(topic: string, message: Uint8Array): boolean {
    this.host.publishLocal(topic, message);
    return true;
  }

  subscribe(topic: string): boolean {
    if (this.topic !== undefined) return false;
    this.topic = topic;
    this.host.subscribed(this, topic);
    return true;
  }

  cork(fn: () => void): void {
    fn();
  }

  /** The edge node checks its own socket's backlog; here nothing waits. */
  getBufferedAmount(): number {
    return 0;
  }
}
