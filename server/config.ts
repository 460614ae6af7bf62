import fs from 'node:fs';
import { parseArgs } from 'node:util';
import os from 'node:os';
import path from 'node:path';
import { isIP } from 'node:net';
import { z } from 'zod';
import { featuresFileSchema, type FeaturesFile } from '../shared/schemas/features.ts';
import { MAX_WORKER_ID } from '../shared/snowflake.ts';

/**
 * The only module that reads `process.env`. Each setting has a flag and an environment variable;
 * flags win. Everything is validated here so the rest of the server can trust its config.
 */
export const SETTINGS = {
  port: { flag: 'port', env: 'PLEXICHAT_PORT', help: 'TCP port (0 = any free port)', default: '8080' },
  host: { flag: 'host', env: 'PLEXICHAT_HOST', help: 'address to listen on (0.0.0.0 for all)', default: '127.0.0.1' },
  dataDir: { flag: 'data-dir', env: 'PLEXICHAT_DATA_DIR', help: 'where the SQLite files live', default: './data' },
  publicUrl: { flag: 'public-url', env: 'PLEXICHAT_PUBLIC_URL', help: 'base of URLs the API returns; set it behind a proxy', default: 'http://<host>:<port>' },
  logLevel: { flag: 'log-level', env: 'PLEXICHAT_LOG_LEVEL', help: 'fatal … trace, or silent; JSON lines on stdout', default: 'info' },
  workerId: {
    flag: 'worker-id',
    env: 'PLEXICHAT_WORKER_ID',
    help: '0-1023, the worker bits of snowflake ids (one node; cluster nodes lease theirs)',
    default: '0',
  },
  maxOpenUserFiles: { flag: 'max-open-user-files', env: 'PLEXICHAT_MAX_OPEN_USER_FILES', help: 'per-user SQLite files open at once', default: '256' },
  maxJsonBodyBytes: { flag: 'max-json-body-bytes', env: 'PLEXICHAT_MAX_JSON_BODY_BYTES', help: 'larger JSON bodies are refused with 413', default: '1048576' },
  authRateLimit: {
    flag: 'auth-rate-limit',
    env: 'PLEXICHAT_AUTH_RATE_LIMIT',
    help: 'login + register attempts per address per minute (0 = off)',
    default: '30',
  },
  loginFailureLimit: {
    flag: 'login-failure-limit',
    env: 'PLEXICHAT_LOGIN_FAILURE_LIMIT',
    help: 'wrong passwords in a row per login name and address (0 = off)',
    default: '10',
  },
  loginAccountLimit: {
    flag: 'login-account-limit',
    env: 'PLEXICHAT_LOGIN_ACCOUNT_LIMIT',
    help: 'login attempts per login name per hour (0 = off)',
    default: '100',
  },
  searchRateLimit: { flag: 'search-rate-limit', env: 'PLEXICHAT_SEARCH_RATE_LIMIT', help: 'user searches per account per minute (0 = off)', default: '30' },
  sessionIdleSeconds: { flag: 'session-idle-seconds', env: 'PLEXICHAT_SESSION_IDLE_SECONDS', help: 'a session unused this long ends', default: '2592000' },
  sessionLifetimeSeconds: {
    flag: 'session-lifetime-seconds',
    env: 'PLEXICHAT_SESSION_LIFETIME_SECONDS',
    help: 'a session ends this long after its login',
    default: '31536000',
  },
  maxSyncMessageBytes: {
    flag: 'max-sync-message-bytes',
    env: 'PLEXICHAT_MAX_SYNC_MESSAGE_BYTES',
    help: 'largest sync message (4413 over it)',
    default: '16777216',
  },
  maxSyncConnectionsPerUser: {
    flag: 'max-sync-connections-per-user',
    env: 'PLEXICHAT_MAX_SYNC_CONNECTIONS_PER_USER',
    help: 'sync sockets one user may have open',
    default: '32',
  },
  maxSyncBackpressureBytes: {
    flag: 'max-sync-backpressure-bytes',
    env: 'PLEXICHAT_MAX_SYNC_BACKPRESSURE_BYTES',
    help: 'unsent bytes a slow reader may hold',
    default: '33554432',
  },
  docUnloadDelayMs: {
    flag: 'doc-unload-delay-ms',
    env: 'PLEXICHAT_DOC_UNLOAD_DELAY_MS',
    help: 'a document stays in memory this long after its last user',
    default: '5000',
  },
  compactAfterUpdates: {
    flag: 'compact-after-updates',
    env: 'PLEXICHAT_COMPACT_AFTER_UPDATES',
    help: 'compact a document log of this many updates…',
    default: '1000',
  },
  compactAfterBytes: { flag: 'compact-after-bytes', env: 'PLEXICHAT_COMPACT_AFTER_BYTES', help: '…or of this many bytes', default: '1048576' },
  compactDebounceMs: { flag: 'compact-debounce-ms', env: 'PLEXICHAT_COMPACT_DEBOUNCE_MS', help: 'compaction waits for this much quiet…', default: '2000' },
  compactMaxWaitMs: { flag: 'compact-max-wait-ms', env: 'PLEXICHAT_COMPACT_MAX_WAIT_MS', help: '…but never longer than this', default: '20000' },
  maxAvatarBytes: { flag: 'max-avatar-bytes', env: 'PLEXICHAT_MAX_AVATAR_BYTES', help: 'largest avatar file accepted', default: '8388608' },
  maxAvatarPixels: {
    flag: 'max-avatar-pixels',
    env: 'PLEXICHAT_MAX_AVATAR_PIXELS',
    help: 'width × height × frames an avatar may decode to',
    default: '40000000',
  },
  maxAvatarFrames: { flag: 'max-avatar-frames', env: 'PLEXICHAT_MAX_AVATAR_FRAMES', help: 'most frames an animated avatar may have', default: '200' },
  avatarJobs: { flag: 'avatar-jobs', env: 'PLEXICHAT_AVATAR_JOBS', help: 'avatar images processed at once', default: '2' },
  maxUploadMemoryBytes: {
    flag: 'max-upload-memory-bytes',
    env: 'PLEXICHAT_MAX_UPLOAD_MEMORY_BYTES',
    help: 'upload bodies held in memory at once',
    default: '67108864',
  },
  trustProxy: { flag: 'trust-proxy', env: 'PLEXICHAT_TRUST_PROXY', help: 'comma-separated IPs of trusted reverse proxies', default: '(none)' },
  totpAccountRateLimit: {
    flag: 'totp-account-rate-limit',
    env: 'PLEXICHAT_TOTP_ACCOUNT_RATE_LIMIT',
    help: '2FA attempts per account per 10 minutes (0 = off)',
    default: '10',
  },
  totpAddressRateLimit: {
    flag: 'totp-address-rate-limit',
    env: 'PLEXICHAT_TOTP_ADDRESS_RATE_LIMIT',
    help: '2FA attempts per address per 10 minutes (0 = off)',
    default: '30',
  },
  smtpUrl: { flag: 'smtp-url', env: 'PLEXICHAT_SMTP_URL', help: 'SMTP server for mails (unset: .eml files in <data-dir>/outbox/)', default: '(none)' },
  mailFrom: { flag: 'mail-from', env: 'PLEXICHAT_MAIL_FROM', help: 'sender of every mail', default: 'noreply@localhost' },
  featuresFile: { flag: 'features-file', env: 'PLEXICHAT_FEATURES_FILE', help: 'JSON file of feature flags (see README)', default: '(none)' },
  redisUrl: { flag: 'redis-url', env: 'PLEXICHAT_REDIS_URL', help: 'cluster mode: the Redis every node shares (docs/cluster.md)', default: '(none: one node)' },
  nodeId: { flag: 'node-id', env: 'PLEXICHAT_NODE_ID', help: "cluster mode: this node's unique name", default: '<hostname>-<port>' },
  leaseMs: { flag: 'lease-ms', env: 'PLEXICHAT_LEASE_MS', help: "cluster mode: a dead node's users move after this long", default: '5000' },
  idleReleaseMs: {
    flag: 'idle-release-ms',
    env: 'PLEXICHAT_IDLE_RELEASE_MS',
    help: 'cluster mode: an owner gives up a user nobody used through it for this long',
    default: '60000',
  },
  clusterHost: {
    flag: 'cluster-host',
    env: 'PLEXICHAT_CLUSTER_HOST',
    help: 'cluster mode: address the links from other nodes are accepted on; reachable by the nodes only',
    default: '127.0.0.1',
  },
  clusterPort: { flag: 'cluster-port', env: 'PLEXICHAT_CLUSTER_PORT', help: 'cluster mode: TCP port of those links (0 = any free port)', default: '0' },
  clusterAdvertise: {
    flag: 'cluster-advertise',
    env: 'PLEXICHAT_CLUSTER_ADVERTISE',
    help: 'cluster mode: the host name or address other nodes reach this one at',
    default: '<cluster-host>',
  },
  metricsPort: {
    flag: 'metrics-port',
    env: 'PLEXICHAT_METRICS_PORT',
    help: 'serve GET /metrics (Prometheus) on this port of --host, apart from the API (0 = any free port)',
    default: '(none)',
  },
  metricsToken: {
    flag: 'metrics-token',
    env: 'PLEXICHAT_METRICS_TOKEN',
    help: 'serve GET /metrics to scrapes bearing "Authorization: Bearer <token>"; set it in the environment',
    default: '(none)',
  },
} as const satisfies Record<string, { flag: string; env: string; help: string; default: string }>;

