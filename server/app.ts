import fs from 'node:fs';
import path from 'node:path';
import type { Config } from './config.ts';
import { createLogger, type Logger } from './log.ts';
import { mountRoutes } from './http/dispatch.ts';
import { route, type Route } from './http/route.ts';
import { closeAllSockets, createApp, listen, stopListening } from './http/uws.ts';
import { openStorage, type Storage } from './storage/index.ts';
import { listenForNotices, watchExternalChanges, type ExternalChangeWatch } from './storage/coordination.ts';
import { AuthService } from './auth/service.ts';
import { authRoutes } from './auth/routes.ts';
import { UsersService } from './users/service.ts';
import { usersRoutes } from './users/routes.ts';
import { MessagingSettingsService } from './settings/messaging-service.ts';
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
import { FeaturesService } from './features/service.ts';
import { featuresRoutes } from './features/routes.ts';

export interface RunningServer {
  port: number;
  /** Where the server listens, e.g. http://127.0.0.1:8080. */
  url: string;
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
  // Admin commands on this data folder tell the server through this socket when they commit
  // (storage/coordination.ts). Listening comes first: a second server on the folder is refused
  // before it touches a file.
  fs.mkdirSync(config.dataDir, { recursive: true });
  let external: ExternalChangeWatch | undefined;
  const notices = await listenForNotices(config.dataDir, () => {
    try {
      external?.check();
    } catch (error) {
      logger.error({ err: error }, 'looking at changes of another process failed');
      throw error;
    }
  });
  if (notices.socketPath === undefined) {
    logger.warn({ dataDir: config.dataDir }, 'the data folder path is too long for a notice socket: admin commands take effect within a second');
  }
  const app = createApp();
  let storage: Storage;
  try {
    storage = openStorage(config);
  } catch (error) {
    await notices.close();
    throw error;
  }
  let publicUrl = config.publicUrl ?? '';

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
    clock: options.clock ?? Date.now,
  });
  const users: UsersService = new UsersService({ storage, logger, avatars, mfa, currentPasswordLimit: config.loginFailureLimit });
  // Before anything reads the users index: make it what the user files derive (storage/schema.ts).
  try {
    users.repairDirectoryIndex();
  } catch (error) {
    storage.close();
    await notices.close();
    throw error;
  }
  const authService = new AuthService({
    storage,
    users,
    logger,
    sessions: { idleSeconds: config.sessionIdleSeconds, lifetimeSeconds: config.sessionLifetimeSeconds },
    login: { failuresPerAddress: config.loginFailureLimit, perAccount: config.loginAccountLimit },
    clock: options.clock,
    secondFactor: mfa,
    sweepIntervalMs: options.sessionSweepIntervalMs,
  });
  authService.startSweeping();
  let mailer: Mailer;
  try {
    mailer = createMailer({ smtpUrl: config.smtpUrl, from: config.mailFrom, outboxDir: path.join(config.dataDir, 'outbox'), logger });
  } catch (error) {
    authService.close();
    storage.close();
    await notices.close();
    throw error;
  }
  const recovery = new RecoveryService({ storage, users, auth: authService, mailer, logger, publicUrl: () => publicUrl });
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
  });
  authService.onSessionsRevoked((sessionIds) => registry.revokeSessions(sessionIds));
  authService.countAsInUse(() => registry.sessionsWithSockets());
  const notes = new NotesService({ storage, users, registry, logger });
  const userSettings = new UserSettingsService(registry, logger);
  const relationships = new RelationshipsService(storage, users);
  const channels = new ChannelsService({ storage, users, relationships, messaging });
  const features = new FeaturesService({ users, flags: config.features });
  // What another process commits reaches what this one keeps in memory: sessions it ended are
  // refused and their sockets closed, a deleted account's documents and file let go of.
  external = watchExternalChanges(
    storage,
    {
      directoryChanged: () => authService.directoryChangedElsewhere(),
      accountDeleted: (userId) => {
        registry.dropUser(userId);
        logger.info({ userId }, 'an account was deleted by another process; its documents and file are let go of');
      },
      failed: (error) => logger.error({ err: error }, 'looking at changes of another process failed; looking again at the next tick'),
    },
    options.externalChangePollMs ?? DEFAULT_EXTERNAL_CHANGE_POLL_MS,
  );

  const routes: Route[] = [
    route({ method: 'GET', path: '/health', auth: 'none', handler: () => ({ status: 'ok' }) }),
    ...authRoutes(authService, { attemptsPerMinute: config.authRateLimit }),
    ...recoveryRoutes(recovery, { attemptsPerMinute: config.authRateLimit }),
    ...usersRoutes(users, { searchesPerMinute: config.searchRateLimit }),
    ...featuresRoutes(features),
    ...settingsRoutes(messaging, userSettings),
    ...notesRoutes(notes),
    ...relationshipsRoutes(relationships),
    ...channelsRoutes(channels),
    ...avatarsRoutes(avatars, { maxBytes: config.maxAvatarBytes }),
    ...mfaRoutes(mfa, { attemptsPerAddress: config.totpAddressRateLimit }),
    ...(options.extraRoutes ?? []),
  ];
  // The sync socket is mounted first so its `/sync/*` pattern is never shadowed by the REST catch-all.
  // One request-id source for REST and the sync upgrade: ids in the log never repeat across the two.
  const nextRequestId = createRequestIds();
  mountSyncSocket(app, {
    registry,
    logger,
    authenticate: (token) => authService.authenticate(token),
    resolveDoc: (userId, docParam) => notes.syncDocOf(userId, docParam),
    nextRequestId,
    maxMessageBytes: config.maxSyncMessageBytes,
    maxConnectionsPerUser: config.maxSyncConnectionsPerUser,
    maxBackpressureBytes: config.maxSyncBackpressureBytes,
  });
  const http = mountRoutes(app, routes, {
    nextRequestId,
    trustedProxies: new Set(config.trustProxy),
    logger,
    maxJsonBodyBytes: config.maxJsonBodyBytes,
    maxUploadMemoryBytes: config.maxUploadMemoryBytes,
    authenticate: (token) => authService.authenticate(token),
  });

  let listening: Awaited<ReturnType<typeof listen>>;
  try {
    listening = await listen(app, config.host, config.port);
  } catch (error) {
    // No sweep may run against a storage that is closed.
    authService.close();
    external.close();
    mailer.close();
    storage.close();
    await notices.close();
    throw error;
  }
  // In the background: a mail server slow to answer must not delay serving. It logs one line,
  // an error line saying why when mails cannot go out.
  void mailer.check();
  const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${listening.port}`;
  publicUrl = config.publicUrl ?? url;
  if (config.smtpUrl !== undefined && config.publicUrl === undefined) {
    // Mails leave the machine, their links must reach it: the listening address rarely does.
    logger.warn({ url }, 'no --public-url: links in mails lead to the address the server listens on; set --public-url to the one users reach');
  }

  let closing: Promise<void> | undefined;
  return {
    port: listening.port,
    url,
    stats: () => ({ loadedDocs: registry.loadedCount, openUserFiles: storage.userFiles.openCount, syncConnections: registry.connectionCount }),
    close() {
      closing ??= (async () => {
        http.refuseNew();
        stopListening(listening.socket);
        await http.inflight.idle(DRAIN_TIMEOUT_MS);
        // Mails still going out in the background (they may store a token first).
        await recovery.close(DRAIN_TIMEOUT_MS);
        mailer.close();
        registry.closeAll();
        authService.close();
        external?.close();
        await notices.close();
        // uWS flushes corked writes when the loop turns; closing first would cut the last answers.
        await new Promise((resolve) => setImmediate(resolve));
        closeAllSockets(app);
        storage.close();
      })();
      return closing;
    },
  };
}
