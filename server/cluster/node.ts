import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type { Redis } from 'ioredis';
import { deleteIfHeld } from './held-keys.ts';
import type { Logger } from 'pino';
import { CLOSE_CODES } from '../../shared/sync-protocol.ts';
import { UserMovingError, type ForwardedRequest, type Placement, type RelayedAnswer } from '../core/placement.ts';
import { NotOwnerError } from '../storage/errors.ts';
import { repairIndexAlone } from './index-repair.ts';
import { UserFileMissingError, type Storage } from '../storage/index.ts';
import type { SyncSocket } from '../sync/document.ts';
import type { DocRelay } from '../sync/registry.ts';
import type { EdgeRelay } from '../sync/socket.ts';
import { z } from 'zod';
import { NodeBus, type LinkLoss } from './bus.ts';
import { readClusterKey } from './cluster-key.ts';
import { EdgeSockets, type PublishRelayed } from './edge-sockets.ts';
import { Leases, isCommandHolder, nodeKey } from './leases.ts';
import { Links, type LinkAddress } from './links.ts';
import { OwnerSockets, type SyncSessions } from './owner-sockets.ts';
import { connectRedis } from './redis.ts';
import { RestRelay, type ServeForwarded } from './rest-relay.ts';
import { unavailable } from './unavailable.ts';
import type { NodeMessage } from './wire.ts';
import { WorkerIds } from './worker-ids.ts';

/** Room in a link frame beyond its largest message: the other messages of its batch, and each one's fields. */
const FRAME_SLACK_BYTES = 2 * 1024 * 1024;
/** What may wait to go to one node at least, before its link is given up as too slow. */
const MIN_QUEUED_BYTES = 64 * 1024 * 1024;
/** A user this node has not served for this long (no socket, no request) is given up. */
const INTERRUPTED = 'The cluster connection was interrupted; reconnect';

export interface ClusterSettings {
  redisUrl: string;
  nodeId: string | undefined;
  leaseMs: number;
  /** How long this node keeps a user nobody used through it (`--idle-release-ms`). */
  idleReleaseMs: number;
  /** For the derived node id. */
  port: number;
  /** The shared data folder, which holds the cluster key. */
  dataDir: string;
  /** Where the other nodes' links are accepted, and the address they are told to reach. */
  clusterHost: string;
  clusterPort: number;
  clusterAdvertise: string | undefined;
  /** The largest message one node may relay another (a sync frame, a request or answer body). */
  maxMessageBytes: number;
}

/** What the node uses of the rest of the server, bound once everything exists (`bind`). */
/** How long a repair of the users index is tried again while former owners still hold files. */
const REPAIR_BOUND_MS = 30_000;

export interface ClusterBindings {
  serveForwarded: ServeForwarded;
  /** The sync channel: serves relayed sockets here as its own, and delivers frames to this node's sockets. */
  sessions: SyncSessions;
  publishRelayed: PublishRelayed;
  publishLocal(topic: string, frame: Uint8Array): void;
  /** Drops what is loaded of a user this node no longer owns, without writing, closing their sockets with `code`. */
  evictUser(userId: string, code: number, reason: string): void;
  /** This node gives the user up (an admin command asked): what their sockets sent is stored, then the sockets close with `code` and the documents are let go of. */
  handOverUser(userId: string, code: number, reason: string): void;
  /** Whether nothing of the user's is loaded here (their file can be let go of). */
  holdsNothingOf(userId: string): boolean;
  /** Sessions another node ended: refuse them here and close their sockets. */
  sessionsEndedElsewhere(sessionIds: string[]): void;
  /** Which of the user's documents a relayed socket's name means (this node owns the user); null for none of theirs. */
  resolveDoc(userId: string, docParam: string): 'settings' | 'notes' | null;
  /** Whether a session still exists (a relayed socket's session may have ended on its way here). */
  sessionExists(sessionId: string): Promise<boolean>;
  /** An admin command changed user files: look at once at what this node keeps over them. */
  filesChangedElsewhere(): void;
}

/** The parts that exist once the node is bound. */
interface Bound {
  bindings: ClusterBindings;
  bus: NodeBus;
  rest: RestRelay;
  edge: EdgeSockets;
  owner: OwnerSockets;
}

