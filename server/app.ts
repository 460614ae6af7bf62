import fs from 'node:fs';
import path from 'node:path';
import { MULTIPART_OVERHEAD_BYTES, type Config } from './config.ts';
import { createLogger, type Logger } from './log.ts';
import { createThrottles } from './core/throttle.ts';
import { mountRoutes } from './http/dispatch.ts';
import { route, type Route } from './http/route.ts';
import { closeAllSockets, createApp, listen, stopListening } from './http/uws.ts';
import { openStorage, type Storage } from './storage/index.ts';
import { DIRECTORY_IN_REDIS } from './storage/sqlite-directory.ts';
import { moveDirectoryToRedis } from './cluster/directory-move.ts';
import { RedisDirectory } from './cluster/redis-directory.ts';
import { listenForNotices, watchExternalChanges, type ExternalChangeWatch, type NoticeListener } from './storage/coordination.ts';
import { AuthService } from './auth/service.ts';
import { authRoutes } from './auth/routes.ts';
import { UsersService } from './users/service.ts';
import { usersRoutes } from './users/routes.ts';
import { MessagingSettingsService, allowDmsFromOf } from './settings/messaging-service.ts';
import { avatarHashOf } from './avatars/card.ts';
import { UserSettingsService } from './settings/user-settings-service.ts';
import { settingsDocPolicy } from './settings/doc-policy.ts';
import { NotesService } from './notes/service.ts';
import { notesRoutes } from './notes/routes.ts';
import { DocRegistry } from './sync/registry.ts';
import { mountSyncSocket } from './sync/socket.ts';
import { FIXED_SYNC_LIMITS } from './sync/limits.ts';
import { createRequestIds } from './http/request-id.ts';
import { settingsRoutes } from './settings/routes.ts';
import { RelationshipsService } from './relationships/service.ts';
import { relationshipsRoutes } from './relationships/routes.ts';
import { ChannelsService } from './channels/service.ts';
import { channelsRoutes } from './channels/routes.ts';
import { AvatarsService } from './avatars/service.ts';
import { avatarsRoutes } from './avatars/routes.ts';
import { MfaService } from './mfa/service.ts';
import { mfaRoutes } from './mfa/routes.ts';
import { createMailer, type Mailer } from './mail/mailer.ts';
import { RecoveryService } from './recovery/service.ts';
import { recoveryRoutes } from './recovery/routes.ts';
import { HttpMetrics, SyncMetrics } from './metrics/recorders.ts';
import type { MetricsExposition } from './metrics/exposition.ts';
import { metricsRoute } from './http/metrics-route.ts';
import { FeaturesService } from './features/service.ts';
import { featuresRoutes } from './features/routes.ts';
import { ClusterNode } from './cluster/node.ts';

export interface RunningServer {
  port: number;
  /** Where the server listens, e.g. http://127.0.0.1:8080. */
  url: string;
  /** Where Prometheus scrapes, e.g. http://127.0.0.1:9464/metrics; undefined when metrics are off. */
  metricsUrl: string | undefined;
  /** Stops listening, lets in-flight requests finish, closes sockets and databases. */
  close(): Promise<void>;
  /** Live counters, for health checks and tests. */
  stats(): { loadedDocs: number; openUserFiles: number; syncConnections: number };
}

export interface ServerOptions {
  logger?: Logger;
  /** Routes mounted beside the built-in ones (embedding, diagnostics, tests). */
  extraRoutes?: Route[];
  /** Milliseconds since the epoch for everything time-bound (session expiry, TOTP steps, sign-in tickets); tests move it. Defaults to Date.now. */
  clock?: () => number;
  /** How often expired sessions are deleted and their sockets closed (default hourly; tests shorten it). */
  sessionSweepIntervalMs?: number;
  /**
   * How often the server looks for changes another process (an admin command) committed to its
   * files without telling it (default every second; a command that tells it is taken at once).
   */
  externalChangePollMs?: number;
}

/** How long shutdown waits for in-flight requests before closing their connections anyway. */
const DRAIN_TIMEOUT_MS = 10_000;
const DEFAULT_EXTERNAL_CHANGE_POLL_MS = 1000;