/** Room for multipart boundaries and part headers around an avatar file of the maximum size. */
export const MULTIPART_OVERHEAD_BYTES = 64 * 1024;

export type SettingName = keyof typeof SETTINGS;

/** One address, bare or after a display name; no line breaks, which would start a new mail header. */
const MAIL_FROM_PATTERN = /^(?:[^<>@\r\n]*<[^<>@\s]+@[^<>@\s]+>|[^<>@\s]+@[^<>@\s]+)$/;

/** What `Authorization: Bearer` may carry (RFC 6750's token68), at a length no one guesses. */
const METRICS_TOKEN_PATTERN = /^[A-Za-z0-9._~+/=-]{16,512}$/;

/** Addresses that mean "listen on every interface", which no other node can connect to. */
const WILDCARD_HOSTS = new Set(['0.0.0.0', '::', '[::]', '0:0:0:0:0:0:0:0']);

const intInRange = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

const configSchema = z
  .object({
    port: intInRange(0, 65535).default(8080),
    host: z.string().min(1).default('127.0.0.1'),
    dataDir: z.string().min(1).default('./data'),
    publicUrl: z
      .url({ protocol: /^https?$/, message: 'must be an http(s) URL' })
      .transform((url) => url.replace(/\/+$/, ''))
      .optional(),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    workerId: intInRange(0, MAX_WORKER_ID).default(0),
    maxOpenUserFiles: intInRange(2, 100_000).default(256),
    maxJsonBodyBytes: intInRange(1024, 64 * 1024 * 1024).default(1024 * 1024),
    /** Login/register attempts per client address per minute (0 disables the limit). */
    authRateLimit: intInRange(0, 1_000_000).default(30),
    /**
     * Wrong passwords in a row (15 minutes) for one login name from one client address before that
     * address is refused for it; also wrong `current_password`s in a row per account. 0 disables.
     */
    loginFailureLimit: intInRange(0, 1_000_000).default(10),
    /**
     * Login attempts per login name per hour, from all addresses together, beyond each address's first
     * few: past it only addresses that have not been failing at that name are let through. 0 disables.
     */
    loginAccountLimit: intInRange(0, 1_000_000).default(100),
    /** Username searches per account per minute (and ten times that per client address). 0 disables. */
    searchRateLimit: intInRange(0, 1_000_000).default(30),
    /** A session unused this long ends (30 days); at least 5 minutes, well above how often use is recorded. */
    sessionIdleSeconds: intInRange(300, 10 * 365 * 86_400).default(30 * 86_400),
    /** A session ends this long after its login whatever its use (365 days). */
    sessionLifetimeSeconds: intInRange(300, 100 * 365 * 86_400).default(365 * 86_400),
    maxSyncMessageBytes: intInRange(1024, 1024 * 1024 * 1024).default(16 * 1024 * 1024),
    maxSyncConnectionsPerUser: intInRange(1, 100_000).default(32),
    maxSyncBackpressureBytes: intInRange(64 * 1024, 1024 * 1024 * 1024).default(32 * 1024 * 1024),
    /** How long a document stays in memory after its last socket or REST call leaves. */
    docUnloadDelayMs: intInRange(0, 3_600_000).default(5000),
    /** Compaction folds the update log into a snapshot once it holds this many updates or bytes. */
    compactAfterUpdates: intInRange(1, 100_000_000).default(1000),
    compactAfterBytes: intInRange(1, 1024 * 1024 * 1024).default(1024 * 1024),
    compactDebounceMs: intInRange(0, 3_600_000).default(2000),
    compactMaxWaitMs: intInRange(0, 3_600_000).default(20_000),
    /** Largest accepted avatar file (the uploaded bytes, before processing). */
    maxAvatarBytes: intInRange(1024, 64 * 1024 * 1024).default(8 * 1024 * 1024),
    /** Width × height × frames an avatar may decode to; checked from the header, before decoding. */
    maxAvatarPixels: intInRange(256 * 256, 268_402_689).default(40_000_000),
    maxAvatarFrames: intInRange(1, 10_000).default(200),
    /** Avatar images processed at once; each may hold up to maxAvatarPixels × 4 bytes decoded. */
    avatarJobs: intInRange(1, 64).default(2),
    /**
     * Upload bodies buffered at once, over all requests (each counted by its Content-Length, or the
     * route's maximum when chunked); an upload that does not fit is answered 503 before it is read.
     */
    maxUploadMemoryBytes: intInRange(64 * 1024, 64 * 1024 * 1024 * 1024).default(64 * 1024 * 1024),
    /**
     * Peer addresses of reverse proxies whose `X-Forwarded-For` names the client (comma-separated
     * IPs). Empty by default: the header is then ignored, so clients cannot choose the address their
     * rate limits count against.
     */
    trustProxy: z
      .string()
      .default('')
      .transform((list) =>
        list
          .split(',')
          .map((address) => address.trim())
          .filter((address) => address !== ''),
      )
      .refine((addresses) => addresses.every((address) => isIP(address) !== 0), { message: 'must be a comma-separated list of IP addresses' }),
    /**
     * Second-factor attempts (a TOTP or backup code, or the password the 2FA routes ask for) per
     * account per 10 minutes, wherever they come from. Three codes are valid at a time, so 10
     * keep a guesser who already has the password near 0.4% a day (0 disables the limit).
     */
    totpAccountRateLimit: intInRange(0, 1_000_000).default(10),
    /** The same attempts per client address per 10 minutes, over every account (0 disables the limit). */
    totpAddressRateLimit: intInRange(0, 1_000_000).default(30),
    /**
     * Where mails go: an SMTP server (`smtp://user:pass@host:587`, STARTTLS when offered, or
     * `smtps://…:465`). Unset, each mail is written to `<data-dir>/outbox/` instead.
     */
    smtpUrl: z.url({ protocol: /^smtps?$/, message: 'must be an smtp:// or smtps:// URL' }).optional(),
    /** The sender of every mail: `name@domain` or `Name <name@domain>`. */
    mailFrom: z.string().max(320).regex(MAIL_FROM_PATTERN, { message: 'must be an address, name@domain or "Name <name@domain>"' }).default('noreply@localhost'),
    /** Feature flags (JSON, `shared/schemas/features.ts`), read and validated once, at start. */
    featuresFile: z.string().min(1).optional(),
    /** Cluster mode (docs/cluster.md): `redis://[user:pass@]host:port[/db]` or `rediss://…`. Unset: one node. */
    redisUrl: z.url({ protocol: /^rediss?$/, message: 'must be a redis:// or rediss:// URL' }).optional(),
    /** Names this node to the others (leases, forwarding); unique per cluster. Derived when unset. */
    nodeId: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/, { message: 'must be 1-64 letters, digits, ".", "_" or "-"' })
      .optional(),
    /**
     * How long a node's claim on a user lasts without renewal (renewed every third of it): a node
     * that dies leaves its users to the others after this long; one cut off from Redis stops
     * writing before it ends.
     */
    leaseMs: intInRange(1000, 600_000).default(5000),
    /**
     * How long an owner keeps a user nobody used through it (no socket, no request, relayed or
     * not) before it gives them up: their file closed, their lease deleted.
     */
    idleReleaseMs: intInRange(1000, 86_400_000).default(60_000),
    /**
     * Where this node accepts the other nodes' links (relayed requests and frames, docs/cluster.md).
     * Loopback by default, not `--host`: the API may face the world, the cluster port must not.
     */
    clusterHost: z.string().min(1).default('127.0.0.1'),
    clusterPort: intInRange(0, 65535).default(0),
    /** The address the other nodes connect to (advertised in Redis); `clusterHost` unless that is every address. */
    clusterAdvertise: z.string().min(1).max(255).optional(),
    /**
     * Serves `GET /metrics` (Prometheus) on this port of `--host`, apart from the API (0 = any free
     * port). Unset, and without a metrics token, there are no metrics (`/metrics` is a 404).
     */
    metricsPort: intInRange(0, 65535).optional(),
    /**
     * Serves `GET /metrics` to scrapes bearing this token: on the API's port, or on `--metrics-port`
     * when that is set too. Long enough that guessing it is hopeless; the characters a bearer token may hold.
     */
    metricsToken: z.string().regex(METRICS_TOKEN_PATTERN, { message: 'must be 16 to 512 characters of A-Z a-z 0-9 . _ ~ + / = -' }).optional(),
  })
  .refine((config) => config.metricsPort === undefined || config.metricsPort === 0 || config.metricsPort !== config.port, {
    message: 'must differ from --port',
    path: ['metricsPort'],
  })
  .refine((config) => config.redisUrl === undefined || config.workerId === 0, {
    // A node's would be ignored, and an admin command beside the cluster uses 0 whatever it is told.
    message: 'cluster nodes lease their worker id in Redis (docs/cluster.md): leave it unset',
    path: ['workerId'],
  })
  .refine((config) => config.clusterPort === 0 || (config.clusterPort !== config.port && config.clusterPort !== config.metricsPort), {
    message: 'must differ from --port and --metrics-port',
    path: ['clusterPort'],
  })
  .refine((config) => config.redisUrl === undefined || config.clusterAdvertise !== undefined || !WILDCARD_HOSTS.has(config.clusterHost), {
    // Other nodes cannot connect to "every address": which one reaches this node only the operator knows.
    message: 'listens on every address: set --cluster-advertise to the address the other nodes reach this one at',
    path: ['clusterHost'],
  })
  .refine((config) => config.maxUploadMemoryBytes >= config.maxAvatarBytes + MULTIPART_OVERHEAD_BYTES, {
    // Smaller, and the largest avatar the server accepts could never be uploaded.
    message: `must be at least --max-avatar-bytes + ${MULTIPART_OVERHEAD_BYTES} (room for one upload of the largest avatar)`,
    path: ['maxUploadMemoryBytes'],
  });

