import { createHash, timingSafeEqual } from 'node:crypto';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { type Buckets, HTTP_SECONDS_BUCKETS, COMMIT_SECONDS_BUCKETS, type HttpMetrics, type SyncMetrics } from './recorders.ts';

/** What the server is holding right now, read at each scrape (nothing is counted on the hot paths for these). */
interface MetricSources {
  syncConnections: () => number;
  loadedDocuments: () => number;
  openUserFiles: () => number;
  /** `--max-open-user-files`: the open-files gauge against its cap. */
  maxOpenUserFiles: number;
  userFilesOpened: () => number;
  userFilesEvicted: () => number;
  /** Cluster mode: what this node owns and relays (docs/cluster.md). */
  cluster?: {
    ownedUsers: () => number;
    /** Devices' sockets held here for documents other nodes own. */
    relayedSockets: () => number;
    /** Devices' sockets other nodes hold, served here. */
    servedRemoteSockets: () => number;
  };
}

export interface MetricsOptions {
  http: HttpMetrics;
  sync: SyncMetrics;
  sources: MetricSources;
  /** When set, a scrape must carry `Authorization: Bearer <token>`. */
  token: string | undefined;
}

/**
 * The `/metrics` answer: one prom-client registry per server (never prom-client's global one, so
 * several servers run in one process), holding prom-client's default process metrics (CPU, memory,
 * event-loop lag, GC, descriptors) and ours, which read the recorders when scraped.
 */
export class MetricsExposition {
  private readonly registry = new Registry();
  private readonly tokenDigest: Buffer | undefined;

  constructor(options: MetricsOptions) {
    const { http, sync, sources } = options;
    this.tokenDigest = options.token === undefined ? undefined : digest(options.token);
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });

    new Counter({
      name: 'plexichat_http_requests_total',
      help: 'HTTP requests answered, by method, route (its path pattern; "unmatched" when no route answered) and status (499: the client left first).',
      labelNames: ['method', 'route', 'status'],
      registers,
      collect() {
        this.reset();
        for (const recorder of http.recorders()) {
          for (const [status, count] of recorder.statuses) this.inc({ method: recorder.method, route: recorder.route, status: String(status) }, count);
        }
      },
    });
    new BucketsHistogram(
      { name: 'plexichat_http_request_duration_seconds', help: 'Time from a request arriving to its answer being written, by method and route.', registers },
      HTTP_SECONDS_BUCKETS,
      function* () {
        for (const recorder of http.recorders()) yield { labels: { method: recorder.method, route: recorder.route }, buckets: recorder.seconds };
      },
    );
    gauge(registers, 'plexichat_sync_connections', 'Sync WebSocket connections open.', sources.syncConnections);
    gauge(registers, 'plexichat_sync_documents_loaded', 'Yjs documents held in memory.', sources.loadedDocuments);
    counter(
      registers,
      'plexichat_sync_updates_stored_total',
      "Yjs updates appended to the documents' update logs (from sockets and REST changes).",
      () => sync.updatesStored,
    );
    new BucketsHistogram(
      { name: 'plexichat_sync_commit_duration_seconds', help: 'Time of one transaction storing a batch of document updates.', registers },
      COMMIT_SECONDS_BUCKETS,
      function* () {
        yield { labels: {}, buckets: sync.commitSeconds };
      },
    );
    counter(registers, 'plexichat_sync_compactions_total', 'Update logs folded into a snapshot.', () => sync.compactions);
    counter(
      registers,
      'plexichat_sync_compaction_failures_total',
      'Compactions that could not be stored (the update log is kept).',
      () => sync.compactionFailures,
    );
    if (sources.cluster !== undefined) {
      const { ownedUsers, relayedSockets, servedRemoteSockets } = sources.cluster;
      gauge(registers, 'plexichat_cluster_owned_users', 'Users whose lease this node holds (cluster mode).', ownedUsers);
      gauge(
        registers,
        'plexichat_cluster_relayed_sockets',
        'Sync sockets held here and relayed to the node that owns their document (cluster mode).',
        relayedSockets,
      );
      gauge(registers, 'plexichat_cluster_remote_sockets', 'Sync sockets other nodes hold, served here (cluster mode).', servedRemoteSockets);
    }
    gauge(registers, 'plexichat_user_files_open', 'Per-user SQLite files open (each holds three file descriptors).', sources.openUserFiles);
    gauge(registers, 'plexichat_user_files_max', 'The cap on open user files (--max-open-user-files).', () => sources.maxOpenUserFiles);
    counter(registers, 'plexichat_user_files_opened_total', 'User files opened.', sources.userFilesOpened);
    counter(
      registers,
      'plexichat_user_files_evicted_total',
      'Idle user files closed to make room for another (often: the cap is too low).',
      sources.userFilesEvicted,
    );
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The Prometheus text format of every metric. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  /** Whether a scrape with this Authorization header may read the metrics (always, without a token). */
  authorizes(authorization: string | undefined): boolean {
    if (this.tokenDigest === undefined) return true;
    const presented = /^Bearer[ ]+(\S+)[ ]*$/i.exec(authorization ?? '')?.[1];
    // Compared as digests: equal lengths, and the time taken says nothing about the token.
    return presented !== undefined && timingSafeEqual(digest(presented), this.tokenDigest);
  }

  /**
   * Lets go of the metrics and what their collectors hold (the server's storage and documents). The
   * GC observer and event-loop monitor prom-client's default metrics start cannot be stopped; once
   * the registry is cleared they hold only a few numbers.
   */
  close(): void {
    this.registry.clear();
  }
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