/** Builds and starts a complete server. Holds no global state: several can run in one process. */
export async function createServer(config: Config, options: ServerOptions = {}): Promise<RunningServer> {
  const logger = options.logger ?? createLogger(config.logLevel);
  // Off unless asked for. prom-client is loaded only then: it costs ~12 MB of RSS and ~0.1 s of start.
  const metricsOn = config.metricsPort !== undefined || config.metricsToken !== undefined;
  const exposition = metricsOn ? await import('./metrics/exposition.ts') : undefined;
  // Admin commands on this data folder tell the server through this socket when they commit
  // (storage/coordination.ts). Listening comes first: a second server on the folder is refused
  // before it touches a file.
  fs.mkdirSync(config.dataDir, { recursive: true });
  let external: ExternalChangeWatch | undefined;
  // In cluster mode every node shares the folder: none takes the notice socket (admin commands
  // take effect within the poll interval), and the nodes keep out of each other's way through
  // their leases (docs/cluster.md).
  const clustered = config.redisUrl !== undefined;
  const onNotice = () => {
    try {
      external?.check();
    } catch (error) {
      logger.error({ err: error }, 'looking at changes of another process failed');
      throw error;
    }
  };
  const notices: NoticeListener = clustered ? { socketPath: undefined, close: async () => {} } : await listenForNotices(config.dataDir, onNotice);
  if (notices.socketPath === undefined && !clustered) {
    logger.warn({ dataDir: config.dataDir }, 'the data folder path is too long for a notice socket: admin commands take effect within a second');
  }
  const app = createApp();
  let storage: Storage;
  try {
    storage = openStorage({ ...config, clustered });
  } catch (error) {
    await notices.close();
    throw error;
  }
  if (config.redisUrl === undefined && storage.localDirectory.movedToRedis()) {
    storage.close();
    await notices.close();
    throw new Error(DIRECTORY_IN_REDIS);
  }
  let cluster: ClusterNode | undefined;
  if (config.redisUrl !== undefined) {
    try {
      cluster = await ClusterNode.start(
        {
          redisUrl: config.redisUrl,
          nodeId: config.nodeId,
          leaseMs: config.leaseMs,
          idleReleaseMs: config.idleReleaseMs,
          port: config.port,
          dataDir: config.dataDir,
          clusterHost: config.clusterHost,
          clusterPort: config.clusterPort,
          clusterAdvertise: config.clusterAdvertise,
          // A relayed sync frame, or a relayed request's body (JSON, or an avatar upload).
          maxMessageBytes: Math.max(config.maxSyncMessageBytes, config.maxJsonBodyBytes, config.maxAvatarBytes + MULTIPART_OVERHEAD_BYTES),
        },
        storage,
        logger,
      );
      // The cluster's directory is in Redis: every node shares it (no node reads directory.sqlite
      // again, once its rows moved there). Set before any service is made: they keep it.
      const directory = new RedisDirectory(cluster.redis);
      await moveDirectoryToRedis(storage.localDirectory, directory, cluster.redis, cluster.nodeId, logger);
      // A directory an older version wrote holds no cards: its rows are marked pending, and the
      // repair below derives them before this node serves.
      const marked = await directory.upgradeLayout();
      if (marked > 0) logger.warn({ rows: marked }, "the directory in Redis was written by an older version: its rows' cards are derived from the user files");
      storage.directory = directory;
    } catch (error) {
      await cluster?.close();
      storage.close();
      await notices.close();
      throw error;
    }
  }
  // Where every brute-force budget is counted: this process's memory, or (cluster mode) Redis,
  // through the node's own connection, so that all nodes count against the same budgets.
  const throttles = createThrottles(cluster === undefined ? undefined : { redis: cluster.redis, logger });
  let publicUrl = config.publicUrl ?? '';
  // Off, the hot paths only see that these are undefined.
  const recorders = metricsOn ? { http: new HttpMetrics(), sync: new SyncMetrics() } : undefined;

  const avatars = new AvatarsService({
    storage,
    logger,
    publicUrl: () => publicUrl,
    limits: {
      maxBytes: config.maxAvatarBytes,
      maxPixels: config.maxAvatarPixels,
      maxFrames: config.maxAvatarFrames,
      jobs: config.avatarJobs,
    },
    changeCard: (userId, write) => users.changeCard(userId, write),
  });
  // Users ask mfa whether 2FA is on (`totp_enabled`); mfa asks users to check a password. The
  // second is given as functions, so neither feature imports the other (no cycle); they are only
  // called once both exist.
  const mfa: MfaService = new MfaService({
    storage,
    logger,
    accounts: {
      verifyPassword: (userId, password) => users.verifyPassword(userId, password),
      accountName: (userId) => users.privateUser(userId).username,
    },
    attemptsPerAccount: config.totpAccountRateLimit,
    throttles,
    clock: options.clock ?? Date.now,
  });
  const users: UsersService = new UsersService({
    storage,
    logger,
    avatars,
    cardSources: { avatarHashOf, allowDmsFromOf },
    mfa,
    currentPasswordLimit: config.loginFailureLimit,
    throttles,
    ...(cluster === undefined ? {} : { placement: cluster }),
  });
  // Before anything reads the users index: make it what the user files derive (storage/schema.ts).
  const repairIndex = () => (cluster === undefined ? users.repairDirectoryIndex() : cluster.repairIndex(() => users.repairDirectoryIndex()));
  try {
    await repairIndex();
  } catch (error) {
    await cluster?.close();
    storage.close();
    await notices.close();
    throw error;
  }
  // A Redis that came back empty (restarted without its data) has lost the directory: the users
  // index is derived again from the user files, by the first node that sees it back (the others
  // wait for it, then find it done).
  cluster?.onRedisBack(() => {
    repairIndex().catch((error: unknown) => logger.error({ err: error }, 'could not check the users index after Redis came back'));
  });
  const authService = new AuthService({
    storage,
    users,
    logger,
    sessions: { idleSeconds: config.sessionIdleSeconds, lifetimeSeconds: config.sessionLifetimeSeconds },
    login: { failuresPerAddress: config.loginFailureLimit, perAccount: config.loginAccountLimit },
    throttles,
    clock: options.clock,
    secondFactor: mfa,
    sweepIntervalMs: options.sessionSweepIntervalMs,
  });
  authService.startSweeping();
  let mailer: Mailer;
  try {
    mailer = createMailer({ smtpUrl: config.smtpUrl, from: config.mailFrom, outboxDir: path.join(config.dataDir, 'outbox'), logger });
  } catch (error) {
    await authService.close();
    await cluster?.close();
    storage.close();
    await notices.close();
    throw error;
  }
  const recovery = new RecoveryService({ storage, users, auth: authService, mailer, logger, publicUrl: () => publicUrl, throttles });
  const messaging = new MessagingSettingsService(users);
  const registry = new DocRegistry({
    storage,
    logger,
    app,
    policies: { settings: settingsDocPolicy },
    limits: {
      ...FIXED_SYNC_LIMITS,
      maxBackpressureBytes: config.maxSyncBackpressureBytes,
      unloadDelayMs: config.docUnloadDelayMs,
      compactAfterUpdates: config.compactAfterUpdates,
      compactAfterBytes: config.compactAfterBytes,
      compactDebounceMs: config.compactDebounceMs,
      compactMaxWaitMs: config.compactMaxWaitMs,
    },
    metrics: recorders?.sync,
    ...(cluster === undefined ? {} : { cluster: { owns: (userId: string) => cluster.owns(userId), relay: cluster } }),
  });
  authService.onSessionsRevoked((sessionIds) => {
    registry.revokeSessions(sessionIds);
    cluster?.announceSessionsEnded(sessionIds);
  });
  authService.countAsInUse(() => registry.sessionsWithSockets());
  const notes = new NotesService({ storage, users, registry, logger });
  const userSettings = new UserSettingsService(registry, logger);
  const relationships = new RelationshipsService(storage, users, logger);
  const channels = new ChannelsService({ storage, users, relationships, logger });
  const metrics =
    recorders &&
    exposition &&
    new exposition.MetricsExposition({
      ...recorders,
      token: config.metricsToken,
      sources: {
        syncConnections: () => registry.connectionCount,
        loadedDocuments: () => registry.loadedCount,
        openUserFiles: () => storage.userFiles.openCount,
        maxOpenUserFiles: config.maxOpenUserFiles,
        userFilesOpened: () => storage.userFiles.opened,
        userFilesEvicted: () => storage.userFiles.evicted,
        ...(cluster === undefined ? {} : { cluster: cluster.metricSources() }),
      },
    });
  const features = new FeaturesService({ users, flags: config.features });
  // What another process commits reaches what this one keeps in memory: sessions it ended are
  // refused and their sockets closed, a deleted account's documents and file let go of.
  external = watchExternalChanges(
    storage,
    {
      directoryChanged: () => {
        authService.directoryChangedElsewhere().catch((error: unknown) => logger.error({ err: error }, 'could not check which sessions another process ended'));
      },
      accountDeleted: (userId) => {
        registry.dropUser(userId);
        logger.info({ userId }, 'an account was deleted by another process; its documents and file are let go of');
      },
      failed: (error) => logger.error({ err: error }, 'looking at changes of another process failed; looking again at the next tick'),
    },
    options.externalChangePollMs ?? DEFAULT_EXTERNAL_CHANGE_POLL_MS,
  );

  const routes: Route[] = [
    route({ method: 'GET', path: '/health', auth: 'none', handler: () => (cluster === undefined ? { status: 'ok' } : { status: 'ok', ...cluster.health() }) }),
    ...authRoutes(authService, { attemptsPerMinute: config.authRateLimit, throttles }),
    ...recoveryRoutes(recovery, { attemptsPerMinute: config.authRateLimit, throttles }),
    ...usersRoutes(users, { searchesPerMinute: config.searchRateLimit, throttles }),
    ...featuresRoutes(features),
    ...settingsRoutes(messaging, userSettings),
    ...notesRoutes(notes),
    ...relationshipsRoutes(relationships),
    ...channelsRoutes(channels),
    ...avatarsRoutes(avatars, { maxBytes: config.maxAvatarBytes }),
    ...mfaRoutes(mfa, { attemptsPerAddress: config.totpAddressRateLimit, throttles }),
    // On the API's port only when it has no port of its own; there a token guards it (config.ts).
    ...(metrics !== undefined && config.metricsPort === undefined ? [metricsRoute(metrics)] : []),
    ...(options.extraRoutes ?? []),
  ];
  // The sync socket is mounted first so its `/sync/*` pattern is never shadowed by the REST catch-all.
  // One request-id source for REST and the sync upgrade: ids in the log never repeat across the two.
  const nextRequestId = createRequestIds();
  const channel = mountSyncSocket(app, {
    registry,
    logger,
    authenticate: (token) => authService.authenticate(token),
    resolveDoc: (userId, docParam) => notes.syncDocOf(userId, docParam),
    nextRequestId,
    maxMessageBytes: config.maxSyncMessageBytes,
    maxConnectionsPerUser: config.maxSyncConnectionsPerUser,
    maxBackpressureBytes: config.maxSyncBackpressureBytes,
    ...(cluster === undefined ? {} : { cluster: { placement: cluster, edge: cluster } }),
  });
  const http = mountRoutes(app, routes, {
    nextRequestId,
    trustedProxies: new Set(config.trustProxy),
    logger,
    maxJsonBodyBytes: config.maxJsonBodyBytes,
    maxUploadMemoryBytes: config.maxUploadMemoryBytes,
    authenticate: (token) => authService.authenticate(token),
    metrics: recorders?.http,
    ...(cluster === undefined ? {} : { cluster: { placement: cluster, forward: cluster.forward.bind(cluster) } }),
  });
  await cluster?.bind({
    serveForwarded: http.serveForwarded,
    sessions: channel.sessions,
    publishRelayed: channel.publishRelayed,
    publishLocal: channel.publishLocal,
    evictUser: (userId, code, reason) => registry.evictUser(userId, code, reason),
    handOverUser: (userId, code, reason) => registry.handOverUser(userId, code, reason),
    holdsNothingOf: (userId) => registry.holdsNothingOf(userId),
    sessionsEndedElsewhere: (sessionIds) => {
      authService.sessionsEndedElsewhere(sessionIds);
      registry.revokeSessions(sessionIds);
    },
    sessionExists: (sessionId) => authService.sessionExists(sessionId),
    resolveDoc: (userId, docParam) => notes.syncDocOf(userId, docParam),
    filesChangedElsewhere: () => {
      try {
        external?.check();
      } catch (error) {
        logger.error({ err: error }, 'looking at changes of an admin command failed; looking again at the next tick');
      }
    },
  });
  // What a start that fails half-way must close (no sweep may run against a closed storage).
  const abandon = async () => {
    await authService.close();
    external?.close();
    mailer.close();
    metrics?.close();
    await cluster?.close();
    storage.close();
    await notices.close();
  };

  let listening: Awaited<ReturnType<typeof listen>>;
  try {
    listening = await listen(app, config.host, config.port);
  } catch (error) {
    await abandon();
    throw error;
  }
  let metricsPort: MetricsPort | undefined;
  if (metrics !== undefined && config.metricsPort !== undefined) {
    try {
      metricsPort = await serveMetricsPort(metrics, config, { logger, nextRequestId });
    } catch (error) {
      stopListening(listening.socket);
      closeAllSockets(app);
      await abandon();
      throw error;
    }
  }
  // In the background: a mail server slow to answer must not delay serving. It logs one line,
  // an error line saying why when mails cannot go out.
  void mailer.check();
  const url = urlOf(config.host, listening.port);
  publicUrl = config.publicUrl ?? url;
  const metricsUrl = metrics === undefined ? undefined : `${metricsPort === undefined ? url : urlOf(config.host, metricsPort.port)}/metrics`;
  if (metricsUrl !== undefined) logger.info({ url: metricsUrl, token: config.metricsToken !== undefined }, `serving metrics at ${metricsUrl}`);
  if (config.smtpUrl !== undefined && config.publicUrl === undefined) {
    // Mails leave the machine, their links must reach it: the listening address rarely does.
    logger.warn({ url }, 'no --public-url: links in mails lead to the address the server listens on; set --public-url to the one users reach');
  }

  let closing: Promise<void> | undefined;
  return {
    port: listening.port,
    url,
    metricsUrl,
    stats: () => ({ loadedDocs: registry.loadedCount, openUserFiles: storage.userFiles.openCount, syncConnections: registry.connectionCount }),
    close() {
      closing ??= (async () => {
        http.refuseNew();
        stopListening(listening.socket);
        metricsPort?.stopListening();
        await Promise.all([http.inflight.idle(DRAIN_TIMEOUT_MS), metricsPort?.drained(DRAIN_TIMEOUT_MS)]);
        // Mails still going out in the background (they may store a token first).
        await recovery.close(DRAIN_TIMEOUT_MS);
        mailer.close();
        registry.closeAll();
        await cluster?.close();
        await authService.close();
        external?.close();
        await notices.close();
        // uWS flushes corked writes when the loop turns; closing first would cut the last answers.
        await new Promise((resolve) => setImmediate(resolve));
        closeAllSockets(app);
        metricsPort?.closeSockets();
        metrics?.close();
        storage.close();
      })();
      return closing;
    },
  };
}