export type Config = Omit<z.infer<typeof configSchema>, 'publicUrl' | 'featuresFile'> & {
  /** Base of URLs the API returns; derived from host and port when not set. */
  publicUrl: string | undefined;
  /** The features file's path (resolved), if one was given. */
  featuresFile: string | undefined;
  /** Its flags, validated; none without a file. */
  features: FeaturesFile;
};

/** Config for embedding (tests, tools): defaults plus the given overrides, validated the same way. */
export function makeConfig(overrides: Partial<Config> = {}): Config {
  // Overrides are the parsed form; the list of proxies goes back to the text the schema reads.
  const { features, ...rest } = overrides;
  const input = { ...rest, trustProxy: overrides.trustProxy?.join(',') };
  const parsed = configSchema.parse(Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined)));
  return finish(parsed, features === undefined ? undefined : featuresFileSchema.parse(features));
}

export class ConfigError extends Error {}

/** Reads flags (argv without node and script) and environment; throws ConfigError with one line. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): Config {
  const options = Object.fromEntries(Object.values(SETTINGS).map((s) => [s.flag, { type: 'string' as const }]));
  let flags: Record<string, string | boolean | undefined>;
  try {
    flags = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean' } }, strict: true }).values;
  } catch (error) {
    throw new ConfigError(error instanceof Error ? error.message : String(error));
  }
  if (flags.help === true) throw new ConfigError(usage());
  const given: Partial<Record<SettingName, string>> = {};
  for (const [name, setting] of Object.entries(SETTINGS) as [SettingName, (typeof SETTINGS)[SettingName]][]) {
    const value = flags[setting.flag];
    if (typeof value === 'string') given[name] = value;
  }
  return resolveConfig(given, env);
}

/**
 * The configuration from settings given as flags (already parsed, e.g. by the CLI), each falling
 * back to its environment variable, then to its default; throws ConfigError with one line.
 */
