import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { CLOSE_CODES } from '../../shared/sync-protocol.ts';
import { AppError } from '../core/app-error.ts';
import type { ForwardedRequest, Placement, RelayedAnswer } from '../core/placement.ts';
import { NotOwnerError } from '../storage/errors.ts';
import type { Storage } from '../storage/index.ts';
import { newConnection, type Connection, type SyncSocket } from '../sync/document.ts';
import type { DocRelay } from '../sync/registry.ts';
import type { EdgeRelay } from '../sync/socket.ts';
import { KEY_PREFIX, Leases, nodeKey } from './leases.ts';
import { connectRedis } from './redis.ts';
import { RemoteSocket, type RemoteSocketHost } from './remote-socket.ts';
import { MalformedNodeMessage, decodeNodeMessage, encodeNodeMessage, type NodeMessage } from './wire.ts';

const channelOf = (nodeId: string) => `${KEY_PREFIX}to:${nodeId}`;
const BROADCAST = `${KEY_PREFIX}all`;
/** A relayed REST request whose answer has not come after this long is answered 503. */
const FORWARD_TIMEOUT_MS = 30_000;
/** A user this node has not served for this long (no socket, no request) is given up. */
const IDLE_RELEASE_MS = 60_000;
const EMPTY = new Uint8Array(0);
const RETRY_AFTER = { 'Retry-After': '1' };

export interface ClusterSettings {
  redisUrl: string;
  nodeId: string | undefined;
  leaseMs: number;
  /** For the derived node id. */
  port: number;
}

/** What the node uses of the rest of the server, bound once everything exists (`bind`). */
export interface ClusterBindings {
  /** Serves a REST request relayed from another node (http/dispatch.ts). */
  serveForwarded(request: ForwardedRequest, body: Uint8Array | undefined): Promise<RelayedAnswer>;
  /** The sync channel: serves relayed sockets and delivers frames to the sockets relayed from here. */
  sessions: { open(ws: SyncSocket): void; receive(ws: SyncSocket, bytes: Uint8Array): void; close(ws: SyncSocket): void };
  publishRelayed(docKey: string, frame: Uint8Array, sender: SyncSocket | undefined): void;
  publishLocal(topic: string, frame: Uint8Array): void;
  /** Drops what is loaded of a user this node no longer owns, without writing, closing their sockets with `code`. */
  evictUser(userId: string, code: number, reason: string): void;
  /** Whether nothing of the user's is loaded here (their file can be let go of). */
  holdsNothingOf(userId: string): boolean;
  /** Sessions another node ended: refuse them here and close their sockets. */
  sessionsEndedElsewhere(sessionIds: string[]): void;
}

interface PendingForward {
  node: string;
  resolve: (answer: RelayedAnswer) => void;
  reject: (error: unknown) => void;
  timer: NodeJS.Timeout;
}

/** A device's socket on this node, relayed to the owner of its document. */
interface Relayed {
  ws: SyncSocket;
  owner: string;
}

/**
 * One node of a cluster (docs/cluster.md). It owns users through leases in Redis (each user's file
 * has one owner node, checked by a fencing token in the file), serves what it owns, and relays the
 * rest to the owners over Redis pub/sub: REST requests (`http-*`) and sync sockets (`sync-*`). It is
 * the server's `Placement` and the registry's and sync channel's relay.
 */
export class ClusterNode implements Placement, DocRelay, EdgeRelay, RemoteSocketHost {
  private bound: ClusterBindings | undefined;
  private readonly leases: Leases;
  /** Claims under way, so that concurrent requests for one user make one. */
  private readonly claims = new Map<string, Promise<'here' | { node: string }>>();
  private readonly lastUse = new Map<string, number>();
  private readonly pending = new Map<number, PendingForward>();
  private nextForwardId = 1;
  /** Edge side: this node's sockets relayed to owners, by cluster-wide connection id. */
  private readonly relayed = new Map<string, Relayed>();
  /** Owner side: sockets other nodes hold, served here. */
  private readonly remoteSockets = new Map<string, RemoteSocket>();
  /** Owner side: for each document, the edge nodes with sockets on it (and how many). */
  private readonly interest = new Map<string, Map<string, number>>();
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;
  private stopped = false;

