/**
 * The cluster scenario (issue 14): one load served by one node, and by three nodes of one kind on
 * one redis-server sharing one data folder, each document's devices spread over the nodes. What a
 * cluster costs is read on every process that serves (the nodes and Redis): CPU per update summed,
 * peak RSS summed, and the time an edit takes to reach the other devices.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as Y from 'yjs';
import type { ListeningServer } from '../helpers/process.ts';
import { RedisServer, missingRedis } from '../helpers/redis.ts';
import type { SyncClient, SyncEndpoint } from './client.ts';
import { connectMany, editRounds, failure, measuredGroup, prng, until, withTimeout, type ScenarioResult } from './scenarios.ts';
import type { ServerEntry } from './servers.ts';

export interface ClusterParams {
  /** Documents, each edited by one device on every node (DEVICES devices on a single node). */
  docs: number;
  /** Single-character edits by every device, measured. */
  edits: number;
  /** Edits by every device before the measured ones, unmeasured (0: none). */
  warmupEdits: number;
  /** Edits timed one at a time from one device until the others hold them. */
  pings: number;
  /** Bound on any one phase. */
  timeoutMs: number;
}

/** A cluster's nodes, and each document's devices: one on every node. */
const NODES = 3;
const DEVICES = 3;
/** As in scenarios.ts: persisting servers may flush what they queued before exiting. */
const STOP_GRACE_MS = 300_000;

/** One row of the cluster table. */
export interface ClusterSetup {
  name: string;
  entry: ServerEntry;
  nodes: number;
  /** Why it cannot run on this machine, checked before anything starts. */
  missing(): string | undefined;
}

/**
 * The rows, from the servers of this run: ours on one node (`plexichat`) and on three
 * (`plexichat-cluster`), Hocuspocus on one instance (`hocuspocus+sqlite`, for reference) and on
 * three with its Redis extension (`hocuspocus+redis`).
 */
export function clusterSetups(entries: readonly ServerEntry[]): ClusterSetup[] {
  const setups: ClusterSetup[] = [];
  const alone = () => undefined;
  for (const entry of entries) {
    if (entry.name === 'plexichat') {
      setups.push({ name: entry.name, entry, nodes: 1, missing: alone }, { name: `${entry.name}-cluster`, entry, nodes: NODES, missing: missingRedis });
    } else if (entry.name === 'hocuspocus+sqlite') {
      setups.push({ name: entry.name, entry, nodes: 1, missing: alone });
    } else if (entry.name === 'hocuspocus+redis') {
      setups.push({ name: entry.name, entry, nodes: NODES, missing: missingRedis });
    }
  }
  return setups;
}

/** The same endpoint reached through another node (any node serves any document). */
function through(endpoint: SyncEndpoint, node: ListeningServer): SyncEndpoint {
  const url = new URL(endpoint.url);
  url.port = String(node.port);
  return { ...endpoint, url: url.toString() };
}

/**
 * The documents. Ours: every node registers its share of the users, so each node owns a third
 * of the documents (as behind a load balancer); a device on another node is relayed to the owner.
 * Hocuspocus has no owner: a document is loaded by every instance that has a device on it.
 */
async function documents(setup: ClusterSetup, nodes: readonly ListeningServer[], count: number): Promise<SyncEndpoint[] | { skip: string }> {
  const registrars = setup.entry.ours ? nodes : nodes.slice(0, 1);
  const endpoints: SyncEndpoint[] = [];
  for (const [index, node] of registrars.entries()) {
    const share = Math.floor((count * (index + 1)) / registrars.length) - Math.floor((count * index) / registrars.length);
    const docs = await setup.entry.syncDocs!(node, share);
    if ('skip' in docs) return docs;
    endpoints.push(...docs.endpoints);
  }
  return endpoints;
}

function quantile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
}

/**
 * Delivery time: the device on the second node makes one edit at a time, and each is timed until
 * the devices on the first and third nodes both hold it (ours: through the owner on the first
 * node, one Redis hop to reach it and one more to the third node).
 */
async function pings(writer: SyncClient, readers: readonly SyncClient[], count: number, timeoutMs: number): Promise<number[]> {
  const writerId = writer.doc.clientID;
  const times: number[] = [];
  for (let index = 0; index < count; index++) {
    const started = performance.now();
    writer.content()!.insert(0, 'p');
    const sent = Y.getState(writer.doc.store, writerId);
    const delivered = readers.map((reader) => until(reader, (client) => Y.getState(client.doc.store, writerId) >= sent));
    await withTimeout(Promise.all(delivered), timeoutMs, 'delivery of one edit');
    times.push(performance.now() - started);
  }
  return times.sort((a, b) => a - b);
}

async function stopAll(nodes: readonly ListeningServer[], redis: RedisServer | undefined): Promise<void> {
  // Nodes first: ours give their leases back to Redis on the way out.
  await Promise.all(nodes.map((node) => node.stop(STOP_GRACE_MS)));
  await redis?.close();
}

