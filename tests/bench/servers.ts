import path from 'node:path';
import { FASTIFY_BENCH_TOKEN } from './baselines/args.ts';
import type { BenchBuild } from './build.ts';
import { SyncClient, type SyncEndpoint } from './client.ts';
import { startListening, type ListeningServer } from '../helpers/process.ts';

/** What a scenario gets to talk to: one endpoint per document, or why this server sits it out. */
type SyncDocs = { endpoints: SyncEndpoint[] } | { skip: string };
type RestTarget = { url: string; headers: Record<string, string> } | { skip: string };
/** One node of a cluster (the cluster scenario): the Redis all nodes share, and this node's name. */
interface ClusterMember {
  redisUrl: string;
  nodeId: string;
}

export interface ServerEntry {
  name: string;
  ours: boolean;
  /** Speaks the sync protocol (trace, fanout, idle). */
  sync: boolean;
  /** Keeps documents on disk across a restart (cold). */
  persists: boolean;
  /** Serves `GET /users/@me` (rest). */
  rest: boolean;
  /** With `cluster`, as one node of a cluster (only the servers the cluster scenario runs so). */
  start(dataDir: string, cluster?: ClusterMember): Promise<ListeningServer>;
  /** Only these scenarios (default: every scenario the flags above allow). */
  only?: readonly ('trace' | 'cold' | 'fanout' | 'idle' | 'rest' | 'cluster')[];
  /** Stopped with kill -9 before the cold restart, so it restarts from exactly what was on disk. */
  crashBeforeCold?: boolean;
  /** After start: `count` documents to sync, with whatever accounts or tokens that takes. */
  syncDocs?(server: ListeningServer, count: number): Promise<SyncDocs>;
  restTarget?(server: ListeningServer): Promise<RestTarget>;
}

/** A server that has not printed its port after this long is killed, and its scenarios fail. */
const START_TIMEOUT_MS = 30_000;

function baseline(
  built: BenchBuild,
  nodeFlags: readonly string[],
  name: string,
  dataDir: string,
  env?: NodeJS.ProcessEnv,
  extraArgs: readonly string[] = [],
): Promise<ListeningServer> {
  return startListening({
    args: [...nodeFlags, path.join(built.baselines, `${name}.mjs`), '--port', '0', '--data-dir', dataDir, ...extraArgs],
    cwd: path.dirname(built.baselines),
    timeoutMs: START_TIMEOUT_MS,
    ...(env === undefined ? {} : { env }),
  });
}

function wsUrl(server: ListeningServer, pathname: string): string {
  return `ws://127.0.0.1:${server.port}${pathname}`;
}

function docNames(count: number): string[] {
  return Array.from({ length: count }, (_, index) => `bench-doc-${index}`);
}

/** Hocuspocus serves every document on one path, named in its own framing. */
function hocuspocusDocs(server: ListeningServer, count: number): SyncDocs {
  return {
    endpoints: docNames(count).map((docName) => ({ url: wsUrl(server, '/'), framing: 'hocuspocus', docName, token: 'benchmark', answersSync: true })),
  };
}

/**
 * The servers of one run, from `built` (see build.ts); ours first. `env` is the environment the
 * baselines inherit; `nodeFlags` go to every server process (e.g. `--cpu-prof`).
 */