function urlOf(host: string, port: number): string {
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

interface MetricsPort {
  port: number;
  stopListening(): void;
  /** Resolves once the scrapes in flight are answered (or after `timeoutMs`). */
  drained(timeoutMs: number): Promise<void>;
  closeSockets(): void;
}

/**
 * `--metrics-port`: a listener of its own on `--host` that serves only `GET /metrics` (anything
 * else is the usual 404), through the same request handling as the API, uncounted.
 */
async function serveMetricsPort(metrics: MetricsExposition, config: Config, options: { logger: Logger; nextRequestId: () => string }): Promise<MetricsPort> {
  const app = createApp();
  const http = mountRoutes(app, [metricsRoute(metrics)], {
    ...options,
    maxJsonBodyBytes: config.maxJsonBodyBytes,
    maxUploadMemoryBytes: config.maxUploadMemoryBytes,
    // The one route needs no session; a bearer token here is the metrics token, checked by the route.
    authenticate: () => null,
  });
  const listening = await listen(app, config.host, config.metricsPort ?? 0);
  return {
    port: listening.port,
    stopListening() {
      http.refuseNew();
      stopListening(listening.socket);
    },
    drained: (timeoutMs) => http.inflight.idle(timeoutMs),
    closeSockets: () => closeAllSockets(app),
  };
}
