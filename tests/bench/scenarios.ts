import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import autocannon from 'autocannon';
import * as Y from 'yjs';
import { SyncClient, type SyncEndpoint } from './client.ts';
import type { ListeningServer } from '../helpers/process.ts';
import { resetPeak, sample } from './proc.ts';
import type { ServerEntry } from './servers.ts';
import type { Trace } from './trace.ts';

export type ScenarioName = 'trace' | 'cold' | 'fanout' | 'idle' | 'rest' | 'cluster';

export interface ScenarioResult {
  scenario: ScenarioName;
  server: string;
  status: 'ok' | 'skipped' | 'failed';
  note?: string;
  metrics: Record<string, number>;
}

export interface Params {
  trace: Trace;
  fanout: { docs: number; clients: number; edits: number };
  idle: { connections: number; docs: number };
  rest: { connections: number; durationS: number };
  /** Bound on any one measured phase. */
  timeoutMs: number;
  /** The trace writer does not wait for its readers (a fast writer flooding the server). */
  unpaced: boolean;
}

const MB = 1024 * 1024;
const READERS = 3;
/** How far (in inserted characters) the writer may run ahead of the slowest reader. */
const WRITER_WINDOW = 2_000;
const MAX_BUFFERED_BYTES = 1 * MB;
/** How long a server may take to exit after SIGTERM (persisting servers flush their queues first). */
const STOP_GRACE_MS = 300_000;

interface Measured<T> {
  value: T;
  wallMs: number;
  /** From the end of `fn` until the server's CPU went quiet (0 unless asked to settle). */
  settleMs: number;
  cpuUs: number;
  peakRssMb: number;
  /** CPU of each process, in the order given (measuredGroup). */
  cpuUsEach: number[];
}

/** A server is idle once it used at most one clock tick of CPU over this window. */
const QUIET_WINDOW_MS = 2_500;
const QUIET_POLL_MS = 250;

/**
 * Runs `fn` between two /proc samples of the server process. With `settle`, the second sample
 * waits until the server is idle: servers that persist behind the broadcast (LevelDB's queue,
 * Hocuspocus' debounced stores) do that work after the clients converged, and it is part of what
 * an update costs them.
 */
function measured<T>(server: ListeningServer, fn: () => Promise<T>, settle = false, limitMs = 300_000): Promise<Measured<T>> {
  return measuredGroup([server.pid], fn, settle, limitMs);
}

/**
 * `measured` over several processes serving together (a cluster's nodes and its Redis): their
 * CPU summed, their peaks summed (each process's own peak, wherever in the phase it fell), and
 * settled once all of them together used at most one clock tick each over the quiet window.
 */
export async function measuredGroup<T>(pids: readonly number[], fn: () => Promise<T>, settle = false, limitMs = 300_000): Promise<Measured<T>> {
  const cpuNow = () => pids.reduce((sum, pid) => sum + sample(pid).cpuUs, 0);
  for (const pid of pids) resetPeak(pid);
  const before = pids.map((pid) => sample(pid));
  const started = performance.now();
  const value = await fn();
  const wallMs = performance.now() - started;
  let settleMs = 0;
  if (settle) {
    const settleStart = performance.now();
    const window: number[] = [cpuNow()];
    const windowLength = QUIET_WINDOW_MS / QUIET_POLL_MS;
    while (performance.now() - settleStart < limitMs) {
      await new Promise((resolve) => setTimeout(resolve, QUIET_POLL_MS));
      window.push(cpuNow());
      if (window.length > windowLength + 1) window.shift();
      if (window.length === windowLength + 1 && window[window.length - 1]! - window[0]! <= 10_000 * pids.length) break;
    }
    // The quiet window itself is not part of the work.
    settleMs = Math.max(0, performance.now() - settleStart - QUIET_WINDOW_MS);
  }
  const after = pids.map((pid) => sample(pid));
  const cpuUsEach = after.map((sampled, index) => sampled.cpuUs - before[index]!.cpuUs);
  return {
    value,
    wallMs,
    settleMs,
    cpuUs: cpuUsEach.reduce((sum, cpu) => sum + cpu, 0),
    peakRssMb: after.reduce((sum, sampled) => sum + sampled.peakRssBytes, 0) / MB,
    cpuUsEach,
  };
}