export function serverEntries(built: BenchBuild, env: NodeJS.ProcessEnv, nodeFlags: readonly string[] = []): ServerEntry[] {
  const yWebsocket = (persistence: boolean): ServerEntry => ({
    name: persistence ? 'y-websocket+leveldb' : 'y-websocket',
    ours: false,
    sync: true,
    persists: persistence,
    rest: false,
    start: (dataDir) => baseline(built, nodeFlags, 'y-websocket-server', dataDir, persistence ? { ...env, YPERSISTENCE: path.join(dataDir, 'leveldb') } : env),
    syncDocs: async (server, count) => ({
      endpoints: docNames(count).map((docName) => ({
        url: wsUrl(server, `/${docName}`),
        framing: 'y-websocket',
        docName,
        answersSync: true,
      })),
    }),
  });
  const plexichat = (name: string, extraArgs: readonly string[]): Omit<ServerEntry, 'ours' | 'sync' | 'persists' | 'rest'> => ({
    name,
    start: (dataDir, cluster) =>
      startListening({
        // Info level: the listening line is logged at info; requests only at debug.
        args: [
          ...nodeFlags,
          built.server,
          '--port',
          '0',
          '--data-dir',
          dataDir,
          '--log-level',
          'info',
          '--auth-rate-limit',
          '0',
          '--max-sync-connections-per-user',
          '100000',
          ...extraArgs,
          ...(cluster === undefined ? [] : ['--redis-url', cluster.redisUrl, '--node-id', cluster.nodeId]),
        ],
        cwd: path.dirname(built.server),
        timeoutMs: START_TIMEOUT_MS,
      }),
    syncDocs: (server, count) => plexichatDocs(server, count),
  });
  return [
    {
      ...plexichat('plexichat', []),
      ours: true,
      sync: true,
      persists: true,
      rest: true,
      restTarget: async (server) => {
        const [account] = await registerAccounts(server, 1);
        if (account === undefined) return { skip: 'registration failed' };
        return { url: `${server.url}/users/@me`, headers: { authorization: `Bearer ${account.token}` } };
      },
    },
    {
      // The cold start from an uncompacted log: compaction never triggers, and kill -9 skips the
      // compaction a clean shutdown does, so the restart replays every logged update.
      ...plexichat('plexichat-log', ['--compact-after-updates', '100000000', '--compact-after-bytes', '1073741824']),
      ours: true,
      sync: true,
      persists: true,
      rest: false,
      only: ['trace', 'cold'],
      crashBeforeCold: true,
    },
    yWebsocket(false),
    yWebsocket(true),
    {
      name: 'hocuspocus+sqlite',
      ours: false,
      sync: true,
      persists: true,
      rest: false,
      start: (dataDir) => baseline(built, nodeFlags, 'hocuspocus', dataDir),
      syncDocs: async (server, count) => hocuspocusDocs(server, count),
    },
    {
      // The cluster scenario's baseline: only ever started as one of several instances on one Redis.
      name: 'hocuspocus+redis',
      ours: false,
      sync: true,
      persists: true,
      rest: false,
      only: ['cluster'],
      start: (dataDir, cluster) => {
        if (cluster === undefined) throw new Error('hocuspocus+redis only runs as a cluster');
        return baseline(built, nodeFlags, 'hocuspocus-redis', dataDir, env, ['--redis-url', cluster.redisUrl]);
      },
      syncDocs: async (server, count) => hocuspocusDocs(server, count),
    },
    {
      name: 'uws-relay',
      ours: false,
      sync: true,
      persists: false,
      rest: false,
      start: (dataDir) => baseline(built, nodeFlags, 'uws-relay', dataDir),
      syncDocs: async (server, count) => ({
        endpoints: docNames(count).map((docName) => ({
          url: wsUrl(server, `/${docName}`),
          framing: 'y-websocket',
          docName,
          answersSync: false,
        })),
      }),
    },
    {
      name: 'uws-hello',
      ours: false,
      sync: false,
      persists: false,
      rest: true,
      start: (dataDir) => baseline(built, nodeFlags, 'uws-hello', dataDir),
      restTarget: async (server) => ({ url: `${server.url}/users/@me`, headers: {} }),
    },
    {
      name: 'fastify+sqlite',
      ours: false,
      sync: false,
      persists: false,
      rest: true,
      start: (dataDir) => baseline(built, nodeFlags, 'fastify-users', dataDir),
      restTarget: async (server) => ({
        url: `${server.url}/users/@me`,
        headers: { authorization: `Bearer ${FASTIFY_BENCH_TOKEN}` },
      }),
    },
  ];
}

interface Account {
  token: string;
}

/** Registers `count` users, two at a time (Argon2 hashing is the cost; the machine has 2 cores). */
async function registerAccounts(server: ListeningServer, count: number): Promise<Account[]> {
  const accounts: Account[] = [];
  const runId = Date.now().toString(36);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const index = next++;
      const response = await fetch(`${server.url}/auth/register`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          username: `bench_${runId}_${index}`,
          email: `bench_${runId}_${index}@example.com`,
          password: 'benchmark passphrase',
        }),
      });
      const body = (await response.json()) as { token?: unknown };
      if (response.status !== 201 || typeof body.token !== 'string') {
        throw new Error(`POST /auth/register → ${response.status}`);
      }
      accounts[index] = { token: body.token };
    }
  };
  await Promise.all([worker(), worker()]);
  return accounts;
}

/**
 * Our sync entry, written against the documented protocol: each document is a user's notes
 * channel (`GET /users/@me/notes` → `{id}`), reached at `/sync/<id>?token=<token>`. Until the
 * sync channel is on this build, the probe on the first account says so and the server sits out.
 */
async function plexichatDocs(server: ListeningServer, count: number): Promise<SyncDocs> {
  const [first] = await registerAccounts(server, 1);
  if (first === undefined) return { skip: 'registration failed' };
  const firstEndpoint = await notesEndpoint(server, first.token);
  if ('skip' in firstEndpoint) return firstEndpoint;
  try {
    (await SyncClient.connect(firstEndpoint, 10_000)).close();
  } catch (error) {
    return { skip: `sync channel not on this build (${error instanceof Error ? error.message : String(error)})` };
  }
  const endpoints: SyncEndpoint[] = [firstEndpoint];
  for (const account of await registerAccounts(server, count - 1)) {
    const endpoint = await notesEndpoint(server, account.token);
    if ('skip' in endpoint) return endpoint;
    endpoints.push(endpoint);
  }
  return { endpoints };
}

async function notesEndpoint(server: ListeningServer, token: string): Promise<SyncEndpoint | { skip: string }> {
  const response = await fetch(`${server.url}/users/@me/notes`, { headers: { authorization: `Bearer ${token}` } });
  if (response.status !== 200) {
    // The body says why (a 404: no such route on this build; a 503: what was unavailable).
    const why = (await response.text()).slice(0, 200);
    return { skip: `sync channel not on this build (GET /users/@me/notes → ${response.status} ${why})` };
  }
  const { id } = (await response.json()) as { id: string };
  return {
    url: wsUrl(server, `/sync/${id}?token=${encodeURIComponent(token)}`),
    framing: 'y-websocket',
    docName: id,
    token,
    answersSync: true,
  };
}