  private constructor(
    readonly nodeId: string,
    private readonly instance: string,
    private readonly redis: Redis,
    private readonly subscriber: Redis,
    private readonly leaseMs: number,
    private readonly storage: Storage,
    private readonly logger: Logger,
  ) {
    this.leases = new Leases(redis, nodeId, leaseMs, logger);
  }

  /**
   * Connects to Redis and takes the node id (a live node with the same id is refused: after a
   * crash its id frees itself within one lease). Nothing is served until `bind`.
   */
  static async start(settings: ClusterSettings, storage: Storage, logger: Logger): Promise<ClusterNode> {
    const nodeId =
      settings.nodeId ??
      `${os
        .hostname()
        .replace(/[^A-Za-z0-9._-]/g, '-')
        .slice(0, 40)}-${settings.port === 0 ? process.pid : settings.port}`;
    const redis = await connectRedis(settings.redisUrl, logger, `plexichat:${nodeId}`);
    let subscriber: Redis | undefined;
    try {
      const instance = randomBytes(8).toString('hex');
      await takeNodeId(redis, nodeId, instance, settings.leaseMs);
      subscriber = await connectRedis(settings.redisUrl, logger, `plexichat:${nodeId}:sub`);
      const node = new ClusterNode(nodeId, instance, redis, subscriber, settings.leaseMs, storage, logger);
      logger.info({ nodeId, leaseMs: settings.leaseMs }, `cluster node ${nodeId}`);
      return node;
    } catch (error) {
      subscriber?.disconnect();
      redis.disconnect();
      throw error;
    }
  }

  /** Starts serving: listens for the other nodes and renews leases. */
  async bind(bindings: ClusterBindings): Promise<void> {
    this.bound = bindings;
    this.subscriber.on('messageBuffer', (_channel: Buffer, message: Buffer) => this.receive(message));
    // Pub/sub delivers at most once: while this node was not subscribed, messages for it were lost
    // (frames, answers, closes). Nothing relayed can be trusted to be whole after that, so it all
    // ends now and the clients start again (sockets resync by state vector; requests are retried).
    let subscribed = true;
    this.subscriber.on('close', () => {
      if (!subscribed) return;
      subscribed = false;
      this.resetRelays();
    });
    this.subscriber.on('ready', () => {
      subscribed = true;
    });
    await this.subscriber.subscribe(channelOf(this.nodeId), BROADCAST);
    this.timer = setInterval(() => void this.tick(), Math.max(100, Math.floor(this.leaseMs / 3)));
    this.timer.unref();
  }

  /** For `GET /health`. */
  health(): { node: string; redis: 'up' | 'down'; owned_users: number } {
    return { node: this.nodeId, redis: this.redis.status === 'ready' ? 'up' : 'down', owned_users: this.leases.count };
  }

  owns(userId: string): boolean {
    return this.leases.owns(userId);
  }

  locate(userId: string): 'here' | Promise<'here' | { node: string }> {
    if (this.leases.owns(userId)) {
      this.lastUse.set(userId, Date.now());
      return 'here';
    }
    let claim = this.claims.get(userId);
    if (claim === undefined) {
      claim = this.claim(userId).finally(() => this.claims.delete(userId));
      this.claims.set(userId, claim);
    }
    return claim;
  }