/** Starts the nodes side by side; if one fails, the others are stopped again. */
async function startNodes(setup: ClusterSetup, dataDir: string, redis: RedisServer | undefined): Promise<ListeningServer[]> {
  const started = await Promise.allSettled(
    Array.from({ length: setup.nodes }, (_, index) =>
      setup.entry.start(dataDir, redis === undefined ? undefined : { redisUrl: redis.url, nodeId: `node-${index + 1}` }),
    ),
  );
  const nodes = started.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
  const failed = started.find((result) => result.status === 'rejected');
  if (failed !== undefined) {
    await stopAll(nodes, undefined);
    throw failed.reason;
  }
  return nodes;
}

/**
 * cluster: docs × DEVICES devices × edits concurrent single-character inserts, device k of every
 * document on node k (all on the one node for single-node rows), until every replica agrees; then
 * the delivery time of single edits on the first document.
 */
export async function clusterScenario(setup: ClusterSetup, params: ClusterParams): Promise<ScenarioResult> {
  const skip = setup.missing();
  if (skip !== undefined) return { scenario: 'cluster', server: setup.name, status: 'skipped', note: skip, metrics: {} };
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `plexichat-bench-${setup.name.replace(/[^a-z0-9]/gi, '-')}-`));
  let redis: RedisServer | undefined;
  let nodes: ListeningServer[] = [];
  let clients: SyncClient[] = [];
  try {
    redis = setup.nodes > 1 ? await RedisServer.start() : undefined;
    nodes = await startNodes(setup, dataDir, redis);
    const endpoints = await documents(setup, nodes, params.docs);
    if ('skip' in endpoints) return { scenario: 'cluster', server: setup.name, status: 'skipped', note: endpoints.skip, metrics: {} };
    clients = await connectMany(
      endpoints.flatMap((endpoint) => Array.from({ length: DEVICES }, (_, device) => through(endpoint, nodes[device % nodes.length]!))),
    );
    const groups = Array.from({ length: params.docs }, (_, doc) => clients.slice(doc * DEVICES, (doc + 1) * DEVICES));
    for (const group of groups) group[0]!.createNote();
    await withTimeout(Promise.all(clients.map((client) => until(client, (c) => c.content() !== undefined))), params.timeoutMs, 'note creation');

    const pids = [...nodes.map((node) => node.pid), ...(redis?.pid === undefined ? [] : [redis.pid])];
    const random = prng(7);
    const edit = (rounds: number, label: string) => editRounds(clients, DEVICES, rounds, random, params.timeoutMs, label);
    // The same load once, unmeasured, on every row: each process's JIT has compiled the hot paths
    // (a cluster pays that once per node, a one-off a long-running node does not pay per update),
    // and the links, leases and caches are in place. The measured load is then the steady state.
    // Measured too, and shown apart ("cold"): what fresh processes spend on their first edits.
    const cold =
      params.warmupEdits > 0 ? await measuredGroup(pids, () => edit(params.warmupEdits, 'cluster warm-up'), setup.entry.persists, params.timeoutMs) : undefined;
    const run = await measuredGroup(pids, () => edit(params.edits, 'cluster convergence'), setup.entry.persists, params.timeoutMs);
    const [first, second, third] = groups[0]!;
    const delivery = await pings(second!, [first!, third!], params.pings, params.timeoutMs);
    const updates = params.docs * DEVICES * params.edits;
    const redisCpuUs = redis === undefined ? undefined : run.cpuUsEach[run.cpuUsEach.length - 1];
    return {
      scenario: 'cluster',
      server: setup.name,
      status: 'ok',
      metrics: {
        wall_s: run.wallMs / 1000,
        ...(setup.entry.persists ? { settle_s: run.settleMs / 1000 } : {}),
        updates_per_s: updates / (run.wallMs / 1000),
        cpu_us_per_update: run.cpuUs / updates,
        ...(redisCpuUs === undefined ? {} : { redis_cpu_us_per_update: redisCpuUs / updates }),
        ...(cold === undefined ? {} : { cold_cpu_us_per_update: cold.cpuUs / (params.docs * DEVICES * params.warmupEdits) }),
        peak_rss_mb: run.peakRssMb,
        delivery_p50_ms: quantile(delivery, 0.5),
        delivery_p99_ms: quantile(delivery, 0.99),
        // Each node's share, in the JSON report only (node 1 owns the first third of our documents).
        ...Object.fromEntries(nodes.map((_, index) => [`node_${index + 1}_cpu_us_per_update`, run.cpuUsEach[index]! / updates])),
      },
    };
  } catch (error) {
    return failure('cluster', setup.name, error);
  } finally {
    for (const client of clients) client.close();
    await stopAll(nodes, redis);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}