function gauge(registers: Registry[], name: string, help: string, read: () => number): void {
  new Gauge({
    name,
    help,
    registers,
    collect() {
      this.set(read());
    },
  });
}

function counter(registers: Registry[], name: string, help: string, read: () => number): void {
  new Counter({
    name,
    help,
    registers,
    collect() {
      this.reset();
      this.inc(read());
    },
  });
}

interface BucketSeries {
  labels: Record<string, string>;
  buckets: Buckets;
}

/** One line of the text format, as prom-client's registry renders it. */
interface RenderedValue {
  metricName: string;
  labels: Record<string, string | number>;
  sharedLabels: Record<string, string>;
  value: number;
}

/**
 * A histogram whose counts come from `Buckets` kept elsewhere, rendered by prom-client like its own.
 * prom-client has no way to set a histogram's counts, only to observe values one at a time, so this
 * one answers `getForPromString` (what the registry renders a metric from when it has one; its `get`
 * for JSON builds on it) from the recorders instead of from observations.
 */
class BucketsHistogram extends Histogram<string> {
  constructor(
    private readonly config: { name: string; help: string; registers: Registry[] },
    private readonly bounds: readonly number[],
    private readonly series: () => Iterable<BucketSeries>,
  ) {
    super({ ...config, buckets: [...bounds] });
  }

  async getForPromString(): Promise<{ name: string; help: string; type: 'histogram'; aggregator: 'sum'; values: RenderedValue[] }> {
    const values: RenderedValue[] = [];
    const { name } = this.config;
    for (const { labels, buckets } of this.series()) {
      let cumulative = 0;
      this.bounds.forEach((bound, index) => {
        cumulative += buckets.counts[index] ?? 0;
        values.push({ metricName: `${name}_bucket`, labels: { le: bound }, sharedLabels: labels, value: cumulative });
      });
      values.push({ metricName: `${name}_bucket`, labels: { le: '+Inf' }, sharedLabels: labels, value: buckets.count });
      values.push({ metricName: `${name}_sum`, labels: {}, sharedLabels: labels, value: buckets.sum });
      values.push({ metricName: `${name}_count`, labels: {}, sharedLabels: labels, value: buckets.count });
    }
    return { name, help: this.config.help, type: 'histogram', aggregator: 'sum', values };
  }
}