export function resolveConfig(flags: Partial<Record<SettingName, string>>, env: NodeJS.ProcessEnv = process.env): Config {
  const raw: Partial<Record<SettingName, string>> = {};
  for (const [name, setting] of Object.entries(SETTINGS) as [SettingName, (typeof SETTINGS)[SettingName]][]) {
    const value = flags[name] ?? env[setting.env];
    if (typeof value === 'string') raw[name] = value;
  }
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0];
    const name = issue?.path[0] as SettingName | undefined;
    throw new ConfigError(`invalid ${where(name)}: ${issue?.message ?? 'invalid value'}`);
  }
  return finish(result.data, undefined);
}

/**
 * Where the single executable unpacks its native addons (under `plexichat/`): `$XDG_CACHE_HOME`,
 * else `~/.cache`, as the XDG base directory spec says (a relative `$XDG_CACHE_HOME` is invalid
 * there and ignored). Not a setting of the config: the executable needs it before the server's
 * modules load (they load the addons as they are imported), so before any config is parsed.
 */
export function cacheHome(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CACHE_HOME;
  if (xdg !== undefined && path.isAbsolute(xdg)) return xdg;
  return path.join(env.HOME ?? os.homedir(), '.cache');
}

function where(name: SettingName | undefined): string {
  return name ? `--${SETTINGS[name].flag} / ${SETTINGS[name].env}` : 'config';
}