export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${Math.round(ms / 1000)} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves once `done(client)` holds, checked after every sync message the client applies. */
export function until(client: SyncClient, done: (client: SyncClient) => boolean, onProgress?: () => void): Promise<void> {
  return new Promise((resolve) => {
    const check = () => {
      onProgress?.();
      if (!done(client)) return;
      client.onSync = null;
      resolve();
    };
    client.onSync = check;
    check();
  });
}

function hasText(expected: string): (client: SyncClient) => boolean {
  return (client) => {
    const content = client.content();
    return content !== undefined && content.length === expected.length && content.toString() === expected;
  };
}

/** Connects `count` clients, `parallel` handshakes at a time. */
export async function connectMany(endpoints: readonly SyncEndpoint[], parallel = 16): Promise<SyncClient[]> {
  const clients: SyncClient[] = new Array<SyncClient>(endpoints.length);
  let next = 0;
  const worker = async () => {
    while (next < endpoints.length) {
      const index = next++;
      clients[index] = await SyncClient.connect(endpoints[index]!);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(parallel, endpoints.length) }, worker));
  } catch (error) {
    for (const client of clients) client?.close();
    throw error;
  }
  return clients;
}

async function withServer<T>(entry: ServerEntry, fn: (server: ListeningServer, dataDir: string) => Promise<T>): Promise<T> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `plexichat-bench-${entry.name.replace(/[^a-z0-9]/gi, '-')}-`));
  try {
    const server = await entry.start(dataDir);
    try {
      return await fn(server, dataDir);
    } finally {
      await server.stop(STOP_GRACE_MS);
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

export function failure(scenario: ScenarioName, server: string, error: unknown): ScenarioResult {
  return { scenario, server, status: 'failed', note: error instanceof Error ? error.message : String(error), metrics: {} };
}

/**
 * trace, then cold on the same data: replay the trace from one writer to three readers until
 * every reader holds the expected text; then restart the server and time a fresh client's sync.
 */
export async function traceAndCold(entry: ServerEntry, params: Params): Promise<ScenarioResult[]> {
  const { trace } = params;
  try {
    return await withServer(entry, async (first, dataDir) => {
      const docs = await entry.syncDocs!(first, 1);
      if ('skip' in docs) {
        return (['trace', 'cold'] as const).map((scenario) => ({ scenario, server: entry.name, status: 'skipped' as const, note: docs.skip, metrics: {} }));
      }
      const endpoint = docs.endpoints[0]!;
      const clients = await connectMany([endpoint, endpoint, endpoint, endpoint].slice(0, READERS + 1));
      const [writer, ...readers] = clients as [SyncClient, ...SyncClient[]];
      let run: Measured<void>;
      try {
        const replayed = () =>
          withTimeout(replay(writer, readers, trace, params.unpaced), params.timeoutMs, 'trace replay').catch((error: unknown) => {
            const held = readers.map((reader) => reader.content()?.length ?? 0).join(', ');
            throw new Error(`${error instanceof Error ? error.message : String(error)}; readers hold ${held} of ${trace.expected.length} chars`);
          });
        run = await measured(first, replayed, entry.persists, params.timeoutMs);
      } finally {
        for (const client of clients) client.close();
      }
      const updates = trace.txns.length;
      const results: ScenarioResult[] = [
        {
          scenario: 'trace',
          server: entry.name,
          status: 'ok',
          metrics: {
            wall_s: run.wallMs / 1000,
            ...(entry.persists ? { settle_s: run.settleMs / 1000 } : {}),
            updates_per_s: updates / (run.wallMs / 1000),
            cpu_us_per_update: run.cpuUs / updates,
            peak_rss_mb: run.peakRssMb,
          },
        },
      ];
      if (!entry.persists) {
        results.push({ scenario: 'cold', server: entry.name, status: 'skipped', note: 'keeps nothing across a restart', metrics: {} });
        return results;
      }
      const stopped = entry.crashBeforeCold ? await first.kill().then(() => ({ ms: 0, killed: false })) : await first.stop(STOP_GRACE_MS);
      if (stopped.killed) {
        results.push(failure('cold', entry.name, `did not exit within ${STOP_GRACE_MS / 1000} s of SIGTERM (killed; what it had queued is lost)`));
        return results;
      }
      try {
        const second = await entry.start(dataDir);
        try {
          const url = new URL(endpoint.url);
          url.port = String(second.port);
          const cold = await measured(second, async () => {
            const client = await SyncClient.connect({ ...endpoint, url: url.toString() });
            try {
              await withTimeout(until(client, hasText(trace.expected)), params.timeoutMs, 'cold sync').catch((error: unknown) => {
                const held = client.content()?.length ?? 0;
                throw new Error(`${error instanceof Error ? error.message : String(error)}; the client holds ${held} of ${trace.expected.length} chars`);
              });
            } finally {
              client.close();
            }
          });
          results.push({
            scenario: 'cold',
            server: entry.name,
            status: 'ok',
            metrics: { stop_s: stopped.ms / 1000, wall_ms: cold.wallMs, cpu_ms: cold.cpuUs / 1000, peak_rss_mb: cold.peakRssMb },
          });
        } finally {
          await second.stop(STOP_GRACE_MS);
        }
      } catch (error) {
        results.push(failure('cold', entry.name, error));
      }
      return results;
    });
  } catch (error) {
    return [failure('trace', entry.name, error), { ...failure('cold', entry.name, error), note: 'trace failed' }];
  }
}

/**
 * The writer applies one trace transaction per Yjs transaction (so one update message each),
 * never more than WRITER_WINDOW characters ahead of the slowest reader (unless unpaced), and
 * yields to the event loop regularly so the readers (same process) keep draining their sockets.
 */
async function replay(writer: SyncClient, readers: readonly SyncClient[], trace: Trace, unpaced: boolean): Promise<void> {
  const text = writer.createNote(trace.start);
  const writerId = writer.doc.clientID;
  let wake: (() => void) | null = null;
  const progressed = () => {
    const resolve = wake;
    wake = null;
    resolve?.();
  };
  const converged = Promise.all(readers.map((reader) => until(reader, hasText(trace.expected), progressed)));
  const lag = () => {
    const head = Y.getState(writer.doc.store, writerId);
    let slowest = head;
    for (const reader of readers) slowest = Math.min(slowest, Y.getState(reader.doc.store, writerId));
    return head - slowest;
  };
  for (let index = 0; index < trace.txns.length; index++) {
    const patches = trace.txns[index]!;
    writer.doc.transact(() => {
      for (const [pos, deleteCount, insert] of patches) {
        if (deleteCount > 0) text.delete(pos, deleteCount);
        if (insert.length > 0) text.insert(pos, insert);
      }
    });
    if (index % 64 !== 63) continue;
    await yieldToLoop();
    while (!unpaced && (lag() > WRITER_WINDOW || writer.bufferedAmount > MAX_BUFFERED_BYTES)) {
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(progressed, 5);
      });
    }
  }
  await converged;
}