  /** Relays a REST request to the node that owns its user. */
  forward(node: string, request: ForwardedRequest, body: Uint8Array | undefined): Promise<RelayedAnswer> {
    return new Promise((resolve, reject) => {
      const id = this.nextForwardId++;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(unavailable('The server holding your data did not answer in time; retry'));
      }, FORWARD_TIMEOUT_MS);
      this.pending.set(id, { node, resolve, reject, timer });
      this.send(node, { kind: 'http-request', id, from: this.nodeId, request: JSON.stringify(request), body: body ?? EMPTY }).then(
        (receivers) => {
          if (receivers === 0) this.settleForward(id, undefined, unavailable('The server holding your data is gone; retry'));
        },
        () => this.settleForward(id, undefined, unavailable('The cluster cannot be reached right now; retry')),
      );
    });
  }

  /** Tells every node that these sessions ended (their sockets close everywhere, their tokens are refused). */
  announceSessionsEnded(sessionIds: string[]): void {
    const message = encodeNodeMessage({ kind: 'sessions-ended', from: this.nodeId, sessionIds });
    this.redis.publish(BROADCAST, toBuffer(message)).catch((error: unknown) => {
      // The other nodes still see the ended sessions in the directory within a second (they poll it).
      this.logger.warn({ err: error }, 'could not announce ended sessions to the other nodes');
    });
  }

  // --- DocRelay (owner side): frames of a document for the edge nodes with sockets on it.

  publish(docKey: string, frame: Uint8Array, except: string): void {
    const nodes = this.interest.get(docKey);
    if (nodes === undefined) return;
    // Encoded once for every node.
    const message = toBuffer(encodeNodeMessage({ kind: 'sync-publish', doc: docKey, except, bytes: frame }));
    for (const node of nodes.keys()) {
      this.publishRaw(node, message, () => {
        // That node's sockets on the document missed a frame: they reconnect and resync.
        for (const socket of [...this.remoteSockets.values()]) {
          if (socket.edge === node && socket.topic === docKey) socket.end(CLOSE_CODES.TRY_AGAIN_LATER, 'The cluster connection was interrupted; reconnect');
        }
      });
    }
  }

  // --- RemoteSocketHost (owner side).

  sendToEdge(socket: RemoteSocket, message: { kind: 'sync-send'; bytes: Uint8Array } | { kind: 'sync-end'; code: number; reason: string }): void {
    const conn = socket.getUserData().id;
    const full: NodeMessage =
      message.kind === 'sync-send' ? { kind: 'sync-send', conn, bytes: message.bytes } : { kind: 'sync-end', conn, code: message.code, reason: message.reason };
    // A lost frame would leave the device silently behind: the socket ends instead, to resync.
    this.publishRaw(socket.edge, toBuffer(encodeNodeMessage(full)), () =>
      socket.end(CLOSE_CODES.TRY_AGAIN_LATER, 'The cluster connection was interrupted; reconnect'),
    );
  }

  publishLocal(topic: string, frame: Uint8Array): void {
    this.bound?.publishLocal(topic, frame);
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
    if (this.remoteSockets.get(id) === socket) this.remoteSockets.delete(id);
    if (socket.topic !== undefined) {
      const nodes = this.interest.get(socket.topic);
      const count = (nodes?.get(socket.edge) ?? 0) - 1;
      if (count > 0) nodes?.set(socket.edge, count);
      else nodes?.delete(socket.edge);
      if (nodes?.size === 0) this.interest.delete(socket.topic);
    }
    this.bound?.sessions.close(socket);
  }

  // --- EdgeRelay (edge side): a device's socket here, for a document another node owns.

  open(ws: SyncSocket): void {
    const conn = ws.getUserData();
    if (conn.remote === undefined) return;
    const id = this.relayId(conn);
    this.relayed.set(id, { ws, owner: conn.remote });
    this.sendFromEdge(ws, conn.remote, {
      kind: 'sync-open',
      conn: id,
      from: this.nodeId,
      userId: conn.userId,
      sessionId: conn.sessionId,
      docName: conn.docName,
      ack: conn.ack,
    });
  }

  frame(ws: SyncSocket, bytes: Uint8Array): void {
    const conn = ws.getUserData();
    if (conn.remote === undefined || conn.closed) return;
    this.sendFromEdge(ws, conn.remote, { kind: 'sync-frame', conn: this.relayId(conn), bytes });
  }

  closed(ws: SyncSocket): void {
    const conn = ws.getUserData();
    if (conn.remote === undefined) return;
    const id = this.relayId(conn);
    if (this.relayed.get(id)?.ws !== ws) return;
    this.relayed.delete(id);
    this.send(conn.remote, { kind: 'sync-close', conn: id }).catch(() => {
      // The owner notices nothing more comes; its socket ends with the edge's liveness.
    });
  }

  /** Stops: gives up every lease (what is loaded was written back first), leaves the cluster. */
  async close(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(unavailable('This server is shutting down; retry'));
      this.pending.delete(id);
    }
    for (const { ws } of [...this.relayed.values()]) ws.end(CLOSE_CODES.SERVICE_RESTART, 'Server restarting');
    const users = [...this.leases.users()];
    await Promise.allSettled(
      users.map(async (userId) => {
        this.storage.userFiles.disown(userId);
        await this.leases.release(userId);
      }),
    );
    await this.redis.eval(RELEASE_NODE, 1, nodeKey(this.nodeId), this.instance).catch(() => undefined);
    this.subscriber.disconnect();
    // After what is queued (the last frames and closes for other nodes) has gone out.
    await this.redis.quit().catch(() => this.redis.disconnect());
  }

  // --- internals

  private async claim(userId: string): Promise<'here' | { node: string }> {
    let claim: Awaited<ReturnType<Leases['acquire']>>;
    try {
      claim = await this.leases.acquire(userId);
    } catch (error) {
      this.logger.warn({ err: error, userId }, 'could not look up who serves a user');
      throw unavailable('The cluster cannot be reached right now; retry');
    }
    if ('owner' in claim) return { node: claim.owner };
    try {
      this.storage.userFiles.claim(userId, claim.token);
    } catch (error) {
      // Not ours after all: give the lease back, so the next try starts afresh.
      await this.leases.release(userId).catch(() => undefined);
      if (error instanceof NotOwnerError && error.storedToken !== undefined) {
        // The file holds a newer token than Redis drew (Redis lost its data): draw above it next time.
        await this.redis.eval(FENCE_AT_LEAST, 1, `${KEY_PREFIX}fence:${userId}`, error.storedToken).catch(() => undefined);
        throw unavailable('Your data is moving between servers right now; retry');
      }
      throw error;
    }
    this.lastUse.set(userId, Date.now());
    this.logger.debug({ userId, token: claim.token }, 'took a user over');
    return 'here';
  }

  private async tick(): Promise<void> {
    if (this.ticking || this.stopped) return;
    this.ticking = true;
    try {
      await this.redis.set(nodeKey(this.nodeId), this.instance, 'PX', this.leaseMs).catch(() => undefined);
      for (const userId of await this.leases.renew()) this.lost(userId);
      this.releaseIdle();
      await this.checkOwners();
    } catch (error) {
      this.logger.error({ err: error }, 'cluster upkeep failed; trying again at the next tick');
    } finally {
      this.ticking = false;
    }
  }

  /** Ends everything relayed through Redis, in both directions, for the clients to start again. */
  private resetRelays(): void {
    if (this.stopped) return;
    if (this.relayed.size + this.remoteSockets.size + this.pending.size > 0) {
      this.logger.warn('lost the connection to the cluster channel: ending relayed sockets and requests, which the clients retry');
    }
    for (const [id] of this.pending) this.settleForward(id, undefined, unavailable('The cluster connection was interrupted; retry'));
    for (const { ws } of [...this.relayed.values()]) ws.end(CLOSE_CODES.TRY_AGAIN_LATER, 'The cluster connection was interrupted; reconnect');
    for (const socket of [...this.remoteSockets.values()]) socket.end(CLOSE_CODES.TRY_AGAIN_LATER, 'The cluster connection was interrupted; reconnect');
  }

  /** A lease ended without this node giving it up: nothing more of that user is written here. */
  private lost(userId: string): void {
    this.logger.warn({ userId }, 'lost the lease of a user; another node serves them now');
    this.lastUse.delete(userId);
    this.bound?.evictUser(userId, CLOSE_CODES.SERVICE_RESTART, 'Your data moved to another server; reconnect');
    this.storage.userFiles.disown(userId);
  }

  /** Users nobody used here for a while: their files are closed and their leases given back. */
  private releaseIdle(): void {
    const before = Date.now() - IDLE_RELEASE_MS;
    for (const userId of [...this.leases.users()]) {
      if ((this.lastUse.get(userId) ?? 0) > before || this.bound?.holdsNothingOf(userId) !== true) continue;
      this.lastUse.delete(userId);
      this.storage.userFiles.disown(userId);
      this.leases.release(userId).catch((error: unknown) => this.logger.warn({ err: error, userId }, 'could not give a lease back; it ends by itself'));
    }
  }

  /** Edge side: sockets and requests relayed to a node that is gone end now, for their clients to retry. */
  private async checkOwners(): Promise<void> {
    const owners = new Set<string>();
    for (const { owner } of this.relayed.values()) owners.add(owner);
    for (const { node } of this.pending.values()) owners.add(node);
    for (const owner of owners) {
      let alive: boolean;
      try {
        alive = (await this.redis.exists(nodeKey(owner))) === 1;
      } catch {
        // Without Redis nothing relayed can work: the devices retry until it is back.
        for (const { ws } of [...this.relayed.values()]) ws.end(CLOSE_CODES.TRY_AGAIN_LATER, 'The cluster cannot be reached right now; reconnect shortly');
        return;
      }
      if (alive) continue;
      this.logger.warn({ node: owner }, 'a node is gone; ending what was relayed to it');
      for (const { ws, owner: of } of [...this.relayed.values()]) {
        if (of === owner) ws.end(CLOSE_CODES.SERVICE_RESTART, 'The server holding your data went away; reconnect');
      }
      for (const [id, pending] of this.pending) {
        if (pending.node === owner) this.settleForward(id, undefined, unavailable('The server holding your data went away; retry'));
      }
    }
  }

  private relayId(conn: Connection): string {
    return `${this.nodeId}/${conn.id}`;
  }

  private send(node: string, message: NodeMessage): Promise<number> {
    return this.redis.publish(channelOf(node), toBuffer(encodeNodeMessage(message)));
  }

  /** Publishes to one node; `onFail` runs when it could not be sent (the message is lost). */
  private publishRaw(node: string, message: Buffer, onFail?: () => void): void {
    this.redis.publish(channelOf(node), message).catch((error: unknown) => {
      this.logger.debug({ err: error, node }, 'could not relay to a node');
      onFail?.();
    });
  }

  /** From a device's socket to its document's owner; the socket ends (retryable) when that cannot be done. */
  private sendFromEdge(ws: SyncSocket, owner: string, message: NodeMessage): void {
    this.send(owner, message).then(
      (receivers) => {
        if (receivers === 0 && !ws.getUserData().closed) ws.end(CLOSE_CODES.SERVICE_RESTART, 'The server holding your data went away; reconnect');
      },
      () => {
        if (!ws.getUserData().closed) ws.end(CLOSE_CODES.TRY_AGAIN_LATER, 'The cluster cannot be reached right now; reconnect shortly');
      },
    );
  }

  private settleForward(id: number, answer: RelayedAnswer | undefined, error?: unknown): void {
    const pending = this.pending.get(id);
    if (pending === undefined) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if (answer !== undefined) pending.resolve(answer);
    else pending.reject(error);
  }

  private receive(raw: Buffer): void {
    let message: NodeMessage;
    try {
      message = decodeNodeMessage(raw);
    } catch (error) {
      if (!(error instanceof MalformedNodeMessage)) throw error;
      this.logger.warn({ err: error }, 'ignored a message on the cluster channel that is not one of ours');
      return;
    }
    try {
      this.handle(message);
    } catch (error) {
      this.logger.error({ err: error, kind: message.kind }, 'handling a message from another node failed');
    }
  }

  private handle(message: NodeMessage): void {
    const bound = this.bound;
    if (bound === undefined) return;
    switch (message.kind) {
      case 'http-request': {
        const request = JSON.parse(message.request) as ForwardedRequest;
        void bound.serveForwarded(request, message.body.byteLength > 0 ? message.body : undefined).then((relayed) => {
          const answer = encodeNodeMessage({ kind: 'http-answer', id: message.id, answer: JSON.stringify(relayed.answer), body: relayed.body });
          this.publishRaw(message.from, toBuffer(answer));
        });
        return;
      }
      case 'http-answer':
        this.settleForward(message.id, { answer: JSON.parse(message.answer) as RelayedAnswer['answer'], body: message.body });
        return;
      case 'sync-open':
        this.openRemote(message);
        return;
      case 'sync-frame': {
        const socket = this.remoteSockets.get(message.conn);
        if (socket !== undefined) {
          bound.sessions.receive(socket, message.bytes);
          return;
        }
        // A socket this node does not serve (any more: it gave the user up, or restarted, while its
        // close could not reach the edge): the edge is told to close it, for the device to reconnect.
        const edge = message.conn.slice(0, message.conn.indexOf('/'));
        if (edge !== '') {
          const end = encodeNodeMessage({
            kind: 'sync-end',
            conn: message.conn,
            code: CLOSE_CODES.SERVICE_RESTART,
            reason: 'Your data moved to another server; reconnect',
          });
          this.publishRaw(edge, toBuffer(end));
        }
        return;
      }
      case 'sync-close':
        this.remoteSockets.get(message.conn)?.closedByEdge();
        return;
      case 'sync-send': {
        const ws = this.relayed.get(message.conn)?.ws;
        if (ws !== undefined && !ws.getUserData().closed) ws.cork(() => ws.send(message.bytes, true));
        return;
      }
      case 'sync-end': {
        const ws = this.relayed.get(message.conn)?.ws;
        if (ws !== undefined && !ws.getUserData().closed) ws.end(message.code, message.reason);
        return;
      }
      case 'sync-publish': {
        const sender = message.except === '' ? undefined : this.relayed.get(message.except)?.ws;
        bound.publishRelayed(message.doc, message.bytes, sender);
        return;
      }
      case 'sessions-ended':
        if (message.from !== this.nodeId) bound.sessionsEndedElsewhere(message.sessionIds);
        return;
    }
  }

  /** Owner side: a device's socket on another node, for a document of a user this node owns. */
  private openRemote(message: Extract<NodeMessage, { kind: 'sync-open' }>): void {
    const docName = message.docName;
    if (docName !== 'notes' && docName !== 'settings') {
      this.logger.warn({ docName, from: message.from }, 'ignored a relayed socket for a document that does not exist');
      return;
    }
    const conn = newConnection({ id: message.conn, userId: message.userId, sessionId: message.sessionId, docName, ack: message.ack });
    const socket = new RemoteSocket(conn, message.from, this);
    if (!this.leases.owns(message.userId)) {
      socket.end(CLOSE_CODES.TRY_AGAIN_LATER, 'Your data is moving between servers; reconnect');
      return;
    }
    this.lastUse.set(message.userId, Date.now());
    this.remoteSockets.set(conn.id, socket);
    this.bound?.sessions.open(socket);
  }
}

/** Deletes the node's key only if this process still holds it. */
const RELEASE_NODE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

/** Raises a user's fencing counter to at least ARGV[1]. */
const FENCE_AT_LEAST = `
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
`;

/** How often a start looks again whether a node id held by a crashed process has expired. */
const NODE_ID_POLL_MS = 200;

/** Takes the node id in Redis, waiting out (one lease) a previous process of the same id that died. */
async function takeNodeId(redis: Redis, nodeId: string, instance: string, leaseMs: number): Promise<void> {
  const giveUpAt = Date.now() + leaseMs + 1000;
  for (;;) {
    if ((await redis.set(nodeKey(nodeId), instance, 'PX', leaseMs, 'NX')) === 'OK') return;
    if (Date.now() > giveUpAt) throw new Error(`another running node uses the node id ${nodeId}: give each node its own --node-id`);
    await new Promise((resolve) => setTimeout(resolve, NODE_ID_POLL_MS));
  }
}

function unavailable(message: string): AppError {
  return new AppError('service_unavailable', message, { headers: RETRY_AFTER });
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