/**
 * One node of a cluster (docs/cluster.md). It owns users through leases in Redis (each user's file
 * has one owner node, checked by a fencing token in the file), serves what it owns, and relays the
 * rest to their owners over direct links (links.ts, found through each node's key in Redis): REST requests (`rest-relay.ts`) and sync sockets
 * (`edge-sockets.ts` where the device is, `owner-sockets.ts` where its document is). It is the
 * server's `Placement`, and the relay the registry and the sync channel are given.
 */
export class ClusterNode implements Placement, DocRelay, EdgeRelay {
  private bound: Bound | undefined;
  private readonly leases: Leases;
  /** Claims under way, so that concurrent requests for one user make one. */
  private readonly claims = new Map<string, Promise<'here' | { node: string }>>();
  /** Users being handed to a command: until Redis names it, this node's old lease must not be renewed by a claim. */
  private readonly handingOver = new Set<string>();
  private readonly lastUse = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;
  private stopped = false;

  private constructor(
    readonly nodeId: string,
    /** What this process keeps in its node key: who it is and where its links are accepted. */
    private readonly record: string,
    /** The node's connection to Redis, for what else the nodes share there (rate limits). */
    readonly redis: Redis,
    private readonly subscriber: Redis,
    private readonly links: Links,
    private readonly leaseMs: number,
    private readonly idleReleaseMs: number,
    private readonly storage: Storage,
    private readonly logger: Logger,
    /** The snowflake worker id this node issues ids with (worker-ids.ts). */
    private readonly workerIds: WorkerIds,
  ) {
    this.leases = new Leases(redis, nodeId, leaseMs, logger);
    // Only the owner opens a user's file, and holds it alone (exclusive locking, no shared memory:
    // safe on a network volume); a write after the lease ran out locally is refused.
    storage.userFiles.ownOnly({ mayUse: (userId) => this.leases.owns(userId), claimNew: (userId) => this.claimNew(userId) });
  }

  /**
   * Connects to Redis, takes the node id (a live node with the same id is refused: after a crash
   * its id frees itself within one lease) and leases a snowflake worker id, which the storage's
   * ids are issued with from then on (none free: the start is refused). Nothing is served until
   * `bind`.
   */
  static async start(settings: ClusterSettings, storage: Storage, logger: Logger): Promise<ClusterNode> {
    const host = os
      .hostname()
      .replace(/[^A-Za-z0-9._-]/g, '-')
      .slice(0, 40);
    const nodeId = settings.nodeId ?? `${host}-${settings.port === 0 ? process.pid : settings.port}`;
    const redis = await connectRedis(settings.redisUrl, logger, `plexichat:${nodeId}`);
    let subscriber: Redis | undefined;
    let links: Links | undefined;
    const instance = randomBytes(8).toString('hex');
    let tookNodeId = false;
    let record = '';
    let workerIds: WorkerIds | undefined;
    try {
      const maxFrameBytes = settings.maxMessageBytes + FRAME_SLACK_BYTES;
      links = await Links.listen(
        {
          nodeId,
          instance,
          key: readClusterKey(settings.dataDir),
          host: settings.clusterHost,
          port: settings.clusterPort,
          maxFrameBytes,
          maxQueuedBytes: Math.max(MIN_QUEUED_BYTES, 2 * maxFrameBytes),
          locate: (node) => locateNode(redis, node),
        },
        logger,
      );
      const address: LinkAddress = { instance, host: settings.clusterAdvertise ?? settings.clusterHost, port: links.port };
      links.advertise(address);
      record = JSON.stringify(address);
      await takeNodeId(redis, nodeId, record, settings.leaseMs);
      tookNodeId = true;
      workerIds = await WorkerIds.acquire(redis, `${nodeId}|${instance}`, settings.leaseMs, storage.reservationMark, logger);
      const leased = workerIds;
      storage.issueIdsFrom(() => leased.current());
      subscriber = await connectRedis(settings.redisUrl, logger, `plexichat:${nodeId}:sub`, { subscribe: true });
      logger.info({ nodeId, leaseMs: settings.leaseMs, workerId: workerIds.workerId, link: `${address.host}:${address.port}` }, `cluster node ${nodeId}`);
      return new ClusterNode(nodeId, record, redis, subscriber, links, settings.leaseMs, settings.idleReleaseMs, storage, logger, workerIds);
    } catch (error) {
      await links?.close();
      subscriber?.disconnect();
      // A start refused half-way gives back what it took, so that a retry need not wait a lease.
      await workerIds?.release().catch(() => undefined);
      if (tookNodeId) await deleteIfHeld(redis, nodeKey(nodeId), record).catch(() => undefined);
      redis.disconnect();
      throw error;
    }
  }