/** Small deterministic PRNG so every server sees the same edit positions. */
/**
 * fanout's load (the cluster's too): `rounds` times, every client inserts one character at a random
 * place in its document's note, one round per event-loop turn; resolves once every replica holds
 * every edit. Clients come `perDoc` to a document, whose notes all start equally long.
 */
export async function editRounds(
  clients: readonly SyncClient[],
  perDoc: number,
  rounds: number,
  random: () => number,
  timeoutMs: number,
  label: string,
): Promise<void> {
  const finalLength = clients[0]!.content()!.length + perDoc * rounds;
  const converged = Promise.all(clients.map((client) => until(client, (c) => c.content()!.length === finalLength)));
  for (let round = 0; round < rounds; round++) {
    for (const client of clients) {
      const content = client.content()!;
      content.insert(Math.floor(random() * (content.length + 1)), 'x');
    }
    await yieldToLoop();
  }
  await withTimeout(converged, timeoutMs, label);
}

export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

/** fanout: docs × clients × edits concurrent single-character inserts, until all replicas agree. */
export async function fanout(entry: ServerEntry, params: Params): Promise<ScenarioResult> {
  const { docs: docCount, clients: perDoc, edits } = params.fanout;
  try {
    return await withServer(entry, async (server): Promise<ScenarioResult> => {
      const docs = await entry.syncDocs!(server, docCount);
      if ('skip' in docs) return { scenario: 'fanout', server: entry.name, status: 'skipped', note: docs.skip, metrics: {} };
      const clients = await connectMany(docs.endpoints.flatMap((endpoint) => Array.from({ length: perDoc }, () => endpoint)));
      try {
        const groups = Array.from({ length: docCount }, (_, doc) => clients.slice(doc * perDoc, (doc + 1) * perDoc));
        for (const group of groups) group[0]!.createNote();
        await withTimeout(Promise.all(clients.map((client) => until(client, (c) => c.content() !== undefined))), params.timeoutMs, 'note creation');
        const random = prng(7);
        const run = await measured(
          server,
          () => editRounds(clients, perDoc, edits, random, params.timeoutMs, 'fanout convergence'),
          entry.persists,
          params.timeoutMs,
        );
        const updates = docCount * perDoc * edits;
        return {
          scenario: 'fanout',
          server: entry.name,
          status: 'ok',
          metrics: {
            wall_s: run.wallMs / 1000,
            ...(entry.persists ? { settle_s: run.settleMs / 1000 } : {}),
            updates_per_s: updates / (run.wallMs / 1000),
            cpu_us_per_update: run.cpuUs / updates,
            peak_rss_mb: run.peakRssMb,
          },
        };
      } finally {
        for (const client of clients) client.close();
      }
    });
  } catch (error) {
    return failure('fanout', entry.name, error);
  }
}