function finish(parsed: z.infer<typeof configSchema>, features: FeaturesFile | undefined): Config {
  const featuresFile = parsed.featuresFile === undefined ? undefined : path.resolve(parsed.featuresFile);
  return {
    ...parsed,
    dataDir: path.resolve(parsed.dataDir),
    publicUrl: parsed.publicUrl,
    featuresFile,
    features: features ?? (featuresFile === undefined ? featuresFileSchema.parse({}) : readFeaturesFile(featuresFile)),
  };
}

/** Reads and validates the features file; a problem is one line naming the setting, the file and the first issue. */
function readFeaturesFile(file: string): FeaturesFile {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`invalid ${where('featuresFile')}: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`invalid ${where('featuresFile')}: ${file} is not JSON: ${error instanceof Error ? error.message : String(error)}`);
  }
  const result = featuresFileSchema.safeParse(json);
  if (!result.success) {
    const issue = result.error.issues[0];
    const at = issue === undefined || issue.path.length === 0 ? '' : `${issue.path.join('.')}: `;
    // A bad name (a record key) is reported by zod as "Invalid key in record", with the key's own issue inside.
    const message = issue?.code === 'invalid_key' ? (issue.issues[0]?.message ?? issue.message) : issue?.message;
    throw new ConfigError(`invalid ${where('featuresFile')}: ${file}: ${at}${message ?? 'invalid'}`);
  }
  return result.data;
}

function usage(): string {
  return [
    'usage: npm start -- [options]   (each option also reads the environment variable shown)',
    ...Object.values(SETTINGS).map((s) => `  --${s.flag.padEnd(22)} ${s.env}`),
  ].join('\n');
}