  /** Starts serving: listens for the other nodes and renews leases. */
  async bind(bindings: ClusterBindings): Promise<void> {
    const bus = await NodeBus.open(this.nodeId, this.links, this.redis, this.subscriber, this.logger, {
      onMessage: (message) => this.handle(message),
      // A link delivers at most once: what came over one that dropped may be missing frames,
      // answers, closes. Nothing relayed with that node can be trusted to be whole after that, so
      // it ends now and the clients start again (sockets resync by state vector, requests retry).
      onInterrupted: (node) => this.linkLost(node, 'unreachable'),
      // The same, for what this node sent one other node.
      onLinkLost: (node, loss) => this.linkLost(node, loss),
      // Redis is unreachable: no owner can be confirmed nor lease renewed, so what is relayed ends
      // at once, with the code that says to retry shortly (the broadcasts lost meanwhile, ended
      // sessions, are seen in the directory within a second).
      onBroadcastInterrupted: () => this.resetRelays(),
    });
    this.bound = {
      bindings,
      bus,
      rest: new RestRelay(bus),
      edge: new EdgeSockets(bus, bindings.publishRelayed),
      owner: new OwnerSockets(bus, bindings.sessions, bindings.publishLocal),
    };
    this.timer = setInterval(() => void this.tick(), Math.max(100, Math.floor(this.leaseMs / 3)));
    this.timer.unref();
  }

  /**
   * Calls `listener` each time the connection to Redis is back after it was lost (not at the
   * first connection): what may have been lost with a Redis restarted without its data can be
   * derived again then.
   */
  onRedisBack(listener: () => void): void {
    this.redis.on('ready', listener);
  }

  /**
   * Runs a repair of the users index (it reads every user file) alone in the cluster, tried again
   * while files are still held by owners that have not yet seen their leases end (index-repair.ts).
   */
  repairIndex(repair: () => Promise<void>): Promise<void> {
    return repairIndexAlone(this.redis, this.record, this.leaseMs, Math.max(REPAIR_BOUND_MS, 10 * this.leaseMs), repair, this.logger);
  }

  /** For `GET /health`. */
  health(): { node: string; redis: 'up' | 'down'; owned_users: number; worker_id: number | null } {
    return {
      node: this.nodeId,
      redis: this.redis.status === 'ready' ? 'up' : 'down',
      owned_users: this.leases.count,
      // Null while none can be counted on (ids are refused meanwhile).
      worker_id: this.workerIds.current()?.workerId ?? null,
    };
  }

  /** For the metrics (read at each scrape). */
  metricSources(): { ownedUsers: () => number; relayedSockets: () => number; servedRemoteSockets: () => number } {
    return {
      ownedUsers: () => this.leases.count,
      relayedSockets: () => this.bound?.edge.size ?? 0,
      servedRemoteSockets: () => this.bound?.owner.size ?? 0,
    };
  }

  owns(userId: string): boolean {
    return this.leases.owns(userId);
  }