/**
 * idle: RSS growth for N idle sync connections on one document, then for D documents each loaded
 * with a 1,000-character note (one more connection each, whose share is taken out).
 */
export async function idle(entry: ServerEntry, params: Params): Promise<ScenarioResult> {
  const { connections, docs: docCount } = params.idle;
  try {
    return await withServer(entry, async (server): Promise<ScenarioResult> => {
      const docs = await entry.syncDocs!(server, docCount);
      if ('skip' in docs) return { scenario: 'idle', server: entry.name, status: 'skipped', note: docs.skip, metrics: {} };
      const opened: SyncClient[] = [];
      try {
        const before = sample(server.pid);
        opened.push(...(await connectMany(Array.from({ length: connections }, () => docs.endpoints[0]!))));
        const afterConnections = sample(server.pid);
        const perConnection = (afterConnections.rssBytes - before.rssBytes) / connections;
        const metrics: Record<string, number> = { rss_mb_per_1000_conns: (perConnection * 1000) / MB };
        if (docs.endpoints[0]!.answersSync) {
          const loaders = await connectMany(docs.endpoints);
          opened.push(...loaders);
          await Promise.all(
            loaders.map(async (client) => {
              const content = client.createNote();
              for (let chunk = 0; chunk < 10; chunk++) content.insert(content.length, 'lorem ipsum dolor sit amet '.repeat(4).slice(0, 100));
              await client.roundTrip();
            }),
          );
          const afterDocs = sample(server.pid);
          const perDoc = (afterDocs.rssBytes - afterConnections.rssBytes - perConnection * docCount) / docCount;
          metrics.rss_mb_per_100_docs = (perDoc * 100) / MB;
          metrics.rss_mb = afterDocs.rssBytes / MB;
        } else {
          metrics.rss_mb = afterConnections.rssBytes / MB;
        }
        return { scenario: 'idle', server: entry.name, status: 'ok', metrics };
      } finally {
        for (const client of opened) client.close();
      }
    });
  } catch (error) {
    return failure('idle', entry.name, error);
  }
}

/** rest: autocannon against `GET /users/@me`, after a one-second warm-up. */
export async function rest(entry: ServerEntry, params: Params): Promise<ScenarioResult> {
  try {
    return await withServer(entry, async (server): Promise<ScenarioResult> => {
      const target = await entry.restTarget!(server);
      if ('skip' in target) return { scenario: 'rest', server: entry.name, status: 'skipped', note: target.skip, metrics: {} };
      const load = (durationS: number) => autocannon({ url: target.url, headers: target.headers, connections: params.rest.connections, duration: durationS });
      await load(1);
      const run = await measured(server, () => load(params.rest.durationS));
      const result = run.value;
      if (result.non2xx > 0 || result.errors > 0) {
        throw new Error(`${result.non2xx} non-2xx answers and ${result.errors} errors`);
      }
      return {
        scenario: 'rest',
        server: entry.name,
        status: 'ok',
        metrics: {
          req_per_s: result.requests.average,
          p99_ms: result.latency.p99,
          cpu_us_per_req: run.cpuUs / result.requests.total,
          peak_rss_mb: run.peakRssMb,
        },
      };
    });
  } catch (error) {
    return failure('rest', entry.name, error);
  }
}