  servesHere(userId: string): boolean {
    if (!this.leases.owns(userId)) return false;
    this.lastUse.set(userId, Date.now());
    return true;
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

  /**
   * A new account: claimed before its file is made (an id is issued once, so nobody else can hold
   * it), so that this node makes the file as its owner, with the token this resolves with
   * (`UserFiles.claimNew`, through the node's FileAccess).
   */
  private async claimNew(userId: string): Promise<number> {
    let claim: Awaited<ReturnType<Leases['acquire']>>;
    try {
      claim = await this.leases.acquire(userId);
    } catch (error) {
      this.logger.warn({ err: error, userId }, 'could not claim a new user');
      throw unavailable('The cluster cannot be reached right now; retry');
    }
    if ('owner' in claim) throw new Error(`the new user ${userId} is held by node ${claim.owner} already: an id was issued twice`);
    this.lastUse.set(userId, Date.now());
    return claim.token;
  }

  /** A new account that was not made after all (its name taken meanwhile): its claim goes. */
  async abandonNew(userId: string): Promise<void> {
    this.lastUse.delete(userId);
    this.storage.userFiles.disown(userId);
    await this.leases.release(userId);
  }

  /** Relays a REST request to the node that owns its user. */
  forward(node: string, request: ForwardedRequest, body: Uint8Array | undefined): Promise<RelayedAnswer> {
    if (this.bound === undefined) return Promise.reject(unavailable('This server is starting; retry'));
    return this.bound.rest.forward(node, request, body);
  }

  /** Tells every node that these sessions ended (their sockets close everywhere, their tokens are refused). */
  announceSessionsEnded(sessionIds: string[]): void {
    // If this is lost, the other nodes still see the ended sessions in the directory within a second (they poll it).
    this.bound?.bus.broadcast({ kind: 'sessions-ended', from: this.nodeId, sessionIds });
  }

  // DocRelay: a document's frames for the edge nodes with sockets on it.
  publish(docKey: string, frame: Uint8Array, except: string): void {
    this.bound?.owner.publish(docKey, frame, except);
  }

  // EdgeRelay: a device's socket here, for a document another node owns.
  open(ws: SyncSocket): void {
    this.bound?.edge.open(ws);
  }

  frame(ws: SyncSocket, bytes: Uint8Array): void {
    this.bound?.edge.frame(ws, bytes);
  }

  closed(ws: SyncSocket): void {
    this.bound?.edge.closed(ws);
  }

  /** Stops: gives up every lease (what is loaded was written back first), leaves the cluster. */
  async close(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.bound?.rest.fail(undefined, 'This server is shutting down; retry');
    this.bound?.edge.endAll(undefined, CLOSE_CODES.SERVICE_RESTART, 'Server restarting');
    await Promise.allSettled(
      [...this.leases.users()].map(async (userId) => {
        this.storage.userFiles.disown(userId);
        await this.leases.release(userId);
      }),
    );
    await this.workerIds.release().catch(() => undefined);
    await deleteIfHeld(this.redis, nodeKey(this.nodeId), this.record).catch(() => undefined);
    // The last batch (closes of relayed sockets, answers) goes out before the links close.
    if (this.bound === undefined) {
      await this.links.close();
      this.subscriber.disconnect();
    } else {
      await this.bound.bus.close();
    }
    await this.redis.quit().catch(() => this.redis.disconnect());
  }

  private handle(message: NodeMessage): void {
    const bound = this.bound;
    if (bound === undefined) return;
    switch (message.kind) {
      case 'http-request':
        bound.rest.serve(message, bound.bindings.serveForwarded);
        return;
      case 'http-answer':
        bound.rest.answered(message);
        return;
      case 'sync-open': {
        const owns = this.leases.owns(message.userId);
        if (owns) this.lastUse.set(message.userId, Date.now());
        bound.owner.open(message, owns ? this.verdictOn(message.userId, message.docParam) : 'not-owner');
        // The session may have ended on the way, after its revocation reached this node: read
        // again (not from the cache). The frames are served meanwhile, as those of any socket
        // whose session ends while it is open; an ended one is closed with 4401 once known.
        if (owns) {
          bound.bindings.sessionExists(message.sessionId).then(
            (exists) => {
              if (!exists) bound.owner.end(message.conn, CLOSE_CODES.SESSION_REVOKED, 'Session revoked');
            },
            (error: unknown) => {
              this.logger.warn({ err: error, conn: message.conn }, 'could not check the session of a relayed socket; it is closed, to reconnect');
              bound.owner.end(message.conn, CLOSE_CODES.TRY_AGAIN_LATER, 'Server busy; reconnect shortly');
            },
          );
        }
        return;
      }
      case 'sync-frame':
        bound.owner.frame(message);
        return;
      case 'sync-close':
        bound.owner.closedByEdge(message);
        return;
      case 'sync-send':
      case 'sync-end':
      case 'sync-publish':
        bound.edge.receive(message);
        return;
      case 'sessions-ended':
        if (message.from !== this.nodeId) bound.bindings.sessionsEndedElsewhere(message.sessionIds);
        return;
      case 'files-changed':
        bound.bindings.filesChangedElsewhere();
        return;
      case 'release-user':
        this.handOver(message.userId, message.from, message.leaseMs);
        return;
      case 'user-released':
        // For the command that asked: nothing for a node to do.
        return;
    }
  }

  /** Whether a relayed socket's document is the user's: the edge could not read it (only the owner opens the file). */
  private verdictOn(userId: string, docParam: string): 'serve' | 'not-owner' | 'not-found' {
    try {
      return this.bound?.bindings.resolveDoc(userId, docParam) === null ? 'not-found' : 'serve';
    } catch (error) {
      // The file could not be read now (storage busy or failing): the device retries shortly.
      this.logger.warn({ err: error, userId }, 'could not check the document of a relayed socket');
      return 'not-owner';
    }
  }

  /**
   * An admin command (`holder`) asked for a user: if this node owns them, it gives them up as it
   * would on shutdown — what their sockets sent is stored first, the sockets close with 1012 (the
   * devices reconnect, and are told to retry while the command works), the documents are written
   * back and let go of, the file closed — and hands the lease straight to the command, so no node
   * takes the user in between. Any other node ignores it.
   */
  private handOver(userId: string, holder: string, leaseMs: number): void {
    const bound = this.bound;
    if (bound === undefined || this.stopped || !isCommandHolder(holder) || !this.leases.owns(userId)) return;
    this.lastUse.delete(userId);
    try {
      bound.bindings.handOverUser(userId, CLOSE_CODES.SERVICE_RESTART, 'Your data is moving to another server; reconnect');
    } catch (error) {
      // Nothing more of the user is written here either way (below): the command reads the file as committed.
      this.logger.error({ err: error, userId }, 'storing what was queued for a user being handed over failed');
      bound.bindings.evictUser(userId, CLOSE_CODES.SERVICE_RESTART, 'Your data is moving to another server; reconnect');
    }
    this.storage.userFiles.disown(userId);
    this.handingOver.add(userId);
    this.leases
      .handOver(userId, holder, leaseMs)
      .then(
        (handed) => {
          if (handed) bound.bus.broadcast({ kind: 'user-released', userId, to: holder });
          this.logger.info({ userId, to: holder, handed }, 'handed a user over to an admin command');
        },
        (error: unknown) => this.logger.warn({ err: error, userId }, 'could not hand a user over; the lease ends by itself'),
      )
      .finally(() => this.handingOver.delete(userId));
  }

  private async claim(userId: string): Promise<'here' | { node: string }> {
    // Redis still names this node until the hand-over's script has run: taking that for a claim
    // would open the file the command is about to have.
    if (this.handingOver.has(userId)) throw new UserMovingError();
    // A user without a file (an id that names no account, or no more) is no one to serve: no
    // lease, and no fencing counter left in Redis for an id anyone can make up.
    if (!this.storage.userFiles.exists(userId)) throw new UserFileMissingError(`no user file for ${userId}`);
    let claim: Awaited<ReturnType<Leases['acquire']>>;
    try {
      claim = await this.leases.acquire(userId);
    } catch (error) {
      this.logger.warn({ err: error, userId }, 'could not look up who serves a user');
      throw unavailable('The cluster cannot be reached right now; retry');
    }
    if ('owner' in claim) {
      // An admin command holds the user for a moment: it has no links, and serves nobody.
      if (isCommandHolder(claim.owner)) throw new UserMovingError();
      return { node: claim.owner };
    }
    try {
      this.storage.userFiles.claim(userId, claim.token);
    } catch (error) {
      // Not ours after all: give the lease back, so the next try starts afresh.
      await this.leases.release(userId).catch(() => undefined);
      if (error instanceof NotOwnerError && error.storedToken !== undefined) {
        // The file holds a newer token than Redis drew (Redis lost its data): draw above it next time.
        await this.leases.raiseFence(userId, error.storedToken).catch(() => undefined);
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
      await this.redis.set(nodeKey(this.nodeId), this.record, 'PX', this.leaseMs).catch(() => undefined);
      // Renews the worker id and reserves ids' time ahead (or takes a free worker id, when lost).
      await this.workerIds.renew();
      for (const userId of await this.leases.renew()) this.lost(userId);
      this.releaseIdle();
      await this.checkOwners();
    } catch (error) {
      this.logger.error({ err: error }, 'cluster upkeep failed; trying again at the next tick');
    } finally {
      this.ticking = false;
    }
  }

  /** What this node sent `node` was lost: everything relayed between the two ends, for the clients to start again. */
  private linkLost(node: string, loss: LinkLoss): void {
    const bound = this.bound;
    if (this.stopped || bound === undefined) return;
    this.logger.warn({ node, loss }, 'messages to another node were lost: ending what was relayed with it, which the clients retry');
    const [code, reason] =
      loss === 'gone' ? [CLOSE_CODES.SERVICE_RESTART, 'The server holding your data went away; reconnect'] : [CLOSE_CODES.TRY_AGAIN_LATER, INTERRUPTED];
    bound.rest.fail(node, loss === 'gone' ? 'The server holding your data is gone; retry' : 'The cluster cannot be reached right now; retry');
    bound.edge.endAll(node, code, reason);
    bound.owner.endAll(node, CLOSE_CODES.TRY_AGAIN_LATER, INTERRUPTED);
  }

  /** Ends everything relayed, in both directions, for the clients to start again. */
  private resetRelays(): void {
    const bound = this.bound;
    if (this.stopped || bound === undefined) return;
    if (bound.edge.size + bound.owner.size > 0) {
      this.logger.warn('lost the connection to Redis: ending relayed sockets and requests, which the clients retry');
    }
    bound.rest.fail(undefined, 'The cluster connection was interrupted; retry');
    bound.edge.endAll(undefined, CLOSE_CODES.TRY_AGAIN_LATER, INTERRUPTED);
    bound.owner.endAll(undefined, CLOSE_CODES.TRY_AGAIN_LATER, INTERRUPTED);
  }

  /** A lease ended without this node giving it up: nothing more of that user is written here. */
  private lost(userId: string): void {
    this.logger.warn({ userId }, 'lost the lease of a user; another node serves them now');
    this.lastUse.delete(userId);
    this.bound?.bindings.evictUser(userId, CLOSE_CODES.SERVICE_RESTART, 'Your data moved to another server; reconnect');
    this.storage.userFiles.disown(userId);
  }

  /** Users nobody used here for a while: their files are closed and their leases given back. */
  private releaseIdle(): void {
    const before = Date.now() - this.idleReleaseMs;
    for (const userId of [...this.leases.users()]) {
      if ((this.lastUse.get(userId) ?? 0) > before || this.bound?.bindings.holdsNothingOf(userId) !== true) continue;
      this.lastUse.delete(userId);
      this.storage.userFiles.disown(userId);
      this.leases.release(userId).catch((error: unknown) => this.logger.warn({ err: error, userId }, 'could not give a lease back; it ends by itself'));
    }
  }

  /** Edge side: sockets and requests relayed to a node that is gone end now, for their clients to retry. */
  private async checkOwners(): Promise<void> {
    const bound = this.bound;
    if (bound === undefined) return;
    const owners = bound.edge.owners();
    for (const node of bound.rest.waitingOn()) owners.add(node);
    for (const owner of owners) {
      let alive: boolean;
      try {
        alive = (await this.redis.exists(nodeKey(owner))) === 1;
      } catch {
        // Without Redis nothing relayed can work: the devices retry until it is back.
        bound.edge.endAll(undefined, CLOSE_CODES.TRY_AGAIN_LATER, 'The cluster cannot be reached right now; reconnect shortly');
        return;
      }
      if (alive) continue;
      this.logger.warn({ node: owner }, 'a node is gone; ending what was relayed to it');
      bound.edge.endAll(owner, CLOSE_CODES.SERVICE_RESTART, 'The server holding your data went away; reconnect');
      bound.rest.fail(owner, 'The server holding your data went away; retry');
      // A machine that vanished leaves its link open until TCP gives up: nothing more is written to it.
      bound.bus.forget(owner);
    }
  }
}

const linkAddressSchema = z.object({ instance: z.string().min(1), host: z.string().min(1), port: z.number().int().min(1).max(65535) });

/** Where a node accepts links, from its node key; undefined when it has none (gone). */
async function locateNode(redis: Redis, node: string): Promise<LinkAddress | undefined> {
  const record = await redis.get(nodeKey(node));
  if (record === null) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(record);
  } catch {
    parsed = undefined;
  }
  const address = linkAddressSchema.safeParse(parsed);
  // A node of an older version (no address in its key) cannot be linked to: as good as gone.
  return address.success ? address.data : undefined;
}

/** How often a start looks again whether a node id held by a crashed process has expired. */
const NODE_ID_POLL_MS = 200;

/** Takes the node id in Redis, waiting out (one lease) a previous process of the same id that died. */
async function takeNodeId(redis: Redis, nodeId: string, record: string, leaseMs: number): Promise<void> {
  const giveUpAt = Date.now() + leaseMs + 1000;
  for (;;) {
    if ((await redis.set(nodeKey(nodeId), record, 'PX', leaseMs, 'NX')) === 'OK') return;
    if (Date.now() > giveUpAt) throw new Error(`another running node uses the node id ${nodeId}: give each node its own --node-id`);
    await new Promise((resolve) => setTimeout(resolve, NODE_ID_POLL_MS));
  }
}
